"""Send-side bandwidth estimation in the style of Google Congestion Control (GCC).

Algorithm: draft-ietf-rmcat-gcc-02.

Input: `PacketResult`s from `sfu.media.twcc` (send time on our clock, arrival time on the
receiver's clock or None if lost, size), plus REMB and RTT when known. Output: a target bitrate
(`estimate_bps`) and the state that produced it. Written from the algorithm's description:

1. Arrival groups: packets sent within 5 ms of the first packet of a group form one group
   (so a burst from one frame is one sample); a packet that arrives in a burst (< 5 ms after the
   previous one, and earlier than its send spacing predicts) joins the current group too.
2. Inter-group delay variation d = (arrival spacing) - (send spacing) between the last packets of
   consecutive groups: positive when a queue builds somewhere on the path.
3. Trendline filter: the accumulated d is smoothed (EWMA) and a least-squares line is fitted over
   the last ~20 (arrival time, smoothed delay) points; its slope, scaled, is the delay trend.
4. Overuse detector: the trend is compared with an adaptive threshold; above it for > 10 ms (and
   not falling) = overuse, below its negative = underuse, else normal. The threshold follows the
   trend slowly so that it tolerates what competing flows do, but not sudden spikes.
   Jitter-aware (not in the draft): where the raw delay scatters around its line by more than
   a few ms (a link whose delay wanders, e.g. +/- 50 ms on a mobile link) the window grows to
   span ~0.1 s per ms of that scatter, so a line fitted through the wander is flat, and a
   trend must exceed the slope the scatter alone could fake over that span; a queue that
   keeps growing still shows, however long the window.
5. AIMD rate control: overuse -> decrease to 0.85 x the acknowledged (received) bitrate; normal ->
   increase, multiplicatively (8 %/s) while far from the link capacity seen at earlier decreases,
   additively (about one packet per response time) near it; underuse -> hold (queues drain).
   Increases stop at 1.5 x the acknowledged bitrate, so an application-limited sender does not
   inflate the estimate (probes, below, are how it rises past what is sent).
6. Loss-based bound, per >= 20 reported packets: loss > 10 % -> x (1 - 0.5 loss) (at most once
   per 300 ms + RTT); loss < 2 % -> may rise 8 %/s; in between -> hold. A collapse (loss >=
   25 % in one window, or > 10 % in two windows running) also caps it at what got through.
   Random loss (not in the draft): the link's own loss rate is learnt (up to 5 %) from windows
   that do not look congested, and a window is heavy only when its loss is also far beyond
   what that rate gives a window of its size, so 3 % random loss does not cut the estimate.
7. Probes: a cluster of packets sent at a target rate; the rate it achieved, min(send rate,
   receive rate), lifts the estimate at once (how the estimate climbs faster than AIMD allows).

The target is min(delay-based, loss-based, REMB), clamped to [min_bps, max_bps]. A peer that
sends only REMB (no transport-cc) gets REMB as its delay-based value.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from .twcc import PacketResult

__all__ = [
    "AckedBitrate",
    "AimdRateControl",
    "BandwidthEstimator",
    "BandwidthUsage",
    "BweConfig",
    "InterArrival",
    "LossBasedControl",
    "PacketResult",
    "ProbeResult",
    "RateState",
    "TrendlineDetector",
]


class BandwidthUsage(Enum):
    NORMAL = "normal"
    OVERUSE = "overuse"
    UNDERUSE = "underuse"


class RateState(Enum):
    INCREASE = "increase"
    HOLD = "hold"
    DECREASE = "decrease"


@dataclass
class BweConfig:
    """Tunables; the defaults follow the GCC draft and what browsers ship."""

    start_bps: int = 500_000
    min_bps: int = 50_000
    max_bps: int = 10_000_000
    # arrival groups
    group_span_s: float = 0.005
    burst_delta_s: float = 0.005
    max_burst_s: float = 0.1
    # trendline filter and detector
    trendline_window: int = 20
    # Jitter: the spread (ms) of the raw accumulated delay around a line fitted over the last
    # `jitter_points` groups. Above `jitter_window_from_ms` the link counts as jittery: the
    # trend window then spans `jitter_window_s_per_ms` seconds per ms of jitter (up to
    # `trendline_window_max` points), and a trend must exceed `jitter_trend_sigmas` x jitter
    # / window span, the slope a line fitted through the wander alone would show. On such a
    # link a short window fits a line through a random wander and calls it a queue; a longer
    # one averages it out, while a real queue keeps growing however long the window is (and
    # a queue that grows steadily lies on the line: it is not jitter). A few ms of timing
    # noise (a busy host) changes nothing.
    jitter_points: int = 50
    jitter_window_from_ms: float = 5.0
    jitter_window_s_per_ms: float = 0.1
    jitter_trend_sigmas: float = 3.0
    trendline_window_max: int = 400
    # A trend must also stand this many standard errors of the fitted slope above zero
    # (the jitter's share of the noise model): a line through noise is no trend.
    trend_significance: float = 2.0
    trendline_smoothing: float = 0.9
    trendline_gain: float = 4.0
    threshold_initial_ms: float = 12.5
    threshold_min_ms: float = 6.0
    threshold_max_ms: float = 600.0
    threshold_rise_per_ms: float = 0.0087  # |trend| above threshold: threshold follows slowly
    threshold_fall_per_ms: float = 0.039  # |trend| below threshold: threshold shrinks faster
    overuse_time_ms: float = 10.0
    # AIMD
    beta: float = 0.85
    increase_per_s: float = 0.08
    acked_headroom: float = 1.5  # increases stop at this x acknowledged bitrate (+10 kbps)
    app_limited_ratio: float = 0.5  # sent below this x estimate: application-limited
    app_limited_decrease: float = 0.85  # an overuse then cuts to at least this x estimate
    # loss-based bound
    loss_low: float = 0.02
    loss_high: float = 0.10
    # Heavy loss this high in one window (or > loss_high in two running) is a collapsed link:
    # the bound falls to the acknowledged rate. One window of 20-30 packets over loss_high
    # alone is common on a link with 2 % random loss (3 of 22), and is only noise.
    loss_collapse: float = 0.25
    loss_min_packets: int = 20
    # Random loss: the long-run loss of windows that do not look like congestion (at most
    # this much is learnt). A window then counts as heavy only if its loss is also clearly
    # beyond what that random loss gives a window of its size (binomial, this many standard
    # deviations), and the bound may rise at up to one deviation above it: loss the link
    # always has is not a congestion signal (mobile-3g: 3 % loss in 20-30 packet windows
    # gives > 10 % every few seconds).
    random_loss_max: float = 0.05
    random_loss_sigmas: float = 3.0
    # A collapse caps the bound at the acked rate only if we sent at least this much more.
    collapse_sent_ratio: float = 1.15
    # acknowledged bitrate
    acked_window_s: float = 0.5
    # REMB
    remb_timeout_s: float = 10.0
    # probes
    probe_min_packets: int = 5
    probe_min_received_ratio: float = 0.8
    probe_timeout_s: float = 2.0


@dataclass(frozen=True)
class ProbeResult:
    """What a probe cluster achieved; `bitrate_bps` is 0 when the probe was unusable."""

    cluster: int
    target_bps: int
    bitrate_bps: int
    send_bps: float
    recv_bps: float
    packets_sent: int
    packets_received: int

    @property
    def ok(self) -> bool:
        return self.bitrate_bps > 0


# ---------------------------------------------------------------------- building blocks


class AckedBitrate:
    """Throughput the receiver saw: acknowledged bytes over a sliding window of arrival time."""

    def __init__(self, window_s: float = 0.5) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()
        self._bytes = 0
        self._first: float | None = None
        self._latest = -math.inf

    def update(self, arrival: float, size: int) -> None:
        if self._first is None:
            self._first = arrival
        self._samples.append((arrival, size))
        self._bytes += size
        if arrival > self._latest:
            self._latest = arrival
        horizon = self._latest - self.window_s
        samples = self._samples
        while samples and samples[0][0] <= horizon:
            self._bytes -= samples.popleft()[1]

    def bitrate(self) -> float | None:
        """Bits per second, or None until 150 ms of arrivals have been seen."""
        if self._first is None:
            return None
        span = self._latest - self._first
        if span >= self.window_s:
            return self._bytes * 8 / self.window_s
        if span < 0.15:
            return None
        return (self._bytes - self._samples[0][1]) * 8 / span


class InterArrival:
    """Groups packets by send time and yields (send delta, arrival delta) between groups (s)."""

    __slots__ = ("_cfg", "_cur", "_prev")

    def __init__(self, cfg: BweConfig) -> None:
        self._cfg = cfg
        # a group: [first_send, last_send, first_arrival, last_arrival, size]
        self._cur: list[float] | None = None
        self._prev: list[float] | None = None

    def add(self, send: float, arrival: float, size: int) -> tuple[float, float] | None:
        cur = self._cur
        if cur is None:
            self._cur = [send, send, arrival, arrival, size]
            return None
        if send < cur[0]:
            return None  # from an older group (reordered): it carries no new information
        if self._belongs(cur, send, arrival):
            if send > cur[1]:
                cur[1] = send
            if arrival > cur[3]:
                cur[3] = arrival
            cur[4] += size
            return None
        out = None
        prev = self._prev
        if prev is not None:
            send_delta = cur[1] - prev[1]
            arrival_delta = cur[3] - prev[3]
            # skip a receiver clock jump or groups that arrived out of order
            if 0 <= arrival_delta and arrival_delta - send_delta <= 3.0:
                out = (send_delta, arrival_delta)
        self._prev = cur
        self._cur = [send, send, arrival, arrival, size]
        return out

    def _belongs(self, cur: list[float], send: float, arrival: float) -> bool:
        if send - cur[0] <= self._cfg.group_span_s:
            return True
        arrival_delta = arrival - cur[3]
        return (
            arrival_delta < self._cfg.burst_delta_s
            and arrival_delta - (send - cur[1]) < 0
            and arrival - cur[2] < self._cfg.max_burst_s
        )


class _LineFit:
    """A least-squares line over the last points, kept as running sums (O(1) a point)."""

    __slots__ = ("points", "sums", "_since_rebuild")

    def __init__(self) -> None:
        self.points: deque[tuple[float, float]] = deque()
        self.sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # x, y, xx, xy, yy
        self._since_rebuild = 0

    def push(self, x: float, y: float, size: int) -> None:
        points, sums = self.points, self.sums
        points.append((x, y))
        sums[0] += x
        sums[1] += y
        sums[2] += x * x
        sums[3] += x * y
        sums[4] += y * y
        while len(points) > size:
            ox, oy = points.popleft()
            sums[0] -= ox
            sums[1] -= oy
            sums[2] -= ox * ox
            sums[3] -= ox * oy
            sums[4] -= oy * oy
        self._since_rebuild += 1
        if self._since_rebuild >= 1000:  # bound the rounding the running sums collect
            self._since_rebuild = 0
            sums[:] = [
                sum(p[0] for p in points),
                sum(p[1] for p in points),
                sum(p[0] * p[0] for p in points),
                sum(p[0] * p[1] for p in points),
                sum(p[1] * p[1] for p in points),
            ]

    def fit(self) -> tuple[float, float, float] | None:
        """(slope, sum of squared x deviations, residual variance), None if x has no spread."""
        n = len(self.points)
        if n < 3:
            return None
        sx, sy, sxx, sxy, syy = self.sums
        vxx = sxx - sx * sx / n
        if vxx <= 1e-9:
            return None
        vxy = sxy - sx * sy / n
        vyy = max(syy - sy * sy / n, 0.0)
        slope = vxy / vxx
        return slope, vxx, max(vyy - slope * vxy, 0.0) / (n - 2)


class TrendlineDetector:
    """Trendline filter over smoothed accumulated delay, with an adaptive overuse threshold.

    Jitter-aware: the spread of the raw accumulated delay around a line through the last
    `jitter_points` groups (`jitter_ms`) is the noise the link adds. The more of it, the
    longer the trend window (up to `trendline_window_max` points), and a trend counts only
    where it stands clear of the scatter around its fitted line (`trend_significance`
    standard errors of the slope). On a clean link both are small and the detector is the
    plain GCC one. Both fits are running sums: a long window costs no more per point.
    """

    def __init__(self, cfg: BweConfig) -> None:
        self._cfg = cfg
        self._trendline = _LineFit()
        self._raw = _LineFit()
        self._size = cfg.trendline_window
        self._first_arrival_ms: float | None = None
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._deltas = 0
        self._prev_trend = 0.0
        self._time_over = -1.0
        self._overuse_count = 0
        self._last_threshold_update: float | None = None
        self.trend = 0.0
        self.trend_error = 0.0  # standard error of the fitted slope
        self.jitter_ms = 0.0  # spread of the raw delay around its line (smoothed)
        self.jitter_slope = 0.0  # the slope the jitter alone may fake over the window
        self._jitter_fits = 0
        self.modified_trend = 0.0
        self.threshold = cfg.threshold_initial_ms
        self.state = BandwidthUsage.NORMAL

    @property
    def window_size(self) -> int:
        return self._size

    def update(self, send_delta_ms: float, arrival_delta_ms: float, arrival_ms: float) -> None:
        cfg = self._cfg
        self._deltas = min(self._deltas + 1, 1000)
        self._accumulated += arrival_delta_ms - send_delta_ms
        a = cfg.trendline_smoothing
        self._smoothed = a * self._smoothed + (1 - a) * self._accumulated
        if self._first_arrival_ms is None:
            self._first_arrival_ms = arrival_ms
        x = arrival_ms - self._first_arrival_ms
        raw_points = self._raw.points
        self._raw.push(x, self._accumulated, cfg.jitter_points)
        if len(raw_points) >= cfg.trendline_window:  # (a rough figure early, then steadier)
            raw = self._raw.fit()
            if raw is not None:
                spread = math.sqrt(raw[2])
                if self._jitter_fits < 20:
                    self._jitter_fits += 1
                    self.jitter_ms = max(self.jitter_ms, spread)
                else:  # up within a second, down over ~10 s: a calm stretch is no promise
                    alpha = 0.05 if spread > self.jitter_ms else 0.003
                    self.jitter_ms += alpha * (spread - self.jitter_ms)
            self._size = cfg.trendline_window
            if self.jitter_ms > cfg.jitter_window_from_ms:
                interval = (raw_points[-1][0] - raw_points[0][0]) / (len(raw_points) - 1)
                span_ms = 1000 * cfg.jitter_window_s_per_ms * self.jitter_ms
                wanted = int(span_ms / max(interval, 1.0))
                self._size = min(max(wanted, cfg.trendline_window), cfg.trendline_window_max)
        self._trendline.push(x, self._smoothed, self._size)
        points = self._trendline.points
        if len(points) >= cfg.trendline_window:
            fitted = self._trendline.fit()
            if fitted is not None:
                slope, vxx, residual = fitted
                self.trend = slope
                self.trend_error = math.sqrt(residual / vxx)
                self.jitter_slope = 0.0
                if self.jitter_ms > cfg.jitter_window_from_ms:
                    span = max(points[-1][0] - points[0][0], 1.0)
                    self.jitter_slope = cfg.jitter_trend_sigmas * self.jitter_ms / span
        self._detect(send_delta_ms, arrival_ms)

    def _detect(self, send_delta_ms: float, now_ms: float) -> None:
        cfg = self._cfg
        if self._deltas < 2:
            self.state = BandwidthUsage.NORMAL
            return
        m = min(self._deltas, 60) * self.trend * cfg.trendline_gain
        self.modified_trend = m
        noise = max(cfg.trend_significance * self.trend_error, self.jitter_slope)
        significant = self.trend > noise
        if m > self.threshold and significant:
            if self._time_over < 0:
                self._time_over = send_delta_ms / 2
            else:
                self._time_over += send_delta_ms
            self._overuse_count += 1
            if (
                self._time_over > cfg.overuse_time_ms
                and self._overuse_count > 1
                and self.trend >= self._prev_trend
            ):
                self._time_over = 0.0
                self._overuse_count = 0
                self.state = BandwidthUsage.OVERUSE
        elif m < -self.threshold and -self.trend > noise:
            self._time_over = -1.0
            self._overuse_count = 0
            self.state = BandwidthUsage.UNDERUSE
        else:
            self._time_over = -1.0
            self._overuse_count = 0
            self.state = BandwidthUsage.NORMAL
        self._prev_trend = self.trend
        self._adapt_threshold(m, now_ms)

    def _adapt_threshold(self, m: float, now_ms: float) -> None:
        cfg = self._cfg
        if self._last_threshold_update is None:
            self._last_threshold_update = now_ms
        if abs(m) > self.threshold + 15.0:
            self._last_threshold_update = now_ms  # a spike: do not let it drag the threshold
            return
        k = cfg.threshold_fall_per_ms if abs(m) < self.threshold else cfg.threshold_rise_per_ms
        dt = min(max(now_ms - self._last_threshold_update, 0.0), 100.0)
        self.threshold += k * (abs(m) - self.threshold) * dt
        self.threshold = min(max(self.threshold, cfg.threshold_min_ms), cfg.threshold_max_ms)
        self._last_threshold_update = now_ms


class AimdRateControl:
    """Additive-increase / multiplicative-decrease driven by the overuse detector."""

    def __init__(self, cfg: BweConfig) -> None:
        self._cfg = cfg
        self.estimate = float(cfg.start_bps)
        self.state = RateState.INCREASE
        self._last_update: float | None = None
        self._last_decrease: float | None = None
        self._cap_mean: float | None = None  # link capacity seen at decreases (bps)
        self._cap_var = 0.4  # normalised variance, in kbps as the draft's numbers assume
        self.decreases = 0

    def set_estimate(self, bps: float, now: float) -> None:
        self.estimate = min(max(bps, self._cfg.min_bps), self._cfg.max_bps)
        self._last_update = now

    def near_convergence(self) -> bool:
        return self._cap_mean is not None

    def _cap_bounds(self) -> tuple[float, float]:
        assert self._cap_mean is not None
        mean_k = self._cap_mean / 1000
        std_k = math.sqrt(self._cap_var * mean_k)
        return (mean_k - 3 * std_k) * 1000, (mean_k + 3 * std_k) * 1000

    def _update_capacity(self, sample_bps: float) -> None:
        alpha = 0.05
        if self._cap_mean is None:
            self._cap_mean = sample_bps
        else:
            self._cap_mean = (1 - alpha) * self._cap_mean + alpha * sample_bps
        mean_k = max(self._cap_mean / 1000, 1.0)
        err_k = (self._cap_mean - sample_bps) / 1000
        self._cap_var = (1 - alpha) * self._cap_var + alpha * err_k * err_k / mean_k
        self._cap_var = min(max(self._cap_var, 0.4), 2.5)

    def update(
        self,
        signal: BandwidthUsage,
        acked_bps: float | None,
        now: float,
        rtt_s: float,
        packet_bits: float = 9600.0,
        sent_bps: float | None = None,
    ) -> float:
        """One detector signal. `sent_bps`: what we sent over the same window as `acked_bps`
        (by send time); it tells a sender that sends little (application-limited) from a link
        that delivers little of what it was sent (congested). Without it, `acked_bps` stands in.
        """
        cfg = self._cfg
        dt = 0.0 if self._last_update is None else max(now - self._last_update, 0.0)
        self._last_update = now
        if signal is BandwidthUsage.OVERUSE:
            self.state = RateState.DECREASE
        elif signal is BandwidthUsage.UNDERUSE:
            self.state = RateState.HOLD
        elif self.state is not RateState.INCREASE:
            self.state = RateState.INCREASE

        new = self.estimate
        if self.state is RateState.INCREASE:
            if acked_bps is not None and self._cap_mean is not None:
                if acked_bps > self._cap_bounds()[1]:
                    self._cap_mean = None  # the link got faster: search multiplicatively again
            if self._cap_mean is not None:
                response_s = rtt_s + 0.1
                new += max(4000.0, packet_bits / response_s) * min(dt, 1.0)
            else:
                new *= (1 + cfg.increase_per_s) ** min(dt, 1.0)
            if acked_bps is not None:
                limit = cfg.acked_headroom * acked_bps + 10_000
                if new > limit:
                    new = max(self.estimate, limit)  # no increase past it, but no cut either
        elif self.state is RateState.DECREASE:
            if self._time_to_reduce(now, acked_bps, rtt_s):
                base = acked_bps if acked_bps is not None else self.estimate
                new = min(cfg.beta * base, self.estimate)
                sent = sent_bps if sent_bps is not None else acked_bps
                if sent is not None and sent < cfg.app_limited_ratio * self.estimate:
                    # Application-limited (we send far less than the estimate, e.g. a low
                    # simulcast layer): the acked rate says nothing about the link, so a
                    # delay bump (often our own probe, or jitter) takes 15 % off the estimate
                    # instead of collapsing it to what we happened to send. Real congestion
                    # keeps signalling, once per round trip, and brings it down within a second.
                    new = max(new, cfg.app_limited_decrease * self.estimate)
                if acked_bps is not None:
                    if self._cap_mean is not None and acked_bps < self._cap_bounds()[0]:
                        self._cap_mean = None  # the link got slower: forget what we knew
                    self._update_capacity(acked_bps)
                self._last_decrease = now
                self.decreases += 1
            self.state = RateState.HOLD
        self.estimate = min(max(new, cfg.min_bps), cfg.max_bps)
        return self.estimate

    def _time_to_reduce(self, now: float, acked_bps: float | None, rtt_s: float) -> bool:
        if self._last_decrease is None:
            return True
        if acked_bps is not None and acked_bps < 0.5 * self.estimate:
            return True
        return now - self._last_decrease >= min(max(rtt_s, 0.01), 0.2)


class LossBasedControl:
    """Loss-based bound: cut when loss > 10 %, may rise when < 2 %, hold in between."""

    def __init__(self, cfg: BweConfig) -> None:
        self._cfg = cfg
        self.estimate: float | None = None  # no bound until loss has been measured
        self.loss_fraction = 0.0
        self._lost = 0
        self._expected = 0
        self._last_update: float | None = None
        self._last_decrease: float | None = None
        self._heavy_before = False  # the previous window's loss was above loss_high
        self.random_loss = 0.0  # the link's own loss, learnt from windows that look random
        self._received_bytes = 0
        self._first_size = 0
        self._sent_bytes = 0
        self._first_send: float | None = None
        self._last_send: float | None = None
        self._first_arrival: float | None = None
        self._last_arrival: float | None = None

    def add(self, lost: int, expected: int) -> None:
        """Count packets from a receiver report (no arrival times)."""
        self._lost += lost
        self._expected += expected

    def add_results(self, results: Sequence[PacketResult]) -> None:
        """Count one transport-cc report's packets, and note what was sent and what got
        through, and when (for `_window_receive_rate`)."""
        for r in results:
            self._expected += 1
            send = r.send_time
            if self._first_send is None or send < self._first_send:
                self._first_send = send
            if self._last_send is None or send > self._last_send:
                self._last_send = send
            self._sent_bytes += r.size
            arrival = r.arrival_time
            if arrival is None:
                self._lost += 1
                continue
            if self._first_arrival is None or arrival < self._first_arrival:
                self._first_arrival = arrival
                self._first_size = r.size
            if self._last_arrival is None or arrival > self._last_arrival:
                self._last_arrival = arrival
            self._received_bytes += r.size

    def _window_receive_rate(self) -> float | None:
        """What got through during this loss window (bps), if its arrivals span >= 20 ms.

        On a collapsed link this is the new capacity: the bottleneck drains at its rate.
        The acked rate (a 0.5 s window) still holds arrivals from before the collapse.
        Only when we sent clearly more than got through: a sender that went quiet (a layer
        being drained) leaves arrivals sparse, and their rate then says nothing of the link.
        """
        first, last = self._first_arrival, self._last_arrival
        if first is None or last is None or last - first < 0.02:
            return None
        # (the first arrival opens the span: its bytes came before it)
        receive = (self._received_bytes - self._first_size) * 8 / (last - first)
        first_send, last_send = self._first_send, self._last_send
        if first_send is None or last_send is None or last_send - first_send < 0.02:
            return None
        send = self._sent_bytes * 8 / (last_send - first_send)
        return receive if send >= 1.25 * receive else None

    def update(
        self,
        reference_bps: float,
        now: float,
        rtt_s: float,
        acked_bps: float | None = None,
        sent_bps: float | None = None,
    ) -> float | None:
        """Apply the loss seen since the last update once enough packets were reported.

        `reference_bps` is the current overall target: the bound moves relative to it, so the
        loss-based value never runs far ahead of what the delay-based part allows. On heavy
        loss the bound also drops to what actually got through (`acked_bps`): a full queue
        at a bottleneck keeps the delay flat, so only loss and throughput show the overload.
        With `sent_bps` (what we sent over the acked rate's window), the acked rate counts as
        what got through only if clearly less got through than was sent: an application-
        limited sender's acked rate on a link with random loss says nothing of the link.
        """
        cfg = self._cfg
        if self._expected < cfg.loss_min_packets:
            return self.estimate
        expected = self._expected
        loss = self._lost / expected
        self.loss_fraction = loss
        receive_rate = self._window_receive_rate()
        self._lost = self._expected = self._received_bytes = self._sent_bytes = 0
        self._first_arrival = self._last_arrival = None
        self._first_send = self._last_send = None
        dt = 0.0 if self._last_update is None else min(max(now - self._last_update, 0.0), 1.0)
        self._last_update = now
        base = reference_bps if self.estimate is None else min(self.estimate, reference_bps)
        expected = max(expected, 1)
        p0 = self.random_loss
        spread = math.sqrt(p0 * (1 - p0) / expected)
        heavy = loss > max(cfg.loss_high, p0 + cfg.random_loss_sigmas * spread)
        collapse_at = max(cfg.loss_collapse, p0 + 2 * cfg.random_loss_sigmas * spread)
        collapse = heavy and (loss >= collapse_at or self._heavy_before)
        self._heavy_before = heavy
        if not heavy:
            self.random_loss += 0.05 * (min(loss, cfg.random_loss_max) - p0)
        if loss < max(cfg.loss_low, p0 + spread):
            self.estimate = max(base * (1 + cfg.increase_per_s) ** dt + 1000 * dt, base)
        elif heavy:
            if self._last_decrease is None or now - self._last_decrease >= 0.3 + rtt_s:
                self.estimate = base * (1 - 0.5 * loss)
                self._last_decrease = now
            if collapse:
                # a measurement, not a step: applies at once, whenever a window shows it
                if sent_bps is not None and acked_bps is not None:
                    if sent_bps < cfg.collapse_sent_ratio * acked_bps:
                        acked_bps = None  # (about all we sent got through)
                through = [r for r in (acked_bps, receive_rate) if r is not None]
                if through:
                    cap = max(min(through), cfg.min_bps)
                    self.estimate = min(self.estimate if self.estimate else base, cap)
        else:
            self.estimate = base
        self.estimate = min(max(self.estimate or base, cfg.min_bps), cfg.max_bps)
        return self.estimate


class _ProbeCluster:
    __slots__ = (
        "target",
        "expected",
        "created",
        "sent",
        "received",
        "bytes_sent",
        "bytes_recv",
        "first_send",
        "last_send",
        "last_send_size",
        "first_arrival",
        "first_arrival_size",
        "last_arrival",
    )

    def __init__(self, target: int, expected: int, created: float) -> None:
        self.target = target
        self.expected = expected
        self.created = created
        self.sent = self.received = self.bytes_sent = self.bytes_recv = 0
        self.first_send = math.inf
        self.last_send = -math.inf
        self.last_send_size = 0
        self.first_arrival = math.inf
        self.first_arrival_size = 0
        self.last_arrival = -math.inf


# ---------------------------------------------------------------------- the estimator


class BandwidthEstimator:
    """One per subscriber transport: feed it feedback results, read `estimate_bps`.

    `on_probe_result`, if given, is called with each finished `ProbeResult` (after the
    estimate has taken it into account).
    """

    def __init__(
        self,
        config: BweConfig | None = None,
        on_probe_result: Callable[[ProbeResult], None] | None = None,
    ) -> None:
        self.config = cfg = config or BweConfig()
        self.on_probe_result = on_probe_result
        self._inter = InterArrival(cfg)
        self.detector = TrendlineDetector(cfg)
        self.rate = AimdRateControl(cfg)
        self.loss = LossBasedControl(cfg)
        self.acked = AckedBitrate(cfg.acked_window_s)
        # what we sent, over the same window by send time (of the packets feedback reported)
        self.sent = AckedBitrate(cfg.acked_window_s)
        self.rtt_s = 0.1
        self._rtt_seen = False
        self.estimate_bps = cfg.start_bps
        self.limited_by = "start"
        self.signal = BandwidthUsage.NORMAL
        self.has_feedback = False
        self.last_probe: ProbeResult | None = None
        self.overuse_events = 0
        # Until then (feedback time) an overuse does not cut the estimate; the owner sets it
        # when it sends a burst on purpose (see BandwidthController). Counted when it applies.
        self.overuse_grace_until = -math.inf
        self.overuse_forgiven = 0
        self._remb: float | None = None
        self._remb_time = -math.inf
        self._probes: dict[int, _ProbeCluster] = {}
        self._packet_bits = 9600.0

    # ------------------------------------------------------------------ inputs

    def on_rtt(self, rtt_s: float) -> None:
        """Round-trip time (from RR/SR or feedback timing); used by the rate controllers."""
        if rtt_s > 0:
            self.rtt_s = 0.8 * self.rtt_s + 0.2 * rtt_s if self._rtt_seen else rtt_s
            self._rtt_seen = True

    def on_remb(self, bitrate_bps: float, now: float) -> int:
        """A receiver's REMB: an upper bound (or the whole delay-based estimate without TWCC)."""
        self._remb = float(bitrate_bps)
        self._remb_time = now
        if not self.has_feedback:
            self.rate.set_estimate(self._remb, now)
        return self._update_target(now)

    def on_loss_report(self, fraction_lost: float, packets: int, now: float) -> int:
        """Loss from receiver reports, for peers without transport-cc (ignored with it)."""
        if not self.has_feedback and packets > 0:
            lost = round(min(max(fraction_lost, 0.0), 1.0) * packets)
            self.loss.add(lost, packets)
            self.loss.update(self._delay_based(now), now, self.rtt_s)
        return self._update_target(now)

    def start_probe(self, cluster: int, target_bps: int, packets: int, now: float) -> None:
        """Announce a probe cluster; tag its packets with `cluster` in the TransportSequencer."""
        self._probes[cluster] = _ProbeCluster(target_bps, packets, now)

    def end_probe(self, cluster: int, packets: int) -> None:
        """The probe is fully sent: `packets` went out (the count announced was a plan)."""
        probe = self._probes.get(cluster)
        if probe is not None:
            probe.expected = max(1, packets)

    def on_packet_results(self, results: Iterable[PacketResult], now: float) -> int:
        """Feed one feedback packet's worth of results; returns the new estimate in bps."""
        if not isinstance(results, (list, tuple)):
            results = list(results)  # (read twice below)
        received = []
        total = 0
        probes = self._probes
        sent = self.sent
        for r in results:
            total += 1
            sent.update(r.send_time, r.size)
            if r.arrival_time is not None:
                received.append(r)
            if r.cluster >= 0 and probes:
                cluster = probes.get(r.cluster)
                if cluster is not None:
                    self._probe_add(cluster, r)
        if total == 0:
            return self.estimate_bps
        self.has_feedback = True
        received.sort(key=lambda r: r.arrival_time)  # type: ignore[arg-type, return-value]
        overuse_seen = False
        bits = 0
        inter = self._inter
        detector = self.detector
        for r in received:
            assert r.arrival_time is not None
            self.acked.update(r.arrival_time, r.size)
            bits += r.size * 8
            delta = inter.add(r.send_time, r.arrival_time, r.size)
            if delta is not None:
                detector.update(delta[0] * 1000, delta[1] * 1000, r.arrival_time * 1000)
                if detector.state is BandwidthUsage.OVERUSE:
                    overuse_seen = True
        if received:
            self._packet_bits = 0.9 * self._packet_bits + 0.1 * (bits / len(received))
        signal = BandwidthUsage.OVERUSE if overuse_seen else detector.state
        if signal is BandwidthUsage.OVERUSE and self.signal is not BandwidthUsage.OVERUSE:
            self.overuse_events += 1
        self.signal = signal
        rate_signal = signal
        if signal is BandwidthUsage.OVERUSE and now < self.overuse_grace_until:
            # a burst we sent on purpose (a new layer's keyframe) queued for a moment: hold,
            # as while a queue drains, instead of cutting the estimate for it
            rate_signal = BandwidthUsage.UNDERUSE
            self.overuse_forgiven += 1
        self.rate.update(
            rate_signal,
            self.acked.bitrate(),
            now,
            self.rtt_s,
            self._packet_bits,
            self.sent.bitrate(),
        )
        self.loss.add_results(results)
        self.loss.update(
            self._delay_based(now), now, self.rtt_s, self.acked.bitrate(), self.sent.bitrate()
        )
        self._finish_probes(now)
        return self._update_target(now)

    # ------------------------------------------------------------------ probes

    @staticmethod
    def _probe_add(c: _ProbeCluster, r: PacketResult) -> None:
        c.sent += 1
        c.bytes_sent += r.size
        if r.send_time < c.first_send:
            c.first_send = r.send_time
        if r.send_time >= c.last_send:
            c.last_send = r.send_time
            c.last_send_size = r.size
        if r.arrival_time is not None:
            c.received += 1
            c.bytes_recv += r.size
            if r.arrival_time < c.first_arrival:
                c.first_arrival = r.arrival_time
                c.first_arrival_size = r.size
            if r.arrival_time > c.last_arrival:
                c.last_arrival = r.arrival_time

    def _finish_probes(self, now: float) -> None:
        cfg = self.config
        for cid, c in list(self._probes.items()):
            if c.sent < c.expected and now - c.created < cfg.probe_timeout_s:
                continue
            del self._probes[cid]
            result = self._probe_result(cid, c)
            self.last_probe = result
            if result.ok and self.signal is not BandwidthUsage.OVERUSE:
                if result.bitrate_bps > self.rate.estimate:
                    self.rate.set_estimate(result.bitrate_bps, now)
                loss = self.loss
                if loss.estimate is not None and loss.loss_fraction <= cfg.loss_high:
                    loss.estimate = max(loss.estimate, float(result.bitrate_bps))
                self._update_target(now)
            if self.on_probe_result is not None:
                self.on_probe_result(result)

    def _probe_result(self, cid: int, c: _ProbeCluster) -> ProbeResult:
        cfg = self.config
        send_bps = recv_bps = 0.0
        bitrate = 0.0
        enough = c.received >= max(cfg.probe_min_packets, cfg.probe_min_received_ratio * c.expected)
        send_span = c.last_send - c.first_send
        recv_span = c.last_arrival - c.first_arrival
        if enough and send_span > 0.001 and recv_span > 0.001:
            send_bps = (c.bytes_sent - c.last_send_size) * 8 / send_span
            recv_bps = (c.bytes_recv - c.first_arrival_size) * 8 / recv_span
            if recv_bps <= 2 * send_bps:  # otherwise a burst after a stall: not a measurement
                bitrate = min(send_bps, recv_bps)
                if recv_bps < 0.9 * send_bps:
                    bitrate = 0.95 * recv_bps  # the link saturated: the receive rate is capacity
        return ProbeResult(cid, c.target, int(bitrate), send_bps, recv_bps, c.sent, c.received)

    # ------------------------------------------------------------------ output

    def _delay_based(self, now: float) -> float:
        if not self.has_feedback and self._remb is not None:
            return self._remb
        return self.rate.estimate

    def _update_target(self, now: float) -> int:
        cfg = self.config
        candidates = [(self._delay_based(now), "delay")]
        if self.loss.estimate is not None:
            candidates.append((self.loss.estimate, "loss"))
        if self._remb is not None and now - self._remb_time < cfg.remb_timeout_s:
            candidates.append((self._remb, "remb"))
        value, reason = min(candidates, key=lambda c: c[0])
        if value >= cfg.max_bps:
            value, reason = cfg.max_bps, "max"
        elif value <= cfg.min_bps:
            value, reason = cfg.min_bps, "min"
        self.estimate_bps = int(value)
        self.limited_by = reason
        return self.estimate_bps

    @property
    def acked_bitrate_bps(self) -> int | None:
        rate = self.acked.bitrate()
        return None if rate is None else int(rate)

    def snapshot(self) -> dict[str, object]:
        """State for stats endpoints and plots."""
        return {
            "estimate_bps": self.estimate_bps,
            "limited_by": self.limited_by,
            "signal": self.signal.value,
            "rate_state": self.rate.state.value,
            "delay_based_bps": int(self.rate.estimate),
            "loss_based_bps": None if self.loss.estimate is None else int(self.loss.estimate),
            "remb_bps": None if self._remb is None else int(self._remb),
            "acked_bps": self.acked_bitrate_bps,
            "loss_fraction": round(self.loss.loss_fraction, 4),
            "trend": round(self.detector.modified_trend, 3),
            "threshold": round(self.detector.threshold, 3),
            "delay_jitter_ms": round(self.detector.jitter_ms, 2),
            "trend_window": self.detector.window_size,
            "random_loss": round(self.loss.random_loss, 4),
            "rtt_ms": round(self.rtt_s * 1000, 1),
            "overuse_events": self.overuse_events,
            "overuse_forgiven": self.overuse_forgiven,
        }
