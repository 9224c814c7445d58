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


def _watch_runs(kokoro, made: list[str]):
    """Record the text of every model run (the real runs, watched)."""
    real = kokoro._runs

    def recording(text, language, stop, background):
        made.append(text)
        return real(text, language, stop, background)

    kokoro._runs = recording


def test_a_prepared_first_piece_is_heard_before_anything_is_made(kokoro_router, tmp_path):
    """Answers that start with a piece made ahead (a product's name) start without a run, even
    on a CPU too slow to cut a sentence otherwise; a restarted worker reads it from disk."""
    kokoro = kokoro_router.backend_for("pt")
    text = "O relógio automático custa 420 dólares. Ele é resistente à água."
    samples = [("pt", text), ("pt", "O pedido {order} já foi entregue.")]  # a slot: skipped
    assert kokoro.prepare(samples, tmp_path) == 1
    assert kokoro.is_prepared("O relógio automático", "pt")
    saved = kokoro.real_time_factor
    made: list[str] = []
    _watch_runs(kokoro, made)
    try:
        kokoro.real_time_factor = 2.0  # slower than real time: unprepared, no cut
        pieces = kokoro_router.chunks(text, "pt")
        assert pieces == ["O relógio automático", "custa 420 dólares.", "Ele é resistente à água."]
        for piece in pieces[1:]:  # not said before (an earlier test may have)
            kokoro._cache.pop(("pt", piece), None)
        frames = kokoro_router.frames(text, "pt")
        next(frames)
        assert made == []  # the first audio came before any run
        rest = list(frames)
        assert made == pieces[1:]
        assert len(rest) * 0.02 > 2.0  # the rest of the answer followed, seconds of it
    finally:
        kokoro.real_time_factor = saved
        del kokoro._runs
    again = KokoroTts({"pt": "pt-br"}, speed=kokoro.speed)  # a restarted worker
    made.clear()
    _watch_runs(again, made)
    assert again.prepare([("pt", text)], tmp_path) == 1
    assert made == []  # read back, not made again
    name = "O relógio automático"
    assert np.array_equal(again.synthesize(name, "pt"), kokoro.synthesize(name, "pt"))


def test_an_answer_preempts_the_background_preparation(kokoro_router):
    """A piece being prepared gives way to an answer: its run is terminated, the answer is
    made, and the piece is made later all the same."""
    import threading
    import time

    kokoro = kokoro_router.backend_for("es")
    samples = [
        ("es", "Puedes devolver cualquier artículo dentro de los treinta días."),
        ("es", "Los plazos de envío dependen del país."),
    ]
    stopped: list = []
    ready: list[int] = []
    worker = threading.Thread(target=lambda: ready.append(kokoro.prepare(samples)))
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and worker.is_alive():
        background = kokoro._background
        if background is not None and background._runs:
            stopped.append(background)
            break
        time.sleep(0.002)
    assert stopped, "no background run was seen"
    answer = kokoro.synthesize("Sí, claro.", "es")
    assert len(answer) > 0  # made in full
    assert stopped[0].stopped  # the background run gave way
    worker.join(60)
    assert ready == [2]  # and both pieces were prepared in the end
    assert kokoro.is_prepared("Puedes devolver cualquier artículo", "es")


def test_stopping_an_answer_drops_its_pending_pieces(kokoro_router):
    """Barge-in: once the answer is stopped, the pieces not yet made are never made and the
    stream ends after the frames already made."""
    from agent.audio.tts import Stop

    kokoro = kokoro_router.backend_for("pt")
    text = "Sim, o vestido existe em azul. Ele é de linho. Mais alguma coisa?"
    pieces = kokoro_router.chunks(text, "pt")
    assert len(pieces) >= 3, pieces
    stop = Stop()
    made: list[str] = []
    _watch_runs(kokoro, made)
    try:
        for piece in pieces:  # nothing cached: every piece would need a run
            kokoro._cache.pop(("pt", piece), None)
        frames = kokoro_router.frames(text, "pt", stop=stop)
        next(frames)
        assert made == [pieces[0]]
        stop.stop()
        rest = list(frames)
    finally:
        del kokoro._runs
    assert made == [pieces[0]]  # the pending pieces were dropped, not made
    first = kokoro.synthesize(pieces[0], "pt")
    assert len(rest) <= len(first) * WEBRTC_RATE // kokoro.sample_rate // 960 + 2


def test_the_pipeline_prepares_in_the_background_and_stops_at_close(
    kokoro_router, engine, tmp_path
):
    from agent.pipeline import VoicePipeline

    config = AgentConfig()
    config.stt.cache_dir = str(tmp_path)
    config.tts.prepare_pieces = False
    off = VoicePipeline(config, engine, stt=None, tts=kokoro_router)
    assert off.start_preparing() is None  # switched off
    config.tts.prepare_pieces = "yes"
    with pytest.raises(ValueError, match="prepare_pieces"):
        off.start_preparing()
    config.tts.prepare_pieces = True
    pipeline = VoicePipeline(config, engine, stt=None, tts=kokoro_router)
    thread = pipeline.start_preparing()
    assert thread is not None and thread.daemon
    assert pipeline.start_preparing() is None  # once
    pipeline.close()  # the worker leaves: the preparation ends after the piece in progress
    thread.join(60)
    assert not thread.is_alive()


async def test_a_prepared_first_piece_waits_for_the_rest_of_its_sentence_on_a_slow_cpu(
    kokoro_router, engine, tmp_path
):
    """The session starts a prepared first piece at once where the rest of the sentence will
    be made while it plays, and holds it back on a CPU too slow for that (no gap inside the
    sentence): it never starts before the next piece is made there."""
    import asyncio

    from agent.pipeline import VoicePipeline
    from agent.session import AgentSession, JobSpec
    from sfu.media.peer import NetworkSettings

    kokoro = kokoro_router.backend_for("pt")
    text = "O relógio automático custa 420 dólares."
    kokoro.prepare([("pt", text)], tmp_path)
    first, rest = kokoro_router.chunks(text, "pt")
    assert first == "O relógio automático"
    config = AgentConfig()
    pipeline = VoicePipeline(config, engine, stt=None, tts=kokoro_router)
    session = AgentSession(
        JobSpec("j", "r", "agent", "agent-j", "t"),
        pipeline,
        "http://127.0.0.1:9",
        NetworkSettings(),
    )
    first_frames = len(list(kokoro_router.frames(first, "pt", split=False)))
    saved = kokoro.real_time_factor
    loop = asyncio.get_running_loop()
    try:
        for rtf, waits in ((10.0, True), (0.01, False)):
            kokoro.real_time_factor = kokoro.last_real_time_factor = rtf
            kokoro._cache.pop(("pt", rest), None)
            assert kokoro_router.make_time(rest, "pt") > 0
            upcoming = loop.run_in_executor(None, kokoro.synthesize, rest, "pt")
            await session._cover(upcoming, rest, "pt", first_frames)
            assert upcoming.done() is waits, rtf
            await upcoming
        assert kokoro_router.make_time(rest, "pt") == 0  # made now: no wait
    finally:
        kokoro.real_time_factor = kokoro.last_real_time_factor = saved
        pipeline.close()
