"""Encoding: one RTP stream a publisher sends for a track (a simulcast layer, or the only one).

A simulcast video track arrives as up to three encodings (rids q, h, f, lowest first), each
with its own SSRC, RTX SSRC, sequence numbers and keyframes. Everything that is per stream
lives here: reception statistics for receiver reports, gap detection for NACKs, the packet
cache that answers subscribers' NACKs, the last complete keyframe (to start new subscribers at
once), keyframe-request throttling, and the measured bitrate per temporal layer that layer
selection compares with each subscriber's bandwidth estimate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .ingress import NackGenerator, PacketCache, ReceiveStats
from .rtp import RtpHeader

# Bitrate measurement: bytes are summed per temporal layer over windows of this length, and
# the reported rate covers the last few windows, so one keyframe does not look like a layer
# that needs five times the bandwidth, nor a quiet moment like a cheap one.
BITRATE_WINDOW_S = 0.5
BITRATE_WINDOWS = 4  # reported: the rate over the last this many windows
# An encoding that sent nothing for this long is inactive (the publisher paused the layer).
INACTIVE_AFTER_S = 1.5
MAX_TEMPORAL_LAYERS = 4


class Encoding:
    """Ingest state of one RTP stream; `spatial` is its index among the track's layers."""

    __slots__ = (
        "spatial",
        "rid",
        "kind",
        "ssrc",
        "rtx_ssrc",
        "stats",
        "nack",
        "cache",
        "packets",
        "last_packet_s",
        "last_keyframe_s",
        "keyframe_requests",
        "last_pli_s",
        "keyframe_packets",
        "keyframe_at",
        "width",
        "height",
        "temporal_layers",
        "_parts",
        "_keyframe_ts",
        "_keyframe_next_seq",
        "_window_bytes",
        "_window_start",
        "_bitrates",
        "_windows",
    )

    def __init__(
        self,
        spatial: int,
        rid: str | None,
        kind: str,
        *,
        cache_size: int = 1024,
        nack_factory: Callable[[], NackGenerator] | None = None,
    ) -> None:
        self.spatial = spatial
        self.rid = rid
        self.kind = kind
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.stats: ReceiveStats | None = None
        video = kind == "video"
        self.nack = nack_factory() if video and nack_factory is not None else None
        self.cache = PacketCache(cache_size) if video else None
        self.packets = 0
        self.last_packet_s = 0.0
        self.last_keyframe_s = 0.0
        self.keyframe_requests = 0
        self.last_pli_s = -1e9
        # The packets of the last complete keyframe, first packet through marker bit.
        self.keyframe_packets: tuple[tuple[bytes, RtpHeader], ...] = ()
        self.keyframe_at = 0.0
        self.width = 0  # from the last VP8 keyframe header (0 = unknown)
        self.height = 0
        self.temporal_layers = 1  # highest TID seen + 1
        self._parts: list[tuple[bytes, RtpHeader]] | None = None
        self._keyframe_ts = 0
        self._keyframe_next_seq = 0
        self._window_bytes = [0] * MAX_TEMPORAL_LAYERS
        self._window_start = -1.0
        self._bitrates: list[int] = []  # cumulative bps per temporal layer, smoothed
        self._windows: deque[tuple[float, list[int]]] = deque(maxlen=BITRATE_WINDOWS)

    def reset(self, ssrc: int, clock_rate: int) -> None:
        """A new SSRC on this encoding (first packet, or the publisher restarted the stream)."""
        self.ssrc = ssrc
        self.stats = ReceiveStats(ssrc, clock_rate)
        self.keyframe_packets, self._parts = (), None
        if self.nack is not None:
            self.nack.missing.clear()

    # -- per packet ------------------------------------------------------------------------

    def count(self, size: int, tid: int, now_s: float) -> None:
        """Account a packet's bytes to its temporal layer for the bitrate measurement."""
        self.packets += 1
        self.last_packet_s = now_s
        if tid > 0:
            if tid >= self.temporal_layers:
                self.temporal_layers = min(tid + 1, MAX_TEMPORAL_LAYERS)
            self._window_bytes[min(tid, MAX_TEMPORAL_LAYERS - 1)] += size
        else:
            self._window_bytes[0] += size
        if now_s - self._window_start >= BITRATE_WINDOW_S:
            self._close_window(now_s)

    def _close_window(self, now_s: float) -> None:
        if self._window_start < 0:
            self._window_start = now_s
            self._window_bytes = [0] * MAX_TEMPORAL_LAYERS
            return
        span = now_s - self._window_start
        self._windows.append((span, self._window_bytes[: self.temporal_layers]))
        # the rate over the last few windows (~2 s): one short dip (or keyframe burst) must
        # not make a layer look cheaper (or dearer) than it is, or viewers would flap
        total_span = sum(w[0] for w in self._windows)
        rates = []
        total = 0
        for t in range(self.temporal_layers):
            total += sum(w[1][t] if t < len(w[1]) else 0 for w in self._windows)
            rates.append(int(total * 8 / total_span))
        self._bitrates = rates
        self._window_start = now_s
        self._window_bytes = [0] * MAX_TEMPORAL_LAYERS

    def bitrates(self, now_s: float) -> list[int]:
        """Cumulative bps per temporal layer; [] when the encoding is not (or no longer) sent."""
        if not self.packets or now_s - self.last_packet_s > INACTIVE_AFTER_S:
            return []
        return list(self._bitrates)

    def collect_keyframe(self, data: bytes, h: RtpHeader, now_s: float, first: bool) -> None:
        """Gather a keyframe's packets; only a complete, gap-free one replaces the cached one."""
        parts = self._parts
        if first and (parts is None or h.timestamp != self._keyframe_ts):
            parts = self._parts = []  # (H.264 flags several packets of one keyframe)
            self._keyframe_ts = h.timestamp
        elif parts is None:
            return
        elif h.timestamp != self._keyframe_ts or h.sequence_number != self._keyframe_next_seq:
            self._parts = None  # lost or reordered: keep the last complete keyframe
            return
        parts.append((data, h))
        self._keyframe_next_seq = (h.sequence_number + 1) & 0xFFFF
        if h.marker:
            self.keyframe_packets = tuple(parts)
            self.keyframe_at = now_s
            self._parts = None

    @property
    def collecting_keyframe(self) -> bool:
        return self._parts is not None

    def cached_keyframe(
        self, now_s: float, max_age_s: float
    ) -> tuple[tuple[bytes, RtpHeader], ...]:
        """The last keyframe's packets if recent enough to show a new subscriber, else ()."""
        packets = self.keyframe_packets
        if not packets or now_s - self.keyframe_at > max_age_s or packets[0][1].ssrc != self.ssrc:
            return ()
        return packets

    def newest_packet(self) -> RtpHeader | None:
        """Header of the newest packet received (by sequence number), if still cached."""
        if self.stats is None or self.cache is None:
            return None
        entry = self.cache.get(self.stats.max_seq)
        return entry[1] if entry is not None else None

    def to_json(self, now_s: float) -> dict:
        rates = self.bitrates(now_s)
        return {
            "rid": self.rid,
            "spatial": self.spatial,
            "ssrc": self.ssrc,
            "rtx_ssrc": self.rtx_ssrc,
            "packets": self.packets,
            "bitrate_bps": rates[-1] if rates else 0,
            "temporal_layers": self.temporal_layers,
            "width": self.width or None,
            "height": self.height or None,
            "active": bool(rates),
            "keyframe_requests": self.keyframe_requests,
        }
