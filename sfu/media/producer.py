"""Producer: one track a participant publishes, and the fan-out of its packets.

A Producer receives each decrypted packet of its track once, keeps what NACKs and new
subscribers need (packet cache, keyframe flag, sender-report clock), and hands the packet to
every Forwarder attached to it. It never decodes anything.
"""

from __future__ import annotations

import asyncio
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

# want_keyframe(): how many requests at most, and how long after the throttle interval each
# one waits (a publisher may ignore a request that comes less than its own interval after the
# previous one).
KEYFRAME_ASKS = 8
KEYFRAME_ASK_MARGIN_S = 0.05


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
        keyframe_cache_s: float = 0.0,
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
        self.forward_errors = 0
        self.last_keyframe_s = 0.0
        # The packets of the last complete keyframe, from its first packet through its marker
        # bit, so a new subscriber starts at once instead of waiting for the publisher to
        # answer a PLI. 0 turns the cache off; an older keyframe is not used.
        self.keyframe_cache_s = keyframe_cache_s if self.kind == "video" else 0.0
        self.keyframe_packets: tuple[tuple[bytes, RtpHeader], ...] = ()
        self.keyframe_at = 0.0
        self._keyframe_parts: list[tuple[bytes, RtpHeader]] | None = None
        self._keyframe_ts = 0
        self._keyframe_next_seq = 0
        self._keyframe_wanted_since = 0.0  # want_keyframe(): asking until one newer arrives
        self._keyframe_asks_left = 0
        self._keyframe_timer: asyncio.TimerHandle | None = None
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
                if self.keyframe_cache_s:
                    self._collect_keyframe(data, h, now_s, True)
            elif self._keyframe_parts is not None:
                self._collect_keyframe(data, h, now_s, False)
        for forwarder in self.forwarders:
            try:
                forwarder.forward(data, h, keyframe, now_s)
            except Exception:  # one broken subscriber must not cost the others this packet
                self._forward_failed(forwarder)

    def _forward_failed(self, forwarder: Forwarder) -> None:
        self.forward_errors += 1
        if self.forward_errors <= 5 or self.forward_errors % 1000 == 0:
            logger.exception(
                "track %s: forwarding to %s failed (%d so far)",
                self.id,
                forwarder.downtrack.mid,
                self.forward_errors,
            )

    def _collect_keyframe(self, data: bytes, h: RtpHeader, now_s: float, first: bool) -> None:
        """Gather a keyframe's packets; only a complete, gap-free one replaces the cached one."""
        parts = self._keyframe_parts
        if first and (parts is None or h.timestamp != self._keyframe_ts):
            parts = self._keyframe_parts = []  # (H.264 flags several packets of one keyframe)
            self._keyframe_ts = h.timestamp
        elif parts is None:
            return
        elif h.timestamp != self._keyframe_ts or h.sequence_number != self._keyframe_next_seq:
            self._keyframe_parts = None  # lost or reordered: keep the last complete keyframe
            return
        parts.append((data, h))
        self._keyframe_next_seq = (h.sequence_number + 1) & 0xFFFF
        if h.marker:
            self.keyframe_packets = tuple(parts)
            self.keyframe_at = now_s
            self._keyframe_parts = None

    def cached_keyframe(self, now_s: float) -> tuple[tuple[bytes, RtpHeader], ...]:
        """The last keyframe's packets if it is recent enough to show a new subscriber, else ()."""
        packets = self.keyframe_packets
        if (
            not packets
            or now_s - self.keyframe_at > self.keyframe_cache_s
            or packets[0][1].ssrc != self.ssrc
        ):
            return ()
        return packets

    def newest_packet(self) -> RtpHeader | None:
        """Header of the newest packet received (by sequence number), if still cached."""
        if self.stats is None or self.cache is None:
            return None
        entry = self.cache.get(self.stats.max_seq)
        return entry[1] if entry is not None else None

    def _on_new_ssrc(self, ssrc: int) -> None:
        if self.ssrc is not None:
            logger.info("track %s: publisher changed SSRC %d -> %d", self.id, self.ssrc, ssrc)
        self.ssrc = ssrc
        self.stats = ReceiveStats(ssrc, self.codec.clock_rate)
        self.keyframe_packets, self._keyframe_parts = (), None
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

    def want_keyframe(self, since_s: float) -> None:
        """Keep asking (throttled) until a keyframe newer than `since_s` arrives.

        For a subscriber that will not ask again itself, e.g. one started on the cached
        keyframe: a single throttled request could be lost, or ignored by a publisher that
        answers at most one request per interval (Chrome: 300 ms).
        """
        if self.kind != "video" or self.closed:
            return
        self._keyframe_wanted_since = max(self._keyframe_wanted_since, since_s)
        self._keyframe_asks_left = KEYFRAME_ASKS
        if self._keyframe_timer is None:
            self._ask_for_wanted_keyframe()

    def _ask_for_wanted_keyframe(self) -> None:
        self._keyframe_timer = None
        if self.closed or self.last_keyframe_s > self._keyframe_wanted_since:
            return
        if self._keyframe_asks_left <= 0:
            return
        now = time.monotonic()
        if self.request_keyframe(now):
            self._keyframe_asks_left -= 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no event loop: unit tests drive the producer by hand)
            return
        wait = self._last_pli_s + self._pli_throttle_s + KEYFRAME_ASK_MARGIN_S - now
        self._keyframe_timer = loop.call_later(max(0.01, wait), self._ask_for_wanted_keyframe)

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
        if self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
        for forwarder in self.forwarders:
            forwarder.close()
        self.forwarders = ()
        for callback in self._close_callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("track %s: close callback failed", self.id)
        self._close_callbacks.clear()
