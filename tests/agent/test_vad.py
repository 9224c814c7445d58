"""Speech, not sound: the Silero VAD (the .onnx inside faster-whisper, through onnxruntime) on
real speech and on the sounds a buyer's room makes; webrtcvad behind the same interface."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio.endpoint import Endpointer, SpeechStarted, TurnEnded
from agent.audio.frames import frames_of
from agent.audio.vad import (
    SILERO_CHUNK,
    SileroVad,
    VadModelNotFound,
    WebRtcVad,
    build_vad,
    silero_model_path,
)
from benchmarks.sounds import noises

from .conftest import with_silence

SPOKEN = [
    ("en", "How long does shipping to Germany take?"),
    ("pt", "Quanto custa o relógio automático?"),
    ("es", "¿Dónde está mi pedido, por favor?"),
]


def events_of(vad, samples: np.ndarray, frame_ms: int = 20) -> list:
    endpointer = Endpointer(vad)
    events: list = []
    for frame in frames_of(with_silence(samples, 16000, 0.5, 1.0), 16000, frame_ms):
        events += endpointer.push(frame)
    return events


@pytest.mark.parametrize("name", sorted(noises()))
def test_room_sounds_start_no_turn(name):
    """Tones, beeps, a buzzer, music, typing and a cough: not one frame of speech."""
    sound = noises()[name]
    vad = SileroVad()
    decisions = [vad.is_speech(f) for f in frames_of(sound, 16000, 20)]
    assert sum(decisions) <= 1, (name, sum(decisions))
    assert not [e for e in events_of(SileroVad(), sound) if isinstance(e, SpeechStarted)], name


@pytest.mark.parametrize("lang, text", SPOKEN)
def test_real_speech_starts_one_turn(buyer_speech, lang, text):
    clip = buyer_speech(text, lang)
    vad = SileroVad()
    decisions = [vad.is_speech(f) for f in frames_of(clip, 16000, 20, pad=False)]
    assert sum(decisions) / len(decisions) > 0.7
    events = events_of(SileroVad(), clip)
    ends = [e for e in events if isinstance(e, TurnEnded)]
    assert len(ends) == 1 and len(ends[0].audio) / 16000 > 0.8, events
    # the turn holds the question: from at most the pre-roll before it to the silence after
    assert 300 <= ends[0].start_ms <= 520 and ends[0].voiced_ms >= 0.6 * len(clip) / 16


def test_speech_over_music_is_still_speech(buyer_speech):
    speech = buyer_speech("Quanto custa a bolsa de couro?", "pt")
    music = noises()["music"][: len(speech)]
    mixed = (speech.astype(np.int32) + music[: len(speech)].astype(np.int32) // 3).clip(
        -32768, 32767
    )
    ends = [e for e in events_of(SileroVad(), mixed.astype(np.int16)) if isinstance(e, TurnEnded)]
    assert len(ends) == 1


def test_streaming_state_is_kept_whatever_the_frame_size(buyer_speech):
    """10, 20 or 30 ms frames: the network reads the same 512-sample chunks with the same
    recurrent state, so it reaches the same probabilities."""
    clip = buyer_speech("How much is the leather tote bag?", "en")
    clip = clip[: len(clip) // 480 * 480]
    traces = []
    for frame_ms in (10, 20, 30):
        vad = SileroVad(frame_ms=frame_ms)
        trace = []
        for frame in frames_of(clip, 16000, frame_ms, pad=False):
            vad.is_speech(frame)
            trace.append(vad.probability)
        traces.append(sorted(set(round(p, 5) for p in trace)))
    assert traces[0] == traces[1] == traces[2]
    assert len(traces[0]) >= len(clip) // SILERO_CHUNK - 1  # one new output per chunk
    vad = SileroVad()
    for frame in frames_of(clip, 16000, 20):
        vad.is_speech(frame)
    assert vad.probability > 0 and vad.is_speech(np.zeros(320, np.int16))  # hysteresis
    vad.reset()
    assert vad.probability == 0 and not vad.is_speech(np.zeros(320, np.int16))


def test_backends_and_model_paths(tmp_path):
    assert silero_model_path().name == "silero_vad_v6.onnx"
    assert isinstance(build_vad("silero"), SileroVad)
    assert isinstance(build_vad("webrtc", aggressiveness=3), WebRtcVad)
    custom = tmp_path / "vad.onnx"
    custom.write_bytes(silero_model_path().read_bytes())
    assert isinstance(build_vad("silero", model=str(custom)), SileroVad)
    with pytest.raises(VadModelNotFound):
        build_vad("silero", model=str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError):
        build_vad("energy")
    with pytest.raises(ValueError):
        SileroVad(threshold=1.5)


def test_a_wrong_vad_setting_fails_when_the_pipeline_loads(model_cache, tmp_path):
    from agent.config import AgentConfig
    from agent.pipeline import VoicePipeline

    config = AgentConfig()
    config.stt.cache_dir = str(model_cache)
    config.tickets.db = str(tmp_path / "t.sqlite3")
    config.audio.vad = "energy"
    with pytest.raises(ValueError, match="silero or webrtc"):
        VoicePipeline.from_config(config, warm_up=False)
    config.audio.vad, config.audio.vad_model = "silero", str(tmp_path / "none.onnx")
    with pytest.raises(VadModelNotFound):
        VoicePipeline.from_config(config, warm_up=False)
