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
from .forwarder import DownTrack, bind
from .peer import MediaPeer, NetworkSettings
from .producer import Producer
from .rtcp import Fir, Nack, Pli, ReceiverReport, Remb, SenderReport, parse_compound
from .sdp import SdpError, codec_preferences, extension_ids, negotiated_codec, parse_offer

logger = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 15.0

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
                mapping = self._mid_map()
                self._pending_offer_answer = asyncio.get_running_loop().create_future()
                self.negotiations += 1
                await self._send_offer(offer, mapping)
                answer = await asyncio.wait_for(self._pending_offer_answer, ANSWER_TIMEOUT_S)
                await self.peer.accept_answer(answer)
                self._configure_downtracks()
                for downtrack, producer in bindings:
                    if self.subscriptions.get(producer.id) is producer and not producer.closed:
                        bind(producer, downtrack)
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
            )

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
                bind(producer, downtrack)
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
            if isinstance(packet, Nack):
                dt = self._by_ssrc.get(packet.media_ssrc)
                if dt is not None and dt.forwarder is not None:
                    dt.forwarder.on_nack(packet.lost)
            elif isinstance(packet, Pli):
                dt = self._by_ssrc.get(packet.media_ssrc)
                if dt is not None and dt.forwarder is not None:
                    dt.forwarder.on_keyframe_request()
            elif isinstance(packet, Fir):
                for ssrc, _ in packet.entries:
                    dt = self._by_ssrc.get(ssrc)
                    if dt is not None and dt.forwarder is not None:
                        dt.forwarder.on_keyframe_request()
            elif isinstance(packet, ReceiverReport | SenderReport):
                for block in packet.reports:
                    dt = self._by_ssrc.get(block.ssrc)
                    if dt is not None:
                        dt.on_report_block(block, now)
            elif isinstance(packet, Remb):
                for ssrc in packet.ssrcs:
                    dt = self._by_ssrc.get(ssrc)
                    if dt is not None:
                        dt.remb_bps = packet.bitrate

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
        for task in (self._negotiation, self._rtcp_task, self._prime_task):
            if task is not None:
                task.cancel()
        for dt in self.downtracks:
            if dt.forwarder is not None:
                dt.forwarder.close()
        self.subscriptions.clear()
        await self.peer.close()


def _ignore_rtp(data: bytes, arrival_ms: int) -> None:
    """Subscribers send us no media on this connection; drop anything that arrives."""
