"""End of turn that waits for an unfinished question: the answer engine's judgement of the
partial transcript, and whole recordings with mid-sentence pauses through the real chain."""

from __future__ import annotations

import os

import numpy as np
import pytest

from agent.answer import ConversationState, load_shop
from agent.answer.unfinished import unfinished
from agent.audio.frames import WEBRTC_RATE
from agent.config import AgentConfig
from agent.pipeline import VoicePipeline, run_recording


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Does the", "dangling_word"),
        ("How much is the", "dangling_word"),
        ("How much is that the", "dangling_word"),
        ("Quanto custa o", "dangling_word"),
        ("¿Cuánto cuesta el", "dangling_word"),
        ("Do you ship to", "dangling_word"),
        ("Quanto custa o?", "dangling_word"),  # Whisper's "?" on half a question
        ("I'd like the black…", "trailing_off"),
        ("How much is that?", "no_product"),
        ("¿Cuánto cuesta?", "no_product"),
        ("Where is my order", "no_order_number"),
        ("¿Cuánto costa?", "nothing_asked"),  # Whisper's Spanish for "Quanto custa a"
        ("Hello!", ""),  # a greeting asks for a greeting
        ("Thank you so much.", ""),
        ("Does the linen wrap dress come in navy?", ""),
        ("How much is the leather tote bag?", ""),
        ("Quanto custa o relógio?", ""),
        ("¿El reloj es resistente al agua?", ""),
        ("Where is my order 10023?", ""),
        ("What is the dress made of?", ""),  # a preposition may end a question
        ("Do you ship to Brazil?", ""),
    ],
)
def test_the_engine_judges_whether_the_question_is_finished(text, reason):
    assert unfinished(text, load_shop(), ConversationState()) == reason


def test_what_the_conversation_knows_completes_a_question():
    shop = load_shop()
    state = ConversationState(product_id=shop.products[0].id, order_id="10023")
    assert unfinished("How much is it?", shop, state) == ""
    assert unfinished("Where is my order?", shop, state) == ""
    assert unfinished("And the", shop, state) == "dangling_word"


@pytest.fixture(scope="module")
def pipeline(model_cache, tmp_path_factory):
    config = AgentConfig()
    config.stt.cache_dir = str(model_cache)
    config.tickets.db = str(tmp_path_factory.mktemp("tickets") / "t.sqlite3")
    os.environ.pop("AGENT_TICKETS_DB", None)
    p = VoicePipeline.from_config(config, warm_up=False)
    yield p
    p.close()


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(WEBRTC_RATE * seconds), np.int16)


PAUSED = [
    ("en", "How much is the", "leather tote bag?", "159"),
    ("es", "¿Cuánto cuesta el", "bolso de cuero?", "159"),
    ("en", "Where is my order", "one zero zero two three?", "10023"),
]


@pytest.mark.slow
@pytest.mark.parametrize("pause_s", [0.4, 0.7, 1.0])
@pytest.mark.parametrize("lang, before, after, fact", PAUSED)
def test_a_pause_mid_question_does_not_split_it(
    pipeline, buyer_speech, lang, before, after, fact, pause_s
):
    """A buyer who pauses 0.4-1.0 s mid-question gets one answer, to the whole question."""
    audio = np.concatenate(
        [
            _silence(0.3),
            buyer_speech(before, lang, rate=WEBRTC_RATE),
            _silence(pause_s),
            buyer_speech(after, lang, rate=WEBRTC_RATE),
            _silence(0.5),
        ]
    )
    results, totals = run_recording(pipeline, audio, ConversationState(customer=lang))
    assert totals["turns"] == 2  # the silence timer alone cuts it in two
    assert len(results) == 1 and totals["merged_turns"] == 1, [
        (r.transcript.text, r.answer.text) for r in results
    ]
    assert fact in results[0].answer.text, (results[0].transcript.text, results[0].answer.text)
    assert results[0].answer.intent != "clarify_product"


@pytest.mark.slow
def test_complete_questions_keep_todays_end_of_turn(pipeline, buyer_speech):
    """Two complete questions 0.8 s apart: two answers, each after the usual 300 ms."""
    audio = np.concatenate(
        [
            _silence(0.3),
            buyer_speech("How much is the leather tote bag?", "en", rate=WEBRTC_RATE),
            _silence(0.8),
            buyer_speech("Is the automatic watch water resistant?", "en", rate=WEBRTC_RATE),
            _silence(0.5),
        ]
    )
    results, totals = run_recording(pipeline, audio, ConversationState(customer="two"))
    assert len(results) == 2 and totals["merged_turns"] == 0
    silence_ms = pipeline.config.audio.end_of_turn_silence_ms
    assert [r.timings_ms["endpointing"] for r in results] == [silence_ms, silence_ms]
    assert "159" in results[0].answer.text and results[1].answer.intent == "water"


@pytest.mark.slow
def test_an_unfinished_question_nobody_completes_is_answered_after_the_longer_wait(
    pipeline, buyer_speech
):
    audio = np.concatenate(
        [_silence(0.3), buyer_speech("How much is the", "en", rate=WEBRTC_RATE), _silence(2.0)]
    )
    results, totals = run_recording(pipeline, audio, ConversationState(customer="half"))
    assert len(results) == 1 and totals["unfinished_waits"] == 1
    assert results[0].timings_ms["endpointing"] == pipeline.config.audio.unfinished_wait_ms
    assert results[0].answer.intent == "clarify_product"  # "Which product do you mean?"
