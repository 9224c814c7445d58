"""Streaming transcription of one audio track: partial captions while the host speaks, a final
caption at the end of each phrase.

Three layers, so each can be tested alone:

* `PhraseTracker` (pure, audio-clocked): 20 ms frames at 16 kHz in, VAD endpointing, out come
  requests: "decode the phrase so far" every `partial_interval_ms` of speech, and "decode the
  finished phrase" when `end_of_phrase_silence_ms` of silence ends it.
* `PhraseDecoder` (blocking, runs in a worker thread): Whisper over a request's audio; keeps the
  language of the phrase (detected once, on its first partial) and of the session (the prior for
  the next phrase), and drops finals Whisper itself doubts (noise, clicks). Partials are decoded
  greedily (cheap); finals, and the decode taken early in a pause that usually becomes the
  final, with `final_beam_size`. Every decode gets the shop's vocabulary as Whisper's prompt.
* `TrackTranscriber` (asyncio): reads an aiortc audio track, resamples 48 kHz -> 16 kHz, feeds
  the tracker, runs decodes off the event loop one at a time (a partial that would queue behind
  another decode is skipped, a final never is), and hands the captions, in order, to a callback.

Cost: one transcriber per host track, whatever the number of viewers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from aiortc.mediastreams import MediaStreamError

from ..audio.endpoint import Endpointer, SpeechStarted, TurnEnded
from ..audio.frames import STT_RATE, InputStage
from ..audio.phantom import judge
from ..audio.stt import SpeechToText
from ..audio.vad import Vad, build_vad
from .config import CaptionSettings

logger = logging.getLogger(__name__)

FRAME_MS = 20
FRAME_SAMPLES = STT_RATE * FRAME_MS // 1000
# a partial is only worth decoding while the host is still talking: past this much silence the
# phrase is probably ending, and the final decode should not wait behind a partial
PARTIAL_MAX_SILENCE_MS = 160
# Whisper decides the phrase's language on its first partial; one shorter than this is decided
# again on the final (short audio misleads the detector)
SURE_LANGUAGE_MS = 1500
# After this much silence the phrase so far is decoded at once ("speculative"): if the host has
# really stopped, that decode becomes the final without a second pass, so the Whisper pass runs
# during the end-of-phrase wait instead of after it
SPECULATIVE_SILENCE_MS = 100
_WORDS = re.compile(r"\w", re.UNICODE)


@dataclass
class DecodeRequest:
    seq: int  # phrase number on this track
    final: bool
    audio: np.ndarray  # int16, 16 kHz, the whole phrase so far
    start_ms: float  # audio time (track clock) of the phrase's first sample
    end_ms: float  # final: end of the last voiced frame; partial: audio so far
    wall_end: float  # time.time() matching end_ms (for the archive)
    speculative: bool = False  # a partial taken early in a pause: may become the final
    created: float = field(default_factory=time.perf_counter)  # when the tracker asked


@dataclass
class Caption:
    seq: int
    final: bool
    text: str
    language: str
    start_ms: float
    end_ms: float
    wall_start: float
    wall_end: float
    revision: int = 0  # partial number within the phrase (finals: the count of partials)
    decode_ms: float = 0.0
    avg_logprob: float = 0.0
    wait_ms: float = 0.0  # queued behind another decode
    created: float = 0.0  # perf_counter when the tracker asked for it
    reused: bool = False  # a final taken from the speculative decode (no second pass)


class _LastDecision:
    """Wraps a VAD to remember its last answer (the tracker's silence run needs it)."""

    def __init__(self, vad: Vad) -> None:
        self.vad = vad
        self.sample_rate = vad.sample_rate
        self.frame_ms = vad.frame_ms
        self.voiced = False

    def is_speech(self, frame: np.ndarray) -> bool:
        self.voiced = self.vad.is_speech(frame)
        return self.voiced


class PhraseTracker:
    """Endpointing plus the schedule of partial decodes, clocked by the audio pushed."""

    def __init__(self, settings: CaptionSettings, vad: Vad | None = None) -> None:
        self.settings = settings
        if vad is None:
            vad = build_vad(
                settings.vad,
                model=settings.vad_model,
                threshold=settings.vad_threshold,
                aggressiveness=settings.vad_aggressiveness,
                sample_rate=STT_RATE,
                frame_ms=FRAME_MS,
            )
        self._vad = _LastDecision(vad)
        self.endpointer = Endpointer(
            self._vad,
            speech_start_ms=settings.speech_start_ms,
            end_of_turn_silence_ms=settings.end_of_phrase_silence_ms,
            max_turn_s=settings.max_phrase_s,
        )
        pre_roll = self.endpointer._pre_roll.maxlen or 1  # same pre-roll as the endpointer
        self._recent: deque[np.ndarray] = deque(maxlen=pre_roll)
        self._phrase: list[np.ndarray] = []
        self._phrase_start_ms = 0.0
        self._next_partial_ms = 0.0
        self._silence_ms = 0
        self.clock_ms = 0.0
        self.seq = 0  # phrases started so far

    @property
    def in_phrase(self) -> bool:
        return self.endpointer.in_turn

    def push(self, frame: np.ndarray, now: float | None = None) -> list[DecodeRequest]:
        """One 20 ms frame (16 kHz int16); `now` is the wall time of its end (default: now)."""
        now = time.time() if now is None else now
        self._recent.append(frame)
        events = self.endpointer.push(frame)
        self.clock_ms += FRAME_MS
        self._silence_ms = 0 if self._vad.voiced else self._silence_ms + FRAME_MS
        requests: list[DecodeRequest] = []
        for event in events:
            if isinstance(event, SpeechStarted):
                self.seq += 1
                self._phrase = list(self._recent)
                self._phrase_start_ms = self.clock_ms - len(self._phrase) * FRAME_MS
                self._next_partial_ms = self._phrase_start_ms + self.settings.min_partial_ms
            elif isinstance(event, TurnEnded):
                requests.append(self._final(event, now))
        if self.endpointer.in_turn and not any(isinstance(e, SpeechStarted) for e in events):
            self._phrase.append(frame)
            speculative = self._silence_ms == SPECULATIVE_SILENCE_MS
            if speculative or (
                self.clock_ms >= self._next_partial_ms
                and self._silence_ms <= PARTIAL_MAX_SILENCE_MS
            ):
                self._next_partial_ms = self.clock_ms + self.settings.partial_interval_ms
                requests.append(
                    DecodeRequest(
                        self.seq,
                        False,
                        np.concatenate(self._phrase),
                        self._phrase_start_ms,
                        self.clock_ms,
                        now,
                        speculative,
                    )
                )
        return requests

    def flush(self, now: float | None = None) -> list[DecodeRequest]:
        """End the open phrase (the audio stopped)."""
        now = time.time() if now is None else now
        return [self._final(e, now) for e in self.endpointer.flush()]

    def _final(self, event: TurnEnded, now: float) -> DecodeRequest:
        self._phrase = []
        wall_end = now - (self.clock_ms - event.speech_end_ms) / 1000
        return DecodeRequest(
            self.seq, True, event.audio, event.start_ms, event.speech_end_ms, wall_end
        )


class PhraseDecoder:
    """Whisper over decode requests, with the phrase's and the session's language."""

    def __init__(
        self,
        stt: SpeechToText,
        languages: tuple[str, ...] = (),
        fixed_language: str = "",
        *,
        prompts: dict[str, str] | None = None,
        final_beam_size: int = 0,
    ) -> None:
        self.stt = stt
        self.languages = tuple(languages) or tuple(getattr(stt, "languages", ()))
        self.fixed_language = fixed_language
        self.prompts = dict(prompts or {})  # language -> Whisper prompt (the shop's vocabulary)
        # finals' beam (0: the model's own, as partials)
        self.partial_beam = int(getattr(stt, "beam_size", 1) or 1)
        self.final_beam = max(final_beam_size or self.partial_beam, self.partial_beam)
        self.session_language: str | None = None
        self._phrase_seq = -1
        self._phrase_language: str | None = None
        self._phrase_language_ms = 0.0
        self._revision = 0  # partials decoded in the current phrase
        # the phrase's latest partial: its request, text, language, log-probability and beam
        self._last: tuple[DecodeRequest, str, str, float, int] | None = None

    def decode(self, request: DecodeRequest, min_logprob: float = -1.2) -> Caption | None:
        t0 = time.perf_counter()
        if request.seq != self._phrase_seq:
            self._phrase_seq = request.seq
            self._phrase_language = None
            self._phrase_language_ms = 0.0
            self._revision = 0
            self._last = None
        if request.final and self._covered(request):
            return self._reuse(request, min_logprob, t0)
        audio_ms = len(request.audio) * 1000 / STT_RATE
        language = self.fixed_language or self._phrase_language
        if language and not self.fixed_language and self._phrase_language_ms < SURE_LANGUAGE_MS:
            # decided on little audio: decide again once there is enough (a partial usually
            # does it, so the final, which the viewers wait for, rarely pays for detection)
            if request.final or audio_ms >= SURE_LANGUAGE_MS:
                language = None
        # the speculative partial is decoded as a final would be: it usually becomes the final
        beam = self.final_beam if request.final or request.speculative else self.partial_beam
        transcript = self.stt.transcribe(
            request.audio,
            language=language,
            prior=self._prior(),
            prompt=self.prompts or None,
            beam_size=beam,
        )
        if language is None:
            self._phrase_language = transcript.language
            self._phrase_language_ms = audio_ms
        text = transcript.text.strip()
        revision = self._revision
        if not request.final:
            self._revision += 1
            self._last = (request, text, transcript.language, transcript.avg_logprob, beam)
        else:
            if not _WORDS.search(text) or transcript.avg_logprob < min_logprob:
                logger.debug("captions: dropped %r (logprob %.2f)", text, transcript.avg_logprob)
                return None
        if judge(transcript).phantom:  # music or noise Whisper wrote words for
            if not request.final:
                self._last = None  # never reused as the final either
            return None
        if request.final:
            self.session_language = transcript.language
        start_wall = request.wall_end - (request.end_ms - request.start_ms) / 1000
        return Caption(
            seq=request.seq,
            final=request.final,
            text=text,
            language=transcript.language,
            start_ms=request.start_ms,
            end_ms=request.end_ms,
            wall_start=start_wall,
            wall_end=request.wall_end,
            revision=revision,
            decode_ms=(time.perf_counter() - t0) * 1e3,
            wait_ms=(t0 - request.created) * 1e3,
            created=request.created,
            avg_logprob=transcript.avg_logprob,
        )

    def _prior(self) -> str | None:
        return self._phrase_language or self.session_language

    def _covered(self, final: DecodeRequest) -> bool:
        """The latest partial heard all of the phrase's speech, in a language we are sure of,
        and was decoded as a final is (its beam)."""
        last = self._last
        return (
            last is not None
            and last[0].end_ms >= final.end_ms  # decoded after the last voiced frame
            and last[4] >= self.final_beam
            and (bool(self.fixed_language) or self._phrase_language_ms >= SURE_LANGUAGE_MS)
        )

    def _reuse(self, request: DecodeRequest, min_logprob: float, t0: float) -> Caption | None:
        assert self._last is not None
        _, text, language, logprob, _ = self._last
        if not _WORDS.search(text) or logprob < min_logprob:
            return None
        self.session_language = language
        return Caption(
            seq=request.seq,
            final=True,
            text=text,
            language=language,
            start_ms=request.start_ms,
            end_ms=request.end_ms,
            wall_start=request.wall_end - (request.end_ms - request.start_ms) / 1000,
            wall_end=request.wall_end,
            revision=self._revision,
            decode_ms=(time.perf_counter() - t0) * 1e3,
            wait_ms=(t0 - request.created) * 1e3,
            created=request.created,
            avg_logprob=logprob,
            reused=True,
        )


def transcribe_recording(
    samples: np.ndarray,
    stt,
    settings: CaptionSettings,
    language: str = "",
    prompts: dict[str, str] | None = None,
) -> list[Caption]:
    """Offline, deterministic run over a 16 kHz recording: every partial and final, in order.

    Every scheduled partial is decoded (no skipping): what a fast enough machine would show.
    `prompts`: Whisper's prompt per language (vocabulary.build_prompts).
    """
    tracker = PhraseTracker(settings)
    decoder = PhraseDecoder(
        stt,
        fixed_language=language,
        prompts=prompts,
        final_beam_size=settings.final_beam_size,
    )
    captions: list[Caption] = []
    requests: list[DecodeRequest] = []
    t = 0.0
    for start in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        t += FRAME_MS / 1000
        requests += tracker.push(samples[start : start + FRAME_SAMPLES], now=t)
    requests += tracker.flush(now=t)
    for request in requests:
        caption = decoder.decode(request, settings.min_logprob)
        if caption is not None:
            captions.append(caption)
    return captions


@dataclass
class TranscriberStats:
    frames: int = 0
    partials_decoded: int = 0
    partials_skipped: int = 0
    finals: int = 0
    finals_dropped: int = 0
    finals_reused: int = 0  # taken from the speculative decode
    decode_ms: list[float] = field(default_factory=list)


class TrackTranscriber:
    """One host audio track -> captions, decoded in `executor` (give it one worker thread)."""

    def __init__(
        self,
        stt,
        settings: CaptionSettings,
        executor: Executor,
        on_caption: Callable[[Caption], Awaitable[None]],
        language: str = "",
        speaker: str = "",
        prompts: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.speaker = speaker
        self._stopping = False
        self.tracker = PhraseTracker(settings)
        self.decoder = PhraseDecoder(
            stt,
            fixed_language=language,
            prompts=prompts,
            final_beam_size=settings.final_beam_size,
        )
        self.executor = executor
        self.on_caption = on_caption
        self.stats = TranscriberStats()
        self._inflight = 0  # decodes queued or running
        self._pending: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()
        self._emitter: asyncio.Task | None = None

    async def run(self, track) -> None:
        """Read `track` until it ends (or this task is cancelled); then the last phrase's final."""
        self._emitter = asyncio.ensure_future(self._emit_in_order())
        audio_in = InputStage(FRAME_MS, STT_RATE)
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(track.recv(), self.settings.audio_gap_s)
                except TimeoutError:
                    if self.tracker.in_phrase:
                        self._submit(self.tracker.flush())
                    if self._stopping:
                        break
                    continue
                except MediaStreamError:  # the track ended
                    break
                now = time.time()
                for chunk in audio_in.push(frame):
                    self.stats.frames += 1
                    self._submit(self.tracker.push(chunk, now))
            self._submit(self.tracker.flush())
        finally:
            self._pending.put_nowait(None)
            emitter = self._emitter
            try:
                await asyncio.shield(emitter)
            except asyncio.CancelledError:
                # cancelled ourselves: the decodes already queued still finish in the thread;
                # stop handing out captions
                emitter.cancel()
                raise

    def stop(self) -> None:
        """The track was unpublished: end once its audio has stopped (open phrase included)."""
        self._stopping = True

    def _submit(self, requests: list[DecodeRequest]) -> None:
        loop = asyncio.get_running_loop()
        for request in requests:
            if not request.final and not request.speculative and self._inflight:
                self.stats.partials_skipped += 1
                continue
            self._inflight += 1
            future = loop.run_in_executor(self.executor, self._decode, request)
            future.add_done_callback(self._done)
            self._pending.put_nowait(future)

    def _decode(self, request: DecodeRequest) -> tuple[DecodeRequest, Caption | None]:
        return request, self.decoder.decode(request, self.settings.min_logprob)

    def _done(self, future: asyncio.Future) -> None:
        self._inflight -= 1

    async def _emit_in_order(self) -> None:
        finished: set[int] = set()  # phrases whose final went out: later partials are stale
        while True:
            future = await self._pending.get()
            if future is None:
                return
            try:
                request, caption = await future
            except Exception:
                logger.exception("captions: decoding failed")
                continue
            if request.final:
                finished.add(request.seq)
                if caption is None:
                    self.stats.finals_dropped += 1
                    continue
                self.stats.finals += 1
                self.stats.finals_reused += caption.reused
            elif caption is None or request.seq in finished:
                continue
            else:
                self.stats.partials_decoded += 1
            self.stats.decode_ms.append(caption.decode_ms)
            try:
                await self.on_caption(caption)
            except Exception:
                logger.exception("captions: delivering a caption failed")
