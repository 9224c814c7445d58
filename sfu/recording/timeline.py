"""RTP timestamps of one stream -> milliseconds in the recording, always increasing.

A stream is anchored on the arrival time of its first frame (relative to the recording's
start), then follows its RTP clock, so audio and video line up as they arrived and frame
spacing is the publisher's own. It re-anchors on arrival time when the RTP clock jumps (a
new SSRC, a simulcast layer switch, a publisher restart) or drifts away from arrival by more
than `MAX_SKEW_MS`; pts never go backwards, whatever the input.
"""

from __future__ import annotations

MAX_SKEW_MS = 3000


class Timeline:
    __slots__ = ("clock_rate", "_base_ext", "_base_ms", "_last_ts", "_ext", "last_ms")

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self._base_ext: int | None = None  # extended RTP timestamp of the anchor
        self._base_ms = 0
        self._last_ts = 0
        self._ext = 0  # extended (unwrapped) RTP timestamp of the last frame
        self.last_ms = -1

    def reanchor(self) -> None:
        """The next frame starts from its arrival time (the RTP clock changed)."""
        self._base_ext = None

    def pts_ms(self, rtp_ts: int, arrival_ms: float) -> int:
        """File time of a frame with this RTP timestamp that arrived `arrival_ms` into the
        recording."""
        if self._base_ext is not None:
            delta = ((rtp_ts - self._last_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            self._ext += delta
            self._last_ts = rtp_ts
            ms = self._base_ms + (self._ext - self._base_ext) * 1000 // self.clock_rate
            if delta >= 0 and abs(ms - arrival_ms) <= MAX_SKEW_MS:
                return self._accept(ms)
        # anchor (first frame, clock jump or drift): from arrival, after what was written
        self._ext = self._base_ext = 0
        self._last_ts = rtp_ts
        self._base_ms = max(round(arrival_ms), self.last_ms + 1)
        return self._accept(self._base_ms)

    def _accept(self, ms: int) -> int:
        ms = max(ms, self.last_ms + 1)
        self.last_ms = ms
        return ms
