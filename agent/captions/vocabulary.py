"""Whisper's prompt for captions: the shop's vocabulary, one text per language.

Whisper reads its prompt as if it had just been said. A short list of the words a host will use
that Whisper does not know well (product and brand names, colours) makes it spell them as the
shop does and tips doubtful sounds towards them. The text is built once per captioner from the
shop catalogue (agent/answer/shop.py) and `[captions] vocabulary`:

    Maré Studio: vestido transpassado de linho (areia, oliva, azul-marinho), bolsa tote de couro
    (caramelo, preto), ...

Kept short on purpose (Whisper gives the prompt at most half of its 448-token context, and a long
one slows every decode).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from .config import CaptionSettings
from .languages import normalize

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 400  # about 100-150 tokens


def shop_terms(shop_dir: str | Path | None = None) -> tuple[str, dict[str, list[str]]]:
    """(the shop's name, per language: each product's name with its colours in brackets)."""
    from ..answer.shop import load_shop

    shop = load_shop(shop_dir or None)
    languages = set(shop.languages)
    for product in shop.products:
        languages |= set(product.name)
    terms: dict[str, list[str]] = {}
    for lang in sorted(languages):
        items = []
        for product in shop.products:
            name = product.name.get(lang)
            if not name:
                continue
            colours = [c[lang] for c in product.colours if c.get(lang) and c[lang] not in name]
            items.append(f"{name} ({', '.join(colours)})" if colours else name)
        terms[lang] = items
    return shop.name, terms


def build_prompts(
    settings: CaptionSettings, shop_dir: str | Path | None = None, languages: Iterable[str] = ()
) -> dict[str, str]:
    """Language -> prompt text, for every language the shop or `settings.vocabulary` names
    (and `languages`, which get the brand terms of "*" at least). Empty when there is nothing."""
    name, terms = "", {}
    if settings.vocabulary_from_shop:
        try:
            name, terms = shop_terms(shop_dir)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("captions: no shop vocabulary (%s)", exc)
    extra: dict[str, list[str]] = {}
    for key, values in (settings.vocabulary or {}).items():
        lang = "*" if key == "*" else normalize(key)
        if lang is None:
            raise ValueError(f"captions.vocabulary: {key!r} is not a language code")
        extra.setdefault(lang, []).extend(str(v) for v in values)
    everywhere = extra.pop("*", [])
    prompts: dict[str, str] = {}
    for lang in sorted(set(terms) | set(extra) | {normalize(x) or "" for x in languages} - {""}):
        items = [*terms.get(lang, []), *extra.get(lang, []), *everywhere]
        items = list(dict.fromkeys(i.strip() for i in items if i.strip()))
        if not items and not name:
            continue
        text = f"{name}: {', '.join(items)}." if name and items else (name or ", ".join(items))
        prompts[lang] = _shorten(text)
    return prompts


def _shorten(text: str) -> str:
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    cut = text[:MAX_PROMPT_CHARS].rsplit(",", 1)[0]
    return cut.rstrip(" ,") + "."
