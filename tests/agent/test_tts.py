"""The agent's voices (agent/audio/tts.py, agent/audio/kokoro_tts.py): Kokoro-82M speaks the
Portuguese and Spanish answers so that the real Whisper hears them (a tolerant WER bound and the
price among the numbers heard, never exact words); a Kokoro that cannot load leaves espeak-ng
speaking; the answer is streamed piece by piece, the first piece before the rest is made."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio.frames import WEBRTC_RATE, concat, resample
from agent.audio.kokoro_tts import KokoroTts, speech_chunks
from agent.audio.tts import EspeakTts, build_tts, split_sentences, tts_from_settings
from agent.config import AgentConfig, load_config

from .conftest import heard_wer, numbers_heard, with_silence

ESPEAK_VOICES = AgentConfig().tts.espeak_voices
# answers as the grounded engine words them (agent/answer/templates.py), with their fact
ANSWERS = [
    ("pt", "O relógio automático custa 420 dólares.", "420"),
    ("pt", "Sim, o relógio automático é resistente à água até 100 metros.", "100"),
    ("es", "El reloj automático cuesta 420 dólares.", "420"),
    ("es", "Sí, el reloj automático es resistente al agua hasta 100 metros.", "100"),
]
MAX_WER = 0.35  # a tolerant bound: Whisper base's words differ between CPUs (int8 kernels)


@pytest.fixture(scope="module")
def kokoro_router():
    router = build_tts({"pt": "kokoro", "es": "kokoro"}, ESPEAK_VOICES)
    assert router.fallbacks == {}, router.fallbacks  # Kokoro must load here, not fall back
    return router


def spoken(router, text: str, language: str) -> np.ndarray:
    """The answer as the agent says it, 16 kHz, with silence around it."""
    audio = concat(list(router.frames(text, language)))
    return resample(with_silence(audio, WEBRTC_RATE, 0.3, 0.3), WEBRTC_RATE, 16000)


@pytest.mark.slow
@pytest.mark.parametrize("lang,text,fact", ANSWERS)
def test_kokoro_answers_are_heard_by_whisper(kokoro_router, stt, lang, text, fact):
    assert isinstance(kokoro_router.backend_for(lang), KokoroTts)
    audio = spoken(kokoro_router, text, lang)
    heard = stt.transcribe(audio, language=lang).text
    assert heard_wer(text, heard, lang) <= MAX_WER, heard
    assert fact in numbers_heard(stt, audio, lang), heard


@pytest.mark.slow
def test_espeak_answers_are_heard_worse_than_kokoro(kokoro_router, stt):
    """Why Kokoro: on the same Portuguese answers Whisper's WER with espeak-ng is higher."""
    espeak = build_tts({"pt": "espeak"}, ESPEAK_VOICES)
    texts = [text for lang, text, _ in ANSWERS if lang == "pt"]
    werr = {}
    for name, router in (("kokoro", kokoro_router), ("espeak", espeak)):
        heard = [stt.transcribe(spoken(router, t, "pt"), language="pt").text for t in texts]
        werr[name] = sum(heard_wer(t, h, "pt") for t, h in zip(texts, heard, strict=True))
    assert werr["kokoro"] < werr["espeak"], werr


@pytest.mark.parametrize(
    "model", ["missing.onnx", "garbage.onnx"], ids=["model path missing", "model not ONNX"]
)
def test_kokoro_that_cannot_load_falls_back_to_espeak(tmp_path, model):
    path = tmp_path / model
    if model == "garbage.onnx":
        path.write_bytes(b"this is not an ONNX model" * 100)
    router = build_tts(
        {"en": "espeak", "pt": "kokoro", "es": "kokoro"}, ESPEAK_VOICES, kokoro_model=str(path)
    )
    assert set(router.fallbacks) == {"pt", "es"}
    if model == "missing.onnx":
        assert all(model in reason for reason in router.fallbacks.values()), router.fallbacks
    for lang in ("pt", "es"):
        backend = router.backend_for(lang)
        assert isinstance(backend, EspeakTts)
        audio = concat(list(router.frames("Olá, tudo bem.", lang)))
        assert len(audio) > WEBRTC_RATE // 4 and np.abs(audio).max() > 1000  # it speaks
    # one espeak-ng instance serves the fallback languages and English
    assert router.backend_for("pt") is router.backend_for("en")


def test_kokoro_settings_that_are_wrong_fail_loudly():
    """A wrong setting is the operator's mistake, not a missing model: no silent fallback."""
    with pytest.raises(ValueError, match="kokoro_threads"):
        build_tts({"pt": "kokoro"}, ESPEAK_VOICES, kokoro_threads=0)
    with pytest.raises(ValueError, match="no voice"):
        build_tts({"pt": "kokoro"}, ESPEAK_VOICES, kokoro_voice="nobody")
    with pytest.raises(ValueError, match="kokoro_phonemes"):
        build_tts({"fr": "kokoro"}, ESPEAK_VOICES, kokoro_phonemes={"pt": "pt-br"})


def test_streaming_yields_the_first_piece_before_the_rest_is_made(kokoro_router):
    text = "O relógio automático custa 420 dólares. Ele é resistente à água até 100 metros."
    kokoro = kokoro_router.backend_for("pt")
    kokoro.real_time_factor = 0.1  # as on a fast CPU: the first sentence is cut short
    pieces = kokoro_router.chunks(text, "pt")
    assert len(pieces) >= 3 and len(pieces[0].split()) <= 3, pieces
    made: list[str] = []
    real = kokoro.synthesize

    def recording(piece: str, language: str, stop=None) -> np.ndarray:
        made.append(piece)
        return real(piece, language, stop)

    kokoro.synthesize = recording  # the real synthesis, watched
    try:
        frames = kokoro_router.frames(text, "pt")
        first = next(frames)
        assert made == [pieces[0]], made  # heard before the rest is synthesized
        assert first.dtype == np.int16 and len(first) == WEBRTC_RATE // 50
        rest = list(frames)
    finally:
        del kokoro.synthesize
    assert made == pieces
    audio = concat([first, *rest])
    assert len(audio) > 2 * WEBRTC_RATE  # the whole answer, seconds of it


def test_speech_chunks_cut_the_first_sentence_short_and_keep_every_word():
    for text in [
        "O relógio automático custa 420 dólares.",
        "Sim, o relógio é resistente à água até 100 metros. Mais alguma coisa?",
        "El bolso de cuero cuesta 150 dólares y está disponible en negro y marrón.",
        "Com 160 centímetros de altura, recomendo o tamanho M; o M é para 155 a 165 cm.",
        "Ok.",
    ]:
        pieces = speech_chunks(text)
        assert " ".join(pieces).split() == text.split(), pieces
        assert len(pieces[0].split()) <= 5, pieces
        sentences = split_sentences(text)
        if len(sentences) > 1:  # only the first sentence is cut: later ones keep their prosody
            assert pieces[-(len(sentences) - 1) :] == sentences[1:], pieces
    assert speech_chunks("") == []


def test_fast_engines_keep_whole_sentences():
    router = build_tts({"en": "espeak"}, ESPEAK_VOICES)
    text = "The watch costs 420 dollars. It is water resistant."
    assert router.chunks(text, "en") == split_sentences(text)


def test_config_defaults_and_toml_give_kokoro_for_pt_and_es():
    for config in (AgentConfig(), load_config()):
        t = config.tts
        assert t.backends["pt"] == t.backends["es"] == "kokoro"
        assert set(t.kokoro_phonemes) >= {"pt", "es"}
        assert t.kokoro_threads >= 1


def test_tts_from_settings_uses_the_kokoro_settings(tmp_path):
    settings = AgentConfig().tts
    settings.backends = {"pt": "kokoro"}
    settings.kokoro_model = str(tmp_path / "nowhere.onnx")
    router = tts_from_settings(settings)
    assert "nowhere.onnx" in router.fallbacks["pt"]


def test_a_stopped_answer_stops_being_made_even_mid_run(kokoro_router):
    """An interrupted answer's sentence in synthesis is terminated, so the next answer does not
    queue behind it (agent/session.py stops it when the answer ends)."""
    import threading
    import time

    from agent.audio.tts import Stop

    kokoro = kokoro_router.backend_for("es")
    text = "Puedes devolver cualquier artículo dentro de los treinta días posteriores a la entrega."
    stop = Stop()
    result: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: result.append(kokoro.synthesize(text, "es", stop)))
    worker.start()
    deadline = time.monotonic() + 30
    while not stop._runs and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert stop._runs, "the run never started"
    stop.stop()
    worker.join(30)
    assert not worker.is_alive()
    assert len(result) == 1 and len(result[0]) == 0  # terminated, nothing made, nothing cached
    full = kokoro.synthesize(text, "es")  # the same text, not stopped: made in full
    assert len(full) > 24000
    assert list(kokoro_router.frames(text, "es", stop=stop)) == []  # stopped: nothing starts


def test_pieces_said_before_are_not_made_again(kokoro_router):
    kokoro = kokoro_router.backend_for("pt")
    first = kokoro.synthesize("Sim,", "pt")
    assert kokoro.synthesize("Sim,", "pt") is first and len(first) > 0


def test_on_a_slow_cpu_the_first_sentence_is_not_cut_into_gaps(kokoro_router):
    """A piece cut mid-sentence must play longer than the next takes to make; where synthesis
    is slower than real time (a loaded CPU), cutting would leave a gap inside the sentence."""
    kokoro = kokoro_router.backend_for("pt")
    text = "O relógio automático custa 420 dólares. Ele é resistente à água."
    saved = kokoro.real_time_factor
    try:
        kokoro.real_time_factor = 0.1
        assert kokoro.chunks(text)[0] == "O relógio automático"
        kokoro.real_time_factor = 2.0
        assert kokoro.chunks(text) == split_sentences(text)
    finally:
        kokoro.real_time_factor = saved
    kokoro.synthesize("Ele é resistente à água até cem metros.", "pt")
    assert 0 < kokoro.real_time_factor < 100  # measured on the runs
