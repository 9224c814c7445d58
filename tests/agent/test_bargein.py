"""Barge-in pieces without a network: the burst detector on real speech and short noises, the
agent's voice track (silent in the frame after interrupt(), never more than two frames queued),
and what the buyer heard of an interrupted answer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent.audio.bargein import BargeInDetector
from agent.audio.frames import STT_RATE, frames_of
from agent.audio.vad import build_vad
from agent.voice import AgentVoice, Utterance, trim_frames
from benchmarks.sounds import noises

from .conftest import with_silence


def _decisions(detector: BargeInDetector, voiced: list[bool]) -> list[tuple[int, str, int]]:
    out = []
    for i, v in enumerate(voiced):
        verdict = detector.push(v)
        if verdict is not None:
            out.append((i, verdict[0], verdict[1].voiced_ms))
    return out


def test_speech_past_the_threshold_is_a_barge_in_once():
    detector = BargeInDetector(threshold_ms=150, frame_ms=20, gap_ms=60)
    # 7 voiced frames (140 ms), a 2-frame gap (kept in the burst), then more speech
    voiced = [True] * 7 + [False] * 2 + [True] * 10 + [False] * 5
    assert _decisions(detector, voiced) == [(9, "barge_in", 160)]


def test_short_bursts_are_noise_and_a_long_gap_splits_bursts():
    detector = BargeInDetector(threshold_ms=150, frame_ms=20, gap_ms=60)
    voiced = [True] * 4 + [False] * 4 + [True] * 5 + [False] * 4
    assert _decisions(detector, voiced) == [(7, "noise", 80), (16, "noise", 100)]


def _vad_verdicts(samples16k: np.ndarray, backend: str = "webrtc") -> list[str]:
    vad = build_vad(backend, aggressiveness=2, sample_rate=STT_RATE, frame_ms=20)
    detector = BargeInDetector(150, 20, 60)
    verdicts = []
    for frame in frames_of(samples16k, STT_RATE, 20):
        verdict = detector.push(vad.is_speech(frame))
        if verdict is not None:
            verdicts.append(verdict[0])
    return verdicts


@pytest.mark.parametrize("backend", ["silero", "webrtc"])
def test_real_speech_barges_in_and_a_click_or_knock_does_not(speech_clip, backend):
    speech = with_silence(speech_clip("Wait, how much is the bag?", "en"), STT_RATE, 0.2, 0.4)
    assert _vad_verdicts(speech, backend)[0] == "barge_in"
    rng = np.random.default_rng(1)
    click = np.zeros(STT_RATE // 2, np.int16)
    click[2000:2080] = (rng.uniform(-1, 1, 80) * 30000).astype(np.int16)  # 5 ms
    n = STT_RATE * 60 // 1000
    knock = np.zeros(STT_RATE // 2, np.int16)
    knock[2000 : 2000 + n] = (
        rng.normal(0, 0.35, n) * np.exp(-np.linspace(0, 5, n)) * 30000
    ).astype(np.int16)
    for noise in (click, knock):
        assert "barge_in" not in _vad_verdicts(noise, backend)


def test_tones_music_and_coughs_never_barge_in_with_silero():
    for name, sound in noises().items():
        assert _vad_verdicts(with_silence(sound, STT_RATE, 0.2, 0.4), "silero") == [], name


async def test_pause_keeps_the_utterance_and_resume_goes_on_from_the_same_frame():
    voice = AgentVoice(frame_ms=20, max_queued=2)
    frames = [np.full(960, 1000 + i, np.int16) for i in range(8)]
    generation = voice.begin()

    async def feed() -> bool:
        for frame in frames:
            if not await voice.put(frame, generation):
                return False
        return True

    feeder = asyncio.ensure_future(feed())
    await asyncio.sleep(0.01)
    heard = [int((await voice.recv()).to_ndarray().max()) for _ in range(3)]
    voice.pause()
    paused = [int((await voice.recv()).to_ndarray().max()) for _ in range(4)]
    assert paused == [0, 0, 0, 0] and voice.sent == 3  # silent at once, nothing lost
    voice.resume()
    heard += [int((await voice.recv()).to_ndarray().max()) for _ in range(5)]
    assert heard == [1000 + i for i in range(8)]  # every frame once, in order
    assert await asyncio.wait_for(feeder, 1) is True
    voice.pause()
    voice.interrupt()  # a pause that became an interruption ends the utterance
    assert not voice.paused


async def test_voice_is_silent_in_the_frame_after_stop_and_queues_little():
    voice = AgentVoice(frame_ms=20, max_queued=2)
    loud = np.full(960, 8000, np.int16)
    generation = voice.begin()
    feeder = asyncio.ensure_future(_feed(voice, loud, generation, 50))
    await asyncio.sleep(0.01)  # the speaker fills the queue
    frames = []
    for _ in range(5):
        frames.append(await voice.recv())
        assert voice.queued <= 2  # never more than two frames ahead of the sender
    assert all(np.abs(f.to_ndarray()).max() == 8000 for f in frames)
    dropped = voice.interrupt()
    assert dropped <= 2
    after = await voice.recv()
    assert np.abs(after.to_ndarray()).max() == 0  # the very next frame is silence
    assert voice.sent == 5
    await asyncio.wait_for(feeder, 1)
    assert feeder.result() is False  # the speaker learned the utterance was stopped
    voice.interrupt()


async def _feed(voice: AgentVoice, frame: np.ndarray, generation: int, count: int) -> bool:
    for _ in range(count):
        if not await voice.put(frame, generation):
            return False
    return True


async def test_voice_paces_frames_in_real_time():
    voice = AgentVoice(frame_ms=20)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(10):
        frame = await voice.recv()
    elapsed = loop.time() - t0
    assert 0.17 <= elapsed <= 0.4
    assert frame.sample_rate == 48000 and frame.samples == 960 and frame.pts == 9 * 960


def test_heard_text_follows_the_frames_sent():
    u = Utterance("r1", "The bag costs 159 dollars. It comes in tan and black.", "en")
    u.add("The bag costs 159 dollars.", 50)
    u.add("It comes in tan and black.", 60)
    assert u.total_ms == 2200
    assert u.heard(0) == ""
    assert u.heard(50) == "The bag costs 159 dollars."
    assert u.heard(80) == "The bag costs 159 dollars. It comes in …"
    assert u.heard(500) == u.text


@pytest.mark.parametrize(("lead", "tail"), [(0, 2), (1, 12)])
def test_trim_frames_cuts_tts_padding(lead, tail):
    silent = [np.zeros(960, np.int16)] * 15
    loud = [np.full(960, 3000, np.int16)] * 10
    trimmed = trim_frames(silent + loud + silent, lead=lead, tail=tail)
    assert len(trimmed) == lead + 10 + tail
    assert trim_frames(silent) == []
