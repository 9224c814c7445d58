"""DownTrack and Forwarder: how one subscriber receives one track.

A DownTrack is one sending m-line of a subscriber's connection: its SSRC, payload type, MID and
extension ids, and the sequence/timestamp state the subscriber has seen. It outlives the
tracks that flow through it, so when an m-line is reused for another track (or the same
publisher comes back), numbering simply continues and the subscriber's SRTP context and
decoder see one stream.

A Forwarder binds a Producer to a DownTrack: it maps each incoming sequence number and
timestamp into the DownTrack's space with two offsets, chosen when the stream starts (on a
keyframe for video) and re-chosen when the publisher's stream restarts.
"""

from __future__ import annotations

import logging
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .layers import LayerConfig, LayerSelector, split_temporal
from .rtcp import ReportBlock, Sdes, SenderReport, ntp_middle
from .rtp import RTP_FIXED, RtpHeader
from .vp8 import PictureIdMunger, Vp8Info, parse_vp8, rewrite_vp8

if TYPE_CHECKING:
    from .encoding import Encoding
    from .producer import Producer
    from .twcc import TransportSequencer

logger = logging.getLogger(__name__)

NTP_FRACTION = 1 << 32
RESTART_SEQ_JUMP = 3000
NO_TEMPORAL_LIMIT = 15  # max_tid meaning "every temporal layer"
RING_SIZE = 2048  # packets remembered per forwarder for NACKs and probes (power of two)
RING_MASK = RING_SIZE - 1
UNLIMITED_BPS = 1e12
MAX_DROPPED_REMEMBERED = 64  # dropped packets a late packet's number is corrected for
# A move down may start on the target layer's keyframe if it arrived at most this long ago
# (a browser answers one request with keyframes on every layer, then ignores requests for
# 300 ms), replaying at most this many packets of that layer (keyframe and what followed).
RECENT_KEYFRAME_S = 0.3
MAX_RECENT_KEYFRAME_PACKETS = 64
NOTABLE_LOSS = 3  # receiver-report fraction lost (of 256, about 1 %) that marks a lossy link
BASE_RTT_WINDOW_S = 30.0
RTX_BURST_S = 0.2  # retransmission budget: burst allowance, in seconds of the budget rate
RTX_PACKET_BYTES = 1100  # budget charged per retransmission (a typical video packet)
# Without a transport-cc estimate, retransmissions still have a budget: this share of what
# the track sends, at least RTX_FALLBACK_MIN_BPS. Otherwise one viewer NACKing the whole ring
# 200 times a second (100-byte packets) made the node resend ~70k packets/s (a core).
RTX_FALLBACK_SHARE = 0.5
RTX_FALLBACK_MIN_BPS = 500_000
# A packet is resent at most once in this long (an honest receiver asks again after an RTT);
# this also bounds the keyframe packets that the budget lets through.
RESEND_SPACING_S = 0.05
# Bitrates assumed for simulcast layers not yet measured (lowest first).
NOMINAL_LAYER_BPS = (150_000, 500_000, 1_500_000)


class DownTrack:
    """One outgoing m-line toward a subscriber, with its numbering state."""

    def __init__(
        self,
        *,
        kind: str,
        mid: str,
        ssrc: int,
        send: Callable[[bytes], bool],
        rtx_ssrc: int | None = None,
        cname: str = "sfu",
    ) -> None:
        self.kind = kind
        self.mid = mid
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.cname = cname
        self._send = send
        self.mime_type = ""
        self.payload_type = -1  # unknown until negotiated
        self.rtx_payload_type: int | None = None
        self.clock_rate = 90000 if kind == "video" else 48000
        # RED audio (RFC 2198): this viewer accepted RED with this payload type, its blocks
        # carrying Opus as `red_block_pt`; -1 when not. `red_source_pt` is the bound
        # publisher's RED payload type when RED goes through as is (-1: plain Opus).
        self.red_payload_type = -1
        self.red_block_pt = -1
        self.red_source_pt = -1
        self._ext_template = bytearray()
        self._abs_send_time_at = -1
        self._audio_level_at = -1
        self._twcc_at = -1
        # transport-wide sequence numbers, shared by every DownTrack of one connection
        self.sequencer: TransportSequencer | None = None
        self._extension_ids: dict[str, int] = {}
        self._transport_cc_id = 0
        self._playout_delay_id = 0
        self.playout_delay: tuple[int, int] | None = None  # (min, max) in 10 ms units
        self.loss_seen_at = 0.0  # when a receiver report last showed loss
        self._rtt_samples: deque[tuple[float, float]] = deque()  # (time, rtt) for base_rtt_s
        # retransmissions: at most this bitrate, set from the estimate (None: no estimate, a
        # share of what the track sends; see RTX_FALLBACK_SHARE)
        self.rtx_budget_bps: float | None = None
        self._rtx_tokens = 0.0
        self._rtx_tokens_at = 0.0
        self.retransmissions_skipped = 0
        self.forwarder: Forwarder | None = None
        self.munger: PictureIdMunger | None = None  # VP8 picture id continuity across sources
        # numbering state, continued across forwarders
        self.started = False
        self.last_seq = 0
        self.last_ts = 0
        self.last_send_s = 0.0
        self.rtx_seq = 0
        # counters and feedback
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmitted = 0
        self.keyframes_from_cache = 0
        self.recent_keyframe_switches = 0  # moves down started on a keyframe just gone by
        self.layer_switches = 0
        self.probe_packets = 0
        self.nacks_received = 0  # RTCP NACK packets from the subscriber (metrics)
        self.keyframe_requests_received = 0  # PLI/FIR from the subscriber (metrics)
        # payload bitrate sent lately: media + retransmissions + probes (what loads the link),
        # smoothed over a few BandwidthController ticks; octets_sent counts media alone
        self.bitrate_bps = 0
        self.retransmitted_octets = 0  # payload bytes, like octets_sent
        self.probe_octets = 0
        self._packets_at_report = 0
        self._rate_last = 0
        self._rate_at = 0.0
        self.first_packet_s: float | None = None  # when the first packet went out (join metrics)
        self.fraction_lost = 0
        self.packets_lost = 0
        self.jitter = 0
        self.rtt_s: float | None = None
        self.remb_bps: int | None = None
        self._sr_sent: dict[int, float] = {}

    @property
    def negotiated(self) -> bool:
        return self.payload_type >= 0

    def configure(
        self,
        *,
        mime_type: str,
        payload_type: int,
        clock_rate: int,
        rtx_payload_type: int | None,
        extension_ids: dict[str, int],
        transport_cc_id: int = 0,
        sequencer: TransportSequencer | None = None,
        playout_delay_id: int = 0,
        red: tuple[int, int] | None = None,
    ) -> None:
        """Set what negotiation agreed for this m-line (payload types and extension ids).

        `red`: (RED payload type, Opus payload type in its blocks) if the viewer accepted RED.

        With `transport_cc_id` and a `sequencer`, every packet carries a transport-wide
        sequence number, and the sequencer logs its size and send time for the estimator.
        With `playout_delay_id`, `set_playout_delay()` can ask the subscriber's jitter buffer
        to hold video longer (on lossy far links, so retransmissions arrive in time).
        """
        self.mime_type = mime_type
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.rtx_payload_type = rtx_payload_type if self.rtx_ssrc else None
        self._extension_ids = dict(extension_ids)
        self.sequencer = sequencer if transport_cc_id else None
        self._transport_cc_id = transport_cc_id if sequencer is not None else 0
        self._playout_delay_id = playout_delay_id if self.kind == "video" else 0
        self.red_payload_type, self.red_block_pt = red if red and self.kind == "audio" else (-1, -1)
        self.update_red_source()
        self._build_extensions()

    def update_red_source(self) -> None:
        """RED goes through as is when both the viewer and the bound publisher use it."""
        fw = self.forwarder
        source = fw.producer.codec.red_payload_type if fw is not None else None
        self.red_source_pt = source if source is not None and self.red_payload_type >= 0 else -1

    def set_playout_delay(self, min_ms: int, max_ms: int = 10_000) -> bool:
        """Ask for at least `min_ms` of playout delay (0: take the extension off again).

        Returns False when the subscriber did not negotiate the playout-delay extension.
        """
        if not self._playout_delay_id:
            return False
        delay = (min(max(min_ms, 0), 40950) // 10, min(max(max_ms, min_ms), 40950) // 10)
        if min_ms <= 0:
            delay = None
        if delay != self.playout_delay:
            self.playout_delay = delay
            self._build_extensions()
        return True

    def _build_extensions(self) -> None:
        """The one-byte extension block every packet carries, with slots written per packet."""
        from .rtp import EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_MID

        ids = self._extension_ids
        body = bytearray()
        mid_id = ids.get(EXT_MID, 0)
        if mid_id and self.mid:
            mid = self.mid.encode()
            body += bytes([(mid_id << 4) | (len(mid) - 1)]) + mid
        self._abs_send_time_at = self._audio_level_at = self._twcc_at = -1
        abs_id = ids.get(EXT_ABS_SEND_TIME, 0)
        if abs_id and self.kind == "video":
            body.append((abs_id << 4) | 2)
            self._abs_send_time_at = 4 + len(body)
            body += b"\x00\x00\x00"
        level_id = ids.get(EXT_AUDIO_LEVEL, 0)
        if level_id and self.kind == "audio":
            body.append(level_id << 4)
            self._audio_level_at = 4 + len(body)
            body.append(127)
        if self._transport_cc_id:
            body.append((self._transport_cc_id << 4) | 1)
            self._twcc_at = 4 + len(body)
            body += b"\x00\x00"
        if self._playout_delay_id and self.playout_delay is not None:
            low, high = self.playout_delay
            body.append((self._playout_delay_id << 4) | 2)
            body += bytes([low >> 4, ((low & 0xF) << 4) | (high >> 8), high & 0xFF])
        while len(body) % 4:
            body.append(0)
        self._ext_template = (
            bytearray(struct.pack("!HH", 0xBEDE, len(body) // 4)) + body if body else bytearray()
        )

    # -- sending -----------------------------------------------------------------------------

    def send_media(
        self,
        data: bytes,
        h: RtpHeader,
        seq: int,
        ts: int,
        now_s: float,
        payload: bytearray | None = None,
    ) -> None:
        """Write the subscriber's header in front of the payload and send it.

        The payload is the publisher's, untouched, unless the forwarder passes a rewritten
        copy (`payload`, VP8 picture ids continued across a layer switch). `fan_out` does the
        same inline for the steady case: a change here belongs there too.
        """
        ext = self._ext_template
        body = memoryview(data)[h.payload_offset :] if payload is None else payload
        b0 = 0x80
        if ext:
            b0 = 0x90
            if self._abs_send_time_at >= 0:
                v = int(now_s * 262144)
                i = self._abs_send_time_at
                ext[i] = (v >> 16) & 0xFF
                ext[i + 1] = (v >> 8) & 0xFF
                ext[i + 2] = v & 0xFF
            if self._audio_level_at >= 0:
                ext[self._audio_level_at] = h.audio_level if h.audio_level >= 0 else 127
            if self._twcc_at >= 0:
                tseq = self.sequencer.next_seq(12 + len(ext) + len(body), now_s)
                ext[self._twcc_at] = tseq >> 8
                ext[self._twcc_at + 1] = tseq & 0xFF
        if h.padding_size:
            b0 |= 0x20
        pt = self.red_payload_type if h.payload_type == self.red_source_pt else self.payload_type
        b1 = pt | 0x80 if h.marker else pt
        packet = b"".join((RTP_FIXED.pack(b0, b1, seq, ts, self.ssrc), ext, body))
        if self._send(packet):
            self.packets_sent += 1
            self.octets_sent += len(body)
        elif not self.packets_sent and self.forwarder is not None:
            # The transport is not up yet and the subscriber missed this packet (maybe the
            # keyframe): start again on the next keyframe rather than feed it interframes.
            self.forwarder.synced = False
        if not self.started or 0 < (seq - self.last_seq) & 0xFFFF < 0x8000:
            self.last_seq = seq
            self.last_ts = ts
            self.last_send_s = now_s
            self.started = True

    def send_retransmission(
        self,
        data: bytes,
        h: RtpHeader,
        seq: int,
        ts: int,
        *,
        payload: bytearray | None = None,
        cluster: int = -1,
    ) -> bool:
        """Resend a packet: as RTX (RFC 4588) when negotiated, else with its own seq.

        `cluster` >= 0 tags it as part of a bandwidth probe in the transport-wide log.
        """
        body = memoryview(data)[h.payload_offset :] if payload is None else memoryview(payload)
        ext = self._ext_template
        if ext and self._twcc_at >= 0:
            tseq = self.sequencer.next_seq(12 + len(ext) + len(body) + 2, time.monotonic(), cluster)
            ext[self._twcc_at] = tseq >> 8
            ext[self._twcc_at + 1] = tseq & 0xFF
        if self.rtx_payload_type is None or self.rtx_ssrc is None:
            b1 = self.payload_type | 0x80 if h.marker else self.payload_type
            b0 = (0x90 if ext else 0x80) | (0x20 if h.padding_size else 0)
            packet = b"".join((RTP_FIXED.pack(b0, b1, seq, ts, self.ssrc), ext, body))
        else:
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            b1 = self.rtx_payload_type | 0x80 if h.marker else self.rtx_payload_type
            end = len(body) - h.padding_size
            packet = b"".join(
                (
                    RTP_FIXED.pack(0x90 if ext else 0x80, b1, self.rtx_seq, ts, self.rtx_ssrc),
                    ext,
                    seq.to_bytes(2, "big"),
                    body[:end],
                )
            )
        if self._send(packet):
            if cluster >= 0:
                self.probe_packets += 1
                self.probe_octets += len(body)
            else:
                self.retransmitted += 1
                self.retransmitted_octets += len(body)
            return True
        return False

    @property
    def base_rtt_s(self) -> float | None:
        """The lowest RTT of the last BASE_RTT_WINDOW_S: the path without queueing."""
        return min(r for _, r in self._rtt_samples) if self._rtt_samples else None

    def take_rtx_budget(self, now_s: float) -> bool:
        """One retransmission allowed now? A token bucket refilled at `rtx_budget_bps`."""
        rate = self.rtx_budget_bps
        if rate is None:
            rate = max(RTX_FALLBACK_MIN_BPS, RTX_FALLBACK_SHARE * self.bitrate_bps)
        elapsed = now_s - self._rtx_tokens_at
        self._rtx_tokens_at = now_s
        burst = max(rate / 8 * RTX_BURST_S, RTX_PACKET_BYTES)
        self._rtx_tokens = min(burst, self._rtx_tokens + elapsed * rate / 8)
        if self._rtx_tokens < RTX_PACKET_BYTES:
            return False
        self._rtx_tokens -= RTX_PACKET_BYTES
        return True

    def update_rate(self, now_s: float) -> int:
        """Bitrate sent since the last call (media + retransmissions + probes), smoothed."""
        octets = self.octets_sent + self.retransmitted_octets + self.probe_octets
        if self._rate_at:
            span = now_s - self._rate_at
            if span > 0.05:
                rate = (octets - self._rate_last) * 8 / span
                self.bitrate_bps = int(0.5 * self.bitrate_bps + 0.5 * rate)
            else:
                return self.bitrate_bps
        self._rate_at = now_s
        self._rate_last = octets
        return self.bitrate_bps

    # -- RTCP ------------------------------------------------------------------------------

    def sender_report(self, now_s: float) -> bytes | None:
        """An SR + SDES whose NTP/RTP pair comes from the publisher's own SR, so lip sync holds.

        The publisher's NTP time for its last SR is carried forward by the time elapsed since,
        and its RTP time is translated by the forwarder's timestamp offset.
        """
        fw = self.forwarder
        if fw is None or not self.started or not fw.synced or fw.current < 0:
            return None  # before the offsets are chosen, the RTP clock would be wrong
        stats = fw.producer.layers[fw.current].stats
        if stats is None or not stats.last_sr_arrival:
            return None
        elapsed = now_s - stats.last_sr_arrival
        ntp = stats.last_sr_ntp + int(elapsed * NTP_FRACTION)
        rtp_ts = (stats.last_sr_rtp + fw.ts_offset + int(elapsed * self.clock_rate)) & 0xFFFFFFFF
        self._sr_sent[ntp_middle(ntp)] = now_s
        if len(self._sr_sent) > 8:
            self._sr_sent.pop(next(iter(self._sr_sent)))
        sr = SenderReport(self.ssrc, ntp, rtp_ts, self.packets_sent, self.octets_sent)
        return sr.serialize() + Sdes([(self.ssrc, self.cname)]).serialize()

    def on_report_block(self, block: ReportBlock, now_s: float) -> int:
        """Loss and RTT from a receiver report; returns the packets sent since the last one."""
        sent = self.packets_sent - self._packets_at_report
        self._packets_at_report = self.packets_sent
        self.fraction_lost = block.fraction_lost
        if block.fraction_lost >= NOTABLE_LOSS:
            self.loss_seen_at = now_s
        self.packets_lost = block.packets_lost
        self.jitter = block.jitter
        sent_at = self._sr_sent.get(block.lsr) if block.lsr else None
        if sent_at is not None:
            rtt = now_s - sent_at - block.dlsr / 65536
            if rtt >= 0:
                self.rtt_s = rtt if self.rtt_s is None else 0.8 * self.rtt_s + 0.2 * rtt
                samples = self._rtt_samples
                samples.append((now_s, rtt))
                while samples and samples[0][0] < now_s - BASE_RTT_WINDOW_S:
                    samples.popleft()
        return sent

    def stats(self) -> dict:
        return {
            "mid": self.mid,
            "kind": self.kind,
            "ssrc": self.ssrc,
            "track_id": self.forwarder.producer.id if self.forwarder else None,
            "packets_sent": self.packets_sent,
            "octets_sent": self.octets_sent,
            "retransmitted": self.retransmitted,
            "retransmissions_skipped": self.retransmissions_skipped,
            "keyframes_from_cache": self.keyframes_from_cache,
            "recent_keyframe_switches": self.recent_keyframe_switches,
            "fraction_lost": self.fraction_lost / 256,
            "packets_lost": self.packets_lost,
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 1),
            "remb_bps": self.remb_bps,
            "bitrate_bps": self.bitrate_bps,
            "layer_switches": self.layer_switches,
            "retransmitted_octets": self.retransmitted_octets,
            "probe_packets": self.probe_packets,
            "probe_octets": self.probe_octets,
            "playout_delay_ms": self.playout_delay[0] * 10 if self.playout_delay else None,
            "red": self.red_source_pt >= 0,  # audio forwarded as RED (else plain Opus)
            **self._layer_stats(),
        }

    def _layer_stats(self) -> dict:
        fw = self.forwarder
        if self.kind != "video" or fw is None:
            return {}
        layer = fw.layer
        selector = fw.selector
        target = selector.target if selector is not None else None
        return {
            "spatial_layer": layer[0] if layer else None,
            "temporal_layer": layer[1] if layer else None,
            "target_spatial": target.spatial if target else (None if selector else 0),
            "target_temporal": target.temporal if target else None,
            "layers_available": len(fw.producer.layers),
            "paused": fw.paused,
            "dropped_temporal": fw.dropped_temporal,
        }


class Forwarder:
    """Producer -> DownTrack: picks the layer, rewrites numbering, answers NACKs.

    For a single-stream track the Forwarder maps sequence numbers and timestamps with two
    offsets. For a simulcast track it forwards one spatial layer at a time (`current`), chosen
    by a `LayerSelector` from the subscriber's bandwidth estimate and requested quality: a
    switch happens on a keyframe of the target layer, the offsets are re-chosen so that the
    subscriber sees one continuous stream, and VP8 picture ids/TL0PICIDX are rewritten to
    continue too. Frames of temporal layers above the one allowed are dropped, closing the
    sequence-number and picture-id gaps so the subscriber neither NACKs nor waits for them.
    Every packet sent is remembered in a small ring (out seq -> layer, in seq, timestamp,
    picture id) so NACKs and probes resend exactly the bytes that were sent.
    """

    __slots__ = (
        "producer",
        "downtrack",
        "selector",
        "current",
        "max_tid",
        "pending_tid",
        "seq_offset",
        "ts_offset",
        "in_ssrc",
        "in_highest_seq",
        "synced",
        "needs_keyframe",
        "closed",
        "paused",
        "dropped_waiting_keyframe",
        "dropped_temporal",
        "dropped_draining",
        "primed",
        "start_out_ts",
        "resume_ts",
        "munging",
        "on_layer_change",
        "_dropped_seqs",
        "filtering",
        "_ring",
        "_resent_at",
    )

    def __init__(self, producer: Producer, downtrack: DownTrack, selector=None) -> None:
        self.producer = producer
        self.downtrack = downtrack
        self.selector = selector if producer.simulcast else None
        if self.selector is not None:
            self.selector.on_switch = self._on_switch
        # spatial layer forwarded now (-1: none yet, simulcast waits for a keyframe)
        self.current = -1 if self.selector is not None else 0
        self.max_tid = NO_TEMPORAL_LIMIT
        self.pending_tid = NO_TEMPORAL_LIMIT
        self.filtering = False  # a temporal limit is (or is about to be) applied
        self.seq_offset = 0
        self.ts_offset = 0
        self.in_ssrc = -1
        self.in_highest_seq = 0
        self.synced = False
        self.needs_keyframe = producer.kind == "video"
        self.closed = False
        self.paused = False  # video cut entirely (the link cannot carry even the lowest layer)
        self.dropped_waiting_keyframe = 0
        self.dropped_temporal = 0
        self.dropped_draining = 0  # packets not sent while a severe down switch was pending
        self.primed = False  # the producer's cached keyframe was sent (once per forwarder)
        self.start_out_ts = -1  # outgoing timestamp of the frame the current source began on
        self.resume_ts = -1  # after the cached keyframe: live again from the frame after this
        # VP8 picture ids are rewritten once the stream continues another source or frames
        # were dropped; before that the payload goes out untouched.
        self.munging = producer.simulcast and producer.is_vp8
        self.on_layer_change: Callable[[Forwarder, str], None] | None = None
        self._dropped_seqs: list[int] = []  # recent dropped input seqs (temporal filtering)
        # out seq & RING_MASK -> (out seq, in seq, spatial layer, out timestamp, out picture
        # id, out TL0PICIDX; -1 when the payload went out untouched)
        self._ring: list[tuple[int, int, int, int, int, int] | None] = [None] * RING_SIZE
        self._resent_at = array("d", [-1.0]) * RING_SIZE  # by ring slot: last NACK resend

    # -- the hot path -----------------------------------------------------------------------

    def forward(
        self,
        data: bytes,
        h: RtpHeader,
        keyframe: bool,
        now_s: float,
        enc: Encoding | None = None,
        vp8: Vp8Info | None = None,
    ) -> None:
        dt = self.downtrack
        if not dt.negotiated or self.paused:
            return
        if enc is not None and enc.spatial != self.current:
            if not keyframe or not self._switch_to(enc.spatial, now_s):
                return
        elif self.selector is not None and self.selector.draining:
            self.synced = False  # (resuming this layer, if it comes to that, needs a keyframe)
            self.dropped_draining += 1
            return
        seq_in = h.sequence_number
        newer = False
        if self.synced and h.ssrc == self.in_ssrc:
            delta = (seq_in - self.in_highest_seq) & 0xFFFF
            if delta < 0x8000:
                if delta > RESTART_SEQ_JUMP:
                    self.synced = False  # the publisher restarted its stream on this SSRC
                elif delta:
                    self.in_highest_seq = seq_in
                    newer = True
            elif 0x10000 - delta > RESTART_SEQ_JUMP:
                self.synced = False  # restarted with lower numbers: not a late packet
        else:
            self.synced = False
        if not self.synced:
            # live again after the cached keyframe, on the stream that keyframe came from
            resuming = self.resume_ts >= 0 and h.ssrc == self.in_ssrc
            if self.needs_keyframe and not keyframe:
                if self.resume_ts >= 0 and h.timestamp != self.resume_ts:
                    self.resume_ts = -1  # a new frame after the cached keyframe: go live
                elif not self.primed and self.prime(now_s):
                    self.forward(data, h, keyframe, now_s, enc, vp8)
                    return
                else:
                    self.dropped_waiting_keyframe += 1
                    self.producer.request_keyframe(now_s, max(self.current, 0))
                    return
            self.resume_ts = -1
            self._rebase(h, now_s, vp8, resuming)
            newer = True
        if self.filtering and vp8 is not None:
            if vp8.start_of_frame and self.pending_tid != self.max_tid:
                # down at any frame; up only where the decoder can follow (TL0 or sync frame)
                if self.pending_tid < self.max_tid or vp8.layer_sync or vp8.tid <= 0:
                    self.max_tid = self.pending_tid
                    self.filtering = self.max_tid != NO_TEMPORAL_LIMIT
            if vp8.tid > self.max_tid:
                if newer:
                    self.seq_offset = (self.seq_offset - 1) & 0xFFFF
                    dropped = self._dropped_seqs
                    dropped.append(seq_in)
                    if len(dropped) > MAX_DROPPED_REMEMBERED:
                        del dropped[0]
                if dt.munger is not None and dt.munger.drop_frame(vp8.picture_id):
                    self.munging = True
                self.dropped_temporal += 1
                return
        offset = self.seq_offset
        if not newer and self._dropped_seqs:
            # a late packet (e.g. a repaired loss): it keeps the number it would have had
            for d in self._dropped_seqs:
                if 0 < (d - seq_in) & 0xFFFF < 0x8000:
                    offset += 1
        out_seq = (seq_in + offset) & 0xFFFF
        out_ts = (h.timestamp + self.ts_offset) & 0xFFFFFFFF
        # (_send inlined: this is the per-packet, per-subscriber path)
        payload = None
        pid = tl0 = -1
        if self.munging and vp8 is not None and dt.munger is not None:
            payload, pid, tl0 = self._rewritten(data, h, vp8)
        elif h.payload_type == dt.red_source_pt:
            payload = self.producer.red_payload_for(data, h, dt.red_block_pt)
        self._ring[out_seq & RING_MASK] = (
            out_seq,
            seq_in,
            self.current if enc is None else enc.spatial,
            out_ts,
            pid,
            tl0,
        )
        dt.send_media(data, h, out_seq, out_ts, now_s, payload)

    def _send(
        self,
        data: bytes,
        h: RtpHeader,
        out_seq: int,
        out_ts: int,
        now_s: float,
        vp8: Vp8Info | None,
        spatial: int,
    ) -> None:
        dt = self.downtrack
        payload = None
        pid = tl0 = -1
        if self.munging and vp8 is not None and dt.munger is not None:
            payload, pid, tl0 = self._rewritten(data, h, vp8)
        self._ring[out_seq & RING_MASK] = (out_seq, h.sequence_number, spatial, out_ts, pid, tl0)
        dt.send_media(data, h, out_seq, out_ts, now_s, payload)

    def _rewritten(
        self, data: bytes, h: RtpHeader, vp8: Vp8Info
    ) -> tuple[bytearray | None, int, int]:
        """The payload with its picture id/TL0PICIDX continued for this subscriber, and those
        ids; (None, -1, -1) when they come out unchanged (the payload goes out untouched)."""
        pid, tl0 = self.downtrack.munger.map(vp8.picture_id, vp8.tl0picidx)
        if pid == vp8.picture_id and tl0 == vp8.tl0picidx:
            return None, -1, -1
        payload = bytearray(memoryview(data)[h.payload_offset :])
        rewrite_vp8(payload, 0, vp8, pid, tl0)
        return payload, pid, tl0

    # -- layers -------------------------------------------------------------------------------

    def _switch_to(self, spatial: int, now_s: float) -> bool:
        """A keyframe of another layer: move to it if the selector wants that layer now."""
        selector = self.selector
        if selector is None or not selector.on_keyframe(spatial, now_s):
            return False
        current = selector.current
        if current is None or current.spatial != spatial:
            return False
        self.current = spatial
        self.synced = False  # re-chosen offsets on this keyframe
        return True

    def _on_switch(self, old, new, reason: str) -> None:
        """LayerSelector callback: apply the temporal part, tell whoever listens."""
        layers = self.producer.layers
        top = layers[new.spatial].temporal_layers - 1 if new.spatial < len(layers) else 0
        tid = NO_TEMPORAL_LIMIT if new.temporal >= top else new.temporal
        if old is None or old.spatial != new.spatial:
            self.pending_tid = self.max_tid = tid  # a new layer starts filtered at once
        else:
            self.pending_tid = tid
        self.filtering = tid != NO_TEMPORAL_LIMIT or self.max_tid != NO_TEMPORAL_LIMIT
        self.downtrack.layer_switches += 1
        if self.on_layer_change is not None:
            try:
                self.on_layer_change(self, reason)
            except Exception:
                logger.exception("layer change listener failed")

    @property
    def layer(self) -> tuple[int, int] | None:
        """(spatial, temporal) forwarded now, None before the first keyframe."""
        if self.selector is None:
            return (0, self.max_tid if self.max_tid < NO_TEMPORAL_LIMIT else -1)
        current = self.selector.current
        return None if current is None else (current.spatial, current.temporal)

    # -- start-up -----------------------------------------------------------------------------

    def prime(self, now_s: float) -> bool:
        """Start this subscriber on the producer's cached keyframe instead of waiting for one.

        The cached packets go out at once, numbered as this DownTrack continues. If the
        publisher has sent nothing since, live packets simply follow; otherwise live forwarding
        resumes at the next frame with sequence numbers that go on without a gap (the skipped
        frames are never announced, so nothing is NACKed) and timestamps advanced by the time
        elapsed. Those frames still refer to frames the subscriber never got, so a fresh
        keyframe is asked for; a browser shows the cached picture until it arrives.
        For a simulcast track the keyframe is that of the layer the selector targets (or the
        nearest lower one that has a cached keyframe).
        Returns False, having sent nothing, without a fresh cached keyframe or before the
        transport is up.
        """
        dt = self.downtrack
        if self.synced or self.primed or not dt.negotiated:
            return False
        spatial, packets = self._cached_keyframe(now_s)
        if not packets:
            return False
        if self.selector is not None and self.current != spatial:
            if not self._switch_to(spatial, now_s):
                return False
        if not self._send_from_cache(packets, spatial, now_s):
            self.synced = False  # not connected yet: try again later
            return False
        self.primed = True
        dt.keyframes_from_cache += 1
        last = packets[-1][1]
        self.in_highest_seq = last.sequence_number
        newest = self.producer.newest_packet(spatial)
        if newest is not None and newest.sequence_number != last.sequence_number:
            self.synced = False
            self.resume_ts = newest.timestamp
            self.producer.want_keyframe(now_s, spatial)
        return True

    def _send_from_cache(self, packets: list | tuple, spatial: int, now_s: float) -> bool:
        """Send cached packets of `spatial` (a keyframe first), numbered to follow what the
        subscriber saw; False if nothing could be sent (the transport is not up yet)."""
        dt = self.downtrack
        vp8 = Vp8Info() if self.producer.is_vp8 else None
        first = packets[0]
        if vp8 is not None:
            parse_vp8(memoryview(first[0])[first[1].payload_offset :], vp8)
        self._rebase(first[1], now_s, vp8)
        sent_before = dt.packets_sent
        for data, h in packets:
            if vp8 is not None and parse_vp8(memoryview(data)[h.payload_offset :], vp8) is None:
                vp8_now = None
            else:
                vp8_now = vp8
            self._send(
                data,
                h,
                (h.sequence_number + self.seq_offset) & 0xFFFF,
                (h.timestamp + self.ts_offset) & 0xFFFFFFFF,
                now_s,
                vp8_now,
                spatial,
            )
            if dt.packets_sent == sent_before:
                return False
        return True

    def switch_down_on_recent_keyframe(self, now_s: float) -> bool:
        """Start a pending move down on the target layer's keyframe that arrived a moment ago.

        Browsers key every simulcast layer on one request and ignore another for 300 ms
        (Chrome). When a falling link takes the target down in two steps (h, then q a few
        tens of ms later), q's keyframe has often just gone by, answering the request for h:
        waiting for the next one freezes the picture 0.3-0.5 s longer (weak-link lab). If
        that keyframe is cached, complete and recent, and every packet of the layer since is
        still in the packet cache, they all go out now and the layer continues live.
        A target below the layer's full frame rate takes the keyframe alone (what follows it
        would need the temporal filter replayed).
        """
        selector = self.selector
        dt = self.downtrack
        if selector is None or self.closed or not dt.started:
            return False
        target, current = selector.target, selector.current
        if target is None or current is None or target.spatial >= current.spatial:
            return False
        layers = self.producer.layers
        if not 0 <= target.spatial < len(layers):
            return False
        enc = layers[target.spatial]
        if enc.cache is None:
            return False
        keyframe = enc.cached_keyframe(now_s, RECENT_KEYFRAME_S)
        newest = enc.newest_packet()
        if not keyframe or newest is None:
            return False
        packets = list(keyframe)
        seq = (keyframe[-1][1].sequence_number + 1) & 0xFFFF
        end = (newest.sequence_number + 1) & 0xFFFF
        filtered = target.temporal < enc.temporal_layers - 1
        while seq != end:
            entry = enc.cache.get(seq)
            if entry is None or filtered or len(packets) >= MAX_RECENT_KEYFRAME_PACKETS:
                return False  # a gap, or too much to replay: wait for a fresh keyframe
            packets.append(entry)
            seq = (seq + 1) & 0xFFFF
        if not self._switch_to(target.spatial, now_s):
            return False
        if not self._send_from_cache(packets, target.spatial, now_s):
            self.synced = False
            return False
        self.in_highest_seq = packets[-1][1].sequence_number
        dt.recent_keyframe_switches += 1
        return True

    def _cached_keyframe(self, now_s: float):
        producer = self.producer
        if self.selector is None:
            return 0, producer.cached_keyframe(now_s, 0)
        target = self.selector.target
        top = target.spatial if target is not None else len(producer.layers) - 1
        for spatial in range(top, -1, -1):
            packets = producer.cached_keyframe(now_s, spatial)
            if packets:
                return spatial, packets
        return -1, ()

    def _rebase(
        self, h: RtpHeader, now_s: float, vp8: Vp8Info | None = None, resuming: bool = False
    ) -> None:
        """Choose offsets so this packet follows the last one the subscriber saw.

        `resuming`: the stream the cached keyframe came from goes on live. Its picture ids
        continue that keyframe's as the encoder numbered them, so they need no rewriting
        (the munger's offsets would be zero: nothing was mapped yet) and the payload goes
        out untouched, as for a subscriber that started on a live keyframe.
        """
        dt = self.downtrack
        if not dt.packets_sent:
            dt.first_packet_s = now_s  # (overwritten until a send succeeds)
        if dt.started:
            next_seq = (dt.last_seq + 1) & 0xFFFF
            gap = max(1, int((now_s - dt.last_send_s) * dt.clock_rate))
            next_ts = (dt.last_ts + gap) & 0xFFFFFFFF
        else:
            next_seq = h.sequence_number  # first stream on this m-line: keep numbering
            next_ts = h.timestamp
        self.seq_offset = (next_seq - h.sequence_number) & 0xFFFF
        self.ts_offset = (next_ts - h.timestamp) & 0xFFFFFFFF
        self.start_out_ts = next_ts
        self._dropped_seqs.clear()
        self.in_ssrc = h.ssrc
        self.in_highest_seq = h.sequence_number
        self.synced = True
        if vp8 is not None and vp8.picture_id >= 0:
            if dt.munger is None:
                dt.munger = PictureIdMunger(15 if vp8.picture_id_bits == 15 else 7)
            elif dt.started and not (resuming and not self.munging):
                self.munging = True  # a second source on this m-line: ids must continue
            dt.munger.switch_source(vp8.picture_id, vp8.tl0picidx)

    # -- feedback from the subscriber ---------------------------------------------------------

    def on_nack(self, out_seqs: list[int]) -> int:
        """Resend what the subscriber lost, exactly as it was sent; returns how many.

        Not packets of a layer we have since left (the subscriber restarts on the new layer's
        keyframe), and not beyond the DownTrack's retransmission budget: on a congested link a
        storm of retransmissions would only deepen the congestion that lost the packets. The
        packets of the keyframe the current layer started on are exempt. A packet is resent at
        most once per RESEND_SPACING_S, so the work a NACK causes is bounded whatever it lists.
        """
        if self.producer.kind != "video":
            return 0
        dt = self.downtrack
        sent = 0
        now = time.monotonic()
        resent_at = self._resent_at
        for out_seq in out_seqs:
            slot = out_seq & RING_MASK
            entry = self._ring[slot]
            if entry is None or entry[0] != out_seq or entry[2] != self.current:
                continue
            if now - resent_at[slot] < RESEND_SPACING_S:  # asked again at once: not yet
                dt.retransmissions_skipped += 1
                continue
            # the keyframe this layer started on is what the viewer waits for: never held
            # back by the budget (lab: a q keyframe repaired at 70 kbit/s froze 0.6 s longer)
            if entry[3] != self.start_out_ts and not dt.take_rtx_budget(now):
                dt.retransmissions_skipped += 1
                continue
            if self.resend(out_seq):
                resent_at[slot] = now
                sent += 1
        return sent

    def resend(self, out_seq: int, cluster: int = -1) -> int:
        """Resend one packet sent earlier (RTX when negotiated); returns the bytes sent.

        `cluster` >= 0 marks it as part of a bandwidth probe.
        """
        entry = self._ring[out_seq & RING_MASK]
        if entry is None or entry[0] != out_seq:
            return 0
        _, seq_in, layer, out_ts, pid, tl0 = entry
        producer = self.producer
        if not 0 <= layer < len(producer.layers):
            return 0
        encoding = producer.layers[layer]
        cached = encoding.cache.get(seq_in) if encoding.cache is not None else None
        if cached is None:
            return 0
        data, h = cached
        if h.ssrc != encoding.ssrc:
            return 0
        payload = None
        if pid >= 0 or tl0 >= 0:
            vp8 = Vp8Info()
            if parse_vp8(memoryview(data)[h.payload_offset :], vp8) is not None:
                payload = bytearray(memoryview(data)[h.payload_offset :])
                rewrite_vp8(payload, 0, vp8, pid, tl0)
        sent = self.downtrack.send_retransmission(
            data, h, out_seq, out_ts, payload=payload, cluster=cluster
        )
        return len(data) - h.payload_offset if sent else 0

    def recent_out_seqs(self, count: int) -> list[int]:
        """The last `count` sequence numbers sent (for probes made of retransmissions)."""
        dt = self.downtrack
        if not dt.started:
            return []
        last = dt.last_seq
        return [(last - k) & 0xFFFF for k in range(min(count, RING_SIZE) - 1, -1, -1)]

    def on_keyframe_request(self) -> None:
        self.producer.request_keyframe(None, self.current if self.current >= 0 else None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.producer.detach(self)
        if self.downtrack.forwarder is self:
            self.downtrack.forwarder = None


def fan_out(
    forwarders: tuple,
    data: bytes,
    h: RtpHeader,
    keyframe: bool,
    now_s: float,
    enc: Encoding,
    vp8: Vp8Info | None,
    on_error: Callable[[object], None],
) -> None:
    """Every copy of one incoming packet, in one call: the fan-out's per-copy loop.

    Most copies are the steady case: the forwarder is synced on this stream and layer, the
    packet is newer than any before it (not late, not a restart's jump), no temporal filter
    running, no RED variant. Those are numbered, remembered in the NACK ring and sent right
    here, with what is the same for every copy (payload view, abs-send-time bytes, audio
    level) worked out once per packet and no method hop per copy; this is
    `Forwarder.forward` + `DownTrack.send_media` for that case, byte for byte (keep them in
    step: tests/test_fanout_path.py runs scenarios both ways and compares what was sent).
    Everything else (start-up, keyframe waits, layer switches, late packets, temporal
    filtering, recording taps) goes through `forward`. A copy that raises is reported to
    `on_error` and costs the others nothing.
    """
    seq_in = h.sequence_number
    ssrc = h.ssrc
    spatial = enc.spatial
    ts_in = h.timestamp
    marker = h.marker
    b0_plain = 0xA0 if h.padding_size else 0x80
    b0_ext = b0_plain | 0x10
    body: memoryview | None = None
    body_len = 0
    abs3 = b""
    level = h.audio_level if h.audio_level >= 0 else 127
    pack = RTP_FIXED.pack
    for fw in forwarders:
        try:
            if (
                type(fw) is not Forwarder
                or not fw.synced
                or fw.in_ssrc != ssrc
                or fw.current != spatial
                or fw.paused
                or (fw.filtering and vp8 is not None)
                or not 0 < (seq_in - fw.in_highest_seq) & 0xFFFF <= RESTART_SEQ_JUMP
                or (fw.selector is not None and fw.selector.draining)
            ):
                fw.forward(data, h, keyframe, now_s, enc, vp8)
                continue
            dt = fw.downtrack
            pt = dt.payload_type
            if pt < 0 or dt.red_source_pt >= 0:
                fw.forward(data, h, keyframe, now_s, enc, vp8)
                continue
            fw.in_highest_seq = seq_in
            out_seq = (seq_in + fw.seq_offset) & 0xFFFF
            out_ts = (ts_in + fw.ts_offset) & 0xFFFFFFFF
            if body is None:
                body = memoryview(data)[h.payload_offset :]
                body_len = len(body)
            payload = body
            if fw.munging and vp8 is not None and dt.munger is not None:
                rewritten, pid, tl0 = fw._rewritten(data, h, vp8)
                if rewritten is not None:
                    payload = rewritten
                fw._ring[out_seq & RING_MASK] = (out_seq, seq_in, spatial, out_ts, pid, tl0)
            else:
                fw._ring[out_seq & RING_MASK] = (out_seq, seq_in, spatial, out_ts, -1, -1)
            ext = dt._ext_template
            if ext:
                b0 = b0_ext
                i = dt._abs_send_time_at
                if i >= 0:
                    if not abs3:
                        v = int(now_s * 262144)
                        abs3 = bytes(((v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF))
                    ext[i : i + 3] = abs3
                i = dt._audio_level_at
                if i >= 0:
                    ext[i] = level
                i = dt._twcc_at
                if i >= 0:
                    tseq = dt.sequencer.next_seq(12 + len(ext) + body_len, now_s)
                    ext[i] = tseq >> 8
                    ext[i + 1] = tseq & 0xFF
            else:
                b0 = b0_plain
            packet = b"".join(
                (pack(b0, pt | 0x80 if marker else pt, out_seq, out_ts, dt.ssrc), ext, payload)
            )
            if dt._send(packet):
                dt.packets_sent += 1
                dt.octets_sent += body_len
            elif not dt.packets_sent:
                fw.synced = False  # (as in send_media: restart on a keyframe once connected)
            if not dt.started or 0 < (out_seq - dt.last_seq) & 0xFFFF < 0x8000:
                dt.last_seq = out_seq
                dt.last_ts = out_ts
                dt.last_send_s = now_s
                dt.started = True
        except Exception:  # one broken subscriber must not cost the others this packet
            on_error(fw)


def bind(producer: Producer, downtrack: DownTrack, selector=None) -> Forwarder:
    """Start forwarding `producer` into `downtrack` (replacing whatever it carried).

    A simulcast track needs a LayerSelector (the subscriber session's, fed with its bandwidth
    estimate); without one the forwarder makes its own that always aims for the top layer.
    """
    if downtrack.forwarder is not None:
        downtrack.forwarder.close()
    if producer.simulcast and selector is None:
        selector = top_layer_selector(producer)
    forwarder = Forwarder(producer, downtrack, selector)
    downtrack.forwarder = forwarder
    downtrack.update_red_source()
    producer.attach(forwarder)
    if producer.kind == "video":
        producer.request_keyframe()
    return forwarder


def top_layer_selector(producer: Producer) -> LayerSelector:
    """A selector that always wants the top layer (no bandwidth estimate: BWE off, WHEP...)."""
    selector = LayerSelector(LayerConfig(probe_required=False, up_hold_s=0.0))
    feed_layer_bitrates(selector, producer, time.monotonic())
    selector.update(UNLIMITED_BPS, time.monotonic())
    return selector


def feed_layer_bitrates(selector, producer: Producer, now_s: float) -> None:
    """The producer's measured layer bitrates, with nominal values for layers just started
    (not measured yet) and for every layer before any media arrived, so a subscriber bound
    early still has a plan."""
    measured = producer.layer_bitrates(now_s)
    nothing_yet = not any(e.packets for e in producer.layers)
    for encoding in producer.layers:
        rates = measured.get(encoding.spatial)
        if rates is None and (nothing_yet or now_s - encoding.last_packet_s < 1.0):
            nominal = NOMINAL_LAYER_BPS[min(encoding.spatial, len(NOMINAL_LAYER_BPS) - 1)]
            rates = split_temporal(nominal, encoding.temporal_layers)
        selector.set_layer_bitrates(encoding.spatial, rates or [])
