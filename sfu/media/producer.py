"""Producer: one track a participant publishes, and the fan-out of its packets.

A Producer receives each decrypted packet of its track once, keeps what NACKs and new
subscribers need (packet cache, keyframe flag, sender-report clock), and hands the packet to
every Forwarder attached to it. It never decodes anything.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .codecs import keyframe_detector
from .ingress import NackGenerator, PacketCache, ReceiveStats
from .rtp import RtpHeader

if TYPE_CHECKING:
    from .forwarder import Forwarder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodecInfo:
    """The negotiated codec of a published track, as subscribers must be offered it."""

    mime_type: str  # e.g. "video/VP8"
    clock_rate: int
    payload_type: int
    channels: int | None = None
    parameters: dict = field(default_factory=dict, hash=False, compare=False)
    rtx_payload_type: int | None = None

    @property
    def kind(self) -> str:
        return self.mime_type.split("/")[0]


@dataclass
class TrackInfo:
    """What subscribers and signalling know about a published track."""

    id: str
    kind: str
    publisher: str  # participant identity
    source: str = ""  # "camera", "microphone", "screen", or free text
    name: str = ""
    codec: str = ""

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "publisher": self.publisher,
            "source": self.source,
            "name": self.name,
            "codec": self.codec,
        }


def new_track_id() -> str:
    return "TR_" + uuid.uuid4().hex[:12]


class Producer:
    """A published track: media SSRC (and RTX SSRC), codec, cache, and attached forwarders."""

    def __init__(
        self,
        info: TrackInfo,
        codec: CodecInfo,
        *,
        send_keyframe_request: Callable[[int], None],
        cache_size: int = 1024,
        pli_throttle_s: float = 0.3,
        nack: NackGenerator | None = None,
    ) -> None:
        self.info = info
        self.codec = codec
        self.kind = codec.kind
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.forwarders: tuple[Forwarder, ...] = ()
        self.stats: ReceiveStats | None = None
        self.nack = nack if self.kind == "video" else None
        self.cache = PacketCache(cache_size) if self.kind == "video" else None
        self.is_keyframe = keyframe_detector(codec.mime_type)
        self._send_keyframe_request = send_keyframe_request
        self._pli_throttle_s = pli_throttle_s
        self._last_pli_s = 0.0
        self.keyframe_requests = 0
        self.packets = 0
        self.last_keyframe_s = 0.0
        self.closed = False
        self._close_callbacks: list[Callable[[Producer], None]] = []

    @property
    def id(self) -> str:
        return self.info.id

    # -- the hot path ----------------------------------------------------------------------------

    def on_rtp(self, data: bytes, h: RtpHeader, now_s: float) -> None:
        """One packet of this track, already decrypted and parsed; fan it out."""
        if self.ssrc != h.ssrc:
            self._on_new_ssrc(h.ssrc)
        self.packets += 1
        stats = self.stats
        stats.update(h.sequence_number, h.timestamp, now_s, len(data))
        keyframe = False
        if self.cache is not None:
            self.cache.put(h.sequence_number, data, h)
            if self.nack is not None:
                self.nack.on_packet(h.sequence_number, now_s)
            detector = self.is_keyframe
            if detector is not None and detector(memoryview(data)[h.payload_offset :]):
                keyframe = True
                self.last_keyframe_s = now_s
        for forwarder in self.forwarders:
            forwarder.forward(data, h, keyframe, now_s)

    def _on_new_ssrc(self, ssrc: int) -> None:
        if self.ssrc is not None:
            logger.info("track %s: publisher changed SSRC %d -> %d", self.id, self.ssrc, ssrc)
        self.ssrc = ssrc
        self.stats = ReceiveStats(ssrc, self.codec.clock_rate)
        if self.nack is not None:
            self.nack.missing.clear()

    # -- feedback towards the publisher ----------------------------------------------------------

    def request_keyframe(self, now_s: float | None = None) -> bool:
        """Ask the publisher for a keyframe, at most once per throttle interval."""
        if self.kind != "video" or self.ssrc is None or self.closed:
            return False
        now = time.monotonic() if now_s is None else now_s
        if now - self._last_pli_s < self._pli_throttle_s:
            return False
        self._last_pli_s = now
        self.keyframe_requests += 1
        self._send_keyframe_request(self.ssrc)
        return True

    def on_sender_report(self, ntp: int, rtp_ts: int, now_s: float) -> None:
        if self.stats is not None:
            self.stats.on_sender_report(ntp, rtp_ts, now_s)

    # -- subscribers -----------------------------------------------------------------------------

    def attach(self, forwarder: Forwarder) -> None:
        if forwarder not in self.forwarders:
            self.forwarders = (*self.forwarders, forwarder)

    def detach(self, forwarder: Forwarder) -> None:
        self.forwarders = tuple(f for f in self.forwarders if f is not forwarder)

    def on_close(self, callback: Callable[[Producer], None]) -> None:
        self._close_callbacks.append(callback)

    def close(self) -> None:
        """Unpublish: every forwarder stops, then whoever listens is told."""
        if self.closed:
            return
        self.closed = True
        for forwarder in self.forwarders:
            forwarder.close()
        self.forwarders = ()
        for callback in self._close_callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("track %s: close callback failed", self.id)
        self._close_callbacks.clear()
