"""Translation with model directories the user supplies: MarianMT or NLLB, through transformers
or CTranslate2, one directory per language pair (`[translate.models]` in configs/agent.toml).

Why a module of its own: torch and transformers are ~1 GB and take seconds to import, so they
are imported only when a transformers directory is configured, and a CTranslate2 directory needs
neither (ctranslate2 and sentencepiece come with faster-whisper). Nothing is ever downloaded:
paths are checked to be local model directories before anything is loaded, HF_HUB_OFFLINE is set
and every load passes local_files_only=True, so a wrong path fails at once with
TranslationModelError instead of reaching for a model hub that air-gapped shops cannot reach.

Like every translator here, `translate()` is blocking and CPU-heavy; callers run it in a worker
thread (the captioner's translate executor, the voice pipeline's executor), never on the event
loop. Each directory is loaded once, on first use or by `warm_up()`, and shared by its pairs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# NLLB-200 names languages by FLORES-200 codes; the agent speaks ISO 639-1 (as Whisper does).
# `language_codes` (config: translate.language_codes) adds or overrides entries.
NLLB_CODES: dict[str, str] = {
    "ar": "arb_Arab",
    "de": "deu_Latn",
    "en": "eng_Latn",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "hi": "hin_Deva",
    "id": "ind_Latn",
    "it": "ita_Latn",
    "ja": "jpn_Jpan",
    "ko": "kor_Hang",
    "nl": "nld_Latn",
    "pl": "pol_Latn",
    "pt": "por_Latn",
    "ru": "rus_Cyrl",
    "th": "tha_Thai",
    "tr": "tur_Latn",
    "uk": "ukr_Cyrl",
    "vi": "vie_Latn",
    "zh": "zho_Hans",
}

_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class TranslationModelError(ValueError):
    """A configured translation model directory is missing, incomplete or cannot be loaded."""


def parse_pair(key: str) -> tuple[str, str]:
    """'en-es' -> ('en', 'es'): the keys of translate.models."""
    parts = key.strip().lower().split("-")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise TranslationModelError(
            f"translate.models key {key!r} is not a language pair like 'en-es'"
        )
    return parts[0], parts[1]


@dataclass(frozen=True)
class ModelDir:
    """What a directory holds, read from its files alone (no torch, no transformers)."""

    path: Path
    engine: str  # "transformers" | "ctranslate2"
    family: str  # "marian" | "nllb"


def inspect_model_dir(path: str | Path, pair: tuple[str, str] | None = None) -> ModelDir:
    """Checks that `path` is a local MarianMT/NLLB directory; TranslationModelError says why not.

    A path that does not exist is never taken for a hub repository id."""
    where = f" for {pair[0]}->{pair[1]}" if pair else ""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise TranslationModelError(f"translation model{where}: empty path")
    if not p.is_dir():
        raise TranslationModelError(
            f"translation model{where}: {p} is not a directory (translate.models wants a local "
            "MarianMT/NLLB directory, e.g. one written by save_pretrained; nothing is downloaded)"
        )
    p = p.resolve()
    names = {child.name for child in p.iterdir()}
    if "config.json" not in names:
        raise TranslationModelError(f"translation model{where}: {p} has no config.json")
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TranslationModelError(f"translation model{where}: {p}/config.json: {exc}") from exc
    if "model.bin" in names:  # converted by ct2-transformers-converter
        engine = "ctranslate2"
        if {"source.spm", "target.spm"} <= names:
            family = "marian"
        elif "sentencepiece.bpe.model" in names:
            family = "nllb"
        else:
            raise TranslationModelError(
                f"translation model{where}: {p} is a CTranslate2 model without its sentencepiece "
                "files (Marian: source.spm and target.spm; NLLB: sentencepiece.bpe.model); "
                "convert it with --copy_files"
            )
    else:
        engine = "transformers"
        model_type = config.get("model_type")
        if model_type == "marian":
            family = "marian"
        elif model_type == "m2m_100":
            family = "nllb"
        else:
            raise TranslationModelError(
                f"translation model{where}: {p} is a {model_type!r} model; "
                "MarianMT ('marian') and NLLB ('m2m_100') are supported"
            )
        if not names & set(_WEIGHTS):
            raise TranslationModelError(
                f"translation model{where}: {p} has no weights (model.safetensors or "
                "pytorch_model.bin)"
            )
    return ModelDir(p, engine, family)


def _go_offline() -> None:
    """No hub access from this process: the env vars for libraries imported later, and the
    constant that huggingface_hub read at import time (faster-whisper imports it first)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


@dataclass
class _Loaded:
    """A loaded directory; its lock serialises generation (and NLLB's tokenizer src_lang)."""

    model: Any
    tokenizer: Any = None  # transformers
    source_spm: Any = None  # CTranslate2 + sentencepiece
    target_spm: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class HfTranslator:
    """Language pairs -> user-supplied MarianMT/NLLB directories (transformers or CTranslate2)."""

    name = "hf"

    def __init__(
        self,
        models: Mapping[str, str | Path],
        *,
        threads: int = 1,
        max_new_tokens: int = 256,
        language_codes: Mapping[str, str] | None = None,
    ) -> None:
        """Checks every directory now (cheap, no imports), so a bad path fails at start-up."""
        self.codes = {**NLLB_CODES, **(language_codes or {})}
        self.threads = threads
        self.max_new_tokens = max_new_tokens
        self.pairs: dict[tuple[str, str], ModelDir] = {}
        for key, path in models.items():
            pair = parse_pair(key)
            model_dir = inspect_model_dir(path, pair)
            if model_dir.family == "nllb":
                for lang in pair:
                    if lang not in self.codes:
                        raise TranslationModelError(
                            f"translation model for {pair[0]}->{pair[1]}: no NLLB code for "
                            f"{lang!r}; add it to translate.language_codes (e.g. 'swh_Latn')"
                        )
            self.pairs[pair] = model_dir
        self._loaded: dict[Path, _Loaded | TranslationModelError] = {}
        self._load_lock = threading.Lock()

    def supports(self, source: str, target: str) -> bool:
        return source == target or (source, target) in self.pairs

    def warm_up(self) -> None:
        """Loads every configured directory now instead of on its first sentence."""
        for model_dir in set(self.pairs.values()):
            self._load(model_dir)

    def translate(self, text: str, source: str, target: str) -> str:
        if source == target or not text.strip():
            return text
        model_dir = self.pairs.get((source, target))
        if model_dir is None:
            raise ValueError(f"no translation model configured for {source}->{target}")
        loaded = self._load(model_dir)
        with loaded.lock:
            if model_dir.engine == "ctranslate2":
                return self._translate_ct2(loaded, model_dir, text, source, target)
            return self._translate_transformers(loaded, model_dir, text, source, target)

    # -- loading ---------------------------------------------------------------------------------

    def _load(self, model_dir: ModelDir) -> _Loaded:
        with self._load_lock:
            loaded = self._loaded.get(model_dir.path)
            if loaded is None:
                t0 = time.perf_counter()
                try:
                    if model_dir.engine == "ctranslate2":
                        loaded = self._load_ct2(model_dir.path)
                    else:
                        loaded = self._load_transformers(model_dir.path)
                except Exception as exc:  # kept: a broken directory is not retried per sentence
                    loaded = TranslationModelError(
                        f"could not load translation model {model_dir.path}: {exc}"
                    )
                    loaded.__cause__ = exc
                else:
                    logger.info(
                        "translation model %s (%s, %s) loaded in %.1f s",
                        model_dir.path,
                        model_dir.family,
                        model_dir.engine,
                        time.perf_counter() - t0,
                    )
                self._loaded[model_dir.path] = loaded
        if isinstance(loaded, TranslationModelError):
            raise loaded
        return loaded

    def _load_transformers(self, path: Path) -> _Loaded:
        _go_offline()
        import torch  # lazily: ~1 GB, only when a transformers directory is configured
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        torch.set_num_threads(self.threads)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(str(path), local_files_only=True)
        return _Loaded(model=model.eval(), tokenizer=tokenizer)

    def _load_ct2(self, path: Path) -> _Loaded:
        import ctranslate2
        import sentencepiece as spm

        model = ctranslate2.Translator(
            str(path), device="cpu", compute_type="default", intra_threads=self.threads
        )
        if (path / "source.spm").exists():
            source = spm.SentencePieceProcessor(model_file=str(path / "source.spm"))
            target = spm.SentencePieceProcessor(model_file=str(path / "target.spm"))
        else:
            source = target = spm.SentencePieceProcessor(
                model_file=str(path / "sentencepiece.bpe.model")
            )
        return _Loaded(model=model, source_spm=source, target_spm=target)

    # -- generation ------------------------------------------------------------------------------

    def _translate_transformers(
        self, loaded: _Loaded, model_dir: ModelDir, text: str, source: str, target: str
    ) -> str:
        import torch

        tokenizer, extra = loaded.tokenizer, {}
        marker = f">>{target}<<"  # multi-target Marian (opus-mt-en-ROMANCE...) wants it first
        if tokenizer.convert_tokens_to_ids(marker) not in (None, tokenizer.unk_token_id):
            text = f"{marker} {text}"
        if model_dir.family == "nllb":
            tokenizer.src_lang = self.codes[source]
            extra["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(self.codes[target])
        batch = tokenizer([text], return_tensors="pt", truncation=True)
        # past its position table the decoder fails (IndexError), so that bounds the output too
        positions = getattr(loaded.model.config, "max_position_embeddings", None) or 1 << 30
        with torch.inference_mode():
            out = loaded.model.generate(
                **batch,
                max_new_tokens=min(self.max_new_tokens, positions - 1),
                num_beams=1,
                do_sample=False,
                **extra,
            )
        return tokenizer.decode(out[0], skip_special_tokens=True).strip()

    def _translate_ct2(
        self, loaded: _Loaded, model_dir: ModelDir, text: str, source: str, target: str
    ) -> str:
        tokens = loaded.source_spm.encode(text, out_type=str) + ["</s>"]
        prefix = None
        if model_dir.family == "nllb":
            tokens = [self.codes[source], *tokens]
            prefix = [[self.codes[target]]]
        result = loaded.model.translate_batch(
            [tokens],
            target_prefix=prefix,
            beam_size=1,
            max_decoding_length=self.max_new_tokens,
        )[0]
        pieces = result.hypotheses[0][1 if prefix else 0 :]
        return loaded.target_spm.decode(pieces).strip()
