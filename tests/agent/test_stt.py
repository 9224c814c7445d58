"""faster-whisper with the packaged Whisper base: joined once, real speech back to words."""

import os

import numpy as np
import pytest

from agent.answer.text import normalize
from agent.audio.stt import ModelNotFound, WhisperStt, packaged_model_dir, resolve_model_dir

pytestmark = pytest.mark.slow


def test_packaged_model_is_joined_once(whisper_dir, model_cache):
    model = whisper_dir / "model.bin"
    assert model.stat().st_size > 140_000_000
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (whisper_dir / name).exists()
    mtime = model.stat().st_mtime_ns
    assert packaged_model_dir(model_cache) == whisper_dir
    assert model.stat().st_mtime_ns == mtime  # not rewritten


def test_user_model_dir(whisper_dir, tmp_path):
    assert resolve_model_dir(str(whisper_dir), tmp_path / "unused") == whisper_dir
    assert not os.path.exists(tmp_path / "unused")
    with pytest.raises(ModelNotFound):
        resolve_model_dir(str(tmp_path), tmp_path)


def words_found(text: str, expected: list[str]) -> list[str]:
    norm = normalize(text).replace(" ", "")
    return [w for w in expected if normalize(w).replace(" ", "") in norm]


@pytest.mark.parametrize(
    "lang, text, expected, detect",
    [
        ("en", "How much is the leather tote bag?", ["how much", "leather", "bag"], True),
        ("en", "Where is my order one zero zero two three?", ["order", "10023"], True),
        ("es", "¿El reloj es resistente al agua?", ["reloj", "resistente", "agua"], True),
        ("es", "¿Dónde está el reloj?", ["donde esta", "reloj"], False),
        # Whisper base takes espeak-ng's Portuguese for English; a known session language helps
        ("pt", "Quanto custa o relógio?", ["quanto custa", "relogio"], False),
    ],
)
def test_speech_back_to_words(stt, speech_clip, lang, text, expected, detect):
    clip = speech_clip(text, lang)
    result = stt.transcribe(clip, language=None if detect else lang)
    assert result.language == lang, result.text
    assert len(words_found(result.text, expected)) == len(expected), result.text
    assert result.timings_ms["total"] < 5000


def test_detection_is_restricted_to_the_shop_languages(whisper_dir, speech_clip):
    only_es_pt = WhisperStt(whisper_dir, languages=("es", "pt"))
    result = only_es_pt.transcribe(speech_clip("How much is the leather tote bag?", "en"))
    assert result.language in ("es", "pt")


def test_silence_gives_no_words(stt):
    result = stt.transcribe(np.zeros(16000, np.int16), language="en")
    assert len(result.text.split()) <= 3
