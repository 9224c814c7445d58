"""Resampling, VAD on real speech and noise, endpointing timing, TTS output framing."""

import av
import numpy as np
import pytest

from agent.audio.endpoint import Endpointer, SpeechStarted, TurnEnded
from agent.audio.frames import FrameChunker, InputStage, Resampler, frames_of, resample
from agent.audio.vad import WebRtcVad

from .conftest import with_silence


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_streaming_resample_48k_to_16k_keeps_pitch_and_length():
    src = tone(440, 1.0, 48000)
    r = Resampler(48000, 16000)
    out = np.concatenate([r.push(f) for f in frames_of(src, 48000, 20)] + [r.flush()])
    assert abs(len(out) - 16000) <= 64
    assert abs(dominant(out[2000:14000], 16000) - 440) < 5
    up = resample(out, 16000, 48000)
    assert abs(len(up) - 48000) <= 192


def test_input_stage_gives_16k_20ms_frames_from_numpy_or_aiortc_frames():
    """The one input stage (agent, captioner, ask --audio): same frames whatever the pieces
    audio comes in, pitch kept, RTP timestamp jumps ignored."""
    src = tone(440, 1.0, 48000)
    whole = InputStage()
    a = whole.push(src) + whole.flush()
    pieces = InputStage()
    b = []
    for i, piece in enumerate(np.array_split(src, 37)):
        if i % 2:
            b += pieces.push(piece)
        else:  # as aiortc hands them: av.AudioFrame, with timestamps that may jump
            frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = 48000
            frame.pts = i * 123_456
            b += pieces.push(frame)
    b += pieces.flush()
    assert all(len(f) == 320 and f.dtype == np.int16 for f in a + b)
    assert len(a) == len(b) == 50
    assert np.array_equal(np.concatenate(a), np.concatenate(b))
    assert abs(dominant(np.concatenate(a)[2000:14000], 16000) - 440) < 5
    assert np.array_equal(np.concatenate(a), resample(src, 48000, 16000)[: 50 * 320])


def test_frame_chunker_cuts_exact_frames():
    c = FrameChunker(960)
    frames = c.push(np.ones(2000, np.int16)) + c.push(np.ones(1000, np.int16)) + c.flush()
    assert [len(f) for f in frames] == [960, 960, 960, 960]
    assert frames[-1][120:].sum() == 0  # padded


def voiced_share(samples: np.ndarray, aggressiveness: int = 2) -> float:
    vad = WebRtcVad(aggressiveness)
    decisions = [vad.is_speech(f) for f in frames_of(samples, 16000, 20, pad=False)]
    return sum(decisions) / len(decisions)


@pytest.mark.parametrize(
    "lang, text",
    [
        ("en", "How long does shipping to Germany take?"),
        ("pt", "Quanto custa o relógio automático?"),
        ("es", "¿Dónde está mi pedido, por favor?"),
    ],
)
def test_vad_hears_speech(speech_clip, lang, text):
    assert voiced_share(speech_clip(text, lang)) > 0.6


def test_vad_ignores_silence_and_noise():
    rng = np.random.default_rng(1)
    assert voiced_share(np.zeros(16000, np.int16)) == 0
    hiss = (rng.normal(0, 300, 32000)).astype(np.int16)  # steady background noise
    assert voiced_share(hiss) < 0.1
    hum = tone(50, 2.0, 16000, 0.05)  # mains hum
    assert voiced_share(hum) < 0.1


def run_endpointer(samples: np.ndarray, **kw) -> list:
    ep = Endpointer(WebRtcVad(2), **kw)
    events = []
    for f in frames_of(samples, 16000, 20):
        events += ep.push(f)
    return events


def test_turn_ends_after_the_configured_silence(speech_clip):
    clip = with_silence(speech_clip("Is the watch water resistant?", "en"), 16000, 0.5, 1.0)
    for silence_ms in (200, 300, 500):
        events = run_endpointer(clip, end_of_turn_silence_ms=silence_ms)
        starts = [e for e in events if isinstance(e, SpeechStarted)]
        ends = [e for e in events if isinstance(e, TurnEnded)]
        assert len(starts) == 1 and len(ends) == 1
        assert 400 <= starts[0].at_ms <= 700
        assert ends[0].detected_ms - ends[0].speech_end_ms == silence_ms
        assert len(ends[0].audio) / 16000 > 1.0  # the whole question, pre-roll included


def trim(samples: np.ndarray) -> np.ndarray:
    """espeak-ng pads its output with silence; cut it so the gap we add is the real gap."""
    loud = np.flatnonzero(np.abs(samples) > 300)
    return samples[loud[0] : loud[-1] + 1]


def test_two_questions_make_two_turns_and_short_gaps_do_not_split(speech_clip):
    q1 = trim(speech_clip("How much is the bag?", "en"))
    q2 = trim(speech_clip("And the watch?", "en"))
    gap_long = np.zeros(int(16000 * 0.8), np.int16)
    events = run_endpointer(with_silence(np.concatenate([q1, gap_long, q2]), 16000, 0.3, 0.6))
    assert sum(isinstance(e, TurnEnded) for e in events) == 2
    gap_short = np.zeros(int(16000 * 0.12), np.int16)
    events = run_endpointer(with_silence(np.concatenate([q1, gap_short, q2]), 16000, 0.3, 0.6))
    assert sum(isinstance(e, TurnEnded) for e in events) == 1


def test_clicks_and_short_noise_bursts_are_not_turns():
    rng = np.random.default_rng(2)
    audio = np.zeros(48000, np.int16)
    audio[8000:8080] = 20000  # a 5 ms click
    audio[24000:24400] = rng.normal(0, 8000, 400).astype(np.int16)  # a 25 ms knock
    events = run_endpointer(audio)
    assert not any(isinstance(e, TurnEnded) for e in events)


@pytest.mark.parametrize(
    "lang, text",
    [
        ("en", "The automatic watch costs 420 dollars."),
        ("pt", "O relógio automático custa 420 dólares."),
        ("es", "El reloj automático cuesta 420 dólares."),
    ],
)
def test_tts_gives_48k_20ms_frames(tts, lang, text):
    # how fast is measured by benchmarks/agent_latency.py (tts_first_audio), not here: it
    # depends on the CPU
    frames = tts.frames(text, lang)
    first = next(frames)
    rest = list(frames)
    assert all(len(f) == 960 and f.dtype == np.int16 for f in [first, *rest])
    seconds = (1 + len(rest)) * 0.02
    assert 1.0 < seconds < 8.0
    audio = np.concatenate([first, *rest]).astype(np.float64)
    assert np.sqrt(np.mean(audio**2)) > 300  # audible
    backend = tts.backend_for(lang).name
    assert backend == ("hibari" if lang == "en" else "kokoro")  # espeak-ng only as a fallback
