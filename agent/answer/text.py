"""Text normalisation and a small language guesser for the shop's languages (en, pt, es).

Speech-to-text output and typed questions both arrive here; everything downstream matches on the
normalised form (lowercase, no accents, no punctuation) so "¿Cuánto?" and "cuanto" are one word.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^a-z0-9%'\"′″. ,]+")
_SPACES = re.compile(r"\s+")


def strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Lowercase, accents removed, punctuation other than . , ' " % turned into spaces."""
    text = strip_accents(text.lower()).replace("’", "'").replace("”", '"').replace("“", '"')
    text = _NON_WORD.sub(" ", text)
    text = re.sub(r"(?<!\d)[.,]|[.,](?!\d)", " ", text)  # keep 1.65 / 10,023, drop sentence marks
    return _SPACES.sub(" ", text).strip()


def words(text: str) -> list[str]:
    """Normalised word tokens (quotes and decimal marks kept inside tokens)."""
    return normalize(text).split()


def contains_phrase(norm_text: str, phrase: str) -> bool:
    """Whole-word match of an already normalised phrase inside normalised text."""
    return re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", norm_text) is not None


# Frequent words that tell the three languages apart. Shared words ("a", "no", "de") score nothing.
_MARKERS: dict[str, set[str]] = {
    "en": {
        "the",
        "is",
        "are",
        "what",
        "how",
        "much",
        "does",
        "do",
        "my",
        "it",
        "you",
        "i",
        "i'm",
        "im",
        "of",
        "for",
        "to",
        "and",
        "which",
        "where",
        "when",
        "can",
        "your",
        "this",
        "that",
        "have",
        "price",
        "cost",
        "ship",
        "shipping",
        "order",
        "colors",
        "colours",
        "size",
        "return",
        "with",
        "want",
        "would",
        "like",
        "please",
        "yes",
        "tall",
        "long",
        "take",
        "bag",
        "dress",
        "watch",
        "earrings",
        "made",
        "from",
        "will",
        "be",
        "an",
        "there",
        "need",
        "get",
        "hi",
        "hello",
    },
    "pt": {
        "o",
        "os",
        "as",
        "um",
        "uma",
        "meu",
        "minha",
        "voce",
        "voces",
        "quanto",
        "quanta",
        "custa",
        "qual",
        "quais",
        "sao",
        "e",
        "esta",
        "estao",
        "nao",
        "sim",
        "para",
        "pra",
        "com",
        "do",
        "da",
        "dos",
        "das",
        "na",
        "nos",
        "nas",
        "tem",
        "tenho",
        "quero",
        "gostaria",
        "cor",
        "cores",
        "tamanho",
        "envio",
        "frete",
        "pedido",
        "onde",
        "chega",
        "chegar",
        "demora",
        "devolver",
        "troca",
        "trocar",
        "bolsa",
        "relogio",
        "brincos",
        "couro",
        "linho",
        "obrigado",
        "obrigada",
        "ola",
        "oi",
        "isso",
        "ele",
        "ela",
        "meco",
        "posso",
        "prova",
        "agua",
        "veio",
        "tambem",
        "mim",
        "meus",
        "minhas",
        "chegou",
        "chegaram",
        "vieram",
        "quebrado",
        "quebrada",
        "quebrados",
        "fazem",
        "aceitam",
        "vem",
        "ligue",
        "falar",
        "pessoa",
        "dias",
        "uteis",
        "preco",
        "tamanhos",
        "embrulho",
        "presente",
        "alfandega",
        "imposto",
        "impostos",
        "pagamento",
        "cartao",
        "prata",
        "niquel",
        "entrega",
        "entregue",
        "rastreio",
    },
    "es": {
        "el",
        "la",
        "los",
        "las",
        "un",
        "una",
        "mi",
        "mis",
        "cuanto",
        "cuanta",
        "cuesta",
        "cual",
        "cuales",
        "son",
        "es",
        "esta",
        "y",
        "si",
        "para",
        "con",
        "del",
        "al",
        "tiene",
        "tengo",
        "quiero",
        "gustaria",
        "color",
        "colores",
        "talla",
        "envio",
        "pedido",
        "donde",
        "llega",
        "tarda",
        "devolver",
        "cambio",
        "cambiar",
        "bolso",
        "reloj",
        "aretes",
        "pendientes",
        "cuero",
        "lino",
        "gracias",
        "hola",
        "eso",
        "puedo",
        "prueba",
        "agua",
        "llego",
        "tambien",
        "mido",
        "que",
        "usted",
        "tu",
        "hay",
        "pero",
        "muy",
        "lo",
        "le",
        "su",
        "llegaron",
        "roto",
        "rota",
        "rotos",
        "danado",
        "hacen",
        "aceptan",
        "viene",
        "vienen",
        "llamen",
        "hablar",
        "persona",
        "precio",
        "tallas",
        "regalo",
        "aduana",
        "impuestos",
        "pago",
        "tarjeta",
        "plata",
        "seguimiento",
        "envian",
        "estoy",
        "cuando",
        "devolucion",
        "reembolso",
    },
}
# a few spellings only one language has, before accents are stripped
_CHAR_HINTS = {"pt": ("ã", "õ", "ç", "ê", "ô", "à"), "es": ("ñ", "¿", "¡")}


def guess_language(
    text: str, allowed: tuple[str, ...] = ("en", "pt", "es")
) -> tuple[str, float, float]:
    """The most likely of `allowed`, its margin in [0, 1] (0 = no idea) and its raw score."""
    scores = dict.fromkeys(allowed, 0.0)
    lowered = text.lower()
    for lang, chars in _CHAR_HINTS.items():
        if lang in scores:
            scores[lang] += 1.5 * sum(lowered.count(c) for c in chars)
    for w in words(text):
        hits = [lang for lang in allowed if w in _MARKERS.get(lang, ())]
        for lang in hits:
            scores[lang] += 1.0 / len(hits)
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    best, top = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    if top <= 0:
        return best, 0.0, 0.0
    return best, (top - second) / top, top
