"""The agent's voice as a WebRTC audio track, built so that it can be silenced at once.

aiortc's sender pulls one 20 ms frame at a time from `recv()` and encodes and sends it right
away. `AgentVoice.recv()` paces itself in real time and hands out the next frame of speech from
a very small queue (two frames by default), or silence when there is none. Whoever speaks
(`put`) waits for room in that queue, so no more than those few frames are ever ahead of the
sender: `interrupt()` empties the queue and the very next frame on the wire is silence.

It counts the speech frames it handed to the sender since `begin()`, which tells how much of an
answer the buyer actually heard when it was interrupted.

`pause()` silences it at once too, but keeps the utterance: `resume()` goes on from the very
frame where it stopped (the buyer only said "uh-huh"); `interrupt()` ends it.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

RATE = 48000
RESYNC_S = 0.1  # behind schedule by more than this (a stalled loop): restart the clock
SILENT_RMS = 100.0  # int16 RMS below which a synthesized frame counts as silence


class AgentVoice(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frame_ms: int = 20, max_queued: int = 2) -> None:
        super().__init__()
        self.frame_ms = frame_ms
        self.samples = RATE * frame_ms // 1000
        self.max_queued = max(1, max_queued)
        self._queue: deque[np.ndarray] = deque()
        self._room = asyncio.Event()
        self._room.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._silence = np.zeros(self.samples, np.int16)
        self._time_base = fractions.Fraction(1, RATE)
        self._start: float | None = None
        self._count = 0
        self.generation = 0
        self.sent = 0  # speech frames handed to the sender since begin()
        self.first_sent_at: float | None = None  # monotonic time of the first of them
        self.last_sent_at: float | None = None
        self.stopped_at: float | None = None
        self.paused = False

    # -- the speaking side -----------------------------------------------------------------------

    def begin(self) -> int:
        """Start an utterance; returns its generation (frames of older ones are refused)."""
        self.generation += 1
        self._queue.clear()
        self.sent = 0
        self.first_sent_at = self.last_sent_at = self.stopped_at = None
        self.paused = False
        return self.generation

    async def put(self, frame: np.ndarray, generation: int) -> bool:
        """Queue one frame (waits for room); False once the utterance was stopped."""
        while len(self._queue) >= self.max_queued and generation == self.generation:
            self._room.clear()
            await self._room.wait()
        if generation != self.generation:
            return False
        self._queue.append(frame)
        self._drained.clear()
        return True

    async def drained(self, generation: int) -> None:
        """Wait until the utterance's last frame went to the sender (or it was stopped)."""
        while self._queue and generation == self.generation:
            await self._drained.wait()

    def interrupt(self) -> int:
        """Silence now: drop the queued frames (returned); the next frame sent is silence.

        (Not `stop()`: that is MediaStreamTrack's, which ends the track for good.)"""
        dropped = len(self._queue)
        self.generation += 1
        self.paused = False
        self._queue.clear()
        self.stopped_at = time.monotonic()
        self._room.set()
        self._drained.set()
        return dropped

    def pause(self) -> None:
        """Silence from the next frame on, keeping what is queued (and the speaker waiting)."""
        if not self.paused:
            self.paused = True
            self.stopped_at = time.monotonic()

    def resume(self) -> None:
        """Go on with the paused utterance where it stopped."""
        self.paused = False

    def stop(self) -> None:
        """End the track (aiortc's sender does at close); whoever waits to speak is released."""
        super().stop()
        self.interrupt()

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- the sender side -------------------------------------------------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        ptime = self.frame_ms / 1000
        if self._start is None or now - (self._start + self._count * ptime) > RESYNC_S:
            self._start = now - self._count * ptime
        else:
            wait = self._start + self._count * ptime - now
            if wait > 0:
                await asyncio.sleep(wait)
        pts = self._count * self.samples
        self._count += 1
        if self._queue and not self.paused:
            samples = self._queue.popleft()
            self.sent += 1
            self.last_sent_at = time.monotonic()
            if self.first_sent_at is None:
                self.first_sent_at = self.last_sent_at
            self._room.set()
            if not self._queue:
                self._drained.set()
        else:
            samples = self._silence
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = RATE
        frame.pts = pts
        frame.time_base = self._time_base
        return frame


@dataclass
class Utterance:
    """An answer being spoken: its sentences and how many frames each one took."""

    reply_id: str
    text: str
    language: str
    frame_ms: int = 20
    ends: list[int] = field(default_factory=list)  # cumulative frame count at each sentence end
    sentences: list[str] = field(default_factory=list)

    def add(self, sentence: str, frames: int) -> None:
        self.sentences.append(sentence)
        self.ends.append((self.ends[-1] if self.ends else 0) + frames)

    @property
    def total_ms(self) -> int:
        return (self.ends[-1] if self.ends else 0) * self.frame_ms

    def heard(self, frames_sent: int) -> str:
        """The words the buyer heard: whole sentences, then the spoken share of the next one."""
        out: list[str] = []
        start = 0
        for sentence, end in zip(self.sentences, self.ends, strict=True):
            if frames_sent >= end:
                out.append(sentence)
            else:
                share = max(0, frames_sent - start) / max(1, end - start)
                words = sentence.split()
                cut = int(len(words) * share)
                if cut:
                    out.append(" ".join(words[:cut]) + " …")
                break
            start = end
        return " ".join(out)


def trim_frames(frames: list[np.ndarray], lead: int = 0, tail: int = 10) -> list[np.ndarray]:
    """Cut a sentence's leading and trailing silence down to `lead` and `tail` frames.

    hibari-tts pads every sentence with ~300 ms of silence before and ~460 ms after: the first
    would be added to every reply's latency, and both make long pauses between sentences.
    """

    def loud(frame: np.ndarray) -> bool:
        x = frame.astype(np.float32)
        return float(np.sqrt(np.mean(x * x))) >= SILENT_RMS

    first = next((i for i, f in enumerate(frames) if loud(f)), None)
    if first is None:
        return []
    last = max(i for i, f in enumerate(frames) if loud(f))
    return frames[max(0, first - lead) : min(len(frames), last + 1 + tail)]


def low_latency_receiver(receiver, prefetch: int = 1) -> bool:
    """Give an aiortc audio receiver a 1-frame jitter buffer instead of its default 4.

    aiortc holds 4 audio frames (80 ms) before decoding; on the short paths an agent has to its
    SFU that is pure delay, added twice to every barge-in (buyer -> agent, agent -> buyer).
    This reaches into aiortc's private state (checked: aiortc 1.16); if that state is not
    there, nothing changes and False is returned.
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, name, None)
    if not isinstance(current, JitterBuffer) or getattr(current, "_is_video", False):
        return False
    setattr(receiver, name, JitterBuffer(capacity=current.capacity, prefetch=prefetch))
    return True
