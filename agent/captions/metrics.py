"""Word error rate for judging captions against a script (tests and benchmarks/captions.py)."""

from __future__ import annotations

import re
import unicodedata

_NOT_WORD = re.compile(r"[^\w\s']+", re.UNICODE)


_EN_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_PT_UNITS = (
    "zero um dois três quatro cinco seis sete oito nove dez onze doze treze catorze quinze "
    "dezesseis dezessete dezoito dezenove"
).split()
_PT_TENS = "_ _ vinte trinta quarenta cinquenta sessenta setenta oitenta noventa".split()


def number_words(n: int, lang: str) -> list[str]:
    """0..99 as words (Whisper writes "30" where the script says "thirty")."""
    units, tens, joiner = (
        (_PT_UNITS, _PT_TENS, ["e"]) if lang == "pt" else (_EN_UNITS, _EN_TENS, [])
    )
    if n < 20:
        return [units[n]]
    head = [tens[n // 10]]
    return head if n % 10 == 0 else head + joiner + [units[n % 10]]


def words(text: str, lang: str = "en") -> list[str]:
    """Lower-case words without punctuation; accents kept, hyphens split ("bem-vindos"),
    numbers below 100 spelt out in `lang` (en or pt)."""
    text = unicodedata.normalize("NFC", text.lower()).replace("-", " ")
    out: list[str] = []
    for word in _NOT_WORD.sub(" ", text).replace("'", "").split():
        out += number_words(int(word), lang) if word.isdigit() and int(word) < 100 else [word]
    return out


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1]


def wer(references: list[str], hypotheses: list[str], lang: str = "en") -> float:
    """Corpus WER: total word edits / total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError("one hypothesis per reference")
    edits = total = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = words(ref, lang), words(hyp, lang)
        edits += edit_distance(r, h)
        total += len(r)
    return edits / total if total else 0.0
