"""Language codes as viewers send them ("pt-BR", "EN") reduced to the base code the models use."""

from __future__ import annotations

import re

_CODE = re.compile(r"^[a-z]{2,3}$")


def normalize(code: object) -> str | None:
    """`"pt-BR"` -> `"pt"`; None for anything that is not a language tag."""
    if not isinstance(code, str):
        return None
    base = code.strip().replace("_", "-").split("-")[0].lower()
    return base if _CODE.match(base) else None


def topic(lang: str) -> str:
    """The data topic captions in `lang` travel on."""
    return f"captions/{lang}"


SUBSCRIBE_TOPIC = "captions/subscribe"
