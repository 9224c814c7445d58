"""PublisherSession: the connection on which one participant sends its tracks to the SFU.

The client offers, the SFU answers. Every sending m-line becomes a Producer; a simulcast
m-line (rids with `a=simulcast`, or an `a=ssrc-group:SIM`) becomes one Producer with one
Encoding per layer, and the answer is patched to accept it (aiortc ignores simulcast). Incoming
RTP is routed by SSRC (learned from the SDP, or from the MID and RID extensions of the first
packets: browsers send rids without SSRCs), RTX is unwrapped, and the session sends the
publisher what a good receiver sends: receiver reports, REMB, NACKs for gaps and keyframe
requests (PLI) on behalf of subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from dataclasses import dataclass

from ..config import RtcSettings
from .encoding import Encoding
from .ingress import NackGenerator
from .peer import MediaPeer, NetworkSettings
from .producer import Producer, TrackInfo, new_track_id
from .rtcp import Nack, Pli, ReceiverReport, Remb, ReportBlock, SenderReport, parse_compound
from .rtp import RTP_FIXED, ExtensionIds, RtpHeader
from .sdp import (
    SdpError,
    SimulcastOffer,
    extension_ids,
    negotiated_codec,
    parse_offer,
    parse_simulcast,
    patch_publisher_answer,
    rid_order,
)
from .twcc import TwccRecorder

logger = logging.getLogger(__name__)

NACK_TICK_S = 0.02
# Transport-cc feedback to publishers: how often (libwebrtc sends it every 50-250 ms).
TWCC_FEEDBACK_S = 0.1
# A new subscriber starts on the publisher's last keyframe if it is at most this old (older:
# it waits for the keyframe its PLI asks for).
KEYFRAME_CACHE_S = 3.0


@dataclass
class TrackRequest:
    """What the publisher says about a track it sends (matched by mid, else by kind/order)."""

    mid: str | None = None
    kind: str | None = None
    source: str = ""
    name: str = ""


class PublisherSession:
    def __init__(
        self,
        *,
        identity: str,
        network: NetworkSettings,
        rtc: RtcSettings,
        max_tracks: int,
        label: str = "",
    ) -> None:
        self.identity = identity
        self.rtc = rtc
        self.max_tracks = max_tracks
        self.peer = MediaPeer(
            network, on_rtp=self._on_rtp, on_rtcp=self._on_rtcp, label=label or f"pub:{identity}"
        )
        self.producers: dict[str, Producer] = {}  # by mid
        # ssrc -> (track, encoding, is RTX)
        self._by_ssrc: dict[int, tuple[Producer, Encoding, bool]] = {}
        self._simulcast: dict[str, SimulcastOffer] = {}
        self._ext = ExtensionIds()
        self._offered_ssrcs: dict[str, list[int]] = {}
        self._offered_rtx: dict[int, int] = {}
        self._retired_mids: set[str] = set()
        self._ignored_ssrcs: set[int] = set()
        self._rtcp_ssrc = random.getrandbits(32)
        self._task: asyncio.Task | None = None
        # set when a producer sees a gap: the RTCP loop ticks for NACKs only while gaps exist
        self._gap_seen = asyncio.Event()
        # transport-cc toward the publisher: its browser then runs its own congestion control
        # (and simulcast layer allocation) on the uplink from our arrival reports
        self._twcc: TwccRecorder | None = None
        self._twcc_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.closed = False

    # -- negotiation ---------------------------------------------------------------------------

    async def negotiate(
        self, offer_sdp: str, requests: list[TrackRequest] | None = None
    ) -> tuple[str, list[Producer]]:
        """Answer the publisher's (re-)offer; returns the answer and the tracks it added.

        Raises SdpError for an offer we cannot accept.
        """
        offered = parse_offer(offer_sdp)
        sending = [m for m in offered if m.direction in ("sendonly", "sendrecv")]
        known = set(self.producers)
        if len([m for m in sending if m.mid not in known]) + len(known) > self.max_tracks:
            raise SdpError(f"too many tracks: at most {self.max_tracks} per participant")
        async with self._lock:
            for m in offered:
                self._offered_ssrcs[m.mid] = m.ssrcs
                self._offered_rtx.update(m.rtx_pairs)
            simulcast = parse_simulcast(offer_sdp)
            self._simulcast.update(simulcast)
            try:
                answer = await self.peer.answer(offer_sdp)
            except SdpError:
                raise
            except Exception as exc:
                raise SdpError(f"cannot negotiate: {exc}") from exc
            answer = patch_publisher_answer(
                answer,
                simulcast,
                transport_cc=self.rtc.publisher_transport_cc,
                red=self.rtc.audio_red,
                opus_fec=self.rtc.opus_fec,
            )
            added = self._create_producers(requests or [])
            if self.rtc.publisher_transport_cc and self._ext.transport_cc and self._twcc is None:
                self._twcc = TwccRecorder(sender_ssrc=self._rtcp_ssrc)
                self._twcc_task = asyncio.ensure_future(self._twcc_loop())
        if self._task is None:
            self._task = asyncio.ensure_future(self._rtcp_loop())
        return answer, added

    def _create_producers(self, requests: list[TrackRequest]) -> list[Producer]:
        added: list[Producer] = []
        uri_ids: dict[str, int] = {}
        unclaimed = list(requests)
        for transceiver in self.peer.pc.getTransceivers():
            uri_ids.update(extension_ids(transceiver))
            mid = transceiver.mid
            if mid is None or mid in self.producers or mid in self._retired_mids:
                continue
            if transceiver.currentDirection not in ("recvonly", "sendrecv"):
                continue
            codec = negotiated_codec(transceiver)
            if codec is None:
                continue
            sim = self._simulcast.get(mid)
            if (
                self.rtc.audio_red
                and sim is not None
                and sim.red is not None
                and sim.red[1] == codec.payload_type
            ):
                codec = dataclasses.replace(codec, red_payload_type=sim.red[0])
            request = _claim_request(unclaimed, mid, transceiver.kind)
            info = TrackInfo(
                id=new_track_id(),
                kind=transceiver.kind,
                publisher=self.identity,
                source=request.source if request else "",
                name=request.name if request else "",
                codec=codec.mime_type,
            )
            rids: list[str | None] | None = None
            if sim is not None and sim.simulcast and transceiver.kind == "video":
                rids = list(rid_order(sim.rids)) if sim.rids else [None] * len(sim.sim_ssrcs)
            producer = Producer(
                info,
                codec,
                send_keyframe_request=self._send_pli,
                cache_size=self.rtc.packet_cache_size,
                pli_throttle_s=self.rtc.pli_throttle_ms / 1000,
                nack_factory=self._new_nack_generator,
                keyframe_cache_s=KEYFRAME_CACHE_S,
                rids=rids,
            )
            self.producers[mid] = producer
            self._map_offered_ssrcs(producer, mid, sim)
            added.append(producer)
        for sim in self._simulcast.values():
            for uri, ext_id in sim.extmaps.items():
                uri_ids.setdefault(uri, ext_id)
        self._ext = ExtensionIds.from_map(uri_ids)
        return added

    def _new_nack_generator(self) -> NackGenerator:
        return NackGenerator(
            max_age_s=self.rtc.nack_max_age_ms / 1000, retry_s=self.rtc.nack_retry_ms / 1000
        )

    def _map_offered_ssrcs(self, producer: Producer, mid: str, sim: SimulcastOffer | None) -> None:
        """SSRCs the SDP announces: SIM groups give one per layer, FID groups their RTX."""
        layer_of: dict[int, Encoding] = {}
        if sim is not None and sim.sim_ssrcs and producer.simulcast:
            for i, ssrc in enumerate(sim.sim_ssrcs[: len(producer.layers)]):
                layer_of[ssrc] = producer.layers[i]
        elif not producer.simulcast:
            for ssrc in self._offered_ssrcs.get(mid, []):
                if ssrc not in self._offered_rtx:
                    layer_of.setdefault(ssrc, producer.layers[0])
        for ssrc, encoding in layer_of.items():
            self._by_ssrc.setdefault(ssrc, (producer, encoding, False))
        for rtx, media in self._offered_rtx.items():
            encoding = layer_of.get(media)
            if encoding is not None:
                self._by_ssrc[rtx] = (producer, encoding, True)
                encoding.rtx_ssrc = rtx

    def unpublish(self, track_id: str) -> Producer | None:
        for mid, producer in list(self.producers.items()):
            if producer.id == track_id:
                del self.producers[mid]
                self._retired_mids.add(mid)  # a later re-offer must not revive it
                self._by_ssrc = {s: e for s, e in self._by_ssrc.items() if e[0] is not producer}
                producer.close()
                return producer
        return None

    # -- packets in ------------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, arrival_ms: int) -> None:
        entry = self._by_ssrc.get(int.from_bytes(data[8:12], "big"))
        if entry is None:
            entry = self._learn_ssrc(data)
            if entry is None:
                if self._twcc is not None and len(data) >= 12:
                    self._record_arrival(RtpHeader.parse(data, self._ext))
                return
        producer, encoding, is_rtx = entry
        h = RtpHeader.parse(data, self._ext)
        if h.transport_seq >= 0 and self._twcc is not None:
            self._twcc.on_packet(h.transport_seq, time.monotonic_ns() // 1000)
        if is_rtx:
            unwrapped = self._unwrap_rtx(data, h, producer, encoding)
            if unwrapped is None:
                return
            data, h = unwrapped
            cache = encoding.cache
            if cache is not None and cache.get(h.sequence_number) is not None:
                return  # a copy we already have (e.g. a browser's RTX bandwidth probe)
        producer.on_rtp(data, h, time.monotonic(), encoding)
        if encoding.nack is not None and encoding.nack.missing:
            self._gap_seen.set()

    def _record_arrival(self, h: RtpHeader) -> None:
        """Packets we drop (probes, unknown streams) still count for the sender's estimate."""
        if h.transport_seq >= 0 and self._twcc is not None:
            self._twcc.on_packet(h.transport_seq, time.monotonic_ns() // 1000)

    def _learn_ssrc(self, data: bytes) -> tuple[Producer, Encoding, bool] | None:
        """An SSRC the SDP did not announce: find its track by MID (else by payload type) and
        its layer by RID (RTX: repaired RID)."""
        if len(data) < 12:
            return None
        h = RtpHeader.parse(data, self._ext)
        if h.ssrc in self._ignored_ssrcs:
            return None
        producer = None
        if h.mid is not None:
            mid = h.mid.decode("ascii", "replace")
            if mid in self._retired_mids:
                self._ignored_ssrcs.add(h.ssrc)  # still sent on an unpublished m-line
                return None
            producer = self.producers.get(mid)
        if producer is None:
            candidates = [
                p
                for p in self.producers.values()
                if h.payload_type
                in (p.codec.payload_type, p.codec.rtx_payload_type, p.codec.red_payload_type)
            ]
            if len(candidates) != 1:
                return None
            producer = candidates[0]
        if producer.closed:
            return None
        is_rtx = h.payload_type == producer.codec.rtx_payload_type
        encoding = producer.layers[0]
        if producer.simulcast:
            rid = h.repaired_rid if is_rtx else h.rid
            if rid is None:
                return None  # a layer we cannot place yet: its next packets carry the rid
            found = producer.encoding_for_rid(rid.decode("ascii", "replace"))
            if found is None:
                self._ignored_ssrcs.add(h.ssrc)
                return None
            encoding = found
        if is_rtx:
            encoding.rtx_ssrc = h.ssrc
        entry = (producer, encoding, is_rtx)
        self._by_ssrc[h.ssrc] = entry
        return entry

    @staticmethod
    def _unwrap_rtx(data: bytes, h: RtpHeader, producer: Producer, encoding: Encoding):
        """RFC 4588: the original sequence number leads the payload; rebuild that packet."""
        start = h.payload_offset
        if len(data) - h.padding_size - start < 2 or encoding.ssrc is None:
            return None  # padding-only probe
        osn = (data[start] << 8) | data[start + 1]
        b1 = (0x80 if h.marker else 0) | producer.codec.payload_type
        b0 = data[0] & ~0x20  # RTX padding is not the original's
        original = b"".join(
            (
                RTP_FIXED.pack(b0, b1, osn, h.timestamp, encoding.ssrc),
                data[12:start],
                data[start + 2 : len(data) - h.padding_size],
            )
        )
        oh = RtpHeader.parse(original)
        oh.mid, oh.audio_level, oh.rid = h.mid, h.audio_level, h.repaired_rid
        return original, oh

    def _on_rtcp(self, data: bytes) -> None:
        now = time.monotonic()
        for packet in parse_compound(data):
            if isinstance(packet, SenderReport):
                entry = self._by_ssrc.get(packet.ssrc)
                if entry is not None and not entry[2]:
                    entry[0].on_sender_report(
                        packet.ntp_timestamp, packet.rtp_timestamp, now, packet.ssrc
                    )

    # -- feedback out ----------------------------------------------------------------------------

    def _send_pli(self, media_ssrc: int) -> None:
        self.peer.send_rtcp(Pli(self._rtcp_ssrc, media_ssrc).serialize())

    async def _rtcp_loop(self) -> None:
        """NACKs every tick while gaps exist; receiver reports and REMB every rtcp_interval_s.

        Without gaps the loop sleeps until the next report (or the next gap): a timer that
        wakes the process 50 times a second costs more CPU than the NACK work itself.
        """
        interval = self.rtc.rtcp_interval_s
        next_report = time.monotonic() + 0.2
        try:
            while not self.closed:
                if any(
                    e.nack is not None and e.nack.missing
                    for p in self.producers.values()
                    for e in p.layers
                ):
                    await asyncio.sleep(NACK_TICK_S)
                else:
                    self._gap_seen.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._gap_seen.wait(), max(0.0, next_report - time.monotonic())
                        )
                now = time.monotonic()
                for producer in list(self.producers.values()):
                    for e in producer.layers:
                        if e.nack is not None and e.ssrc is not None and e.nack.missing:
                            lost = e.nack.due(now)
                            if lost:
                                self.peer.send_rtcp(Nack(self._rtcp_ssrc, e.ssrc, lost).serialize())
                if now >= next_report:
                    next_report = now + interval
                    self._send_reports(now)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s: RTCP loop failed", self.peer.label)

    async def _twcc_loop(self) -> None:
        try:
            while not self.closed:
                await asyncio.sleep(TWCC_FEEDBACK_S)
                recorder = self._twcc
                if recorder is None:
                    continue
                if not recorder.media_ssrc:
                    recorder.media_ssrc = next(
                        (p.ssrc for p in self.producers.values() if p.ssrc is not None), 0
                    )
                for packet in recorder.build():
                    self.peer.send_rtcp(packet)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s: transport-cc feedback failed", self.peer.label)

    def _send_reports(self, now: float) -> None:
        streams = [e for p in self.producers.values() for e in p.layers if e.stats is not None]
        if not streams:
            return
        blocks = [e.stats.report_block(now) for e in streams]
        if self.rtc.opus_fec:
            cap = int(self.rtc.opus_fec_max_loss * 256)
            for p in self.producers.values():
                if p.kind == "audio" and p.ssrc is not None:
                    self._report_viewer_loss(blocks, p, cap)
        packet = ReceiverReport(self._rtcp_ssrc, blocks[:31]).serialize()
        video = [e.ssrc for e in streams if e.kind == "video"]
        if video:
            packet += Remb(self._rtcp_ssrc, self.rtc.max_publish_bitrate, video).serialize()
        self.peer.send_rtcp(packet)

    @staticmethod
    def _report_viewer_loss(blocks: list[ReportBlock], producer: Producer, cap: int) -> None:
        """The audio block's fraction lost becomes the worst of the uplink's and the viewers'
        (capped): libwebrtc's Opus encoder sizes its in-band FEC from this fraction, while its
        congestion control counts the cumulative loss, which stays the uplink's own."""
        worst = max((f.downtrack.fraction_lost for f in producer.forwarders), default=0)
        worst = min(worst, cap)
        for block in blocks:
            if block.ssrc == producer.ssrc and worst > block.fraction_lost:
                block.fraction_lost = worst

    # -- lifetime --------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self._task, self._twcc_task):
            if task is not None:
                task.cancel()
        for producer in list(self.producers.values()):
            producer.close()
        self.producers.clear()
        self._by_ssrc.clear()
        await self.peer.close()


def _claim_request(requests: list[TrackRequest], mid: str, kind: str) -> TrackRequest | None:
    for i, r in enumerate(requests):
        if r.mid == mid:
            return requests.pop(i)
    for i, r in enumerate(requests):
        if r.mid is None and r.kind in (None, kind):
            return requests.pop(i)
    return None
