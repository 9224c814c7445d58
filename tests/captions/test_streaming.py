"""Streaming transcription on real speech recordings: partials while a phrase is spoken, then
one final per phrase, close to the script."""

from __future__ import annotations

import asyncio
import fractions
import threading
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from agent.audio.frames import resample
from agent.captions.config import CaptionSettings
from agent.captions.metrics import wer
from agent.captions.transcriber import Caption, TrackTranscriber, transcribe_recording
from agent.captions.vocabulary import build_prompts

from .conftest import silence

SCRIPT_EN = ["Welcome to our live sale from the studio.", "We ship to Brazil in about one week."]

pytestmark = pytest.mark.slow


def _recording(speech, phrases: list[str], lang: str, rate: int) -> np.ndarray:
    parts = [silence(0.6, rate)]
    for text in phrases:
        parts += [speech(text, lang, rate), silence(1.0, rate)]
    return np.concatenate(parts)


def test_partials_then_one_final_per_phrase(caption_models, speech):
    audio = _recording(speech, SCRIPT_EN, "en", 16000)
    captions = transcribe_recording(audio, caption_models.stt, CaptionSettings())
    finals = [c for c in captions if c.final]
    assert [c.seq for c in finals] == [1, 2], [(c.seq, c.final, c.text) for c in captions]
    for seq, script in zip((1, 2), SCRIPT_EN, strict=True):
        phrase = [c for c in captions if c.seq == seq]
        partials = [c for c in phrase if not c.final]
        assert len(partials) >= 2, phrase  # a ~2.5 s phrase: a partial every 0.7 s of speech
        assert phrase[-1].final and all(not c.final for c in phrase[:-1]), "final comes last"
        assert [c.revision for c in partials] == list(range(len(partials)))
        # partials grow with the audio: the first covers less of the phrase than the final
        assert partials[0].end_ms < phrase[-1].end_ms
        assert len(partials[0].text.split()) < len(phrase[-1].text.split())
        assert phrase[-1].language == "en"
        assert wer([script], [phrase[-1].text]) <= 0.35, phrase[-1].text
    # the pause was long enough: the decode taken 100 ms into it became the final, no second pass
    assert all(c.reused for c in finals), finals
    # the final's times bracket the spoken phrase (0.6 s lead-in, then the first phrase)
    assert 300 <= finals[0].start_ms <= 700
    assert finals[0].end_ms < finals[1].start_ms


def test_portuguese_host_with_declared_language(caption_models, speech, monkeypatch):
    # Kokoro's Portuguese (Whisper base mishears espeak-ng's): the product among the words and a
    # loose bound on the rest, never the exact wording
    script = "Temos uma bolsa de couro."
    stt = caption_models.stt
    prompts = build_prompts(CaptionSettings(), languages=stt.languages)
    calls: list[dict] = []
    decode = stt.model.transcribe

    def spy(audio, **options):
        calls.append(options)
        return decode(audio, **options)

    monkeypatch.setattr(stt.model, "transcribe", spy)
    audio = _recording(speech, [script], "pt", 16000)
    captions = transcribe_recording(audio, stt, CaptionSettings(), language="pt", prompts=prompts)
    finals = [c for c in captions if c.final]
    assert len(finals) == 1 and finals[0].language == "pt", captions
    assert wer([script], [finals[0].text]) <= 0.4, finals[0].text
    assert "bolsa" in finals[0].text.lower()
    # what reached faster-whisper: the declared language (never detected), the shop's
    # Portuguese vocabulary, greedy partials and the finals' beam for the final
    assert calls and all(c["language"] == "pt" for c in calls)
    assert all(c["initial_prompt"] == prompts["pt"] for c in calls)
    beams = [c["beam_size"] for c in calls]
    assert beams[-1] == CaptionSettings().final_beam_size == 5 and 1 in beams, beams


class _FastTrack(MediaStreamTrack):
    """Plays a 48 kHz recording faster than real time, then ends; `on_frame` runs per frame."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, on_frame=None) -> None:
        super().__init__()
        self.samples = samples
        self.offset = 0
        self.on_frame = on_frame

    async def recv(self) -> av.AudioFrame:
        if self.offset >= len(self.samples):
            raise MediaStreamError
        chunk = self.samples[self.offset : self.offset + 960]
        chunk = np.concatenate([chunk, np.zeros(960 - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.offset
        frame.time_base = fractions.Fraction(1, 48000)
        self.offset += 960
        if self.on_frame is not None:
            self.on_frame()
        await asyncio.sleep(0.004)  # 5x real time
        return frame


class _HeldStt:
    """The real STT, but its first decode waits until the track has played on by `hold_frames`:
    a decoder that falls behind the audio, whatever the speed of this CPU."""

    def __init__(self, stt, hold_frames: int) -> None:
        self.stt = stt
        self.hold_frames = hold_frames
        self.holding = threading.Event()  # the first decode has started
        self.release = threading.Event()
        self.frames_while_held = 0
        self.calls = 0

    def __getattr__(self, name):  # languages, beam_size, model: the real STT's
        return getattr(self.stt, name)

    def transcribe(self, audio, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            self.holding.set()
            assert self.release.wait(30), "the track never played on"
        return self.stt.transcribe(audio, *args, **kwargs)

    def on_frame(self) -> None:
        """Called by the track for every frame it plays (on the event loop)."""
        if self.holding.is_set() and not self.release.is_set():
            self.frames_while_held += 1
            if self.frames_while_held >= self.hold_frames:
                self.release.set()


async def test_track_transcriber_keeps_order_and_never_skips_a_final(caption_models, speech):
    audio = resample(_recording(speech, SCRIPT_EN, "en", 16000), 16000, 48000)
    got: list[Caption] = []

    async def on_caption(caption: Caption) -> None:
        got.append(caption)

    settings = CaptionSettings()
    # the first partial's decode lasts two partial intervals of audio: the partial scheduled in
    # the meantime must be skipped (never queued behind it), and nothing else lost
    held = _HeldStt(caption_models.stt, hold_frames=2 * settings.partial_interval_ms // 20)
    with ThreadPoolExecutor(1) as executor:
        transcriber = TrackTranscriber(held, settings, executor, on_caption)
        try:
            await asyncio.wait_for(transcriber.run(_FastTrack(audio, held.on_frame)), 60)
        finally:
            held.release.set()
    assert held.frames_while_held >= held.hold_frames  # the decoder really was behind
    finals = [c for c in got if c.final]
    assert [c.seq for c in finals] == [1, 2]
    # in order: every partial of phrase 1 before its final, nothing of phrase 2 before that
    seqs = [(c.seq, c.final) for c in got]
    assert seqs == sorted(seqs), seqs
    # partials that came while the decoder was behind were skipped; the finals still came
    assert transcriber.stats.partials_skipped > 0
    assert transcriber.stats.finals == 2
    assert wer(SCRIPT_EN, [c.text for c in finals]) <= 0.35
