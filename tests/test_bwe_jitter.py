"""The estimator on jittery links: jitter is not queueing, random loss is not congestion.

The link is `tests.test_bwe`'s bottleneck (FIFO, drop-tail queue, random loss, propagation
delay) with the weak-link lab's own delay wander on top (`benchmarks.netlab._Wander`: the
delay moves within +/- jitter along straight segments, never reordering packets), so the
arrival traces are the ones the lab's mobile-3g profile (1 Mbit/s, RTT 300 +/- 50 ms, 3 %
loss) makes. The sender is application-limited like an SFU forwarding one simulcast layer.
"""

from __future__ import annotations

import random
import statistics

from benchmarks.netlab import _Wander
from sfu.media.bwe import (
    BandwidthEstimator,
    BandwidthUsage,
    BweConfig,
    LossBasedControl,
    TrendlineDetector,
)

from .test_bwe import Bottleneck, Trace, run_link

CAPACITY = 1_000_000
LAYER_BPS = 650_000  # h (500 kbit/s) plus audio and retransmissions


class JitteryBottleneck(Bottleneck):
    """The bottleneck, then the lab's delay wander (order kept, as in the lab's relay)."""

    def __init__(self, *args, jitter_s: float = 0.05, seed: int = 1, **kwargs) -> None:
        super().__init__(*args, seed=seed, **kwargs)
        self.jitter_s = jitter_s
        self.wander = _Wander(random.Random(seed + 100))
        # (around a base as large as the jitter, so the wander is never clipped at zero)
        self.wander.set(jitter_s * 1000, jitter_s * 1000)
        self.last_arrival = 0.0

    def send(self, t: float, size: int) -> float | None:
        arrival = super().send(t, size)
        if arrival is None:
            return None
        arrival = max(self.last_arrival, arrival + self.wander.delay(arrival) - self.jitter_s)
        self.last_arrival = arrival
        return arrival


def _mobile(
    seed: int,
    *,
    loss: float = 0.03,
    jitter_s: float = 0.05,
    app_limit_bps: float = LAYER_BPS,
    duration_s: float = 60.0,
    schedule: tuple[tuple[float, float], ...] = (),
    capacity: float = CAPACITY,
    start_bps: int = 1_000_000,
) -> tuple[BandwidthEstimator, Trace, JitteryBottleneck]:
    est = BandwidthEstimator(BweConfig(start_bps=start_bps))
    est.on_rtt(0.3)
    link = JitteryBottleneck(
        capacity,
        prop_s=0.15,
        queue_s=0.2,
        loss=loss,
        seed=seed,
        jitter_s=jitter_s,
        schedule=schedule,
    )
    return est, run_link(est, link, duration_s, app_limit_bps=app_limit_bps), link


def test_jitter_alone_does_not_collapse_the_estimate() -> None:
    for seed in (1, 2, 3):
        est, trace, _ = _mobile(seed, loss=0.0)
        settled = trace.window(15, 60)
        assert min(settled) >= 0.8 * CAPACITY, (seed, min(settled))
        assert est.overuse_events <= 2, seed
        assert est.detector.window_size > BweConfig().trendline_window  # it saw the jitter


def test_jitter_with_random_loss_keeps_the_layer_that_fits() -> None:
    """mobile-3g: h (+ audio) must keep fitting; before this the estimate sat near 300 kbit/s."""
    for seed in (1, 2, 3):
        est, trace, _ = _mobile(seed)
        settled = sorted(trace.window(15, 60))
        assert statistics.median(settled) >= 0.9 * CAPACITY, seed
        assert settled[len(settled) // 10] >= 0.8 * CAPACITY, seed  # 90 % of the time
        assert 0.015 < est.loss.random_loss < 0.05, seed  # it learnt the link's own loss


def test_a_real_queue_is_still_detected_on_a_jittery_link() -> None:
    """A sender that would send 1.3 Mbit/s into 1 Mbit/s: the estimate settles below the
    capacity and the bottleneck queue stays short instead of filling its 200 ms."""
    for seed in (1, 2):
        est, trace, link = _mobile(seed, app_limit_bps=1_300_000)
        assert statistics.median(trace.window(15, 60)) < CAPACITY, seed
        assert est.overuse_events >= 3, seed
        queue = [d for t, d in trace.queue_delays if t >= 15]
        assert statistics.mean(queue) < 0.25 * link.queue_s, seed


def test_a_capacity_drop_on_a_jittery_link_is_followed_within_a_second() -> None:
    for seed in (1, 2):
        est, trace, _ = _mobile(
            seed,
            capacity=2_000_000,
            app_limit_bps=1_600_000,
            duration_s=40.0,
            schedule=((20.0, 600_000.0),),
            start_bps=1_500_000,
        )
        assert trace.mean(10, 20) > 800_000, seed
        below = next(
            t for t, e in zip(trace.times, trace.estimates, strict=True) if t >= 20 and e < 700_000
        )
        assert below - 20.0 < 1.0, seed
        assert 0.6 * 600_000 <= trace.mean(25, 40) <= 1.1 * 600_000, seed


def _feed(detector: TrendlineDetector, delays_ms: list[float], spacing_ms: float) -> list[str]:
    states = []
    for i in range(1, len(delays_ms)):
        arrival_delta = spacing_ms + delays_ms[i] - delays_ms[i - 1]
        detector.update(spacing_ms, arrival_delta, i * spacing_ms + delays_ms[i])
        states.append(detector.state.value)
    return states


def test_detector_grows_its_window_on_a_wander_but_not_on_a_steady_queue() -> None:
    cfg = BweConfig()
    wander = _Wander(random.Random(7))
    wander.set(50.0, 50.0)
    jittery = TrendlineDetector(cfg)
    _feed(jittery, [1000 * wander.delay(i * 0.015) for i in range(2000)], 15.0)
    assert jittery.jitter_ms > 3 * cfg.jitter_window_from_ms  # +/- 50 ms: ~20-25 ms spread
    # the window spans jitter_window_s_per_ms seconds per ms of jitter (15 ms a group)
    expected = 1000 * cfg.jitter_window_s_per_ms * jittery.jitter_ms / 15.0
    assert abs(jittery.window_size - expected) <= 0.1 * expected
    assert jittery.jitter_slope > 0

    queue = TrendlineDetector(cfg)  # flat for 3 s, then a queue growing 2 ms per 15 ms
    states = _feed(queue, [0.0] * 200 + [2.0 * k for k in range(1, 100)], 15.0)
    assert queue.window_size == cfg.trendline_window
    assert BandwidthUsage.OVERUSE.value in states[200:215]  # within ~0.2 s of the onset

    # the same queue on top of the wander: found, later but found
    both = TrendlineDetector(cfg)
    base = [1000 * wander.delay(30 + i * 0.015) for i in range(500)]
    assert queue.jitter_ms < cfg.jitter_window_from_ms
    ramp = [base[i] + (2.0 * (i - 300) if i >= 300 else 0.0) for i in range(500)]
    states = _feed(both, ramp, 15.0)
    assert both.window_size > cfg.trendline_window
    assert BandwidthUsage.OVERUSE.value not in states[150:290]  # wander alone: no overuse
    assert BandwidthUsage.OVERUSE.value in states[300:400]


def _window(control: LossBasedControl, lost: int, total: int, now: float) -> float | None:
    control.add(lost, total)
    return control.update(1_000_000, now, 0.3, acked_bps=600_000, sent_bps=650_000)


def test_random_loss_is_learnt_and_then_an_unlucky_window_holds() -> None:
    control = LossBasedControl(BweConfig())
    rng = random.Random(3)
    for i in range(200):  # 3 % random loss, 20-packet windows
        _window(control, sum(rng.random() < 0.03 for _ in range(20)), 20, i * 0.3)
    assert 0.015 < control.random_loss < 0.05
    bound = control.estimate
    assert bound is not None and bound >= 0.95 * 1_000_000
    # 3 of 20 twice running: on a clean link a collapse; here within what 3 % loss does
    _window(control, 3, 20, 61.0)
    after = _window(control, 3, 20, 62.0)
    assert after is not None and after > 0.85 * 1_000_000
    # a real collapse (half the window lost) still caps the bound at what got through
    control.add(10, 20)
    collapsed = control.update(1_000_000, 63.0, 0.3, acked_bps=300_000, sent_bps=650_000)
    assert collapsed is not None and collapsed <= 300_000


def test_random_loss_with_an_application_limited_acked_rate_is_no_collapse() -> None:
    """We sent about what got through (the sender is application-limited): the acked rate is
    not the link's capacity, so even two heavy windows do not pull the bound down to it."""
    control = LossBasedControl(BweConfig())
    _window(control, 0, 22, 0.0)
    control.add(3, 22)
    control.update(1_000_000, 1.0, 0.3, acked_bps=600_000, sent_bps=640_000)
    control.add(3, 22)
    bound = control.update(1_000_000, 2.0, 0.3, acked_bps=600_000, sent_bps=640_000)
    assert bound is not None and bound > 600_000
    # the same windows while sending far more than got through: capped
    capped = LossBasedControl(BweConfig())
    _window(capped, 0, 22, 0.0)
    for t in (1.0, 2.0):
        capped.add(3, 22)
        bound = capped.update(1_000_000, t, 0.3, acked_bps=500_000, sent_bps=800_000)
    assert bound is not None and bound <= 500_000
