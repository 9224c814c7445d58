"""Numbers as buyers say them, in digits or words (en/pt/es), and heights in cm or feet/inches.

Speech-to-text writes "one zero zero two three", "ten thousand twenty three", "dez mil e vinte e
três" or "10,023" for the same order number; `words_to_digits` turns every spelling into digits so
the engine only has to look for digit strings.
"""

from __future__ import annotations

import re

from .text import normalize

_UNITS_EN = "zero one two three four five six seven eight nine".split()
_TEENS_EN = (
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
)
_TENS_EN = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def _table(units, teens, tens, extra: dict[str, int]) -> dict[str, int]:
    table = {w: i for i, w in enumerate(units)}
    table.update({w: 10 + i for i, w in enumerate(teens)})
    table.update({w: 20 + 10 * i for i, w in enumerate(tens)})
    table.update(extra)
    return table


NUMBER_WORDS: dict[str, dict[str, int]] = {
    "en": _table(_UNITS_EN, _TEENS_EN, _TENS_EN, {"oh": 0, "hundred": 100, "thousand": 1000}),
    "pt": _table(
        "zero um dois tres quatro cinco seis sete oito nove".split(),
        "dez onze doze treze catorze quinze dezesseis dezessete dezoito dezenove".split(),
        "vinte trinta quarenta cinquenta sessenta setenta oitenta noventa".split(),
        {
            "uma": 1,
            "duas": 2,
            "quatorze": 14,
            "dezasseis": 16,
            "dezassete": 17,
            "dezanove": 19,
            "cem": 100,
            "cento": 100,
            "duzentos": 200,
            "trezentos": 300,
            "quatrocentos": 400,
            "quinhentos": 500,
            "seiscentos": 600,
            "setecentos": 700,
            "oitocentos": 800,
            "novecentos": 900,
            "mil": 1000,
        },
    ),
    "es": _table(
        "cero uno dos tres cuatro cinco seis siete ocho nueve".split(),
        "diez once doce trece catorce quince dieciseis diecisiete dieciocho diecinueve".split(),
        "veinte treinta cuarenta cincuenta sesenta setenta ochenta noventa".split(),
        {
            "un": 1,
            "una": 1,
            "veintiuno": 21,
            "veintiun": 21,
            "veintidos": 22,
            "veintitres": 23,
            "veinticuatro": 24,
            "veinticinco": 25,
            "veintiseis": 26,
            "veintisiete": 27,
            "veintiocho": 28,
            "veintinueve": 29,
            "cien": 100,
            "ciento": 100,
            "doscientos": 200,
            "trescientos": 300,
            "cuatrocientos": 400,
            "quinientos": 500,
            "seiscientos": 600,
            "setecientos": 700,
            "ochocientos": 800,
            "novecientos": 900,
            "mil": 1000,
        },
    ),
}
_CONNECTORS = {"en": {"and"}, "pt": {"e"}, "es": {"y"}}
# words that are numbers in one language and ordinary words in another ("dos" = "of the" in pt)
_AMBIGUOUS_ACROSS = {"dos", "um", "un", "una", "uma", "e", "y", "oh", "no", "a", "nos"}


def _tables_for(lang: str | None) -> tuple[dict[str, int], set[str]]:
    if lang in NUMBER_WORDS:
        return NUMBER_WORDS[lang], _CONNECTORS[lang]
    merged: dict[str, int] = {}
    for table in NUMBER_WORDS.values():
        merged.update({w: v for w, v in table.items() if w not in _AMBIGUOUS_ACROSS})
    return merged, {"and"}


def _value_of_run(values: list[int]) -> int | str:
    """Evaluate one run of number words; a run of separately spoken parts becomes their digits."""
    parts: list[int] = []
    total, current, started = 0, 0, False

    def flush() -> None:
        nonlocal total, current, started
        if started:
            parts.append(total + current)
        total, current, started = 0, 0, False

    for v in values:
        if v == 1000:
            total = (total + (current or 1)) * 1000
            current = 0
            started = True
            continue
        if v == 100 and started and 0 < current < 10:
            current *= 100
            continue
        low = current % 100
        collides = (
            (v < 10 and started and (low % 10 != 0 or low == 0 and (current or total) == 0))
            or (v < 10 and started and v == 0)
            or (started and current == 0 and total == 0)  # a spoken "zero" is a digit by itself
            or (10 <= v < 100 and low != 0)
            or (100 <= v < 1000 and current != 0)
        )
        if collides:
            flush()
        current += v
        started = True
    flush()
    if len(parts) == 1:
        return parts[0]
    return "".join(str(p) for p in parts)


def words_to_digits(text: str, lang: str | None = None) -> str:
    """Normalised text with every spoken number replaced by digits; digit groups joined.

    "one zero zero two three" -> "10023"; "ten thousand and twenty three" -> "10023";
    "10,023" and "10 023" -> "10023"; "1,65" stays a decimal.
    """
    table, connectors = _tables_for(lang)
    tokens = normalize(text).split()
    out: list[str] = []
    run: list[tuple[int, str, bool]] = []  # (value, token, spoken as a word)
    pending: list[str] = []  # connectors seen inside a run, kept if the run ends right after

    def end_run() -> None:
        if run:
            if any(spoken for _, _, spoken in run):
                out.append(str(_value_of_run([v for v, _, _ in run])))
            else:  # digits only ("5 to 8", "1 0 0 2 3"): leave them to the patterns below
                out.extend(tok for _, tok, _ in run)
            run.clear()
        out.extend(pending)
        pending.clear()

    for tok in tokens:
        if tok in table:  # a spoken number; also joins written digits ("400 e vinte" = 420)
            pending.clear()
            run.append((table[tok], tok, True))
        elif run and tok in connectors:
            pending.append(tok)
        elif tok.isdigit() and int(tok) < 1000 and not pending:
            run.append((int(tok), tok, False))
        else:
            end_run()
            if tok.isdigit() and int(tok) < 1000:
                run.append((int(tok), tok, False))
            else:
                out.append(tok)
    end_run()
    joined = " ".join(out)
    # thousands separators and digits spoken one by one ("1 0 0 2 3")
    joined = re.sub(r"\b(\d{1,3})[.,](\d{3})\b(?![.,]\d)", r"\1\2", joined)
    joined = re.sub(r"\b\d(?: \d){2,}\b", lambda m: m.group(0).replace(" ", ""), joined)
    joined = re.sub(r"\b(\d{2}) (\d{3})\b", r"\1\2", joined)
    return joined


def find_numbers(text: str, lang: str | None = None) -> list[str]:
    """Digit strings in the text after spoken numbers are converted."""
    return re.findall(r"(?<![\d.,])\d+(?![\d]|[.,]\d)", words_to_digits(text, lang))


_HEIGHT_WORDS = (
    "tall",
    "height",
    "high",
    "i am",
    "i'm",
    "im",
    "altura",
    "meco",
    "mido",
    "tenho",
    "tengo",
    "estatura",
    "measure",
    "mede",
    "mide",
)
_FT = r"(?:'|′|ft|feet|foot|pes|pe|pies|pie)"
_IN = r"(?:\"|″|''|in|inch|inches|polegadas|polegada|pulgadas|pulgada)"
_M = r"(?:m|meter|meters|metre|metres|metro|metros|mts)"
_CM = r"(?:cm|cms|centimeter|centimeters|centimetre|centimetres|centimetro|centimetros)"


def parse_height_cm(text: str, lang: str | None = None) -> float | None:
    """A height in cm from '168 cm', '1.68 m', '1 metro e 68', "5'6", '5 feet 6'."""
    t = words_to_digits(text, lang)
    m = re.search(rf"\b(\d{{3}})(?:[.,]\d)? ?{_CM}\b", t)
    if m:
        return float(m.group(1))
    m = re.search(rf"\b([12])[.,](\d{{1,2}}) ?{_M}?(?![\d])", t)
    if m and (re.search(rf"\b{_M}\b", t[m.end() - 8 : m.end() + 1]) or _mentions_height(t)):
        cm = int(m.group(1)) * 100 + int(m.group(2).ljust(2, "0"))
        return float(cm)
    m = re.search(rf"\b([12]) ?{_M} (?:(?:e|y|and) )?(\d{{1,2}})\b", t)
    if m:
        return float(int(m.group(1)) * 100 + int(m.group(2)))
    m = re.search(rf"\b([4-7]) ?{_FT} ?(?:(?:e|y|and) )?(\d{{1,2}})? ?(?:{_IN})?", t)
    if m:
        inches = int(m.group(2) or 0)
        if inches < 12:
            return int(m.group(1)) * 30.48 + inches * 2.54
    if _mentions_height(t):
        m = re.search(r"(?<![\d.,])(1[4-9]\d|20\d)(?![\d])", t)
        if m:
            return float(m.group(1))
    return None


def _mentions_height(norm_text: str) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", norm_text) for w in _HEIGHT_WORDS)
