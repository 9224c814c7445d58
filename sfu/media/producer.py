"""Producer: one track a participant publishes, and the fan-out of its packets.

A Producer receives each decrypted packet of its track once, keeps what NACKs and new
subscribers need (per encoding: packet cache, keyframe, sender-report clock, bitrate), and
hands the packet to every Forwarder attached to it. A simulcast video track has up to three
encodings (spatial layers, lowest first); every other track has one. For VP8 the payload
descriptor is read once here (temporal layer, picture id, keyframe) for all forwarders. It
never decodes anything.
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
from .encoding import Encoding
from .forwarder import fan_out
from .ingress import NackGenerator
from .red import RedUnwrapper, rewrite_block_types
from .rtp import RtpHeader
from .vp8 import Vp8Info, parse_vp8

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
    # audio: the publisher sends RED (RFC 2198) with this payload type around this codec
    red_payload_type: int | None = None

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
    """A published track: its encodings (layers), codec, and attached forwarders."""

    def __init__(
        self,
        info: TrackInfo,
        codec: CodecInfo,
        *,
        send_keyframe_request: Callable[[int], None],
        cache_size: int = 1024,
        pli_throttle_s: float = 0.3,
        nack: NackGenerator | None = None,
        nack_factory: Callable[[], NackGenerator] | None = None,
        keyframe_cache_s: float = 0.0,
        rids: list[str] | None = None,
    ) -> None:
        self.info = info
        self.codec = codec
        self.kind = codec.kind
        if nack_factory is None and nack is not None:
            single = nack

            def nack_factory() -> NackGenerator:
                return single

        names: list[str | None] = list(rids) if rids else [None]
        self.layers: list[Encoding] = [
            Encoding(i, rid, self.kind, cache_size=cache_size, nack_factory=nack_factory)
            for i, rid in enumerate(names)
        ]
        self.simulcast = len(self.layers) > 1
        self.forwarders: tuple[Forwarder, ...] = ()
        # RED audio: unwrapped once here for every viewer that did not accept RED
        self.red: RedUnwrapper | None = None
        if self.kind == "audio" and codec.red_payload_type is not None:
            self.red = RedUnwrapper(codec.red_payload_type, codec.payload_type)
        self._red_variants: dict[int, bytearray] = {}  # block pt -> this packet's payload
        self._red_variants_of = -1  # sequence number _red_variants were made for
        self.is_keyframe = keyframe_detector(codec.mime_type)
        self.is_vp8 = codec.mime_type.lower() == "video/vp8"
        self.vp8 = Vp8Info()  # the descriptor of the packet being fanned out (reused)
        self._send_keyframe_request = send_keyframe_request
        self._pli_throttle_s = pli_throttle_s
        self.keyframe_requests = 0
        self.packets = 0
        self.forward_errors = 0
        # A new subscriber starts on the last complete keyframe if it is at most this old
        # (0 turns the cache off), instead of waiting for the publisher to answer a PLI.
        self.keyframe_cache_s = keyframe_cache_s if self.kind == "video" else 0.0
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self._keyframe_wanted: dict[int, float] = {}  # spatial -> asking until newer than
        self._keyframe_asks_left = 0
        self.closed = False
        self._close_callbacks: list[Callable[[Producer], None]] = []

    @property
    def id(self) -> str:
        return self.info.id

    # -- single-stream view (the base layer), for stats, reports and single-layer tracks ------

    @property
    def base(self) -> Encoding:
        return self.layers[0]

    @property
    def ssrc(self) -> int | None:
        return self.layers[0].ssrc

    @property
    def rtx_ssrc(self) -> int | None:
        return self.layers[0].rtx_ssrc

    @rtx_ssrc.setter
    def rtx_ssrc(self, value: int | None) -> None:
        self.layers[0].rtx_ssrc = value

    @property
    def stats(self):
        return self.layers[0].stats

    @property
    def cache(self):
        return self.layers[0].cache

    @property
    def nack(self):
        return self.layers[0].nack

    @property
    def last_keyframe_s(self) -> float:
        return max(e.last_keyframe_s for e in self.layers)

    @property
    def keyframe_packets(self):
        return self.layers[0].keyframe_packets

    @property
    def keyframe_at(self) -> float:
        return self.layers[0].keyframe_at

    def encoding_for_rid(self, rid: str) -> Encoding | None:
        for encoding in self.layers:
            if encoding.rid == rid:
                return encoding
        return None

    # -- the hot path ----------------------------------------------------------------------------

    def on_rtp(
        self, data: bytes, h: RtpHeader, now_s: float, encoding: Encoding | None = None
    ) -> None:
        """One packet of this track, already decrypted and parsed; fan it out."""
        enc = encoding if encoding is not None else self.layers[0]
        if enc.ssrc != h.ssrc:
            self._on_new_ssrc(enc, h.ssrc)
        self.packets += 1
        enc.stats.update(h.sequence_number, h.timestamp, now_s, len(data))
        keyframe = False
        vp8 = None
        tid = 0
        if enc.cache is not None:
            enc.cache.put(h.sequence_number, data, h)
            if enc.nack is not None:
                enc.nack.on_packet(h.sequence_number, now_s)
            if self.is_vp8:
                vp8 = parse_vp8(memoryview(data)[h.payload_offset :], self.vp8)
                if vp8 is not None:
                    keyframe = vp8.keyframe
                    tid = vp8.tid
            else:
                detector = self.is_keyframe
                keyframe = detector is not None and detector(memoryview(data)[h.payload_offset :])
            if keyframe:
                enc.last_keyframe_s = now_s
                if vp8 is not None:
                    self._read_dimensions(enc, data, h.payload_offset + vp8.header_size)
                if self.keyframe_cache_s:
                    enc.collect_keyframe(data, h, now_s, True)
            elif enc.collecting_keyframe:
                enc.collect_keyframe(data, h, now_s, False)
        enc.count(len(data) - h.payload_offset, tid, now_s)
        if self.red is not None:
            self._fan_out_red(data, h, now_s, enc)
            return
        if self.forwarders:
            fan_out(self.forwarders, data, h, keyframe, now_s, enc, vp8, self._forward_failed)

    def _fan_out_red(self, data: bytes, h: RtpHeader, now_s: float, enc: Encoding) -> None:
        """RED as it is to viewers that accepted it; plain Opus (the primary, plus missing
        packets rebuilt from redundant blocks) to the others, unwrapped once for all."""
        if not self.forwarders:
            return  # nobody to send to (a gap this leaves is rebuilt on the next packet)
        malformed = self.red.malformed
        plain = self.red.unwrap(data, h)
        if self.red.malformed != malformed:
            return  # not a RED payload we can read: no viewer gets it
        red_pt = h.payload_type
        for forwarder in self.forwarders:
            try:
                if forwarder.downtrack.red_source_pt == red_pt:
                    forwarder.forward(data, h, False, now_s, enc, None)
                else:
                    for pdata, ph in plain:
                        forwarder.forward(pdata, ph, False, now_s, enc, None)
            except Exception:
                self._forward_failed(forwarder)

    def red_payload_for(self, data: bytes, h: RtpHeader, block_pt: int) -> bytearray | None:
        """This RED packet's payload with its blocks' payload type set to `block_pt` (a
        viewer's Opus payload type), made once per packet and type; None: send it as is."""
        if block_pt == self.codec.payload_type or block_pt < 0:
            return None
        if self._red_variants_of != h.sequence_number:
            self._red_variants.clear()
            self._red_variants_of = h.sequence_number
        payload = self._red_variants.get(block_pt)
        if payload is None:
            end = len(data) - h.padding_size
            payload = rewrite_block_types(data, h.payload_offset, end, block_pt)
            payload += memoryview(data)[end:]
            self._red_variants[block_pt] = payload
        return payload

    @staticmethod
    def _read_dimensions(enc: Encoding, data: bytes, start: int) -> None:
        """A VP8 keyframe header (RFC 6386 9.1): 3-byte tag, start code, 14-bit sizes."""
        if len(data) >= start + 10 and data[start + 3 : start + 6] == b"\x9d\x01\x2a":
            enc.width = (data[start + 6] | (data[start + 7] << 8)) & 0x3FFF
            enc.height = (data[start + 8] | (data[start + 9] << 8)) & 0x3FFF

    def _forward_failed(self, forwarder: Forwarder) -> None:
        self.forward_errors += 1
        if self.forward_errors <= 5 or self.forward_errors % 1000 == 0:
            logger.exception(
                "track %s: forwarding to %s failed (%d so far)",
                self.id,
                forwarder.downtrack.mid,
                self.forward_errors,
            )

    def cached_keyframe(
        self, now_s: float, spatial: int = 0
    ) -> tuple[tuple[bytes, RtpHeader], ...]:
        """The last keyframe of a layer if it is recent enough to show a new subscriber, else ()."""
        if not self.keyframe_cache_s or not 0 <= spatial < len(self.layers):
            return ()
        return self.layers[spatial].cached_keyframe(now_s, self.keyframe_cache_s)

    def newest_packet(self, spatial: int = 0) -> RtpHeader | None:
        """Header of the newest packet received on a layer (by sequence number), if cached."""
        return self.layers[spatial].newest_packet() if 0 <= spatial < len(self.layers) else None

    def layer_bitrates(self, now_s: float) -> dict[int, list[int]]:
        """Active layers: spatial index -> cumulative bps per temporal layer."""
        result = {}
        for encoding in self.layers:
            rates = encoding.bitrates(now_s)
            if rates:
                result[encoding.spatial] = rates
        return result

    def _on_new_ssrc(self, enc: Encoding, ssrc: int) -> None:
        if enc.ssrc is not None:
            logger.info(
                "track %s layer %d: publisher changed SSRC %d -> %d",
                self.id,
                enc.spatial,
                enc.ssrc,
                ssrc,
            )
        enc.reset(ssrc, self.codec.clock_rate)

    # -- feedback towards the publisher ----------------------------------------------------------

    def request_keyframe(self, now_s: float | None = None, spatial: int | None = None) -> bool:
        """Ask the publisher for a keyframe of one layer (default: every layer that is sent),
        at most once per throttle interval per layer."""
        if self.kind != "video" or self.closed:
            return False
        now = time.monotonic() if now_s is None else now_s
        targets = self.layers if spatial is None else self.layers[spatial : spatial + 1]
        asked = False
        for enc in targets:
            if enc.ssrc is None or now - enc.last_pli_s < self._pli_throttle_s:
                continue
            enc.last_pli_s = now
            enc.keyframe_requests += 1
            self.keyframe_requests += 1
            self._send_keyframe_request(enc.ssrc)
            asked = True
        return asked

    def want_keyframe(self, since_s: float, spatial: int = 0) -> None:
        """Keep asking (throttled) until a keyframe of `spatial` newer than `since_s` arrives.

        For a subscriber that will not ask again itself, e.g. one started on the cached
        keyframe: a single throttled request could be lost, or ignored by a publisher that
        answers at most one request per interval (Chrome: 300 ms).
        """
        if self.kind != "video" or self.closed or not 0 <= spatial < len(self.layers):
            return
        self._keyframe_wanted[spatial] = max(self._keyframe_wanted.get(spatial, 0.0), since_s)
        self._keyframe_asks_left = KEYFRAME_ASKS
        if self._keyframe_timer is None:
            self._ask_for_wanted_keyframe()

    def _ask_for_wanted_keyframe(self) -> None:
        self._keyframe_timer = None
        wanted = self._keyframe_wanted
        for spatial, since in list(wanted.items()):
            if self.layers[spatial].last_keyframe_s > since:
                del wanted[spatial]
        if self.closed or not wanted or self._keyframe_asks_left <= 0:
            wanted.clear()
            return
        now = time.monotonic()
        asked = False
        for spatial in wanted:
            asked = self.request_keyframe(now, spatial) or asked
        if asked:
            self._keyframe_asks_left -= 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no event loop: unit tests drive the producer by hand)
            return
        last = max(self.layers[s].last_pli_s for s in wanted)
        wait = last + self._pli_throttle_s + KEYFRAME_ASK_MARGIN_S - now
        self._keyframe_timer = loop.call_later(max(0.01, wait), self._ask_for_wanted_keyframe)

    def on_sender_report(
        self, ntp: int, rtp_ts: int, now_s: float, ssrc: int | None = None
    ) -> None:
        """The publisher's NTP/RTP clock pair for one encoding (default: the base layer)."""
        for enc in self.layers:
            if (ssrc is None or enc.ssrc == ssrc) and enc.stats is not None:
                enc.stats.on_sender_report(ntp, rtp_ts, now_s)
                return

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

    def layers_json(self, now_s: float) -> list[dict]:
        return [encoding.to_json(now_s) for encoding in self.layers]
