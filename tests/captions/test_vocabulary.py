"""Whisper's prompt (the shop's vocabulary), the finals' beam and the host's language: what the
captioner hands Whisper for partials and finals. No model here (a recording stand-in for
WhisperStt); test_streaming.py checks the same against the real model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent.audio.stt import Transcript
from agent.captions.captioner import Captioner
from agent.captions.config import CaptionSettings, caption_settings
from agent.captions.transcriber import DecodeRequest, PhraseDecoder
from agent.captions.vocabulary import MAX_PROMPT_CHARS, build_prompts


def test_prompts_from_the_shop_catalogue():
    prompts = build_prompts(CaptionSettings(), languages=("en", "pt", "es"))
    assert set(prompts) >= {"en", "pt", "es"}
    assert prompts["pt"].startswith("Maré Studio: ")
    assert "vestido transpassado de linho (areia, oliva, azul-marinho)" in prompts["pt"]
    assert "relógio automático" in prompts["pt"]
    assert "leather tote bag (tan, black)" in prompts["en"]
    assert "(silver)" not in prompts["en"]  # a colour already in the name is not repeated
    assert all(len(p) <= MAX_PROMPT_CHARS for p in prompts.values())


def test_vocabulary_setting_adds_terms_per_language():
    settings = caption_settings({"vocabulary": {"pt-BR": ["pix", "boleto"], "*": ["Maré Studio"]}})
    prompts = build_prompts(settings, languages=("en", "pt"))
    assert prompts["pt"].endswith("pix, boleto, Maré Studio.")
    assert prompts["en"].endswith(", Maré Studio.")
    only_terms = build_prompts(
        CaptionSettings(vocabulary_from_shop=False, vocabulary={"pt": ["pix"]}), languages=["en"]
    )
    assert only_terms == {"pt": "pix"}  # no shop: nothing for English
    assert build_prompts(CaptionSettings(vocabulary_from_shop=False)) == {}
    with pytest.raises(ValueError):
        build_prompts(CaptionSettings(vocabulary={"not a code": ["x"]}))


def test_a_long_vocabulary_is_cut_at_a_term():
    terms = [f"product number {i}" for i in range(100)]
    prompt = build_prompts(CaptionSettings(vocabulary_from_shop=False, vocabulary={"en": terms}))[
        "en"
    ]
    assert len(prompt) <= MAX_PROMPT_CHARS and prompt.endswith(".")
    assert prompt.rstrip(".").split(", ")[-1] in terms


class RecordingStt:
    """Stands in for WhisperStt: notes each call, answers with a fixed text."""

    languages = ("en", "pt", "es")
    beam_size = 1

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def transcribe(self, audio, language=None, prior=None, *, prompt=None, beam_size=None):
        self.calls.append({"language": language, "prompt": prompt, "beam_size": beam_size})
        return Transcript("Boa tarde a todos.", language or "pt", 1.0, -0.3)


def _request(final: bool, end_ms: float, speculative: bool = False) -> DecodeRequest:
    audio = np.zeros(int(16 * end_ms), np.int16)
    return DecodeRequest(1, final, audio, 0.0, end_ms, 0.0, speculative)


def test_partials_greedy_finals_with_the_wider_beam_and_the_prompt():
    stt = RecordingStt()
    prompts = build_prompts(CaptionSettings(), languages=stt.languages)
    decoder = PhraseDecoder(stt, fixed_language="pt", prompts=prompts, final_beam_size=5)
    decoder.decode(_request(False, 700))  # a partial while the host talks
    decoder.decode(_request(False, 1500, speculative=True))  # 100 ms into the pause
    final = decoder.decode(_request(True, 1400))
    assert [c["beam_size"] for c in stt.calls] == [1, 5]
    assert all(c["language"] == "pt" and c["prompt"] == prompts for c in stt.calls)
    assert final is not None and final.reused  # the speculative decode was the final

    # a final whose last partial was greedy is decoded again, with the finals' beam
    stt.calls.clear()
    decoder.decode(DecodeRequest(2, False, np.zeros(24000, np.int16), 0.0, 1500, 0.0))
    final = decoder.decode(DecodeRequest(2, True, np.zeros(24000, np.int16), 0.0, 1400, 0.0))
    assert [c["beam_size"] for c in stt.calls] == [1, 5]
    assert final is not None and not final.reused


def test_final_beam_size_one_keeps_every_decode_greedy():
    stt = RecordingStt()
    decoder = PhraseDecoder(stt, final_beam_size=1)
    decoder.decode(_request(False, 1600))
    decoder.decode(_request(True, 1500))
    assert [c["beam_size"] for c in stt.calls] == [1]  # the covering partial became the final
    assert stt.calls[0]["prompt"] is None  # no prompts given: none passed


class FakeClient:
    def __init__(self, participants: dict) -> None:
        self.participants = participants
        self.tracks: dict = {}

    def on(self, event, handler) -> None:
        pass

    async def subscribe(self, track_ids) -> None:
        await asyncio.sleep(3600)  # the test ends before any audio


async def test_the_host_language_and_the_prompts_reach_the_track_decoder():
    client = FakeClient(
        {
            "host": {"metadata": {"role": "host", "language": "pt-BR"}},
            "guest": {"metadata": {"role": "host"}},
        }
    )
    stt = RecordingStt()
    prompts = {"pt": "Maré Studio: bolsa tote de couro."}
    captioner = Captioner(
        client,
        stt,
        translator=None,
        settings=CaptionSettings(source_language="en"),
        stt_executor=None,
        translate_executor=None,
        prompts=prompts,
    )
    captioner._maybe_caption({"id": "TR_host", "kind": "audio", "publisher": "host"})
    captioner._maybe_caption({"id": "TR_guest", "kind": "audio", "publisher": "guest"})
    try:
        host = captioner.transcribers["TR_host"].decoder
        guest = captioner.transcribers["TR_guest"].decoder
        assert host.fixed_language == "pt"  # the host page's "I speak" menu
        assert guest.fixed_language == "en"  # none declared: [captions] source_language
        assert host.prompts == prompts and host.final_beam == 5
    finally:
        await captioner.close()
