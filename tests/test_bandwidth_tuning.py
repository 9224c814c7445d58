"""Simulcast bandwidth control tuned for weak links.

- LayerSelector: separate holds for spatial and temporal moves up (temporal wavering must not
  delay climbing), severe drops are link changes and not flapping, a successful probe moves
  up at once when nothing flapped lately, temporal steps up need no probe.
- BandwidthEstimator / AimdRateControl: an overuse while application-limited cuts only part of the
  estimate instead of collapsing it to the acknowledged rate; `end_probe` finishes a probe
  that sent fewer packets than planned as soon as those are reported.
- DownTrack retransmission budget (token bucket), enforced by Forwarder.on_nack, set by
  BandwidthController.tick from a transport-cc estimate.
- Playout delay: the extension bytes on every packet, the base RTT, and the controller's
  adaptive rule (base RTT, not congestion queueing; removed after a quiet hold).
- Publisher transport-cc: extmap and rtcp-fb in the answer, and feedback that reports exactly
  what arrived (including packets the session drops).

No network, no sleeping: time is passed in, or the modules' clocks are replaced.
"""

from __future__ import annotations

import re
import struct
from types import SimpleNamespace

import pytest

from sfu.config import RtcSettings
from sfu.media import bandwidth as bandwidth_module
from sfu.media import forwarder as forwarder_module
from sfu.media.bandwidth import (
    PLAYOUT_DELAY_HOLD_S,
    PLAYOUT_DELAY_MIN_RTT_S,
    RTX_SHARE,
    BandwidthController,
)
from sfu.media.bwe import (
    AimdRateControl,
    BandwidthEstimator,
    BandwidthUsage,
    BweConfig,
    PacketResult,
    ProbeResult,
)
from sfu.media.forwarder import (
    BASE_RTT_WINDOW_S,
    NOTABLE_LOSS,
    RTX_BURST_S,
    RTX_FALLBACK_MIN_BPS,
    RTX_PACKET_BYTES,
    DownTrack,
    bind,
)
from sfu.media.layers import Layer, LayerSelector, ProbeRequest
from sfu.media.producer import CodecInfo, Producer, TrackInfo
from sfu.media.publisher import PublisherSession
from sfu.media.rtcp import ReportBlock
from sfu.media.rtp import EXT_MID, EXT_TRANSPORT_CC, ExtensionIds, RtpHeader
from sfu.media.subscriber import SubscriberSession
from sfu.media.twcc import TransportSequencer, TwccFeedback

from .conftest import LOOPBACK
from .simulcast_packets import (
    RID_ID,
    RIDS,
    RRID_ID,
    LayerStream,
    aiortc_video_offer,
    header_extensions,
    payload_types,
    rtp_fields,
    rtp_packet,
    three_layers,
    to_rid_simulcast,
)
from .test_layers import F, make

# ============================================================================ LayerSelector


class Driver:
    """Feeds a selector estimates every `dt`, answers (or ignores) its probe requests, and
    logs what happened."""

    def __init__(self, sel: LayerSelector, t: float = 0.0, dt: float = 0.1) -> None:
        self.sel = sel
        self.t = t
        self.dt = dt
        self.probes: list[tuple[float, ProbeRequest]] = []
        self.targets: list[tuple[float, Layer | None]] = []

    def run(self, estimate: float, seconds: float, answer: float | None = None) -> None:
        """`answer`: the bitrate each probe request achieves (None: leave requests pending)."""
        end = round(self.t + seconds, 6)
        while self.t < end - 1e-9:
            self.step(estimate, answer)

    def step(self, estimate: float, answer: float | None = None) -> None:
        sel = self.sel
        sel.update(estimate, self.t)
        self.targets.append((self.t, sel.target))
        if answer is not None:
            request = sel.take_probe_request(self.t)
            if request is not None:
                self.probes.append((self.t, request))
                sel.on_probe_result(int(answer), self.t)
                sel.update(estimate, self.t)
                self.targets.append((self.t, sel.target))
        self.t = round(self.t + self.dt, 6)

    def first_time(self, predicate, since: float = -1e9) -> float | None:
        return next((t for t, layer in self.targets if t >= since and predicate(layer)), None)


def start_on(sel: LayerSelector, estimate: float, spatial: int, t: float = 0.0) -> None:
    sel.update(estimate, t)
    assert sel.on_keyframe(spatial, t)
    assert sel.current == sel.target and sel.current.spatial == spatial


def test_temporal_wavering_grows_only_the_temporal_hold_and_does_not_delay_a_spatial_climb():
    sel, _ = make(full_frame_rate_above_base=False)
    cfg = sel.config
    # q is 60/90/150 kbps cumulative: 140 kbps carries q/T1, 180 kbps (> 1.15 x 150k) q/T2
    start_on(sel, 140_000, 0)
    assert sel.target == Layer(0, 1)
    d = Driver(sel, t=0.1)
    holds = []
    for _ in range(4):
        d.run(180_000, sel.temporal_hold_s + 0.5)  # long enough to climb to q/T2
        assert sel.target == Layer(0, 2), d.t
        d.run(140_000, 1.0)  # back to q/T1 within the flap window
        assert sel.target == Layer(0, 1)
        holds.append((sel.hold_s, sel.temporal_hold_s))
    # temporal flapping doubled the temporal hold, capped at 2 x up_hold_s; the spatial hold
    # (what a keyframe-costly move waits for) is untouched
    assert holds[0] == (cfg.up_hold_s, 2 * cfg.up_hold_s)
    assert all(h == (cfg.up_hold_s, 2 * cfg.up_hold_s) for h in holds)
    assert sel.spatial_switches == 0

    # the link now clearly carries h/T1 (300 kbps x 1.15 = 345 kbps): the probe it asks for
    # succeeds and the move to h happens after the spatial hold (3 s), not the temporal one (6 s)
    rise = d.t
    d.run(400_000, 5.0, answer=400_000)
    up_at = d.first_time(lambda layer: layer.spatial == 1, since=rise)
    assert up_at is not None, d.targets[-5:]
    assert up_at - rise < cfg.up_hold_s + 0.5 < sel.temporal_hold_s
    assert d.probes and all(p.layer.spatial >= 1 for _, p in d.probes)
    # q/T2 (a temporal move, held for the longer temporal hold) was never taken on the way
    assert Layer(0, 2) not in [layer for t, layer in d.targets if t >= rise]


@pytest.mark.parametrize(
    ("drop", "doubles"),
    [
        (0.45, False),  # < severe_drop_ratio (0.5) x f: the link changed
        (0.55, True),  # just above it: the estimate wavering around f
        (0.95, True),  # just under f
    ],
)
def test_severe_fall_after_a_spatial_up_move_is_not_flapping(drop: float, doubles: bool) -> None:
    sel, _ = make(temporal_layers=1, explore_interval_s=1000.0)
    cfg = sel.config
    start_on(sel, 600_000, 1)
    d = Driver(sel, t=0.1)
    d.run(2.0 * F, 4.0, answer=2.0 * F)  # held, probed: up to f
    assert sel.target == Layer(2, 0)
    assert sel.on_keyframe(2, d.t)
    assert sel.hold_s == cfg.up_hold_s
    d.run(2.0 * F, 1.0)
    d.run(drop * F, 0.1)  # within flap_window_s of the spatial up move
    # (a severe fall picks its spatial layer for half the estimate: q here)
    assert sel.target == (Layer(0, 0) if drop < cfg.severe_drop_ratio else Layer(1, 0))
    assert sel.hold_s == (2 * cfg.up_hold_s if doubles else cfg.up_hold_s)
    assert sel.temporal_hold_s == cfg.up_hold_s


def test_a_fall_measured_in_two_steps_is_not_flapping() -> None:
    """f, then the link falls: the estimate first lands on h (a partial measurement), a
    moment later on q. The second step down follows a down, not an up: one link change, so
    the hold before moving back up stays as it was (it doubled in the lab, and the viewer
    needed 10 s instead of 4 to come back)."""
    sel, _ = make(temporal_layers=1, explore_interval_s=1000.0)
    cfg = sel.config
    start_on(sel, 600_000, 1)
    d = Driver(sel, t=0.1)
    d.run(2.0 * F, 4.0, answer=2.0 * F)  # held, probed: up to f
    assert sel.target == Layer(2, 0) and sel.on_keyframe(2, d.t)
    d.run(2.0 * F, 1.0)
    d.run(0.6 * F, 0.3)  # 900 kbit/s: h (not severe: > 0.5 x f)
    assert sel.target == Layer(1, 0)
    hold_after_first = sel.hold_s  # (a fall to just above half of f may be wavering: 2x)
    assert hold_after_first == 2 * cfg.up_hold_s
    assert sel.on_keyframe(1, d.t)
    d.run(300_000, 0.3)  # then 300 kbit/s: q
    assert sel.target == Layer(0, 0)
    assert sel.hold_s == hold_after_first  # not doubled again


def test_the_extra_hold_decays_after_a_calm_window_even_across_a_link_fall() -> None:
    """Flapping doubled the hold; then the viewer moved up and nothing flapped for a whole
    flap window. A fall of the link in that window (no flap) does not keep the doubled hold
    alive: it is earned back, so the climb after the link recovers is not slowed (lab:
    a flap during warm-up still held the viewer 6 s on q half a minute later)."""
    sel, _ = make(temporal_layers=1, explore_interval_s=1000.0)
    cfg = sel.config
    start_on(sel, 600_000, 1)
    d = Driver(sel, t=0.1)
    d.run(2.0 * F, 4.0, answer=2.0 * F)
    assert sel.target == Layer(2, 0) and sel.on_keyframe(2, d.t)
    d.run(1_400_000, 0.1)  # mild drop right after the up move: flapping
    assert sel.hold_s == 2 * cfg.up_hold_s and sel.on_keyframe(1, d.t)
    d.run(2.0 * F, 2 * cfg.up_hold_s + 0.5, answer=2.0 * F)  # up again after the long hold
    assert sel.target == Layer(2, 0) and sel.on_keyframe(2, d.t)
    up_at = d.t
    d.run(2.0 * F, 5.0)
    d.run(0.2 * F, 0.2)  # the link falls: far below f, no flap
    assert sel.target.spatial < 2
    assert sel.hold_s == 2 * cfg.up_hold_s
    d.run(0.2 * F, up_at + cfg.flap_window_s + 0.5 - d.t)
    assert sel.hold_s == cfg.up_hold_s


def test_temporal_moves_up_need_no_probe_spatial_ones_do() -> None:
    sel, _ = make()
    start_on(sel, 70_000, 0)  # q/T0 (60 kbps) only
    assert sel.target == Layer(0, 0)
    d = Driver(sel, t=0.1)
    d.run(120_000, 3.5, answer=120_000)  # > 1.15 x q/T1 (90k), < 1.15 x q/T2
    assert sel.target == Layer(0, 1) and sel.current == Layer(0, 1)
    d.run(180_000, 3.5, answer=180_000)  # > 1.15 x q/T2
    assert sel.target == Layer(0, 2) and sel.current == Layer(0, 2)
    # neither temporal step asked for a probe (exploratory probes aim at the top layer)
    assert all(p.layer.spatial > 0 for _, p in d.probes), d.probes
    assert not [p for _, p in d.probes if not p.exploratory]
    # a spatial step does: held long enough for h/T1, a probe for it is asked first
    sel2, _ = make(explore_interval_s=1000.0, full_frame_rate_above_base=False)
    start_on(sel2, 180_000, 0)
    d2 = Driver(sel2, t=0.1)
    d2.run(400_000, 3.5)
    assert sel2.target == Layer(0, 2)
    request = sel2.take_probe_request(d2.t)
    assert request is not None and not request.exploratory and request.layer == Layer(1, 1)


def _probe_then_estimate(sel: LayerSelector, d: Driver, idle: float, probe_bps: float) -> float:
    """Run at 1.4 Mbps (h only) until an exploratory probe is asked; it achieves `probe_bps`
    and the estimate jumps there (as BandwidthEstimator does). Returns when it answered."""
    d.run(1_400_000, idle)
    while True:
        sel.update(1_400_000, d.t)
        request = sel.take_probe_request(d.t)
        if request is not None:
            break
        d.t = round(d.t + d.dt, 6)
        assert d.t < 60
    sel.on_probe_result(int(probe_bps), d.t)
    answered = d.t
    d.t = round(d.t + d.dt, 6)
    return answered


def test_successful_probe_moves_up_after_a_short_confirmation_without_recent_down_moves() -> None:
    sel, _ = make(temporal_layers=1)
    start_on(sel, 1_400_000, 1)  # h; f (1.5 Mbps) does not fit
    d = Driver(sel, t=0.1)
    answered = _probe_then_estimate(sel, d, 0.0, 1_800_000)
    d.step(1_800_000)  # 1.8 Mbps >= 1.15 x f: the probe measured the path at f's rate...
    assert sel.target == Layer(1, 0)  # ...but a short probe may have ridden a burst allowance
    d.run(1_800_000, sel.config.probed_hold_s)
    assert sel.target == Layer(2, 0), d.targets[-3:]
    assert d.t - answered <= sel.config.probed_hold_s + 0.25  # not the 3 s hold


def test_successful_probe_waits_for_the_hold_after_a_recent_down_move() -> None:
    sel, _ = make(temporal_layers=1)
    cfg = sel.config
    start_on(sel, 2_000_000, 2)  # f at once
    d = Driver(sel, t=0.1)
    down_at = d.t
    d.run(1_400_000, 0.1)  # down to h: not after an up move, so no flapping counted
    assert sel.target == Layer(1, 0) and sel.hold_s == cfg.up_hold_s
    assert sel.on_keyframe(1, d.t)
    answered = _probe_then_estimate(sel, d, 0.5, 1_800_000)
    assert answered - down_at < cfg.flap_window_s
    d.run(1_800_000, 2.5)
    assert sel.target == Layer(1, 0)  # the down move was recent: the hold applies
    d.run(1_800_000, 2.0)  # the hold (3 s since the estimate rose) passes; the probe vouches
    assert sel.target == Layer(2, 0)


def test_successful_probe_waits_for_the_hold_after_spatial_flapping() -> None:
    sel, _ = make(temporal_layers=1)
    cfg = sel.config
    start_on(sel, 600_000, 1)
    d = Driver(sel, t=0.1)
    d.run(2.0 * F, 4.0, answer=2.0 * F)
    assert sel.target == Layer(2, 0)
    sel.on_keyframe(2, d.t)
    down_at = d.t
    d.run(1_400_000, 0.1)  # mild drop soon after the up move: flapping
    assert sel.target == Layer(1, 0) and sel.hold_s == 2 * cfg.up_hold_s
    assert sel.on_keyframe(1, d.t)
    # more than a flap window without a down move, then a successful probe
    answered = _probe_then_estimate(sel, d, cfg.flap_window_s + 1, 1_800_000)
    assert answered - down_at > cfg.flap_window_s
    assert sel.hold_s == 2 * cfg.up_hold_s  # (no up move since: nothing decayed it)
    d.run(1_800_000, 3.0)
    assert sel.target == Layer(1, 0), "spatial flapping seen: the probe alone is not enough"


# ============================================================================ BWE


def test_app_limited_overuse_cuts_part_of_the_estimate_instead_of_collapsing_it() -> None:
    cfg = BweConfig()
    rc = AimdRateControl(cfg)
    rc.set_estimate(2_000_000, 0.0)
    # application-limited: 300 kbps acked < 0.5 x 2 Mbps
    rc.update(BandwidthUsage.OVERUSE, 300_000, 1.0, 0.1)
    assert rc.estimate == pytest.approx(cfg.app_limited_decrease * 2_000_000)
    assert rc.estimate > 2 * cfg.beta * 300_000
    # not application-limited: the usual cut to beta x acked
    rc2 = AimdRateControl(cfg)
    rc2.set_estimate(2_000_000, 0.0)
    rc2.update(BandwidthUsage.OVERUSE, 1_500_000, 1.0, 0.1)
    assert rc2.estimate == pytest.approx(cfg.beta * 1_500_000)
    # a link that fell: we sent 1.8 Mbit/s and 500 kbit/s got through. Acked is far below
    # the estimate, but so was not what we sent: congestion, the usual cut (lab, drop-recover:
    # treated as application-limited it cost 0.3 s before the layer went down)
    rc3 = AimdRateControl(cfg)
    rc3.set_estimate(2_600_000, 0.0)
    rc3.update(BandwidthUsage.OVERUSE, 500_000, 1.0, 0.05, sent_bps=1_800_000)
    assert rc3.estimate == pytest.approx(cfg.beta * 500_000)
    # and what we sent, when known, decides application-limited (not what got through)
    rc4 = AimdRateControl(cfg)
    rc4.set_estimate(2_000_000, 0.0)
    rc4.update(BandwidthUsage.OVERUSE, 300_000, 1.0, 0.1, sent_bps=320_000)
    assert rc4.estimate == pytest.approx(cfg.app_limited_decrease * 2_000_000)


def test_overuse_within_the_grace_holds_the_estimate_and_after_it_cuts() -> None:
    """A keyframe burst sent on purpose: an overuse before `overuse_grace_until` holds the
    estimate (counted), the same overuse after it cuts as usual."""
    series = _queue_building_series()
    held = BandwidthEstimator(BweConfig(start_bps=500_000))
    held.overuse_grace_until = 1e9
    for r in series:
        held.on_packet_results([r], r.arrival_time + 0.01)
    assert held.overuse_events >= 1 and held.overuse_forgiven >= 1
    assert held.rate.decreases == 0
    assert held.snapshot()["overuse_forgiven"] == held.overuse_forgiven
    cut = BandwidthEstimator(BweConfig(start_bps=500_000))
    cut.overuse_grace_until = series[0].arrival_time  # (already over)
    for r in series:
        cut.on_packet_results([r], r.arrival_time + 0.01)
    assert cut.rate.decreases >= 1 and cut.overuse_forgiven == 0
    assert cut.estimate_bps < held.estimate_bps


def _queue_building_series(n_flat: int = 60, n_ramp: int = 60) -> list[PacketResult]:
    """300 kbps (1200 B every 32 ms); after `n_flat` packets each arrives 8 ms later than the
    one before it would have (a queue building up)."""
    out = []
    extra = 0.0
    for i in range(n_flat + n_ramp):
        if i >= n_flat:
            extra += 0.008
        send = i * 0.032
        out.append(PacketResult(send, send + 0.02 + extra, 1200, seq=i))
    return out


@pytest.mark.parametrize("start_bps", [2_000_000, 500_000])
def test_estimator_first_overuse_cut_depends_on_application_limit(start_bps: int) -> None:
    est = BandwidthEstimator(BweConfig(start_bps=start_bps))
    before = after = acked = None
    for r in _queue_building_series():
        previous = est.rate.estimate
        est.on_packet_results([r], r.arrival_time + 0.01)
        if est.rate.decreases:
            before, after, acked = previous, est.rate.estimate, est.acked.bitrate()
            break
    assert before is not None, "no overuse detected"
    assert acked == pytest.approx(300_000, rel=0.15)
    cfg = est.config
    if acked < cfg.app_limited_ratio * before:  # 2 Mbps estimate, 300 kbps sent
        assert start_bps == 2_000_000
        assert after == pytest.approx(cfg.app_limited_decrease * before)
        assert after > 2 * cfg.beta * acked
    else:
        assert start_bps == 500_000
        assert after == pytest.approx(cfg.beta * acked)
    assert est.estimate_bps <= int(after) + 1


def _probe_packets(cluster: int, n: int, first_seq: int = 0, t0: float = 1.0) -> list[PacketResult]:
    return [
        PacketResult(
            t0 + k * 0.005, t0 + 0.03 + k * 0.005, 1200, seq=first_seq + k, cluster=cluster
        )
        for k in range(n)
    ]


def test_end_probe_finishes_a_short_probe_when_its_packets_are_reported() -> None:
    seen: list[ProbeResult] = []
    est = BandwidthEstimator(BweConfig(start_bps=300_000), on_probe_result=seen.append)
    est.start_probe(7, 1_900_000, 20, now=1.0)  # planned 20 packets...
    packets = _probe_packets(7, 8)
    est.on_packet_results(packets[:5], 1.05)
    assert seen == []  # (still being sent)
    est.end_probe(7, 8)  # ...only 8 went out
    est.on_packet_results(packets[5:], 1.1)
    assert len(seen) == 1
    result = seen[0]
    assert result.cluster == 7 and result.ok
    assert (result.packets_sent, result.packets_received) == (8, 8)
    expected = 7 * 1200 * 8 / (7 * 0.005)  # bytes after the first over the span
    assert result.bitrate_bps == pytest.approx(expected, rel=0.02)
    assert est.last_probe == result
    assert est.estimate_bps >= 0.98 * expected  # the estimate took it at once


def test_without_end_probe_a_short_probe_waits_for_the_timeout_and_fails() -> None:
    seen: list[ProbeResult] = []
    est = BandwidthEstimator(BweConfig(start_bps=300_000), on_probe_result=seen.append)
    est.start_probe(7, 1_900_000, 20, now=1.0)
    est.on_packet_results(_probe_packets(7, 8), 1.1)
    assert seen == []
    est.on_packet_results([PacketResult(2.0, 2.03, 1200, seq=100)], 1.0 + 2.05)
    assert len(seen) == 1 and not seen[0].ok  # 8 of a planned 20: unusable


# ============================================================================ RTX budget


def test_rtx_budget_token_bucket() -> None:
    dt = DownTrack(kind="video", mid="1", ssrc=1, send=lambda _: True)
    assert dt.rtx_budget_bps is None  # no estimate: a share of what it sends, or the minimum
    fallback = int(RTX_FALLBACK_MIN_BPS / 8 * RTX_BURST_S / RTX_PACKET_BYTES)
    assert sum(dt.take_rtx_budget(100.0) for _ in range(1000)) == fallback
    rate = 440_000
    dt.rtx_budget_bps = rate
    burst = int(rate / 8 * RTX_BURST_S / RTX_PACKET_BYTES)
    assert burst == 10
    allowed = sum(dt.take_rtx_budget(200.0) for _ in range(100))
    assert allowed == burst
    assert not dt.take_rtx_budget(200.0)
    refill = int(rate / 8 * 0.125 / RTX_PACKET_BYTES)  # 6 packets in 125 ms
    assert refill == 6
    assert sum(dt.take_rtx_budget(200.125) for _ in range(100)) == refill
    # a long pause refills only up to the burst
    assert sum(dt.take_rtx_budget(260.0) for _ in range(100)) == burst
    dt.rtx_budget_bps = None
    dt.bitrate_bps = 4_000_000  # sending 4 Mbit/s: half of it for retransmissions
    allowed = sum(dt.take_rtx_budget(300.0) for _ in range(100))
    assert allowed == int(2_000_000 / 8 * RTX_BURST_S / RTX_PACKET_BYTES)


def test_rtx_budget_on_a_weak_link_still_refills_at_its_rate() -> None:
    """30 % of a 100 kbps estimate is 30 kbps: about 3.4 retransmissions of 1100 bytes a
    second. The bucket must be able to hold at least one packet's cost, or a link this weak
    (exactly where a lost packet hurts most) never gets a single retransmission."""
    dt = DownTrack(kind="video", mid="1", ssrc=1, send=lambda _: True)
    rate = RTX_SHARE * 100_000
    dt.rtx_budget_bps = rate
    allowed = 0
    t = 500.0
    for _ in range(40):  # 2 s, a NACK every 50 ms
        allowed += dt.take_rtx_budget(t)
        t += 0.05
    expected = rate / 8 * 2.0 / RTX_PACKET_BYTES  # about 6.8
    assert allowed >= int(expected) - 1, (allowed, expected)
    assert allowed <= int(expected) + 2


SUB_SSRC, SUB_RTX_SSRC, SUB_PT, SUB_RTX_PT = 0x5EB5C001, 0x5EB5C002, 120, 121


class Sink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.packets.append(bytes(data))
        return True


def single_stream_rig(frames: int = 5):
    """A single-layer VP8 publisher forwarded into one DownTrack (RTX negotiated)."""
    producer = Producer(
        TrackInfo(id="TR_one", kind="video", publisher="pub"),
        CodecInfo("video/VP8", 90000, 96, rtx_payload_type=97),
        send_keyframe_request=lambda ssrc: None,
    )
    sink = Sink()
    dt = DownTrack(kind="video", mid="1", ssrc=SUB_SSRC, rtx_ssrc=SUB_RTX_SSRC, send=sink.send)
    dt.configure(
        mime_type="video/VP8",
        payload_type=SUB_PT,
        clock_rate=90000,
        rtx_payload_type=SUB_RTX_PT,
        extension_ids={EXT_MID: 4},
    )
    fw = bind(producer, dt)
    stream = three_layers()[1]
    now = 50.0
    for k in range(frames):
        for p in stream.frame(keyframe=k == 0, tid=0, pt=96):
            producer.on_rtp(p, RtpHeader.parse(p, ExtensionIds()), now)
        now += 1 / 30
    return producer, dt, fw, sink


def test_on_nack_beyond_the_budget_is_skipped(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(forwarder_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    _, dt, fw, sink = single_stream_rig()
    media = [rtp_fields(p) for p in sink.packets]
    assert len(media) == 10 and all(m["ssrc"] == SUB_SSRC for m in media)
    seqs = [m["seq"] for m in media]
    # unlimited: everything answered
    assert fw.on_nack(seqs[:2]) == 2
    assert dt.retransmissions_skipped == 0
    # a budget with room for 3 packets at once
    dt.rtx_budget_bps = 3 * RTX_PACKET_BYTES * 8 / RTX_BURST_S
    sent_before = len(sink.packets)
    assert fw.on_nack(seqs[2:10]) == 3
    assert dt.retransmissions_skipped == 5
    rtx = [rtp_fields(p) for p in sink.packets[sent_before:]]
    assert [r["ssrc"] for r in rtx] == [SUB_RTX_SSRC] * 3
    assert [int.from_bytes(r["payload"][:2], "big") for r in rtx] == seqs[2:5]
    assert dt.retransmitted == 5
    # the bucket is empty: nothing more goes out at this instant
    assert fw.on_nack(seqs[5:8]) == 0
    assert dt.retransmissions_skipped == 8
    assert len(sink.packets) == sent_before + 3
    # 125 ms later a bit more than a third of the burst (one packet) is back
    clock[0] += 0.125
    assert fw.on_nack(seqs[5:8]) == 1
    assert dt.retransmissions_skipped == 10


def test_the_keyframe_the_layer_started_on_is_resent_beyond_the_budget(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(forwarder_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    _, dt, fw, sink = single_stream_rig()
    seqs = [m["seq"] for m in (rtp_fields(p) for p in sink.packets)]
    dt.rtx_budget_bps = 3 * RTX_PACKET_BYTES * 8 / RTX_BURST_S
    assert fw.on_nack(seqs[2:10]) == 3  # the budget: 3 packets, then nothing
    assert fw.on_nack(seqs[5:8]) == 0
    # the first frame (the keyframe the stream started on, 2 packets) still goes out
    assert fw.on_nack(seqs[:2]) == 2
    assert fw.on_nack(seqs[8:10]) == 0


def _twcc_feedback(seqr: TransportSequencer, n: int, t0: float) -> bytes:
    base = seqr.last_seq + 1
    for k in range(n):
        seqr.next_seq(1200, t0 + k * 0.01)
    arrivals = [int((t0 + 0.02 + k * 0.01) * 1e6) for k in range(n)]
    return TwccFeedback.from_arrivals(1, 2, base, arrivals).serialize()


def test_controller_sets_the_rtx_budget_from_a_transport_cc_estimate_only() -> None:
    video = DownTrack(kind="video", mid="0", ssrc=11, send=lambda _: True)
    audio = DownTrack(kind="audio", mid="1", ssrc=12, send=lambda _: True)
    ctrl = BandwidthController([video, audio], start_bps=800_000)
    ctrl.tick(1.0)
    assert ctrl.source == "none" and video.rtx_budget_bps is None
    ctrl.on_remb(700_000, 1.1)
    ctrl.tick(1.2)
    assert ctrl.source == "remb" and video.rtx_budget_bps is None  # REMB: no budget
    ctrl.on_transport_feedback(_twcc_feedback(ctrl.sequencer, 10, 1.2), 1.4)
    assert ctrl.source == "transport-cc"
    ctrl.tick(1.5)
    estimate = ctrl.estimator.estimate_bps
    assert video.rtx_budget_bps == pytest.approx(RTX_SHARE * estimate)
    assert audio.rtx_budget_bps is None
    ctrl.on_transport_feedback(_twcc_feedback(ctrl.sequencer, 10, 1.5), 1.7)
    ctrl.estimator.estimate_bps = 400_000  # (whatever the estimator says at the next tick)
    ctrl.tick(1.8)
    assert video.rtx_budget_bps == pytest.approx(RTX_SHARE * 400_000)

    off = DownTrack(kind="video", mid="0", ssrc=13, send=lambda _: True)
    disabled = BandwidthController([off], enabled=False)
    disabled.on_transport_feedback(_twcc_feedback(disabled.sequencer, 10, 1.0), 1.2)
    disabled.tick(1.3)
    assert off.rtx_budget_bps is None


# ============================================================================ playout delay

PD_ID = 6


def playout_downtrack(playout_delay_id: int = PD_ID, kind: str = "video"):
    sink = Sink()
    dt = DownTrack(kind=kind, mid="1", ssrc=SUB_SSRC, rtx_ssrc=SUB_RTX_SSRC, send=sink.send)
    dt.configure(
        mime_type="video/VP8" if kind == "video" else "audio/opus",
        payload_type=SUB_PT,
        clock_rate=90000 if kind == "video" else 48000,
        rtx_payload_type=SUB_RTX_PT,
        extension_ids={EXT_MID: 4},
        playout_delay_id=playout_delay_id,
    )
    return dt, sink


PAYLOAD = bytes(range(40))


def send_one(dt: DownTrack, sink: Sink, seq: int) -> dict[int, bytes]:
    packet = rtp_packet(pt=96, seq=seq, ts=seq * 3000, ssrc=0xABC, payload=PAYLOAD, marker=True)
    h = RtpHeader.parse(packet, ExtensionIds())
    dt.send_media(packet, h, seq, seq * 3000, 10.0 + seq / 30)
    sent = sink.packets[-1]
    assert sent[0] & 0x10  # X bit
    assert struct.unpack_from("!H", sent, 12)[0] == 0xBEDE  # one-byte header profile
    fields = rtp_fields(sent)
    assert fields["payload"] == PAYLOAD and fields["seq"] == seq and fields["ssrc"] == SUB_SSRC
    return header_extensions(sent)


def playout_bytes(min_units: int, max_units: int) -> bytes:
    """min (12 bits) then max (12 bits), big-endian, in 10 ms units."""
    return ((min_units << 12) | max_units).to_bytes(3, "big")


def test_playout_delay_extension_on_every_following_packet_and_off_again() -> None:
    dt, sink = playout_downtrack()
    assert send_one(dt, sink, 1) == {4: b"1"}
    assert dt.set_playout_delay(250)
    assert dt.playout_delay == (25, 1000)
    for seq in (2, 3, 4):
        ext = send_one(dt, sink, seq)
        assert ext == {4: b"1", PD_ID: playout_bytes(25, 1000)}
        assert ext[PD_ID] == bytes([0x01, 0x93, 0xE8])  # 25 = 0x019, 1000 = 0x3E8
    # retransmissions carry it too
    h = RtpHeader.parse(sink.packets[-1], ExtensionIds())
    assert dt.send_retransmission(sink.packets[-1], h, 4, 4 * 3000)
    rtx = sink.packets[-1]
    assert rtp_fields(rtx)["ssrc"] == SUB_RTX_SSRC
    assert header_extensions(rtx)[PD_ID] == playout_bytes(25, 1000)
    # another value, with an explicit maximum
    assert dt.set_playout_delay(1230, 2000)
    assert send_one(dt, sink, 5)[PD_ID] == playout_bytes(123, 200)
    # 0 takes it off again
    assert dt.set_playout_delay(0)
    assert dt.playout_delay is None
    assert send_one(dt, sink, 6) == {4: b"1"}


def test_playout_delay_without_a_negotiated_id_changes_nothing() -> None:
    dt, sink = playout_downtrack(playout_delay_id=0)
    before = send_one(dt, sink, 1)
    first = sink.packets[-1]
    assert not dt.set_playout_delay(400)
    assert dt.playout_delay is None
    assert send_one(dt, sink, 1) == before == {4: b"1"}
    assert sink.packets[-1] == first  # byte for byte
    audio, audio_sink = playout_downtrack(kind="audio")
    assert not audio.set_playout_delay(400)


def report(dt: DownTrack, now: float, rtt: float, fraction_lost: int = 0) -> None:
    """A receiver report answering an SR sent `rtt` seconds ago (DLSR 0)."""
    lsr = (int(now * 1000) & 0xFFFF_FFFF) or 1
    dt._sr_sent[lsr] = now - rtt
    dt.on_report_block(ReportBlock(ssrc=dt.ssrc, fraction_lost=fraction_lost, lsr=lsr), now)


def test_base_rtt_is_the_minimum_over_the_window() -> None:
    dt, _ = playout_downtrack()
    assert dt.base_rtt_s is None
    report(dt, 100.0, 0.30)
    report(dt, 110.0, 0.15)
    report(dt, 120.0, 0.60)  # congestion queueing: the base stays
    assert dt.base_rtt_s == pytest.approx(0.15)
    assert dt.rtt_s > 0.2
    report(dt, 110.0 + BASE_RTT_WINDOW_S + 1, 0.50)  # 0.15 left the window
    assert dt.base_rtt_s == pytest.approx(0.50)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def monotonic(self) -> float:
        return self.t


def playout_controller(monkeypatch, t: float = 1000.0):
    clock = Clock(t)
    monkeypatch.setattr(bandwidth_module, "time", clock)
    dt, sink = playout_downtrack()
    audio = DownTrack(kind="audio", mid="a", ssrc=77, send=lambda _: True)
    ctrl = BandwidthController([dt, audio], adaptive_playout_delay=True)
    return clock, dt, sink, ctrl


def test_adaptive_playout_delay_on_a_lossy_far_link(monkeypatch) -> None:
    clock, dt, sink, ctrl = playout_controller(monkeypatch)
    report(dt, clock.t - 5, 0.25)
    report(dt, clock.t, 0.30)  # no loss yet
    ctrl.tick(clock.t)
    assert dt.playout_delay is None
    clock.t += 1
    report(dt, clock.t, 0.26, fraction_lost=NOTABLE_LOSS + 10)
    assert dt.loss_seen_at == clock.t
    ctrl.tick(clock.t)
    wanted_ms = 1.5 * 0.25 + 0.1  # from the base RTT (0.25), not the current one
    assert dt.playout_delay is not None
    assert abs(dt.playout_delay[0] * 10 - wanted_ms * 1000) <= 10
    assert send_one(dt, sink, 1)[PD_ID] == playout_bytes(*dt.playout_delay)
    # still lossy-ish within the hold: kept
    clock.t += PLAYOUT_DELAY_HOLD_S - 1
    report(dt, clock.t, 0.27)
    ctrl.tick(clock.t)
    assert dt.playout_delay is not None
    # PLAYOUT_DELAY_HOLD_S after the last loss: removed
    clock.t += 2
    report(dt, clock.t, 0.27)
    ctrl.tick(clock.t)
    assert dt.playout_delay is None
    assert send_one(dt, sink, 2) == {4: b"1"}


def test_adaptive_playout_delay_ignores_congestion_queueing_on_a_near_link(monkeypatch) -> None:
    clock, dt, _, ctrl = playout_controller(monkeypatch)
    report(dt, clock.t - 10, 0.03)  # the path itself is near
    for k in range(5):
        report(dt, clock.t - 4 + k, 0.5, fraction_lost=NOTABLE_LOSS + 20)  # a queue built up
    assert dt.rtt_s > PLAYOUT_DELAY_MIN_RTT_S and dt.base_rtt_s < PLAYOUT_DELAY_MIN_RTT_S
    ctrl.tick(clock.t)
    assert dt.playout_delay is None


def test_adaptive_playout_delay_is_capped_and_off_without_the_option(monkeypatch) -> None:
    clock, dt, _, ctrl = playout_controller(monkeypatch)
    report(dt, clock.t, 0.9, fraction_lost=NOTABLE_LOSS)
    ctrl.tick(clock.t)
    assert dt.playout_delay == (100, 1000)  # 1.5 x 0.9 + 0.1 > 1 s: capped at 1 s
    dt2, _ = playout_downtrack()
    report(dt2, clock.t, 0.9, fraction_lost=NOTABLE_LOSS)
    BandwidthController([dt2]).tick(clock.t)
    assert dt2.playout_delay is None


# ======================================================================= publisher transport-cc

TWCC_ID = 5


def with_transport_cc(offer: str, ext_id: int = TWCC_ID) -> str:
    out = []
    for line in offer.split("\r\n"):
        out.append(line)
        if line.startswith("a=extmap:") and EXT_MID in line:
            out.append(f"a=extmap:{ext_id} {EXT_TRANSPORT_CC}")
    return "\r\n".join(out)


@pytest.fixture
async def sessions():
    made: list[PublisherSession] = []

    def new(**rtc) -> PublisherSession:
        s = PublisherSession(identity="pub", network=LOOPBACK, rtc=RtcSettings(**rtc), max_tracks=4)
        made.append(s)
        return s

    try:
        yield new
    finally:
        for s in made:
            await s.close()


@pytest.fixture
def publisher(sessions) -> PublisherSession:
    """A session with transport-cc feedback to publishers turned on (it is opt-in)."""
    return sessions(publisher_transport_cc=True)


def received_by_feedback(packets: list[bytes]) -> dict[int, bool]:
    seen: dict[int, bool] = {}
    for data in packets:
        fb = TwccFeedback.parse(data)
        for seq, arrival in fb.arrivals():
            seen[seq] = seen.get(seq, False) or arrival is not None
    return seen


async def test_publisher_transport_cc_answer_and_feedback(publisher) -> None:
    offer = with_transport_cc(to_rid_simulcast(await aiortc_video_offer()))
    assert f"a=extmap:{TWCC_ID} {EXT_TRANSPORT_CC}" in offer
    answer, (producer,) = await publisher.negotiate(offer)
    assert f"a=extmap:{TWCC_ID} {EXT_TRANSPORT_CC}\r\n" in answer
    m_line = next(line for line in answer.split("\r\n") if line.startswith("m=video"))
    pts = m_line.split()[3:]
    assert pts
    for pt in pts:
        assert f"a=rtcp-fb:{pt} transport-cc\r\n" in answer
    assert publisher._twcc is not None
    assert publisher._ext.transport_cc == TWCC_ID

    mid = next(iter(publisher.producers))
    mid_id = int(re.search(rf"a=extmap:(\d+) {re.escape(EXT_MID)}", answer).group(1))
    vp8_pt, rtx_pt = payload_types(answer)
    streams = three_layers()

    def tcc(seq: int) -> tuple[int, bytes]:
        return (TWCC_ID, seq.to_bytes(2, "big"))

    sent: list[int] = []
    seq = 65530  # wraps within the test
    # an SSRC that cannot be placed yet (no rid): dropped, but it arrived
    early = streams[1].frame(
        keyframe=True, tid=0, pt=vp8_pt, ext=[(mid_id, mid.encode()), tcc(seq)]
    )
    for p in early[:1]:
        publisher._on_rtp(p, 0)
    sent.append(seq)
    assert producer.packets == 0
    seq = (seq + 1) & 0xFFFF
    # real media on every layer
    for i, stream in enumerate(streams):
        for p in stream.frame(keyframe=True, tid=0, pt=vp8_pt):
            f = rtp_fields(p)
            packet = rtp_packet(
                pt=f["pt"],
                seq=f["seq"],
                ts=f["ts"],
                ssrc=stream.ssrc,
                payload=f["payload"],
                marker=f["marker"],
                extensions=[(mid_id, mid.encode()), (RID_ID, RIDS[i].encode()), tcc(seq)],
            )
            publisher._on_rtp(packet, 0)
            sent.append(seq)
            seq = (seq + 1) & 0xFFFF
    assert producer.packets > 0
    gap = seq
    seq = (seq + 1) & 0xFFFF  # this one never arrives
    # a padding-only RTX probe (Chromium's): no payload, 200 bytes of padding
    padding = bytes(199) + bytes([200])
    probe = rtp_packet(
        pt=rtx_pt, seq=7, ts=0, ssrc=streams[0].rtx_ssrc, payload=padding, extensions=[tcc(seq)]
    )
    probe = bytes([probe[0] | 0x20]) + probe[1:]
    before = producer.packets
    publisher._on_rtp(probe, 0)
    assert producer.packets == before  # dropped (an RTX SSRC without repaired rid)
    sent.append(seq)
    seq = (seq + 1) & 0xFFFF
    # the same with the repaired rid: the RTX SSRC of h is learned, the padding dropped
    probe = rtp_packet(
        pt=rtx_pt,
        seq=8,
        ts=0,
        ssrc=streams[1].rtx_ssrc,
        payload=padding,
        extensions=[(mid_id, mid.encode()), (RRID_ID, b"h"), tcc(seq)],
    )
    probe = bytes([probe[0] | 0x20]) + probe[1:]
    publisher._on_rtp(probe, 0)
    assert producer.layers[1].rtx_ssrc == streams[1].rtx_ssrc
    assert producer.packets == before
    sent.append(seq)
    seq = (seq + 1) & 0xFFFF
    last = streams[2].frame(keyframe=False, tid=0, pt=vp8_pt, ext=[tcc(seq)])[0]
    publisher._on_rtp(last, 0)
    sent.append(seq)

    feedback = publisher._twcc.build()
    assert feedback
    seen = received_by_feedback(feedback)
    assert {s for s, ok in seen.items() if ok} == set(sent)
    assert seen[gap] is False
    assert set(seen) == set(sent) | {gap}
    assert publisher._twcc.build() == []  # everything was reported


async def test_publisher_without_transport_cc_in_the_offer_has_no_recorder(publisher) -> None:
    offer = to_rid_simulcast(await aiortc_video_offer())
    answer, _ = await publisher.negotiate(offer)
    assert EXT_TRANSPORT_CC not in answer
    assert "transport-cc" not in answer
    assert publisher._twcc is None and publisher._ext.transport_cc == 0
    streams = three_layers()
    vp8_pt, _ = payload_types(answer)
    publisher._on_rtp(streams[0].frame(keyframe=True, tid=0, pt=vp8_pt)[0], 0)  # no crash
    assert publisher._twcc is None


async def test_publisher_transport_cc_off_answers_and_records_nothing(sessions) -> None:
    """The option is off by default: a Chromium offer (which always proposes transport-cc)
    gets an answer without it, so the browser stamps no transport sequence numbers and no
    feedback may be built or sent for it."""
    session = sessions()
    assert RtcSettings().publisher_transport_cc is False
    offer = with_transport_cc(to_rid_simulcast(await aiortc_video_offer()))
    answer, _ = await session.negotiate(offer)
    assert EXT_TRANSPORT_CC not in answer
    assert "transport-cc" not in answer
    assert session._twcc is None, "transport-cc was not negotiated, yet a recorder runs"


async def test_single_stream_publisher_with_transport_cc_gets_feedback(publisher) -> None:
    offer = with_transport_cc(await aiortc_video_offer())
    answer, (producer,) = await publisher.negotiate(offer)
    assert f"a=extmap:{TWCC_ID} {EXT_TRANSPORT_CC}\r\n" in answer
    assert publisher._twcc is not None
    ssrc = int(re.search(r"a=ssrc:(\d+) ", offer).group(1))
    vp8_pt, _ = payload_types(answer)
    stream = LayerStream(
        tag=1, ssrc=ssrc, rtx_ssrc=0, seq=10, ts=0, picture_id=1, tl0=0, width=320, height=180
    )
    for k, tseq in enumerate((3, 4, 6)):
        p = stream.frame(
            keyframe=k == 0, tid=0, pt=vp8_pt, ext=[(TWCC_ID, tseq.to_bytes(2, "big"))]
        )
        publisher._on_rtp(p[0], 0)
    assert producer.packets == 3
    seen = received_by_feedback(publisher._twcc.build())
    assert seen == {3: True, 4: True, 5: False, 6: True}


def _waver_like_cross_border(sel: LayerSelector, d: Driver, seconds: float) -> None:
    """An application-limited estimate on a far, lossy 1.5 Mbit/s link: it sits near
    0.65-0.8 Mbit/s and jumps to ~1.3 Mbit/s for a second after each successful probe, until
    the next delay bump takes it back (weak-link lab, cross-border)."""
    pattern = ((700_000, 3.0), (1_300_000, 2.5), (650_000, 3.0), (1_250_000, 2.5))
    end = d.t + seconds
    i = 0
    while d.t < end:
        estimate, hold = pattern[i % len(pattern)]
        for _ in range(round(hold / d.dt)):
            d.step(estimate, answer=estimate)
            if sel.switch_pending and sel.target is not None:
                sel.on_keyframe(sel.target.spatial, d.t)
        i += 1


@pytest.mark.parametrize("frame_rate_first", [True, False])
def test_frame_rate_preference_holds_h_on_a_wavering_estimate(frame_rate_first: bool) -> None:
    """720p at 15 fps (~0.9 Mbit/s) and 360p at 30 fps (~0.5 Mbit/s) sit close together; an
    estimate wavering between them flips a resolution-first selector between f and h (each a
    keyframe and a visible jump); the frame-rate-first ladder has nothing between h (0.5) and
    f at full rate (1.5), so it rests on h."""
    sel, _ = make(full_frame_rate_above_base=frame_rate_first)
    start_on(sel, 700_000, 1)
    d = Driver(sel, t=0.1)
    _waver_like_cross_border(sel, d, 60.0)
    if frame_rate_first:
        assert sel.switches == 1 and sel.spatial_switches == 0  # the start only
        assert {layer for _, layer in d.targets} == {Layer(1, 2)}
    else:
        assert sel.spatial_switches >= 2  # h -> f/T1 -> h (the flap guard then holds it)


def test_frame_rate_preference_ladder() -> None:
    sel, _ = make()
    assert sel.config.full_frame_rate_above_base
    assert [layer for layer, _ in sel._ladder()] == [
        Layer(0, 0),
        Layer(0, 1),
        Layer(0, 2),
        Layer(1, 2),
        Layer(2, 2),
    ]
    sel.update(1_400_000, 0.0)
    assert sel.target == Layer(1, 2)  # not f/T1 (900 kbit/s)
    capped, _ = make()
    capped.set_requested(None, 1)  # a viewer asking for at most temporal layer 1
    capped.update(1_400_000, 0.0)
    assert capped.target == Layer(2, 1)  # f/T1 is then the full rate it asked for


@pytest.mark.parametrize(
    ("preference", "frame_rate_first"), [("frame-rate", True), ("resolution", False)]
)
async def test_layer_preference_setting_reaches_the_subscribers_selectors(
    preference: str, frame_rate_first: bool
) -> None:
    session = SubscriberSession(
        identity="viewer", network=LOOPBACK, rtc=RtcSettings(layer_preference=preference)
    )
    try:
        config = session.bandwidth.layer_config
        assert config.full_frame_rate_above_base is frame_rate_first
        assert config.down_ratio == bandwidth_module.DOWN_RATIO
    finally:
        await session.close()
