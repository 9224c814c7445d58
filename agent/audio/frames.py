"""PCM helpers: streaming resampling (libswresample through PyAV), framing, WAV in and out.

Audio moves through the pipeline as mono int16 numpy arrays; WebRTC gives 48 kHz, VAD and Whisper
want 16 kHz, the TTS engines give 24 kHz (hibari) or 22.05 kHz (espeak-ng).
"""

from __future__ import annotations

import fractions
import wave
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np

WEBRTC_RATE = 48000
STT_RATE = 16000


class Resampler:
    """Mono int16 at `in_rate` -> mono int16 at `out_rate`, keeping filter state between pushes."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._av = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        self._pts = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self.in_rate == self.out_rate:
            return np.asarray(samples, dtype=np.int16)
        if len(samples) == 0:
            return np.zeros(0, np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = self.in_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.in_rate)
        self._pts += len(samples)
        return self._collect(self._av.resample(frame))

    def flush(self) -> np.ndarray:
        if self.in_rate == self.out_rate:
            return np.zeros(0, np.int16)
        return self._collect(self._av.resample(None))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """One-shot resampling of a whole clip."""
    r = Resampler(in_rate, out_rate)
    return np.concatenate([r.push(samples), r.flush()])


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


def frames_of(
    samples: np.ndarray, rate: int, frame_ms: int = 20, pad: bool = True
) -> Iterator[np.ndarray]:
    """Consecutive frames of `frame_ms`; the last one zero-padded (or dropped if not `pad`)."""
    n = rate * frame_ms // 1000
    for start in range(0, len(samples), n):
        frame = samples[start : start + n]
        if len(frame) < n:
            if not pad:
                return
            frame = np.concatenate([frame, np.zeros(n - len(frame), samples.dtype)])
        yield frame


class FrameChunker:
    """Re-cuts a stream of arbitrary-length chunks into fixed frames (e.g. 20 ms at 48 kHz)."""

    def __init__(self, frame_samples: int) -> None:
        self.n = frame_samples
        self._buf = np.zeros(0, np.int16)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        self._buf = np.concatenate([self._buf, samples.astype(np.int16, copy=False)])
        count = len(self._buf) // self.n
        out = [self._buf[i * self.n : (i + 1) * self.n] for i in range(count)]
        self._buf = self._buf[count * self.n :]
        return out

    def flush(self) -> list[np.ndarray]:
        if len(self._buf) == 0:
            return []
        frame = np.concatenate([self._buf, np.zeros(self.n - len(self._buf), np.int16)])
        self._buf = np.zeros(0, np.int16)
        return [frame]


class InputStage:
    """Audio as it arrives (aiortc frames from a WebRTC track, or int16 samples of a recording,
    at any rate) -> mono 16 kHz int16 frames of `frame_ms`: what the VAD, the endpointer and
    Whisper read. The one place the agent, the captioner and `ask --audio` do this; the
    resampler keeps its filter state, so chunk boundaries do not click."""

    def __init__(self, frame_ms: int = 20, out_rate: int = STT_RATE) -> None:
        self.out_rate = out_rate
        self.frame_samples = out_rate * frame_ms // 1000
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        self._chunker = FrameChunker(self.frame_samples)

    def push(self, audio: av.AudioFrame | np.ndarray, rate: int = WEBRTC_RATE) -> list[np.ndarray]:
        """Frames completed by this piece of audio (`rate`: of a numpy `audio`)."""
        if isinstance(audio, np.ndarray):
            if len(audio) == 0:
                return []
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, dtype=np.int16).reshape(1, -1),
                format="s16",
                layout="mono",
            )
            frame.sample_rate = rate
        else:
            frame = audio
        frame.pts = None  # RTP timestamps may jump (loss, a new sender): the resampler needs none
        out: list[np.ndarray] = []
        for resampled in self._resampler.resample(frame):
            out += self._chunker.push(resampled.to_ndarray().reshape(-1))
        return out

    def flush(self) -> list[np.ndarray]:
        """The resampler's tail and the last partial frame (zero-padded): end of a recording."""
        out: list[np.ndarray] = []
        for resampled in self._resampler.resample(None):
            out += self._chunker.push(resampled.to_ndarray().reshape(-1))
        return out + self._chunker.flush()


def read_audio(path: str | Path, rate: int = STT_RATE) -> np.ndarray:
    """Any audio file PyAV can decode, as mono int16 at `rate`."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def concat(chunks: Iterable[np.ndarray]) -> np.ndarray:
    parts = list(chunks)
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)
