"""Backchannels: "uh-huh", "ok", "sim", "ajá", "vale" said while the agent talks.

A listener's short acknowledgements are not turns: the agent should go on. The agent stops its
voice as soon as speech over it passes `audio.barge_in_ms` (a real interruption must be obeyed
at once), then this judges what was said once the burst ends:

* a backchannel word or two (`BACKCHANNEL_WORDS`, en/pt/es), or
* a short utterance (`max_ms` of voiced speech at most, three words at most, no question
  mark) that asks for nothing: no interruption word ("wait", "espera", "para"), no
  number, and nothing the shop's answer engine recognises (`has_content`: a product, an
  intent, a country, an FAQ).
  Whisper base often writes short acknowledgements as other short words ("sim" as "Single",
  "vale" as "Bale"): their shortness and emptiness say more than their spelling.

Anything else is an interruption: the answer stays stopped and the buyer's turn is answered.
"""

from __future__ import annotations

from collections.abc import Callable

from ..answer.text import normalize

# compared with normalised words (lower case, no accents: "ajá" is "aja")
BACKCHANNEL_WORDS = frozenset(
    normalize(
        "uh huh uhuh mhm mhmm mm hmm hm mmm ok okay k yeah yep yes yup right sure alright "  # en
        "i see got it cool nice great good fine "
        "sim aham ahã uhum hum tá certo entendi beleza ah legal isso claro "  # pt
        "sí ajá vale ya bueno entiendo perfecto eso"  # es
    ).split()
)
# over the agent, these mean "stop": never a backchannel, however short. Not "no"/"não": Whisper
# base writes a short "aham" as "A não", and a buyer's real objection is longer than
# backchannel_max_ms anyway
INTERRUPT_WORDS = frozenset(
    normalize(
        "wait stop hold hang sorry excuse what actually but pardon "  # en
        "espera espere pare para peraí desculpa mas oi como "  # pt
        "perdón pero oye momento disculpa qué cómo"  # es (espera, para: above)
    ).split()
)
MAX_WORDS = 3


def is_backchannel(
    text: str,
    voiced_ms: float,
    max_ms: float,
    has_content: Callable[[str], bool] | None = None,
) -> bool:
    """True when `text`, spoken over the agent with `voiced_ms` of speech, asks for nothing."""
    tokens = normalize(text).replace("-", " ").split()
    if not tokens:
        return True
    if any(t in INTERRUPT_WORDS for t in tokens):
        return False
    if len(tokens) <= MAX_WORDS + 1 and all(t in BACKCHANNEL_WORDS for t in tokens):
        return True  # "ok ok", "sim sim", "uh huh yeah"
    if voiced_ms > max_ms or len(tokens) > MAX_WORDS or "?" in text:
        return False  # long, or a question ("¿Y en negro?")
    if any(c.isdigit() for c in "".join(tokens)):
        return False
    return not (has_content is not None and has_content(text))
