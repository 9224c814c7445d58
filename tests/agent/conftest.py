"""Fixtures for the agent tests: the demo shop, an engine over a temporary ticket database, the
real models (Whisper base from its PyPI packages, hibari-tts, espeak-ng) loaded once per session,
and speech clips made with espeak-ng at test time. A missing model or program fails the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent.answer import GroundedEngine, ShopTools, TicketStore, load_shop
from agent.audio.frames import read_audio
from agent.audio.stt import WhisperStt, packaged_model_dir
from agent.audio.tts import build_tts
from agent.config import AgentConfig

# espeak-ng voices whose speech Whisper base understands best (see MODELS.md and the README)
CLIP_VOICES = {"en": "en-us", "pt": "pt", "es": "es-419+klatt"}


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
