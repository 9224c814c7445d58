"""SubscriberSession: the connection on which the SFU sends tracks to one participant.

Two ways to negotiate it:

* `offerer` (WebSocket clients): the SFU is the only offerer. Subscribing adds or reuses an
  m-line, then one offer/answer round runs; rounds never overlap.
* `answerer` (WHEP players): the player offers recvonly audio and video once; the SFU binds
  whatever is (or later gets) published to those m-lines, without renegotiation.

m-lines are never removed (aiortc cannot recycle transceivers): an m-line whose track went away
is set inactive and is the first choice for the next track of the same kind and codec. Its
DownTrack keeps numbering, so the subscriber's SRTP context and decoder see one stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiortc import MediaStreamTrack, RTCRtpTransceiver

from ..config import RtcSettings
from .bandwidth import TICK_S, BandwidthController
from .forwarder import DownTrack, Forwarder, bind
from .peer import MediaPeer, NetworkSettings
from .producer import Producer
from .rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    SenderReport,
    UnknownRtcp,
    parse_compound,
)
from .rtp import EXT_PLAYOUT_DELAY, EXT_TRANSPORT_CC
from .sdp import (
    SdpError,
    accept_red,
    add_extension,
    add_transport_cc,
    answered_extension,
    answered_red,
    codec_preferences,
    extension_ids,
    free_extension_id,
    negotiated_codec,
    offer_red,
    parse_offer,
    parse_simulcast,
)
from .twcc import FMT_TWCC, RTCP_RTPFB

logger = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 15.0
# Requested quality -> highest spatial layer (None: no limit, the estimate decides).
QUALITY_LAYERS = {"auto": None, "high": 2, "medium": 1, "low": 0}

SendOffer = Callable[[str, dict[str, str]], Awaitable[None]]


class IdleTrack(MediaStreamTrack):
    """A track that never yields a frame: it keeps aiortc's sender quiet (no 20 ms polling)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future = asyncio.get_event_loop().create_future()

    async def recv(self):
        await self._never


async def _discard_rtcp(packets) -> None:
    """aiortc's own sender reports would carry zero clocks; ours come from DownTrack."""


class SubscriberSession:
    def __init__(
        self,
        *,
        identity: str,
        network: NetworkSettings,
        rtc: RtcSettings,
        send_offer: SendOffer | None = None,
        label: str = "",
    ) -> None:
        self.identity = identity
        self.rtc = rtc
        self.peer = MediaPeer(
            network, on_rtp=_ignore_rtp, on_rtcp=self._on_rtcp, label=label or f"sub:{identity}"
        )
        self._send_offer = send_offer
        self.downtracks: list[DownTrack] = []
        self._transceivers: dict[int, RTCRtpTransceiver] = {}  # id(downtrack) -> transceiver
        self._by_ssrc: dict[int, DownTrack] = {}
        self.subscriptions: dict[str, Producer] = {}  # track id -> producer (wanted)
        self._pending_offer_answer: asyncio.Future | None = None
        self._dirty = False
        self._next_bindings: dict[int, str] = {}  # id(downtrack) -> track id, this round
        self._negotiation: asyncio.Task | None = None
        self._rtcp_task: asyncio.Task | None = None
        self._prime_task: asyncio.Task | None = None
        self.negotiations = 0
        self.closed = False
        self.on_negotiation_failed: Callable[[str], None] | None = None
        # (track id, layer info) when a simulcast track's forwarded layer changes
        self.on_layer_change: Callable[[str, dict], None] | None = None
        self.bandwidth = BandwidthController(
            self.downtracks,
            enabled=rtc.bwe,
            start_bps=rtc.bwe_start_bitrate,
            adaptive_playout_delay=rtc.adaptive_playout_delay,
            full_frame_rate_above_base=rtc.layer_preference == "frame-rate",
        )
        self._transport_cc_ids: dict[str, int] = {}  # mid -> negotiated extension id
        self._playout_delay_ids: dict[str, int] = {}
        self._red: dict[str, tuple[int, int]] = {}  # mid -> (RED pt, Opus pt) accepted
        self._quality: dict[str, tuple[int | None, int, int]] = {}  # track id -> request
        self._default_quality: tuple[int | None, int, int] | None = None  # every other track
        self._bwe_task: asyncio.Task | None = None

    # -- subscriptions (offerer role) ------------------------------------------------------------

    def subscribe(self, producer: Producer) -> None:
        if self.closed or producer.closed or producer.id in self.subscriptions:
            return
        self.subscriptions[producer.id] = producer
        producer.request_keyframe()  # ask early: it arrives while we negotiate
        self._schedule()

    def unsubscribe(self, track_id: str) -> bool:
        producer = self.subscriptions.pop(track_id, None)
        if producer is None:
            return False
        self._schedule()
        return True

    def _schedule(self) -> None:
        if self._send_offer is None:  # answerer role: bind to existing m-lines
            self._apply_answerer()
            return
        self._dirty = True
        if self._negotiation is None or self._negotiation.done():
            self._negotiation = asyncio.ensure_future(self._negotiate())

    async def _negotiate(self) -> None:
        try:
            while self._dirty and not self.closed:
                self._dirty = False
                bindings = self._plan_mlines()
                offer = await self.peer.offer()
                if self.rtc.bwe:
                    offer = add_transport_cc(offer, free_extension_id(offer))
                if self.rtc.adaptive_playout_delay:
                    offer = add_extension(
                        offer, EXT_PLAYOUT_DELAY, free_extension_id(offer), kinds=("video",)
                    )
                if self.rtc.audio_red or self.rtc.opus_fec:
                    offer = offer_red(offer, red=self.rtc.audio_red, opus_fec=self.rtc.opus_fec)
                mapping = self._mid_map()
                self._pending_offer_answer = asyncio.get_running_loop().create_future()
                self.negotiations += 1
                await self._send_offer(offer, mapping)
                answer = await asyncio.wait_for(self._pending_offer_answer, ANSWER_TIMEOUT_S)
                await self.peer.accept_answer(answer)
                self._transport_cc_ids = answered_extension(answer, EXT_TRANSPORT_CC)
                self._playout_delay_ids = answered_extension(answer, EXT_PLAYOUT_DELAY)
                self._red = answered_red(answer) if self.rtc.audio_red else {}
                self._configure_downtracks()
                for downtrack, producer in bindings:
                    if self.subscriptions.get(producer.id) is producer and not producer.closed:
                        self._bind(producer, downtrack)
                self._prime_on_connect()
                self._start_rtcp()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = "subscriber did not answer" if isinstance(exc, TimeoutError) else str(exc)
            logger.warning("%s: negotiation failed: %s", self.peer.label, reason)
            if self.on_negotiation_failed is not None:
                self.on_negotiation_failed(reason)
        finally:
            self._pending_offer_answer = None

    def on_answer(self, sdp: str) -> None:
        """The subscriber's answer to our latest offer. Raises SdpError if none is pending."""
        future = self._pending_offer_answer
        if future is None or future.done():
            raise SdpError("no offer is waiting for an answer")
        future.set_result(sdp)

    def _plan_mlines(self) -> list[tuple[DownTrack, Producer]]:
        """Free m-lines of dropped tracks, give new tracks an m-line; bind after the answer."""
        carried = {}
        for dt in self.downtracks:
            fw = dt.forwarder
            if fw is not None and self.subscriptions.get(fw.producer.id) is not fw.producer:
                fw.close()
            if dt.forwarder is not None:
                carried[dt.forwarder.producer.id] = dt
        bindings = []
        reserved: set[int] = set()
        for producer in self.subscriptions.values():
            if producer.id in carried or producer.closed:
                continue
            downtrack = self._free_downtrack(producer, reserved)
            if downtrack is None:
                downtrack = self._add_downtrack(producer)
            reserved.add(id(downtrack))
            bindings.append((downtrack, producer))
        for dt in self.downtracks:
            transceiver = self._transceivers[id(dt)]
            busy = dt.forwarder is not None or id(dt) in reserved
            transceiver.direction = "sendonly" if busy else "inactive"
        self._next_bindings = {id(dt): p.id for dt, p in bindings}
        return bindings

    def _free_downtrack(self, producer: Producer, reserved: set[int]) -> DownTrack | None:
        for dt in self.downtracks:
            if (
                dt.forwarder is None
                and id(dt) not in reserved
                and dt.kind == producer.kind
                and dt.mime_type.lower() == producer.codec.mime_type.lower()
            ):
                return dt
        return None

    def _add_downtrack(self, producer: Producer) -> DownTrack:
        transceiver = self.peer.pc.addTransceiver(IdleTrack(producer.kind), direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences(producer.kind, producer.codec.mime_type))
        return self._track_transceiver(transceiver, mime_type=producer.codec.mime_type)

    def _track_transceiver(self, transceiver: RTCRtpTransceiver, mime_type: str) -> DownTrack:
        sender = transceiver.sender
        sender._send_rtcp = _discard_rtcp
        downtrack = DownTrack(
            kind=transceiver.kind,
            mid="",
            ssrc=sender._ssrc,
            rtx_ssrc=sender._rtx_ssrc if transceiver.kind == "video" else None,
            send=self.peer.send_rtp,
            cname=f"sfu-{self.identity}",
        )
        downtrack.mime_type = mime_type
        self.downtracks.append(downtrack)
        self._transceivers[id(downtrack)] = transceiver
        self._by_ssrc[downtrack.ssrc] = downtrack
        if downtrack.rtx_ssrc:
            self._by_ssrc[downtrack.rtx_ssrc] = downtrack
        return downtrack

    def _mid_map(self) -> dict[str, str]:
        """mid -> track id for every m-line that carries (or is about to carry) a track."""
        result = {}
        pending = self._next_bindings
        for dt in self.downtracks:
            transceiver = self._transceivers[id(dt)]
            dt.mid = transceiver.mid or dt.mid
            track_id = pending.get(id(dt)) or (dt.forwarder.producer.id if dt.forwarder else None)
            if track_id and dt.mid:
                result[dt.mid] = track_id
        return result

    def _configure_downtracks(self) -> None:
        for dt in self.downtracks:
            transceiver = self._transceivers[id(dt)]
            codec = negotiated_codec(transceiver)
            if codec is None:
                continue
            dt.mid = transceiver.mid or dt.mid
            dt.configure(
                mime_type=codec.mime_type,
                payload_type=codec.payload_type,
                clock_rate=codec.clock_rate,
                rtx_payload_type=codec.rtx_payload_type,
                extension_ids=extension_ids(transceiver),
                transport_cc_id=self._transport_cc_ids.get(dt.mid, 0),
                playout_delay_id=self._playout_delay_ids.get(dt.mid, 0),
                sequencer=self.bandwidth.sequencer,
                red=self._red.get(dt.mid),
            )

    # -- layers --------------------------------------------------------------------------------

    def _bind(self, producer: Producer, downtrack: DownTrack) -> Forwarder:
        selector = self.bandwidth.new_selector(producer) if producer.simulcast else None
        forwarder = bind(producer, downtrack, selector)
        if selector is not None:
            request = self._quality.get(producer.id, self._default_quality)
            if request is not None:
                self._apply_quality(forwarder, *request)
            forwarder.on_layer_change = self._layer_changed
            self._start_bwe()
        return forwarder

    def set_quality(
        self, track_id: str, quality: str = "auto", max_width: int = 0, max_height: int = 0
    ) -> bool:
        """The subscriber's wish for a track: a named quality and/or maximum dimensions.

        Raises ValueError for an unknown quality name. Returns False if the track is not
        subscribed. The wish is kept and applies whenever the track is (re)bound.
        """
        if not isinstance(quality, str) or quality not in QUALITY_LAYERS:
            raise ValueError(f"quality must be one of {', '.join(QUALITY_LAYERS)}")
        if track_id not in self.subscriptions:
            return False
        request = (QUALITY_LAYERS[quality], max(0, int(max_width)), max(0, int(max_height)))
        self._quality[track_id] = request
        for dt in self.downtracks:
            fw = dt.forwarder
            if fw is not None and fw.producer.id == track_id and fw.selector is not None:
                self._apply_quality(fw, *request)
                self.bandwidth.tick(time.monotonic())
        return True

    def set_default_quality(
        self, quality: str = "auto", max_width: int = 0, max_height: int = 0
    ) -> None:
        """The wish for every track without its own (WHEP players: from the URL's query).

        Raises ValueError for an unknown quality name.
        """
        if not isinstance(quality, str) or quality not in QUALITY_LAYERS:
            raise ValueError(f"quality must be one of {', '.join(QUALITY_LAYERS)}")
        self._default_quality = (
            QUALITY_LAYERS[quality],
            max(0, int(max_width)),
            max(0, int(max_height)),
        )

    @staticmethod
    def _apply_quality(fw: Forwarder, max_spatial: int | None, width: int, height: int) -> None:
        if width or height:
            fitting = [
                e.spatial
                for e in fw.producer.layers
                if e.width
                and (not width or e.width <= width)
                and (not height or e.height <= height)
            ]
            by_size = max(fitting) if fitting else 0
            max_spatial = by_size if max_spatial is None else min(max_spatial, by_size)
        fw.selector.set_requested(max_spatial)

    def _layer_changed(self, fw: Forwarder, reason: str) -> None:
        if self.on_layer_change is None:
            return
        layer = fw.layer
        if layer is None:
            return
        encoding = fw.producer.layers[layer[0]]
        self.on_layer_change(
            fw.producer.id,
            {
                "spatial": layer[0],
                "temporal": layer[1],
                "rid": encoding.rid,
                "width": encoding.width or None,
                "height": encoding.height or None,
                "reason": reason,
            },
        )

    def _start_bwe(self) -> None:
        if self._bwe_task is None and not self.closed:
            self._bwe_task = asyncio.ensure_future(self._bwe_loop())

    async def _bwe_loop(self) -> None:
        """Measure, estimate and choose layers every TICK_S while simulcast tracks flow."""
        try:
            while not self.closed:
                await asyncio.sleep(TICK_S)
                if self.bandwidth.handshake_rtt_s is None:
                    self.bandwidth.seed_rtt(self.peer.handshake_rtt_s)
                self.bandwidth.tick(time.monotonic())
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s: bandwidth loop failed", self.peer.label)

    # -- answerer role (WHEP) --------------------------------------------------------------------

    async def answer(self, offer_sdp: str, producers: list[Producer]) -> str:
        """Answer a player's recvonly offer and bind the given tracks to its m-lines."""
        offered = parse_offer(offer_sdp)
        by_kind: dict[str, Producer] = {}
        for p in producers:
            by_kind.setdefault(p.kind, p)
        for m in offered:
            if m.direction not in ("recvonly", "sendrecv"):
                continue
            producer = by_kind.get(m.kind)
            mime = producer.codec.mime_type if producer else None
            transceiver = self.peer.pc.addTransceiver(IdleTrack(m.kind), direction="sendonly")
            transceiver.setCodecPreferences(codec_preferences(m.kind, mime))
            self._track_transceiver(transceiver, mime_type=mime or "")
        try:
            answer = await self.peer.answer(offer_sdp)
        except Exception as exc:
            raise SdpError(f"cannot negotiate: {exc}") from exc
        offered_twcc = {
            o.extmaps[EXT_TRANSPORT_CC]
            for o in parse_simulcast(offer_sdp).values()
            if EXT_TRANSPORT_CC in o.extmaps
        }
        if self.rtc.bwe and len(offered_twcc) == 1:
            answer = add_transport_cc(answer, offered_twcc.pop())
            self._transport_cc_ids = answered_extension(answer, EXT_TRANSPORT_CC)
        if self.rtc.audio_red or self.rtc.opus_fec:
            answer = accept_red(
                answer,
                parse_simulcast(offer_sdp),
                red=self.rtc.audio_red,
                opus_fec=self.rtc.opus_fec,
            )
            self._red = answered_red(answer) if self.rtc.audio_red else {}
        self._configure_downtracks()
        self.downtracks = [dt for dt in self.downtracks if dt.negotiated]
        for p in producers:
            self.subscriptions[p.id] = p
        self._apply_answerer()
        self._prime_on_connect()
        self._start_rtcp()
        return answer

    def _apply_answerer(self) -> None:
        for dt in self.downtracks:
            fw = dt.forwarder
            if fw is not None and self.subscriptions.get(fw.producer.id) is not fw.producer:
                fw.close()
        carried = {dt.forwarder.producer.id for dt in self.downtracks if dt.forwarder}
        for producer in list(self.subscriptions.values()):
            if producer.id in carried or producer.closed:
                continue
            downtrack = self._free_downtrack(producer, set())
            if downtrack is not None:
                self._bind(producer, downtrack)
                carried.add(producer.id)

    # -- first picture ------------------------------------------------------------------------

    def _prime_on_connect(self) -> None:
        """Send new video forwarders the publisher's cached keyframe as soon as media can flow.

        Without this the first packet after DTLS connects would do it, up to a frame later.
        """
        if self.peer.connected.is_set():
            self._prime()
        elif self._prime_task is None:
            self._prime_task = asyncio.ensure_future(self._prime_when_connected())

    async def _prime_when_connected(self) -> None:
        try:
            await self.peer.connected.wait()
        except asyncio.CancelledError:
            return
        if not self.closed:
            self._prime()

    def _prime(self) -> None:
        self.bandwidth.seed_rtt(self.peer.handshake_rtt_s)  # (playout delay from the start)
        now = time.monotonic()
        for dt in self.downtracks:
            fw = dt.forwarder
            if fw is not None and fw.needs_keyframe and not fw.synced and not fw.primed:
                fw.prime(now)

    # -- RTCP --------------------------------------------------------------------------------

    def _start_rtcp(self) -> None:
        if self._rtcp_task is None:
            self._rtcp_task = asyncio.ensure_future(self._rtcp_loop())

    async def _rtcp_loop(self) -> None:
        try:
            while not self.closed:
                await asyncio.sleep(self.rtc.rtcp_interval_s)
                now = time.monotonic()
                for dt in self.downtracks:
                    report = dt.sender_report(now)
                    if report is not None:
                        self.peer.send_rtcp(report)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s: RTCP loop failed", self.peer.label)

    def _on_rtcp(self, data: bytes) -> None:
        now = time.monotonic()
        for packet in parse_compound(data):
            if isinstance(packet, UnknownRtcp):
                if packet.packet_type == RTCP_RTPFB and packet.fmt == FMT_TWCC:
                    self.bandwidth.on_transport_feedback(packet.data, now)
            elif isinstance(packet, Nack):
                dt = self._by_ssrc.get(packet.media_ssrc)
                if dt is not None and dt.forwarder is not None:
                    dt.nacks_received += 1
                    dt.forwarder.on_nack(packet.lost)
            elif isinstance(packet, Pli):
                dt = self._by_ssrc.get(packet.media_ssrc)
                if dt is not None and dt.forwarder is not None:
                    dt.keyframe_requests_received += 1
                    dt.forwarder.on_keyframe_request()
            elif isinstance(packet, Fir):
                for ssrc, _ in packet.entries:
                    dt = self._by_ssrc.get(ssrc)
                    if dt is not None and dt.forwarder is not None:
                        dt.keyframe_requests_received += 1
                        dt.forwarder.on_keyframe_request()
            elif isinstance(packet, ReceiverReport | SenderReport):
                for block in packet.reports:
                    dt = self._by_ssrc.get(block.ssrc)
                    if dt is not None:
                        packets = dt.on_report_block(block, now)
                        self.bandwidth.on_report(block.fraction_lost / 256, packets, dt.rtt_s, now)
            elif isinstance(packet, Remb):
                for ssrc in packet.ssrcs:
                    dt = self._by_ssrc.get(ssrc)
                    if dt is not None:
                        dt.remb_bps = packet.bitrate
                self.bandwidth.on_remb(packet.bitrate, now)

    # -- lifetime --------------------------------------------------------------------------------

    def drop_producer(self, producer: Producer) -> None:
        """A subscribed track was unpublished: free its m-line (renegotiated to inactive)."""
        if self.subscriptions.get(producer.id) is producer:
            del self.subscriptions[producer.id]
            if self._send_offer is not None:
                self._schedule()

    def stats(self) -> list[dict]:
        return [dt.stats() for dt in self.downtracks]

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self._negotiation, self._rtcp_task, self._prime_task, self._bwe_task):
            if task is not None:
                task.cancel()
        self.bandwidth.close()
        for dt in self.downtracks:
            if dt.forwarder is not None:
                dt.forwarder.close()
        self.subscriptions.clear()
        await self.peer.close()


def _ignore_rtp(data: bytes, arrival_ms: int) -> None:
    """Subscribers send us no media on this connection; drop anything that arrives."""
