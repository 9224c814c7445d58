"""Text-to-speech backends, chosen per language, streamed sentence by sentence.

hibari-tts (English, 24 kHz, in process, ~50 ms to the first sentence), Kokoro-82M (Portuguese
and Spanish, 24 kHz, in process: agent/audio/kokoro_tts.py) and espeak-ng (a Debian program, run
as a subprocess; any language it has a voice for, 22.05 kHz; the fallback when Kokoro cannot
load). Each backend yields float32 chunks at its own rate; `TtsRouter.frames()` turns them into
48 kHz 20 ms int16 frames.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from .frames import WEBRTC_RATE, FrameChunker, Resampler, float_to_int16
from .kokoro_tts import KokoroTts, Stop, speech_chunks

log = logging.getLogger(__name__)
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")

__all__ = [
    "EspeakTts",
    "HibariTts",
    "KokoroTts",
    "Stop",
    "TextToSpeech",
    "TtsRouter",
    "build_tts",
    "speech_chunks",
    "split_sentences",
    "tts_from_settings",
]


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
    """Picks the backend for each language (config tts.backends) and frames its output.

    `fallbacks`: languages whose configured backend could not load, and why (espeak-ng speaks
    them instead)."""

    def __init__(
        self, backends: dict[str, TextToSpeech], fallbacks: dict[str, str] | None = None
    ) -> None:
        self.backends = backends
        self.fallbacks = dict(fallbacks or {})

    def backend_for(self, language: str) -> TextToSpeech:
        backend = self.backends.get(language)
        if backend is None:
            raise ValueError(f"no TTS backend configured for language {language!r}")
        return backend

    def chunks(self, text: str, language: str) -> list[str]:
        """The pieces the language's engine synthesizes `text` in, each with one call (a caller
        that synthesizes ahead of playback goes piece by piece): Kokoro's first piece is a few
        words (`speech_chunks`); the fast engines' are sentences."""
        backend = self.backend_for(language)
        if isinstance(backend, KokoroTts):
            return backend.chunks(text, language)
        return split_sentences(text)

    def make_time(self, text: str, language: str) -> float:
        """Seconds the language's engine needs to make the piece `text` (estimated; 0 for the
        engines that start within a frame or two, and for a piece made before)."""
        backend = self.backend_for(language)
        return backend.make_time(text, language) if isinstance(backend, KokoroTts) else 0.0

    def engines(self) -> list[TextToSpeech]:
        """Each engine once (several languages may share one)."""
        seen: dict[int, TextToSpeech] = {}
        for backend in self.backends.values():
            seen.setdefault(id(backend), backend)
        return list(seen.values())

    def prepare(
        self, samples: dict[str, list[str]], store: Path | None = None, stop: Stop | None = None
    ) -> int:
        """Make ahead the first pieces of answers like `samples` (per language) where the
        language's engine is slow to start (Kokoro: `KokoroTts.prepare`); the fast engines
        need nothing. Blocking (a background thread); returns the pieces ready."""
        ready = 0
        for engine in self.engines():
            if not isinstance(engine, KokoroTts):
                continue
            pairs = [
                (language, text)
                for language, texts in samples.items()
                if self.backends.get(language) is engine
                for text in texts
            ]
            ready += engine.prepare(pairs, store, stop)
        return ready

    def frames(
        self,
        text: str,
        language: str,
        frame_ms: int = 20,
        split: bool = True,
        stop: Stop | None = None,
    ) -> Iterator[np.ndarray]:
        """48 kHz mono int16 frames of `frame_ms`, piece by piece (`chunks`) as synthesis
        proceeds; `split=False`: `text` is one piece already (a caller going piece by piece).
        `stop` (Kokoro): an answer no longer wanted stops being made, a run in progress too."""
        backend = self.backend_for(language)
        resampler = Resampler(backend.sample_rate, WEBRTC_RATE)
        chunker = FrameChunker(WEBRTC_RATE * frame_ms // 1000)
        for piece in self.chunks(text, language) if split else [text]:
            if isinstance(backend, KokoroTts):
                chunks = backend.stream(piece, language, stop)
            else:
                chunks = backend.stream(piece, language)
            for chunk in chunks:
                yield from chunker.push(resampler.push(float_to_int16(chunk)))
        yield from chunker.push(resampler.flush())
        yield from chunker.flush()


def build_tts(
    backends: dict[str, str],
    espeak_voices: dict[str, str],
    espeak_wpm: int = 165,
    hibari_speed: float = 1.0,
    *,
    kokoro_phonemes: dict[str, str] | None = None,
    kokoro_voice: str = "jm_kumo",
    kokoro_model: str = "",
    kokoro_threads: int = 2,
    kokoro_speed: float = 1.15,
) -> TtsRouter:
    """One instance per engine, shared by the languages that use it. Kokoro that cannot load
    (package or model missing, a bad model path) is logged and espeak-ng speaks its languages:
    the agent still answers, in the robotic voice."""
    made: dict[str, TextToSpeech] = {}
    by_language: dict[str, TextToSpeech] = {}
    fallbacks: dict[str, str] = {}
    kokoro_error = ""

    def espeak() -> TextToSpeech:
        if "espeak" not in made:
            made["espeak"] = EspeakTts(espeak_voices, espeak_wpm)
        return made["espeak"]

    for language, name in backends.items():
        if name == "kokoro":
            if "kokoro" not in made and not kokoro_error:
                phonemes = kokoro_phonemes or {"pt": "pt-br", "es": "es"}
                try:
                    made[name] = KokoroTts(
                        phonemes, kokoro_voice, kokoro_model, kokoro_threads, kokoro_speed
                    )
                except (ValueError, TypeError):
                    raise  # a wrong setting: say so, as for the other engines
                except Exception as exc:  # noqa: BLE001 -- any load failure: fall back
                    kokoro_error = f"{type(exc).__name__}: {exc}"
            if kokoro_error:
                log.warning("Kokoro unavailable (%s): espeak-ng speaks %s", kokoro_error, language)
                fallbacks[language] = kokoro_error
                by_language[language] = espeak()
                continue
            kokoro = made[name]
            assert isinstance(kokoro, KokoroTts)
            if language not in kokoro.phoneme_voices:
                raise ValueError(f"tts.kokoro_phonemes has no espeak-ng voice for {language!r}")
        elif name not in made:
            if name == "hibari":
                made[name] = HibariTts(speed=hibari_speed)
            elif name == "espeak":
                espeak()
            else:
                raise ValueError(f"unknown TTS backend {name!r} for {language}")
        by_language[language] = made[name]
    return TtsRouter(by_language, fallbacks)


def tts_from_settings(settings) -> TtsRouter:  # settings: agent.config.TtsSettings
    """`build_tts` with the [tts] settings of configs/agent.toml."""
    return build_tts(
        settings.backends,
        settings.espeak_voices,
        settings.espeak_wpm,
        settings.hibari_speed,
        kokoro_phonemes=settings.kokoro_phonemes,
        kokoro_voice=settings.kokoro_voice,
        kokoro_model=settings.kokoro_model,
        kokoro_threads=settings.kokoro_threads,
        kokoro_speed=settings.kokoro_speed,
    )
