"""The simulcast layer selector as a state machine: keyframe gating, hysteresis, no flapping."""

from __future__ import annotations

from sfu.media.layers import Layer, LayerConfig, LayerSelector, split_temporal

Q, H, F = 150_000, 500_000, 1_500_000


def make(
    temporal_layers: int = 3, **config: float
) -> tuple[LayerSelector, list[tuple[Layer | None, Layer, str]]]:
    events: list[tuple[Layer | None, Layer, str]] = []
    sel = LayerSelector(LayerConfig(**config), on_switch=lambda o, n, r: events.append((o, n, r)))
    for spatial, total in enumerate((Q, H, F)):
        sel.set_layer_bitrates(spatial, split_temporal(total, temporal_layers))
    return sel, events


def run(sel: LayerSelector, estimate: float, t0: float, t1: float, dt: float = 0.1) -> float:
    t = t0
    while t < t1:
        sel.update(estimate, t)
        t = round(t + dt, 6)
    return t


def at_top(sel: LayerSelector, now: float) -> None:
    """Bring the selector to forwarding f/T2 with a good estimate."""
    sel.update(3_000_000, now)
    assert sel.target == Layer(2, 2)
    sel.on_keyframe(2, now)
    assert sel.current == Layer(2, 2)


def test_split_temporal_is_cumulative() -> None:
    assert split_temporal(1_000_000, 3) == [400_000, 600_000, 1_000_000]
    assert split_temporal(1_000_000, 1) == [1_000_000]


def test_start_waits_for_a_keyframe_at_or_below_target() -> None:
    sel, events = make()
    sel.update(3_000_000, 0.0)
    assert sel.target == Layer(2, 2) and sel.current is None
    assert sel.keyframe_request(0.0) == 2
    assert sel.keyframe_request(0.2) is None  # throttled
    assert sel.keyframe_request(0.6) == 2
    assert not sel.on_keyframe(5, 0.7)  # no such layer
    assert sel.on_keyframe(0, 0.7)  # start with whatever keyframe arrives first...
    assert sel.current == Layer(0, 2) and sel.switch_pending
    assert not sel.on_keyframe(1, 0.8)  # ...but only the target's keyframe completes the switch
    assert sel.on_keyframe(2, 0.9)
    assert sel.current == Layer(2, 2) and not sel.switch_pending
    assert sel.keyframe_request(2.0) is None
    assert [(n, r) for _, n, r in events] == [(Layer(0, 2), "start"), (Layer(2, 2), "up")]


def test_down_is_immediate_and_keyframe_gated() -> None:
    sel, events = make(full_frame_rate_above_base=False)
    at_top(sel, 0.0)
    sel.update(1_400_000, 1.0)  # below f's 1.5 Mbps, above f/T1 (900 kbps)
    assert sel.target == Layer(2, 1)
    assert sel.current == Layer(2, 1)  # temporal: no keyframe needed
    sel.update(480_000, 1.1)  # h/T1 (300 kbps) fits, h/T2 does not (not a severe fall)
    assert sel.target == Layer(1, 1)
    assert sel.current == Layer(2, 0)  # cut to the base temporal layer while waiting
    assert sel.keyframe_request(1.1) == 1
    assert not sel.on_keyframe(2, 1.2) and not sel.on_keyframe(0, 1.2)
    assert sel.on_keyframe(1, 1.3)
    assert sel.current == Layer(1, 1)
    assert [r for _, _, r in events][-3:] == ["down", "down", "down"]


def test_up_needs_headroom_held_and_a_successful_probe() -> None:
    sel, _ = make(temporal_layers=1, explore_interval_s=1000.0)
    sel.update(700_000, 0.0)
    sel.on_keyframe(1, 0.0)
    assert sel.current == Layer(1, 0)
    # 1.1 x f is not enough headroom, however long it lasts
    t = run(sel, 1.1 * F, 0.1, 20.0)
    assert sel.target == Layer(1, 0) and sel.take_probe_request(t) is None
    # 1.2 x f: not before the hold time has passed
    sel2, _ = make(temporal_layers=1, explore_interval_s=100.0)
    sel2.update(700_000, 0.0)
    sel2.on_keyframe(1, 0.0)
    t = run(sel2, 1.2 * F, 0.1, 2.9)
    assert sel2.take_probe_request(t) is None and sel2.target == Layer(1, 0)
    t = run(sel2, 1.2 * F, t, 3.3)
    probe = sel2.take_probe_request(t)
    assert probe is not None and not probe.exploratory
    assert probe.layer == Layer(2, 0) and probe.bitrate_bps == int(1.15 * F)
    assert sel2.take_probe_request(t) is None  # one in flight
    sel2.update(1.2 * F, t + 0.1)
    assert sel2.target == Layer(1, 0)  # no switch before the probe answers
    sel2.on_probe_result(int(1.15 * F), t + 0.3)
    sel2.update(1.2 * F, t + 0.4)
    assert sel2.target == Layer(2, 0) and sel2.current == Layer(1, 0)
    assert sel2.keyframe_request(t + 0.4) == 2
    assert sel2.on_keyframe(2, t + 0.6) and sel2.current == Layer(2, 0)


def test_failed_probe_blocks_the_move_and_backs_off() -> None:
    sel, _ = make(temporal_layers=1, explore_interval_s=2.0, explore_backoff_max_s=8.0)
    sel.update(700_000, 0.0)
    sel.on_keyframe(1, 0.0)
    t = run(sel, 1.2 * F, 0.1, 3.2)
    assert sel.take_probe_request(t) is not None
    sel.on_probe_result(int(0.95 * F), t + 0.3)  # the link carries less than it claims
    t = run(sel, 1.2 * F, t + 0.4, t + 2.2)
    assert sel.target == Layer(1, 0)
    assert sel.take_probe_request(t) is None  # backing off for 2 s
    t = run(sel, 1.2 * F, t, t + 0.2)
    assert sel.take_probe_request(t) is not None
    sel.on_probe_result(None, t + 0.5)  # timed out: the next wait doubles
    t = run(sel, 1.2 * F, t + 0.6, t + 4.4)
    assert sel.take_probe_request(t) is None and sel.target == Layer(1, 0)
    t = run(sel, 1.2 * F, t, t + 0.3)
    assert sel.take_probe_request(t) is not None


def test_a_second_step_down_asks_for_its_keyframe_at_once() -> None:
    """The link keeps falling: target h, then q 100 ms later. q's keyframe is asked for at
    once (the throttle is per layer; lab: waiting out h's throttle cost 0.5 s of freeze)."""
    sel, _ = make()
    at_top(sel, 0.0)
    sel.update(800_000, 1.0)
    assert sel.target == Layer(1, 2)
    assert sel.keyframe_request(1.0) == 1
    sel.update(160_000, 1.1)
    assert sel.target == Layer(0, 2)
    assert sel.keyframe_request(1.1) == 0
    assert sel.keyframe_request(1.2) is None  # the same layer again: throttled
    assert sel.keyframe_request(1.1 + sel.config.keyframe_interval_s) == 0


def test_a_severe_fall_goes_down_far_enough_at_once() -> None:
    """f, then the first measurement of a collapsing link: 550 kbit/s (< half of f). h would
    fit that, but the link is still falling (lab: 300 kbit/s a moment later) and each step
    costs a keyframe: the spatial layer is chosen for half the estimate (q), at the frame rate
    the whole estimate carries. A fall that is not severe still takes the best fit."""
    sel, _ = make()
    at_top(sel, 0.0)
    sel.update(550_000, 1.0)
    assert sel.target == Layer(0, 2)
    mild, _ = make()
    at_top(mild, 0.0)
    mild.update(800_000, 1.0)  # > half of f: h
    assert mild.target == Layer(1, 2)


def test_exploratory_probe_when_the_estimate_is_application_limited() -> None:
    sel, _ = make(full_frame_rate_above_base=False)
    sel.update(200_000, 0.0)  # only q fits
    sel.on_keyframe(0, 0.0)
    assert sel.current == Layer(0, 2)
    t = run(sel, 235_000, 0.1, 2.9)
    assert sel.take_probe_request(t) is None
    t = run(sel, 235_000, t, 3.2)
    probe = sel.take_probe_request(t)
    assert probe is not None and probe.exploratory
    # capped at twice the estimate (a probe far above a weak link would overflow its queue),
    # which is above 1.15 x h's lowest step
    assert probe.bitrate_bps == 2 * 235_000
    sel.on_probe_result(470_000, t + 0.3)  # the estimator lifts its estimate with the result
    up_at = None
    tt = t + 0.4
    while tt < t + 6 and up_at is None:
        sel.update(470_000, tt)
        if sel.target > Layer(0, 2):
            up_at = tt
        tt += 0.1
    assert up_at is not None and up_at - t < 3.6  # hold time, no second probe needed
    assert sel.target == Layer(1, 1)  # what the probe covered (h/T2 needs another one)


def test_estimate_oscillation_does_not_flap() -> None:
    sel, _ = make(full_frame_rate_above_base=False)
    at_top(sel, 0.0)
    targets = [sel.target]
    t = 0.0
    for cycle in range(15):  # 120 s: 4 s clearly above f, 4 s just below it
        for estimate in (2.0 * F, 0.95 * F):
            end = t + 4.0
            while t < end:
                sel.update(estimate, t)
                probe = sel.take_probe_request(t)
                if probe is not None:
                    sel.on_probe_result(probe.bitrate_bps, t)  # probes always succeed
                if sel.switch_pending:
                    assert sel.target is not None
                    sel.on_keyframe(sel.target.spatial, t)
                if sel.target != targets[-1]:
                    targets.append(sel.target)
                t = round(t + 0.1, 6)
        del cycle
    # without the flap guard this would be ~30 changes; with it the hold outgrows the 4 s peaks
    assert len(targets) - 1 <= 4
    assert sel.temporal_hold_s > 4.0  # (the oscillation is across f's temporal layers)
    assert sel.spatial_switches <= 4


def test_requested_quality_low_then_high() -> None:
    sel, events = make()
    at_top(sel, 0.0)
    t = run(sel, 3_000_000, 0.1, 5.0)
    sel.set_requested(0)
    sel.update(3_000_000, t)
    assert sel.target == Layer(0, 2)  # immediately, no hold
    assert sel.on_keyframe(0, t + 0.1)
    sel.set_requested(None)
    sel.update(3_000_000, t + 0.2)
    probe = sel.take_probe_request(t + 0.2)  # the estimate was already high for the hold time
    assert probe is not None and probe.layer == Layer(2, 2)
    sel.on_probe_result(probe.bitrate_bps, t + 0.5)
    sel.update(3_000_000, t + 0.6)
    assert sel.target == Layer(2, 2)
    assert sel.on_keyframe(2, t + 0.8) and sel.current == Layer(2, 2)
    # a temporal cap applies without a keyframe
    sel.set_requested(None, 0)
    sel.update(3_000_000, t + 1.0)
    assert sel.current == Layer(2, 0)
    assert events[-1][2] == "down"


def test_vanished_layer_moves_target_down() -> None:
    sel, _ = make()
    at_top(sel, 0.0)
    sel.set_layer_bitrates(2, [])  # the publisher's encoder dropped f
    sel.update(3_000_000, 1.0)
    assert sel.target == Layer(1, 2)
    assert sel.keyframe_request(1.0) == 1
    assert sel.on_keyframe(1, 1.2) and sel.current == Layer(1, 2)
    sel.set_layer_bitrates(1, [0])
    sel.set_layer_bitrates(0, [])
    sel.update(3_000_000, 2.0)
    assert sel.target is None


def test_estimate_below_everything_keeps_the_lowest_layer() -> None:
    sel, _ = make()
    sel.update(10_000, 0.0)
    assert sel.target == Layer(0, 0)
    assert sel.on_keyframe(0, 0.1) and sel.current == Layer(0, 0)


def test_vanished_layer_never_jumps_up_without_hysteresis() -> None:
    sel, _ = make()
    sel.update(700_000, 0.0)
    sel.on_keyframe(1, 0.0)
    assert sel.target == Layer(1, 2)
    sel.set_layer_bitrates(1, [])  # h vanished; f fits the estimate but needs hold + probe
    sel.update(3_000_000, 0.5)
    assert sel.target == Layer(0, 2)


def _failed_explorations(sel: LayerSelector, estimate: float, t: float, n: int) -> list[float]:
    """Let `n` exploratory probes fail in turn; the times they were asked for."""
    asked = []
    while len(asked) < n:
        sel.update(estimate, t)
        request = sel.take_probe_request(t)
        if request is not None:
            assert request.exploratory
            asked.append(t)
            sel.on_probe_result(None, t + 0.1)  # the link still cannot carry it
        t = round(t + 0.1, 6)
    return asked


def test_after_the_link_fell_exploration_keeps_probing_every_few_seconds() -> None:
    """drop-recover: f, then the link falls to 300 kbit/s for 20 s. Failed probes back off to
    at most `explore_recover_interval_s` (not the 6 s of a long outage), so the viewer is back
    on f within seconds of the link returning."""
    sel, _ = make(temporal_layers=1)
    sel.update(3_000_000, 0.0)
    sel.on_keyframe(2, 0.0)
    assert sel.current == Layer(2, 0)
    sel.update(300_000, 1.0)  # a severe fall: f -> q
    assert sel.target == Layer(0, 0)
    sel.on_keyframe(0, 1.1)
    asked = _failed_explorations(sel, 300_000, 1.2, 8)
    gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
    assert max(gaps) <= sel.config.explore_recover_interval_s + 0.25, gaps
    # once recover_window_s has passed, the long backoff is back
    late = _failed_explorations(sel, 300_000, 1.0 + sel.config.recover_window_s + 1, 4)
    late_gaps = [b - a for a, b in zip(late, late[1:], strict=False)]
    assert max(late_gaps) >= sel.config.explore_backoff_max_s - 0.25, late_gaps


def test_a_link_that_never_carried_more_keeps_the_long_backoff() -> None:
    """mobile-3g: settled on h from the start; f is wanted but out of reach. Probes back off
    to `explore_backoff_max_s` as before, not every two seconds."""
    sel, _ = make(temporal_layers=1)
    sel.update(700_000, 0.0)
    sel.on_keyframe(1, 0.0)
    assert sel.target == Layer(1, 0)
    asked = _failed_explorations(sel, 700_000, 0.1, 5)
    gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
    assert gaps[-1] >= sel.config.explore_backoff_max_s - 0.25, gaps
