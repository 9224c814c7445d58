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
from collections.abc import Callable
from typing import TYPE_CHECKING

from .rtcp import ReportBlock, Sdes, SenderReport, ntp_middle
from .rtp import RTP_FIXED, RtpHeader

if TYPE_CHECKING:
    from .producer import Producer

logger = logging.getLogger(__name__)

NTP_FRACTION = 1 << 32
RESTART_SEQ_JUMP = 3000
PRIMED_NACK_WINDOW_S = 5.0  # how long NACKs for a cached keyframe sent to a new subscriber count


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
        self._ext_template = bytearray()
        self._abs_send_time_at = -1
        self._audio_level_at = -1
        self.forwarder: Forwarder | None = None
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
    ) -> None:
        """Set what negotiation agreed for this m-line (payload types and extension ids)."""
        from .rtp import EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_MID

        self.mime_type = mime_type
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.rtx_payload_type = rtx_payload_type if self.rtx_ssrc else None
        body = bytearray()
        mid_id = extension_ids.get(EXT_MID, 0)
        if mid_id:
            mid = self.mid.encode()
            body += bytes([(mid_id << 4) | (len(mid) - 1)]) + mid
        self._abs_send_time_at = self._audio_level_at = -1
        abs_id = extension_ids.get(EXT_ABS_SEND_TIME, 0)
        if abs_id and self.kind == "video":
            body.append((abs_id << 4) | 2)
            self._abs_send_time_at = 4 + len(body)
            body += b"\x00\x00\x00"
        level_id = extension_ids.get(EXT_AUDIO_LEVEL, 0)
        if level_id and self.kind == "audio":
            body.append(level_id << 4)
            self._audio_level_at = 4 + len(body)
            body.append(127)
        while len(body) % 4:
            body.append(0)
        self._ext_template = (
            bytearray(struct.pack("!HH", 0xBEDE, len(body) // 4)) + body if body else bytearray()
        )

    # -- sending -----------------------------------------------------------------------------

    def send_media(self, data: bytes, h: RtpHeader, seq: int, ts: int, now_s: float) -> None:
        """Write the subscriber's header in front of the untouched payload and send it."""
        ext = self._ext_template
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
        if h.padding_size:
            b0 |= 0x20
        b1 = self.payload_type | 0x80 if h.marker else self.payload_type
        packet = b"".join(
            (RTP_FIXED.pack(b0, b1, seq, ts, self.ssrc), ext, memoryview(data)[h.payload_offset :])
        )
        if self._send(packet):
            self.packets_sent += 1
            self.octets_sent += len(data) - h.payload_offset
        elif not self.packets_sent and self.forwarder is not None:
            # The transport is not up yet and the subscriber missed this packet (maybe the
            # keyframe): start again on the next keyframe rather than feed it interframes.
            self.forwarder.synced = False
        if not self.started or 0 < (seq - self.last_seq) & 0xFFFF < 0x8000:
            self.last_seq = seq
            self.last_ts = ts
            self.last_send_s = now_s
            self.started = True

    def send_retransmission(self, data: bytes, h: RtpHeader, seq: int, ts: int) -> None:
        """Resend a cached packet: as RTX (RFC 4588) when negotiated, else with its own seq."""
        if self.rtx_payload_type is None or self.rtx_ssrc is None:
            b1 = self.payload_type | 0x80 if h.marker else self.payload_type
            b0 = (0x90 if self._ext_template else 0x80) | (0x20 if h.padding_size else 0)
            packet = b"".join(
                (
                    RTP_FIXED.pack(b0, b1, seq, ts, self.ssrc),
                    self._ext_template,
                    memoryview(data)[h.payload_offset :],
                )
            )
        else:
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            b1 = self.rtx_payload_type | 0x80 if h.marker else self.rtx_payload_type
            end = len(data) - h.padding_size
            packet = b"".join(
                (
                    RTP_FIXED.pack(
                        0x90 if self._ext_template else 0x80, b1, self.rtx_seq, ts, self.rtx_ssrc
                    ),
                    self._ext_template,
                    seq.to_bytes(2, "big"),
                    memoryview(data)[h.payload_offset : end],
                )
            )
        if self._send(packet):
            self.retransmitted += 1

    # -- RTCP ------------------------------------------------------------------------------

    def sender_report(self, now_s: float) -> bytes | None:
        """An SR + SDES whose NTP/RTP pair comes from the publisher's own SR, so lip sync holds.

        The publisher's NTP time for its last SR is carried forward by the time elapsed since,
        and its RTP time is translated by the forwarder's timestamp offset.
        """
        fw = self.forwarder
        if fw is None or not self.started or not fw.synced:
            return None  # before the offsets are chosen, the RTP clock would be wrong
        stats = fw.producer.stats
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

    def on_report_block(self, block: ReportBlock, now_s: float) -> None:
        self.fraction_lost = block.fraction_lost
        self.packets_lost = block.packets_lost
        self.jitter = block.jitter
        sent_at = self._sr_sent.get(block.lsr) if block.lsr else None
        if sent_at is not None:
            rtt = now_s - sent_at - block.dlsr / 65536
            if rtt >= 0:
                self.rtt_s = rtt if self.rtt_s is None else 0.8 * self.rtt_s + 0.2 * rtt

    def stats(self) -> dict:
        return {
            "mid": self.mid,
            "kind": self.kind,
            "ssrc": self.ssrc,
            "track_id": self.forwarder.producer.id if self.forwarder else None,
            "packets_sent": self.packets_sent,
            "octets_sent": self.octets_sent,
            "retransmitted": self.retransmitted,
            "keyframes_from_cache": self.keyframes_from_cache,
            "fraction_lost": self.fraction_lost / 256,
            "packets_lost": self.packets_lost,
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 1),
            "remb_bps": self.remb_bps,
        }


class Forwarder:
    """Producer -> DownTrack: rewrites numbering and answers the subscriber's NACKs."""

    __slots__ = (
        "producer",
        "downtrack",
        "seq_offset",
        "ts_offset",
        "in_ssrc",
        "in_highest_seq",
        "synced",
        "needs_keyframe",
        "closed",
        "dropped_waiting_keyframe",
        "primed",
        "resume_ts",
        "primed_numbering",
    )

    def __init__(self, producer: Producer, downtrack: DownTrack) -> None:
        self.producer = producer
        self.downtrack = downtrack
        self.seq_offset = 0
        self.ts_offset = 0
        self.in_ssrc = -1
        self.in_highest_seq = 0
        self.synced = False
        self.needs_keyframe = producer.kind == "video"
        self.closed = False
        self.dropped_waiting_keyframe = 0
        self.primed = False  # the producer's cached keyframe was sent (once per forwarder)
        self.resume_ts = -1  # after the cached keyframe: live again from the frame after this
        # (first out seq, packets, seq offset, ts offset, until) the cached keyframe went out
        # with, so NACKs for it are answered after live packets were renumbered (for a while:
        # sequence numbers wrap)
        self.primed_numbering: tuple[int, int, int, int, float] | None = None

    def forward(self, data: bytes, h: RtpHeader, keyframe: bool, now_s: float) -> None:
        dt = self.downtrack
        if not dt.negotiated:
            return
        seq_in = h.sequence_number
        if self.synced and h.ssrc == self.in_ssrc:
            delta = (seq_in - self.in_highest_seq) & 0xFFFF
            if delta < 0x8000:
                if delta > RESTART_SEQ_JUMP:
                    self.synced = False  # the publisher restarted its stream on this SSRC
                else:
                    self.in_highest_seq = seq_in
            elif 0x10000 - delta > RESTART_SEQ_JUMP:
                self.synced = False  # restarted with lower numbers: not a late packet
        else:
            self.synced = False
        if not self.synced:
            if self.needs_keyframe and not keyframe:
                if self.resume_ts >= 0 and h.timestamp != self.resume_ts:
                    self.resume_ts = -1  # a new frame after the cached keyframe: go live
                elif not self.primed and self.prime(now_s):
                    self.forward(data, h, keyframe, now_s)
                    return
                else:
                    self.dropped_waiting_keyframe += 1
                    self.producer.request_keyframe(now_s)
                    return
            self.resume_ts = -1
            self._rebase(h, now_s)
        dt.send_media(
            data,
            h,
            (seq_in + self.seq_offset) & 0xFFFF,
            (h.timestamp + self.ts_offset) & 0xFFFFFFFF,
            now_s,
        )

    def prime(self, now_s: float) -> bool:
        """Start this subscriber on the producer's cached keyframe instead of waiting for one.

        The cached packets go out at once, numbered as this DownTrack continues. If the
        publisher has sent nothing since, live packets simply follow; otherwise live forwarding
        resumes at the next frame with sequence numbers that go on without a gap (the skipped
        frames are never announced, so nothing is NACKed) and timestamps advanced by the time
        elapsed. Those frames still refer to frames the subscriber never got, so a fresh
        keyframe is asked for; a browser shows the cached picture until it arrives.
        Returns False, having sent nothing, without a fresh cached keyframe or before the
        transport is up.
        """
        dt = self.downtrack
        if self.synced or self.primed or not dt.negotiated:
            return False
        packets = self.producer.cached_keyframe(now_s)
        if not packets:
            return False
        self._rebase(packets[0][1], now_s)
        sent_before = dt.packets_sent
        for data, h in packets:
            dt.send_media(
                data,
                h,
                (h.sequence_number + self.seq_offset) & 0xFFFF,
                (h.timestamp + self.ts_offset) & 0xFFFFFFFF,
                now_s,
            )
            if dt.packets_sent == sent_before:  # not connected yet: try again later
                self.synced = False
                return False
        self.primed = True
        dt.keyframes_from_cache += 1
        first_out = (packets[0][1].sequence_number + self.seq_offset) & 0xFFFF
        self.primed_numbering = (
            first_out,
            len(packets),
            self.seq_offset,
            self.ts_offset,
            now_s + PRIMED_NACK_WINDOW_S,
        )
        last = packets[-1][1]
        self.in_highest_seq = last.sequence_number
        newest = self.producer.newest_packet()
        if newest is not None and newest.sequence_number != last.sequence_number:
            self.synced = False
            self.resume_ts = newest.timestamp
            self.producer.want_keyframe(now_s)
        return True

    def _rebase(self, h: RtpHeader, now_s: float) -> None:
        """Choose offsets so this packet follows the last one the subscriber saw."""
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
        self.in_ssrc = h.ssrc
        self.in_highest_seq = h.sequence_number
        self.synced = True

    def on_nack(self, out_seqs: list[int]) -> int:
        """Resend what the subscriber lost from the producer's cache; returns how many."""
        cache = self.producer.cache
        if cache is None or not self.synced:
            return 0
        sent = 0
        primed = self.primed_numbering
        if primed is not None and time.monotonic() > primed[4]:
            primed = self.primed_numbering = None
        for out_seq in out_seqs:
            seq_offset, ts_offset = self.seq_offset, self.ts_offset
            if primed is not None and (out_seq - primed[0]) & 0xFFFF < primed[1]:
                seq_offset, ts_offset = primed[2], primed[3]  # a packet of the cached keyframe
            entry = cache.get((out_seq - seq_offset) & 0xFFFF)
            if entry is None:
                continue
            data, h = entry
            if h.ssrc != self.in_ssrc:
                continue
            self.downtrack.send_retransmission(
                data, h, out_seq, (h.timestamp + ts_offset) & 0xFFFFFFFF
            )
            sent += 1
        return sent

    def on_keyframe_request(self) -> None:
        self.producer.request_keyframe()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.producer.detach(self)
        if self.downtrack.forwarder is self:
            self.downtrack.forwarder = None


def bind(producer: Producer, downtrack: DownTrack) -> Forwarder:
    """Start forwarding `producer` into `downtrack` (replacing whatever it carried)."""
    if downtrack.forwarder is not None:
        downtrack.forwarder.close()
    forwarder = Forwarder(producer, downtrack)
    downtrack.forwarder = forwarder
    producer.attach(forwarder)
    if producer.kind == "video":
        producer.request_keyframe()
    return forwarder
