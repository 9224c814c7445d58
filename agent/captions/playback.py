"""An aiortc audio track that plays recordings on demand (silence in between), in real time.

Used to publish recorded speech as a "host" (tests, benchmarks/captions.py, a demo script):
`track.play(samples)` queues a clip and returns a `Playback` whose futures resolve with the
`time.monotonic()` at which the clip's first and last samples were handed to the encoder.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import MediaStreamTrack

RATE = 48000
FRAME = RATE // 50  # 20 ms


@dataclass
class Playback:
    samples: np.ndarray
    started: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    finished: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    offset: int = 0


class PcmAudioTrack(MediaStreamTrack):
    """48 kHz mono int16 clips, 20 ms frames, paced by the clock; silence when idle."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[Playback] = deque()
        self._sent = 0
        self._start: float | None = None

    def play(self, samples: np.ndarray) -> Playback:
        """Queue a clip (48 kHz mono int16) after whatever is still playing."""
        playback = Playback(np.asarray(samples, dtype=np.int16))
        self._queue.append(playback)
        return playback

    @property
    def idle(self) -> bool:
        return not self._queue

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._sent / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.2:
            self._start -= delay  # fell far behind (a stalled loop): don't burst to catch up
        out = np.zeros(FRAME, np.int16)
        filled = 0
        now = time.monotonic()
        while filled < FRAME and self._queue:
            playback = self._queue[0]
            if playback.offset == 0 and not playback.started.done():
                playback.started.set_result(now + filled / RATE)
            n = min(FRAME - filled, len(playback.samples) - playback.offset)
            out[filled : filled + n] = playback.samples[playback.offset : playback.offset + n]
            playback.offset += n
            filled += n
            if playback.offset >= len(playback.samples):
                self._queue.popleft()
                if not playback.finished.done():
                    playback.finished.set_result(now + filled / RATE)
        frame = av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame
