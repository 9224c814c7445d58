"""Text-to-speech backends, chosen per language, streamed sentence by sentence.

hibari-tts (English, 24 kHz, in process, ~50 ms to the first sentence) and espeak-ng (a Debian
program, run as a subprocess; any language it has a voice for, 22.05 kHz). Each backend yields
float32 chunks at its own rate; `TtsRouter.frames()` turns them into 48 kHz 20 ms int16 frames.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import threading
import wave
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from .frames import WEBRTC_RATE, FrameChunker, Resampler, float_to_int16

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]


class TextToSpeech(Protocol):
    name: str
    sample_rate: int

    def stream(self, text: str, language: str) -> Iterator[np.ndarray]:
        """float32 mono chunks (one or more per sentence), as soon as each is ready."""
        ...


class HibariTts:
    """hibari-tts, English only, its bundled voice ("heart")."""

    name = "hibari"

    def __init__(self, speed: float = 1.0, threads: int = 1) -> None:
        from hibari import SAMPLE_RATE, Hibari  # fails loudly if hibari-tts is missing

        self.sample_rate = SAMPLE_RATE
        self.speed = speed
        self._tts = Hibari(threads=threads)  # "heart" ships in the wheel; nothing downloads
        self._lock = threading.Lock()

    def stream(self, text: str, language: str = "en") -> Iterator[np.ndarray]:
        if language != "en":
            raise ValueError("hibari-tts speaks English only")
        for sentence in split_sentences(text):
            with self._lock:
                chunks = list(self._tts.stream(sentence, speed=self.speed, seed=0))
            yield from chunks


class EspeakTts:
    """espeak-ng as a subprocess, one call per sentence (first audio in ~20 ms)."""

    name = "espeak"
    sample_rate = 22050

    def __init__(self, voices: dict[str, str], wpm: int = 165) -> None:
        self.binary = shutil.which("espeak-ng")
        if self.binary is None:
            raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
        self.voices = voices
        self.wpm = wpm

    def stream(self, text: str, language: str) -> Iterator[np.ndarray]:
        voice = self.voices.get(language, language)
        for sentence in split_sentences(text):
            yield self.synthesize(sentence, voice)

    def synthesize(self, text: str, voice: str) -> np.ndarray:
        proc = subprocess.run(
            [self.binary, "-v", voice, "-s", str(self.wpm), "--stdout", text],
            capture_output=True,
            check=True,
            timeout=30,
        )
        with wave.open(io.BytesIO(proc.stdout)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if rate != self.sample_rate:
            raise RuntimeError(f"espeak-ng produced {rate} Hz, expected {self.sample_rate}")
        return pcm.astype(np.float32) / 32768.0


class TtsRouter:
    """Picks the backend for each language (config tts.backends) and frames its output."""

    def __init__(self, backends: dict[str, TextToSpeech]) -> None:
        self.backends = backends

    def backend_for(self, language: str) -> TextToSpeech:
        backend = self.backends.get(language)
        if backend is None:
            raise ValueError(f"no TTS backend configured for language {language!r}")
        return backend

    def frames(self, text: str, language: str, frame_ms: int = 20) -> Iterator[np.ndarray]:
        """48 kHz mono int16 frames of `frame_ms`, sentence by sentence as synthesis proceeds."""
        backend = self.backend_for(language)
        resampler = Resampler(backend.sample_rate, WEBRTC_RATE)
        chunker = FrameChunker(WEBRTC_RATE * frame_ms // 1000)
        for chunk in backend.stream(text, language):
            yield from chunker.push(resampler.push(float_to_int16(chunk)))
        yield from chunker.push(resampler.flush())
        yield from chunker.flush()


def build_tts(
    backends: dict[str, str],
    espeak_voices: dict[str, str],
    espeak_wpm: int = 165,
    hibari_speed: float = 1.0,
) -> TtsRouter:
    """One instance per engine, shared by the languages that use it."""
    made: dict[str, TextToSpeech] = {}
    by_language: dict[str, TextToSpeech] = {}
    for language, name in backends.items():
        if name not in made:
            if name == "hibari":
                made[name] = HibariTts(speed=hibari_speed)
            elif name == "espeak":
                made[name] = EspeakTts(espeak_voices, espeak_wpm)
            else:
                raise ValueError(f"unknown TTS backend {name!r} for {language}")
        by_language[language] = made[name]
    return TtsRouter(by_language)
