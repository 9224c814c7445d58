"""BandwidthController: one subscriber connection's estimate, and what it decides.

It joins the pieces that each do one job:

- `TransportSequencer` (twcc.py): every packet sent to the subscriber carries a transport-wide
  sequence number; the subscriber's transport-cc feedback says when each arrived.
- `BandwidthEstimator` (bwe.py): delay-gradient + loss GCC estimate from that feedback; REMB
  and receiver-report loss for subscribers without transport-cc.
- `LayerSelector` (layers.py), one per simulcast track: which layer fits the track's share of
  the estimate, keyframe-gated, with hysteresis and probes before moving up.

Every `TICK_S` the controller measures what each DownTrack sends, splits the estimate between
the video tracks (audio first: its bitrate is taken off the top, so under congestion video
layers drop before audio suffers), lets each selector decide, asks publishers for the
keyframes a pending switch needs, and sends the probes selectors ask for: retransmissions
(RTX) of recent packets, paced over `PROBE_DURATION_S` at the probe's target rate and tagged
with a probe cluster, so the estimator can tell what the path carried at that rate.
Media is not queued here: packets leave as the publisher's own pacer sent them, and what the
link cannot carry is avoided by choosing a lower layer, never by a growing queue.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .bwe import BandwidthEstimator, BweConfig, ProbeResult
from .forwarder import (
    UNLIMITED_BPS,
    DownTrack,
    Forwarder,
    feed_layer_bitrates,
    top_layer_selector,
)
from .layers import LayerConfig, LayerSelector
from .producer import Producer
from .twcc import TransportSequencer, TwccFeedback

logger = logging.getLogger(__name__)

TICK_S = 0.1
DOWN_RATIO = 0.85  # see __init__
# A probe is short (like libwebrtc's clusters): long enough to measure, short enough not to
# overflow the queue of a link that turns out not to carry it.
PROBE_DURATION_S = 0.05
PROBE_STEP_S = 0.005
# Probes aim this much above the rate they must prove: timer slack on a busy event loop
# stretches a probe, and a probe that merely reaches its target often measures just below it.
PROBE_OVERSHOOT = 1.2
# Retransmissions may use at most this share of the estimate (the rest is for media).
RTX_SHARE = 0.3
# Adaptive playout delay: applied when receiver reports show loss on a link with at least
# this RTT; removed after PLAYOUT_DELAY_HOLD_S without loss.
PLAYOUT_DELAY_MIN_RTT_S = 0.1
PLAYOUT_DELAY_MAX_S = 1.0
PLAYOUT_DELAY_HOLD_S = 30.0
# A far link (by the ICE handshake's RTT) gets the delay from its first frame for this long
# before any receiver report could show loss: the first retransmissions of a lossy far link
# otherwise come too late and the start freezes (weak-link lab: 0.3-0.7 s in the first 2 s).
PLAYOUT_DELAY_START_S = 10.0
# A new spatial layer starts with its keyframe, several frames' worth of bytes that the
# publisher's pacer sent at its own (uplink) pace: at the viewer's bottleneck it queues for a
# moment and the delay detector calls that overuse. For this long (plus an RTT, until the
# feedback has told) after a move up, an overuse holds the estimate instead of cutting it;
# loss still cuts it, and a link that cannot carry the layer keeps signalling after it.
KEYFRAME_BURST_GRACE_S = 0.5


class _Probe:
    """A probe in flight: retransmissions of `seqs`, `bytes_per_step` every PROBE_STEP_S."""

    __slots__ = (
        "cluster",
        "forwarder",
        "selector",
        "bytes_per_step",
        "steps_left",
        "seqs",
        "next",
        "packets",
    )

    def __init__(self, cluster: int, forwarder: Forwarder, selector: LayerSelector) -> None:
        self.cluster = cluster
        self.forwarder = forwarder
        self.selector = selector
        self.bytes_per_step = 0.0
        self.steps_left = 0
        self.seqs: list[int] = []
        self.next = 0
        self.packets = 0  # sent so far


class BandwidthController:
    """Estimate and layer decisions for one subscriber connection (see module docstring)."""

    def __init__(
        self,
        downtracks: list[DownTrack],
        *,
        enabled: bool = True,
        start_bps: int = 1_000_000,
        layer_config: LayerConfig | None = None,
        adaptive_playout_delay: bool = False,
        full_frame_rate_above_base: bool = True,
    ) -> None:
        self.enabled = enabled
        self.adaptive_playout_delay = adaptive_playout_delay
        self._downtracks = downtracks  # the session's list (shared, grows as m-lines are added)
        self.sequencer = TransportSequencer()
        self.estimator = BandwidthEstimator(
            BweConfig(start_bps=start_bps), on_probe_result=self._on_probe_result
        )
        # Down only when the share falls clearly below the layer (DOWN_RATIO): an estimate
        # capped near 1.5 x what an application-limited sender sends dips a little below the
        # layer now and then on a lossy link, and each dip was a switch (weak-link lab,
        # cross-border). Real congestion takes the estimate far lower at once.
        self.layer_config = layer_config or LayerConfig(
            down_ratio=DOWN_RATIO, full_frame_rate_above_base=full_frame_rate_above_base
        )
        self.source = "none"  # where the estimate comes from: transport-cc, remb or none
        self.handshake_rtt_s: float | None = None  # see seed_rtt()
        self._seeded_at: float | None = None
        self._probes: dict[int, _Probe] = {}
        self._next_cluster = 0
        self._probe_timer: asyncio.TimerHandle | None = None
        self.probes_sent = 0

    # -- selectors ---------------------------------------------------------------------------

    def new_selector(self, producer: Producer) -> LayerSelector:
        """A layer selector for a simulcast track this subscriber receives."""
        if not self.enabled:
            return top_layer_selector(producer)
        selector = LayerSelector(self.layer_config)
        now = time.monotonic()
        feed_layer_bitrates(selector, producer, now)
        selector.update(self._video_share(now), now)
        return selector

    @property
    def estimate_bps(self) -> int | None:
        return self.estimator.estimate_bps if self.enabled and self.source != "none" else None

    # -- feedback ----------------------------------------------------------------------------

    def on_transport_feedback(self, data: bytes, now_s: float) -> None:
        try:
            feedback = TwccFeedback.parse(data)
        except ValueError:
            return
        results = self.sequencer.on_feedback(feedback)
        if results:
            self.source = "transport-cc"
            estimator = self.estimator
            up_at = max(
                (fw.selector.spatial_up_at for fw in self._video_forwarders() if fw.selector),
                default=-1e9,
            )
            estimator.overuse_grace_until = up_at + KEYFRAME_BURST_GRACE_S + estimator.rtt_s
            estimator.on_packet_results(results, now_s)
            self._decide(now_s)

    def on_remb(self, bitrate_bps: int, now_s: float) -> None:
        if self.source != "transport-cc":
            self.source = "remb"
        self.estimator.on_remb(bitrate_bps, now_s)

    def on_report(
        self, fraction_lost: float, packets: int, rtt_s: float | None, now: float
    ) -> None:
        if rtt_s is not None:
            self.estimator.on_rtt(rtt_s)
        if self.source == "remb":
            self.estimator.on_loss_report(fraction_lost, packets, now)

    # -- the periodic decision ---------------------------------------------------------------

    def tick(self, now_s: float) -> None:
        videos = sum(1 for dt in self._downtracks if dt.kind == "video") or 1
        budget = (
            RTX_SHARE * self.estimator.estimate_bps / videos  # (the share is per connection)
            if self.enabled and self.source == "transport-cc"
            else None
        )
        for dt in self._downtracks:
            dt.update_rate(now_s)
            if dt.kind == "video":
                dt.rtx_budget_bps = budget
        self._decide(now_s)
        self._start_probes(now_s)
        if self.adaptive_playout_delay:
            self._adapt_playout_delay()

    def seed_rtt(self, rtt_s: float | None) -> None:
        """The connection's RTT from its ICE handshake, before any receiver report: the base
        RTT until reports give one, and a far link's playout delay starts with it."""
        if rtt_s is None or self.handshake_rtt_s is not None:
            return
        self.handshake_rtt_s = rtt_s
        self._seeded_at = time.monotonic()
        self.estimator.on_rtt(rtt_s)
        if self.adaptive_playout_delay:
            self._adapt_playout_delay()

    def _adapt_playout_delay(self) -> None:
        """Lossy and far: hold video ~1.5 RTT + 100 ms so a retransmission beats its frame.

        "Lossy" = a receiver report showed >= ~1 % loss in the last PLAYOUT_DELAY_HOLD_S, or
        the connection is in its first PLAYOUT_DELAY_START_S (far by its handshake RTT).
        """
        now = time.monotonic()
        starting = self._seeded_at is not None and now - self._seeded_at < PLAYOUT_DELAY_START_S
        for dt in self._downtracks:
            base_rtt = dt.base_rtt_s
            if base_rtt is None:
                base_rtt = self.handshake_rtt_s
            if dt.kind != "video" or base_rtt is None:
                continue
            lossy = starting or (dt.loss_seen_at and now - dt.loss_seen_at < PLAYOUT_DELAY_HOLD_S)
            wanted = 0
            # (the base RTT, not the current one: a queue building up under congestion is
            # for the layer choice to fix, not a reason to delay the picture)
            if lossy and base_rtt >= PLAYOUT_DELAY_MIN_RTT_S:
                wanted = int(min(PLAYOUT_DELAY_MAX_S, 1.5 * base_rtt + 0.1) * 1000)
            current = dt.playout_delay[0] * 10 if dt.playout_delay else 0
            # only on a real change: each new value makes the browser re-time its buffer
            if (wanted == 0) != (current == 0) or abs(wanted - current) >= 50:
                dt.set_playout_delay(wanted)

    def _video_forwarders(self) -> list[Forwarder]:
        return [
            dt.forwarder
            for dt in self._downtracks
            if dt.kind == "video" and dt.forwarder is not None and not dt.forwarder.closed
        ]

    def _video_share(self, now_s: float) -> float:
        if not self.enabled:
            return UNLIMITED_BPS
        estimate = float(self.estimator.estimate_bps)
        audio = sum(dt.bitrate_bps for dt in self._downtracks if dt.kind == "audio")
        video = self._video_forwarders()
        fixed = sum(fw.downtrack.bitrate_bps for fw in video if fw.selector is None)
        layered = max(1, sum(1 for fw in video if fw.selector is not None))
        return max(0.0, estimate - audio - fixed) / layered

    def _decide(self, now_s: float) -> None:
        share = self._video_share(now_s)
        for fw in self._video_forwarders():
            selector = fw.selector
            if selector is None:
                continue
            feed_layer_bitrates(selector, fw.producer, now_s)
            selector.update(share, now_s)
            if selector.switch_pending and fw.switch_down_on_recent_keyframe(now_s):
                continue  # started on a keyframe that just went by: nothing to ask for
            spatial = selector.keyframe_request(now_s)
            if spatial is not None:
                fw.producer.request_keyframe(now_s, spatial)

    # -- probes ------------------------------------------------------------------------------

    def _start_probes(self, now_s: float) -> None:
        for fw in self._video_forwarders():
            selector = fw.selector
            if selector is None:
                continue
            request = selector.take_probe_request(now_s)
            if request is None:
                continue
            if not self.enabled or self.source != "transport-cc" or not fw.downtrack.started:
                selector.on_probe_result(None, now_s)  # nothing can measure it
                continue
            self._start_probe(fw, selector, request.bitrate_bps, now_s)

    def _start_probe(
        self, fw: Forwarder, selector: LayerSelector, bitrate_bps: int, now_s: float
    ) -> None:
        cluster = self._next_cluster
        self._next_cluster += 1
        probe = _Probe(cluster, fw, selector)
        steps = max(1, round(PROBE_DURATION_S / PROBE_STEP_S))
        total_bytes = bitrate_bps * PROBE_OVERSHOOT * PROBE_DURATION_S / 8
        dt = fw.downtrack
        packet_bytes = dt.octets_sent / dt.packets_sent if dt.packets_sent else 1000
        packets = max(self.estimator.config.probe_min_packets, int(total_bytes / packet_bytes))
        probe.bytes_per_step = total_bytes / steps
        probe.steps_left = steps
        probe.seqs = fw.recent_out_seqs(min(packets, 256))
        probe.packets = 0
        if not probe.seqs:
            selector.on_probe_result(None, now_s)
            return
        self.estimator.start_probe(cluster, bitrate_bps, packets, now_s)
        self._probes[cluster] = probe
        self.probes_sent += 1
        self._probe_step()

    def _probe_step(self) -> None:
        self._probe_timer = None
        for cluster, probe in list(self._probes.items()):
            if probe.steps_left <= 0:
                continue
            probe.steps_left -= 1
            fw = probe.forwarder
            if fw.closed:
                probe.steps_left = 0
                continue
            budget = probe.bytes_per_step
            seqs = probe.seqs
            while budget > 0 and seqs:
                seq = seqs[probe.next % len(seqs)]
                probe.next += 1
                sent = fw.resend(seq, cluster)
                if not sent:
                    seqs.remove(seq)  # no longer cached: probe with the others
                    continue
                probe.packets += 1
                budget -= sent
            if probe.steps_left <= 0 or not seqs:
                probe.steps_left = 0
                self.estimator.end_probe(cluster, probe.packets)
        if any(p.steps_left > 0 for p in self._probes.values()):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._probe_timer = loop.call_later(PROBE_STEP_S, self._probe_step)

    def _on_probe_result(self, result: ProbeResult) -> None:
        probe = self._probes.pop(result.cluster, None)
        if probe is None:
            return
        now = time.monotonic()
        probe.selector.on_probe_result(result.bitrate_bps or None, now)
        logger.debug(
            "probe %d at %d bps: achieved %d (sent %d, received %d)",
            result.cluster,
            result.target_bps,
            result.bitrate_bps,
            result.packets_sent,
            result.packets_received,
        )

    # -- stats / lifetime --------------------------------------------------------------------

    def snapshot(self) -> dict:
        data = {
            "enabled": self.enabled,
            "source": self.source,
            "estimate_bps": self.estimate_bps,
            "probing": bool(self._probes),
            "probes_sent": self.probes_sent,
        }
        if self.enabled and self.source != "none":
            data.update({k: v for k, v in self.estimator.snapshot().items() if k != "estimate_bps"})
        return data

    def close(self) -> None:
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        self._probes.clear()
