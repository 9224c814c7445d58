"""Has the buyer finished the question? The answer engine's judgement of a partial transcript.

People pause mid-question ("Does the … linen dress come in navy?"); a silence timer alone cuts
them off. A transcript is unfinished when

* it ends on a word that cannot end a question: an article, a preposition, a conjunction, a
  possessive, an auxiliary ("Does the", "Quanto custa o", "¿El bolso es de"), or on Whisper's
  "…" for speech that trailed off; or
* it asks about a product (price, colours, size …) without naming one, or about an order
  without its number, and the conversation has none yet and it is not a finished question
  (no "?"): "Which product do you mean?" was the agent's answer to half a question; or
* it is a few words that ask the engine nothing it knows (no intent, product, country, FAQ
  entry or number).

The agent then waits a little longer (audio.unfinished_wait_ms of silence in all) before it
answers; a complete question keeps the usual end of turn.
"""

from __future__ import annotations

from .base import ConversationState
from .intents import PRODUCT_INTENTS, Parsed, parse
from .numbers import words_to_digits
from .shop import Shop
from .text import normalize

# normalised (lower case, no accents). A question never ends on these, whatever Whisper's
# punctuation says (it writes "How much is the" as "How much is that?", "Quanto custa o" as
# "Quanto custa o?"):
OPEN_WORDS = frozenset(
    normalize(
        "the a an and or but my your his her its our their "  # en
        "o a os as um uma uns umas e ou mas meu minha meus minhas seu sua seus suas "  # pt
        "el la los las un una unos unas y o pero mi mis su sus tu tus"  # es
    ).split()
)
SHORT_WORDS = 4  # at most this many words that ask nothing: probably the start of a question
# ... and a question rarely ends on these, unless Whisper heard it end ("What is it made of?")
DANGLING = frozenset(
    normalize(
        "of for to in on at with about from into by than this these those is are does do did "
        "can could would will was were have has if so because what which whats how "  # en
        "de do da dos das para pra pro em no na nos nas num numa com sobre por pelo pela esse "
        "essa este esta que qual quanto quanta é tem "  # pt
        "de del al para en con sobre por ese esa este esta que cual cuanto cuanta es tiene"  # es
    ).split()
)


def unfinished(text: str, shop: Shop, state: ConversationState | None = None) -> str:
    """Why the question seems unfinished ("" when it seems complete)."""
    stripped = text.strip()
    if not stripped:
        return ""
    if stripped.endswith(("...", "…")):
        return "trailing_off"
    words = normalize(stripped).split()
    if not words:
        return ""
    if words[-1] in OPEN_WORDS or (stripped[-1] not in "?!" and words[-1] in DANGLING):
        return "dangling_word"
    # Whisper's "?" is no proof here either: "How much is the" came out "How much is that?"
    parsed = parse(stripped, shop)
    asks_product = any(parsed.has(i) for i in PRODUCT_INTENTS)
    if asks_product and not parsed.products and not (state and state.product_id):
        return "no_product"
    has_number = any(c.isdigit() for c in words_to_digits(stripped))
    if parsed.has("order_status") and not has_number and not (state and state.order_id):
        return "no_order_number"  # "Where is my order …" (the number comes after a pause)
    if len(words) <= SHORT_WORDS and not has_number and not _asks(parsed):
        # a few words the engine can do nothing with: "Quanto custa a" came out as Spanish
        # "¿Cuánto costa?"; waiting costs little, the answer would be "not sure" anyway
        return "nothing_asked"
    return ""


def _asks(parsed: Parsed) -> bool:
    return bool(parsed.scores or parsed.products or parsed.countries or parsed.faq)
