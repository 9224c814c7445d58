"""Accuracy of an answer engine on a question set (configs/shop/questions.json by default)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .base import Answer, AnswerEngine, ConversationState
from .shop import DEFAULT_SHOP_DIR
from .text import strip_accents

DEFAULT_QUESTIONS = DEFAULT_SHOP_DIR / "questions.json"


@dataclass
class Result:
    question: dict
    answer: Answer
    missing: list[str]
    language_ok: bool

    @property
    def correct(self) -> bool:
        return not self.missing and self.language_ok


def load_questions(path: str | Path | None = None) -> list[dict]:
    data = json.loads(Path(path or DEFAULT_QUESTIONS).read_text(encoding="utf-8"))
    return data["questions"]


def holds_facts(answer_text: str, expected: list[str]) -> list[str]:
    """The expected facts missing from the answer (compared without case or accents)."""
    text = strip_accents(answer_text.lower())
    return [f for f in expected if strip_accents(f.lower()) not in text]


def evaluate(
    engine: AnswerEngine, questions: list[dict], use_language_hint: bool = False
) -> tuple[float, list[Result]]:
    """Ask every question in a fresh conversation (after its context turns); share correct."""
    results = []
    for i, q in enumerate(questions):
        state = ConversationState(customer=f"eval-{i}")
        hint = q["lang"] if use_language_hint else None
        for turn in q.get("context", []):
            engine.answer(turn, state, hint)
        answer = engine.answer(q["q"], state, hint)
        results.append(
            Result(q, answer, holds_facts(answer.text, q["expect"]), answer.language == q["lang"])
        )
    accuracy = sum(r.correct for r in results) / len(results) if results else 0.0
    return accuracy, results
