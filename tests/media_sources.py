"""Synthetic media for tests: solid-colour video and pure-tone audio, with analysers."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc import MediaStreamTrack

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000


class ColorVideoTrack(MediaStreamTrack):
    """Frames of one colour (RGB), 30 fps."""

    kind = "video"

    def __init__(
        self, rgb: tuple[int, int, int], width: int = 320, height: int = 240, fps: int = 30
    ):
        super().__init__()
        self.rgb = rgb
        self.fps = fps
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, :] = rgb
        # a moving bar so the encoder produces real inter frames
        self._image = image
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._count / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        image = self._image.copy()
        x = (self._count * 4) % image.shape[1]
        image[:, x : x + 4] = 255 - np.array(self.rgb, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(self._count * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A sine tone, 20 ms frames of 48 kHz mono s16."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3):
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        n = AUDIO_RATE // 50
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._samples / AUDIO_RATE
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(n) + self._samples) / AUDIO_RATE
        wave = (self.amplitude * 32767 * np.sin(2 * np.pi * self.frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._samples += n
        return frame


def mean_rgb(frame: av.VideoFrame) -> tuple[float, float, float]:
    """Average colour of the frame's left half (away from the moving bar's average)."""
    image = frame.to_ndarray(format="rgb24")
    mean = image.reshape(-1, 3).mean(axis=0)
    return float(mean[0]), float(mean[1]), float(mean[2])


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency in a block of mono samples."""
    samples = samples.astype(np.float64)
    samples -= samples.mean()
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(freqs[int(np.argmax(spectrum))])


async def collect_audio(
    track: MediaStreamTrack, seconds: float, timeout: float = 10.0
) -> tuple[np.ndarray, int]:
    """Decoded mono samples from an audio track (first channel)."""
    chunks, rate, total = [], AUDIO_RATE, 0
    deadline = time.monotonic() + timeout
    while total < seconds * rate:
        frame = await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic()))
        rate = frame.sample_rate
        data = frame.to_ndarray()
        channels = len(frame.layout.channels)
        mono = data.reshape(-1, channels)[:, 0] if data.shape[0] == 1 else data[0]
        chunks.append(mono)
        total += len(mono)
    return np.concatenate(chunks), rate
