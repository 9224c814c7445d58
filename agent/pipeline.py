"""The voice pipeline: 48 kHz audio in -> 16 kHz frames (InputStage) -> VAD -> endpointing ->
STT -> answer -> TTS.

`VoicePipeline` holds the loaded models and the stages' judgements the session and `ask --audio`
share (is this a phantom, a backchannel, an unfinished question); its blocking methods run in
its thread pool (`executor`) when called from asyncio. `run_recording` drives the whole chain
over a recording on the audio clock, as `python -m agent ask --audio IN.wav --out OUT.wav` does.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .answer import Answer, ConversationState, GroundedEngine, TicketStore
from .answer.intents import asks_something
from .answer.unfinished import unfinished
from .audio.backchannel import is_backchannel
from .audio.endpoint import Endpointer, SpeechStarted, TurnEnded
from .audio.frames import (
    STT_RATE,
    WEBRTC_RATE,
    InputStage,
    concat,
    frames_of,
    read_audio,
    write_wav,
)
from .audio.phantom import judge
from .audio.stt import SpeechToText, Transcript, WhisperStt, resolve_model_dir
from .audio.tts import Stop, TtsRouter, tts_from_settings
from .audio.vad import Vad, build_vad
from .config import AgentConfig
from .factory import build_engine

log = logging.getLogger(__name__)


@dataclass
class TurnResult:
    transcript: Transcript
    answer: Answer
    audio: np.ndarray  # the spoken answer, 48 kHz int16
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "transcript": self.transcript.text,
            "language": self.transcript.language,
            "answer": self.answer.to_dict(),
            "audio_s": len(self.audio) / WEBRTC_RATE,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


class VoicePipeline:
    def __init__(
        self,
        config: AgentConfig,
        engine: GroundedEngine,
        stt: SpeechToText,
        tts: TtsRouter,
        store: TicketStore | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.stt = stt
        self.tts = tts
        self._store = store
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent-cpu")
        self._preparing: threading.Thread | None = None
        self._prepare_stop = Stop()
        self.prepared_pieces = 0  # first pieces made ahead so far (`start_preparing`)

    @classmethod
    def from_config(cls, config: AgentConfig, warm_up: bool = True) -> VoicePipeline:
        t0 = time.perf_counter()
        engine, store = build_engine(config)
        s = config.stt
        stt = WhisperStt(
            resolve_model_dir(s.model_dir, config.cache_dir),
            compute_type=s.compute_type,
            threads=s.threads,
            beam_size=s.beam_size,
            languages=tuple(s.languages),
            language_confidence=s.language_confidence,
        )
        tts = tts_from_settings(config.tts)
        pipeline = cls(config, engine, stt, tts, store)
        try:
            pipeline.new_vad()  # a wrong [audio] vad setting or a missing VAD model fails now
        except Exception:
            pipeline.close()
            raise
        if warm_up:
            pipeline.warm_up()
        pipeline.load_ms = (time.perf_counter() - t0) * 1e3
        return pipeline

    def warm_up(self) -> None:
        """First calls load lazily (G2P, kernels); do it before the first buyer waits for it.
        Each engine once (Kokoro speaks pt and es with one session: one warm-up run)."""
        self.stt.transcribe(np.zeros(STT_RATE // 2, np.float32), language="en")
        done: set[int] = set()
        for language, backend in self.tts.backends.items():
            if id(backend) not in done:
                done.add(id(backend))
                for _ in self.tts.frames("Ok.", language):
                    break

    def start_preparing(self) -> threading.Thread | None:
        """In the background, make the first pieces of the engine's answers ahead (a worker
        does this once it is loaded; config tts.prepare_pieces). Answers always go first: a
        piece being prepared gives way to them. None when there is nothing to prepare."""
        prepare = self.config.tts.prepare_pieces
        if not isinstance(prepare, bool):
            raise ValueError("tts.prepare_pieces must be true or false")
        samples_of = getattr(self.engine, "speech_samples", None)
        if not prepare or samples_of is None or self._preparing is not None:
            return None
        samples = {language: samples_of(language) for language in self.tts.backends}
        store = self.config.cache_dir / "tts-pieces"

        def run() -> None:
            t0 = time.perf_counter()
            try:
                self.prepared_pieces = self.tts.prepare(samples, store, self._prepare_stop)
            except Exception:  # noqa: BLE001 -- an optimisation: answers are made as before
                log.exception("preparing the voice's first pieces failed")
                return
            log.info(
                "voice: %d first pieces ready in %.1f s",
                self.prepared_pieces,
                time.perf_counter() - t0,
            )

        self._preparing = threading.Thread(target=run, name="tts-prepare", daemon=True)
        self._preparing.start()
        return self._preparing

    def new_vad(self) -> Vad:
        """The configured VAD for one audio stream (each stream keeps its own state)."""
        a = self.config.audio
        return build_vad(
            a.vad,
            model=a.vad_model,
            threshold=a.vad_threshold,
            aggressiveness=a.vad_aggressiveness,
            sample_rate=STT_RATE,
            frame_ms=a.frame_ms,
        )

    def new_endpointer(self) -> Endpointer:
        a = self.config.audio
        return Endpointer(self.new_vad(), a.speech_start_ms, a.end_of_turn_silence_ms, a.max_turn_s)

    def hear_over_agent(
        self, audio16k: np.ndarray, voiced_ms: float, language: str | None
    ) -> tuple[str, Transcript]:
        """What speech over the agent's voice was (blocking; call from a worker thread):
        "backchannel" or "ignored_noise" (the agent goes on) or "interruption".

        Short words are transcribed in the conversation's `language`: Whisper's language
        detection guesses badly on them ("ajá" came out as English "What's that?")."""
        transcript = self.stt.transcribe(audio16k, language=language)
        return self.judge_over_agent(transcript, voiced_ms), transcript

    def judge_over_agent(self, transcript: Transcript, voiced_ms: float) -> str:
        """`hear_over_agent` for a transcript already made (in the conversation's language)."""
        if judge(transcript).phantom:
            return "ignored_noise"
        max_ms = self.config.audio.backchannel_max_ms
        if is_backchannel(transcript.text, voiced_ms, max_ms, self.has_content):
            return "backchannel"
        return "interruption"

    def unfinished(self, text: str, state: ConversationState) -> str:
        """Why the buyer seems not to have finished (agent/answer/unfinished.py); "" when the
        question seems complete, or when there is no catalogue to judge by."""
        shop = getattr(self.engine, "shop", None)
        return unfinished(text, shop, state) if shop is not None else ""

    def has_content(self, text: str) -> bool:
        """Does the text ask the shop anything (agent/audio/backchannel.py)? Without a
        catalogue to look in (another engine), everything might."""
        shop = getattr(self.engine, "shop", None)
        return asks_something(text, shop, social=False) if shop is not None else True

    # -- one turn ------------------------------------------------------------------------------

    def handle_turn(
        self,
        audio16k: np.ndarray,
        state: ConversationState,
        language: str | None = None,
        transcript: Transcript | None = None,
    ) -> TurnResult | None:
        """STT (unless `transcript` is given), answer and TTS for one turn; None when the turn
        was a phantom (noise that got past the VAD and that Whisper wrote words for)."""
        t0 = time.perf_counter()
        if transcript is None:
            transcript = self.stt.transcribe(audio16k, language=language, prior=state.language)
        if judge(transcript).phantom:
            return None
        t1 = time.perf_counter()
        answer = self.engine.answer(transcript.text, state, transcript.language)
        timings = {
            "stt": (t1 - t0) * 1e3,
            "answer": (time.perf_counter() - t1) * 1e3,
        }
        t0 = time.perf_counter()
        frames = []
        first = None
        for frame in self.tts.frames(answer.text, answer.language, self.config.audio.frame_ms):
            if first is None:
                first = time.perf_counter()
            frames.append(frame)
        t1 = time.perf_counter()
        timings["tts_first_audio"] = ((first or t1) - t0) * 1e3
        timings["tts_total"] = (t1 - t0) * 1e3
        return TurnResult(transcript, answer, concat(frames), timings)

    def close(self) -> None:
        self._prepare_stop.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()


# -- a whole recording ---------------------------------------------------------------------------


def run_recording(
    pipeline: VoicePipeline,
    audio48k: np.ndarray,
    state: ConversationState,
    language: str | None = None,
) -> tuple[list[TurnResult], dict[str, float]]:
    """Stream a 48 kHz recording through resampling, VAD and endpointing; answer each turn.

    As in a live session, a turn whose transcript is unfinished ("Does the …") waits for more:
    if the buyer speaks again before `audio.unfinished_wait_ms` of silence, the two turns are
    one question (transcribed together); if not, it is answered as it is, that much later."""
    frame_ms = pipeline.config.audio.frame_ms
    audio_in = InputStage(frame_ms, STT_RATE)
    endpointer = pipeline.new_endpointer()
    n16 = audio_in.frame_samples
    stream: list[np.ndarray] = []  # the 16 kHz audio the endpointer saw, frame by frame
    events: list[SpeechStarted | TurnEnded] = []
    resample_s = vad_s = 0.0
    for frame in frames_of(audio48k, WEBRTC_RATE, frame_ms):
        t0 = time.perf_counter()
        chunks = audio_in.push(frame, WEBRTC_RATE)
        t1 = time.perf_counter()
        resample_s += t1 - t0
        for chunk in chunks:
            stream.append(chunk)
            events.extend(endpointer.push(chunk))
        vad_s += time.perf_counter() - t1
    # a recording may stop right after the question: feed the configured silence
    silence = np.zeros(n16, np.int16)
    for _ in range(pipeline.config.audio.end_of_turn_silence_ms // frame_ms + 1):
        stream.append(silence)
        events.extend(endpointer.push(silence))
    events.extend(endpointer.flush())
    audio16k = concat(stream)
    turns: list[TurnEnded] = []
    starts: list[float] = []  # when each turn's speech started (its SpeechStarted)
    started = 0.0
    for event in events:
        if isinstance(event, SpeechStarted):
            started = event.at_ms
        else:
            turns.append(event)
            starts.append(started)
    wait_ms = pipeline.config.audio.unfinished_wait_ms

    def span(start: TurnEnded, end: TurnEnded) -> np.ndarray:
        """The recording from one turn's start (pre-roll) to another's end, pauses included."""
        per_ms = STT_RATE // 1000
        return audio16k[int(start.start_ms) * per_ms : int(end.detected_ms) * per_ms]

    results = []
    phantoms = merges = waits = 0
    i = 0
    while i < len(turns):
        first = turn = turns[i]
        transcript = pipeline.stt.transcribe(turn.audio, language=language, prior=state.language)
        endpointing = turn.detected_ms - turn.speech_end_ms
        while not judge(transcript).phantom and pipeline.unfinished(transcript.text, state):
            resumes = i + 1 < len(turns) and starts[i + 1] - turn.speech_end_ms <= wait_ms
            if not resumes:
                endpointing = max(endpointing, wait_ms)  # waited for more, then answered
                waits += 1
                break
            i += 1
            turn = turns[i]
            merges += 1
            transcript = pipeline.stt.transcribe(
                span(first, turn), language=language, prior=state.language
            )
            endpointing = turn.detected_ms - turn.speech_end_ms
        i += 1
        result = pipeline.handle_turn(span(first, turn), state, language, transcript=transcript)
        if result is None:
            phantoms += 1
            continue
        result.timings_ms["endpointing"] = endpointing
        result.timings_ms["turn_audio_s"] = (turn.detected_ms - first.start_ms) / 1000
        results.append(result)
    totals = {
        "resample": resample_s * 1e3,
        "vad_and_endpointing": vad_s * 1e3,
        "audio_s": len(audio48k) / WEBRTC_RATE,
        "turns": len(turns),  # what the VAD and endpointing cut
        "phantom_turns": phantoms,  # of those, dropped as phantoms (not answered)
        "merged_turns": merges,  # unfinished questions joined with what the buyer said next
        "unfinished_waits": waits,  # unfinished questions answered after the longer wait
    }
    return results, totals


def run_file(
    config: AgentConfig,
    in_path: str | Path,
    out_path: str | Path | None,
    language: str | None = None,
    customer: str = "cli",
) -> dict[str, Any]:
    """`ask --audio`: answer every question in a recording; write the spoken answers."""
    t0 = time.perf_counter()
    pipeline = VoicePipeline.from_config(config)
    try:
        load_ms = (time.perf_counter() - t0) * 1e3
        audio = read_audio(in_path, WEBRTC_RATE)
        results, totals = run_recording(
            pipeline, audio, ConversationState(customer=customer), language
        )
    finally:
        pipeline.close()
    if out_path:
        gap = np.zeros(WEBRTC_RATE * 3 // 10, np.int16)
        pieces = []
        for r in results:
            pieces += [r.audio, gap]
        write_wav(out_path, concat(pieces), WEBRTC_RATE)
    return {
        "turns": [r.to_dict() for r in results],
        "timings_ms": {"load": round(load_ms, 1), **{k: round(v, 3) for k, v in totals.items()}},
        "out": str(out_path) if out_path else None,
    }
