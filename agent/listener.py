"""One remote speaker, as the agent hears them: audio in -> 16 kHz -> VAD -> endpointing ->
turns, with barge-in detection, an early STT pass that overlaps the end-of-turn wait, and the
merging of a turn with the words that continue it.

The `Listener` decides what happened in the audio; its `AgentSession` decides what to do about
it (answer, pause, resume, stop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sfu.client.room_client import RemoteTrack

from .audio.bargein import BargeInDetector
from .audio.endpoint import Endpointer, SpeechStarted, TurnEnded
from .audio.frames import STT_RATE, InputStage
from .audio.phantom import judge
from .messages import TOPIC_TRANSCRIPT

if TYPE_CHECKING:
    from .session import AgentSession


@dataclass
class Carry:
    """A turn not answered yet, that the buyer's next words may continue: its answer is being
    prepared, or it waits because the question seemed unfinished ("Does the …")."""

    audio: np.ndarray  # 16 kHz, the turn(s) so far
    ended_at: float  # monotonic time its end of turn was detected
    task: asyncio.Task  # hearing and answering it; cancelled when the buyer goes on
    number: int  # its turn number


@dataclass
class EarlyStt:
    """An STT pass started while the buyer is (perhaps) still talking."""

    frames: int  # turn frames it covers
    future: asyncio.Future
    language: str | None = None  # the language it was forced to (a turn over the agent)


class Listener:
    """One remote speaker: resampling, VAD, endpointing, barge-in, early STT."""

    def __init__(self, session: AgentSession, identity: str, remote: RemoteTrack) -> None:
        self.session = session
        self.identity = identity
        self.remote = remote
        config = session.pipeline.config
        self.frame_ms = config.audio.frame_ms
        self.endpointer: Endpointer = session.pipeline.new_endpointer()
        # barge_in_ms is speech: the part of it the VAD needs before it says "speech" is not
        # counted again in voiced frames
        onset_ms = getattr(self.endpointer.vad, "onset_ms", 0)
        self.barge = BargeInDetector(
            max(self.frame_ms, config.audio.barge_in_ms - onset_ms),
            self.frame_ms,
            config.session.barge_in_gap_ms,
        )
        self._input = InputStage(self.frame_ms, STT_RATE)
        self._early_frames = max(1, config.session.early_stt_ms // self.frame_ms)
        self._silence = 0  # unvoiced frames since the last voiced one, inside a turn
        self._turn_frames = 0
        self._early: EarlyStt | None = None
        self._barged = False  # this turn's speech interrupted the agent
        self._started_while_speaking = False
        self.carry: Carry | None = None  # the last turn, while the next may still continue it
        self._merge: Carry | None = None  # the open turn continues this one
        self.frames_heard = 0  # 20 ms frames pushed through VAD and endpointing
        self.line = 0  # turns heard from this speaker (names the transcript line)
        self.last_voiced_at = 0.0  # monotonic arrival of the last voiced frame
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        track = self.remote.track
        while True:
            try:
                frame = await track.recv()
            except Exception:  # MediaStreamError: the track ended
                return
            for chunk in self._input.push(frame):
                self._push(chunk)

    def _push(self, chunk: np.ndarray) -> None:
        session = self.session
        now = time.monotonic()
        self.frames_heard += 1
        events = self.endpointer.push(chunk)
        voiced = self.endpointer.voiced_ms > 0
        if voiced:
            self.last_voiced_at = now
        verdict = self.barge.push(voiced)
        if verdict is not None and session.speaking:
            kind, burst = verdict
            if kind == "barge_in":
                # a second burst in the same turn finds the agent paused already: the turn
                # stays the one that interrupted it
                self._barged = session.pause_for(self) or self._barged
            else:
                session.ignored_noise(self, burst.voiced_ms)
        ended = False
        for event in events:
            if isinstance(event, SpeechStarted):
                self._turn_frames = 0
                self._silence = 0
                self._early = None
                # the barge-in detector counts raw voiced frames and may fire before the VAD
                # says "speech started" (or in the same chunk): that pause is this turn's
                self._barged = session.paused_by is self
                self._started_while_speaking = session.speaking
                self._merge = self._continues(now)
                if self._merge is None:
                    self.line += 1  # a new line on the page; a continuation keeps its line
            elif isinstance(event, TurnEnded):
                ended = True
                self._turn_ended(event, now)
        if self._merge is not None and not ended and not self.endpointer.in_turn:
            # what resumed was a blip, not speech: answer the held turn as it was
            carry, self._merge = self._merge, None
            self.carry = None
            self._hear_again(carry, now)
        session.mark_talking(self, self.endpointer.in_turn)
        if (
            session.paused_by is self
            and self.endpointer.voiced_in_turn_ms > session.config.audio.backchannel_max_ms
        ):
            session.commit_barge_in(self, self.endpointer.voiced_in_turn_ms)  # too long to be "ok"
        if self.endpointer.in_turn:
            self._turn_frames += 1
            if voiced:
                self._silence = 0
                self._early = None  # speech resumed: the early pass is stale
            else:
                self._silence += 1
                if self._silence == self._early_frames and self._early is None:
                    audio = self.endpointer.current_audio()
                    if audio is not None and self._merge is not None:
                        audio = np.concatenate([self._merge.audio, audio])
                    if audio is not None:
                        state = session.state_for(self.identity)
                        # over the agent, in the conversation's language: short words are
                        # judged on it (session._hear), and Whisper's detection guesses badly
                        # on them
                        language = session.speaking_language if self._barged else None
                        future = session.transcribe_soon(audio, state, language)
                        line_id = self.line_id
                        if not self._started_while_speaking:  # over the agent: judged first
                            future.add_done_callback(lambda f: self._partial(f, line_id))
                        self._early = EarlyStt(self._turn_frames, future, language)

    @property
    def line_id(self) -> str:
        return f"{self.session.job.job_id}-{self.identity}-{self.line}"

    def _partial(self, future: asyncio.Future, line_id: str) -> None:
        """An early STT pass as a partial transcript line (final: false): what was said up to
        a pause, shown while the buyer goes on or while the final pass runs."""
        if future.cancelled() or future.exception() is not None:
            return
        if line_id in self.session.final_lines or judge(future.result()).phantom:
            return  # the final line is out already (never overwrite it), or noise
        self.session.send(
            TOPIC_TRANSCRIPT,
            {
                "id": line_id,
                "speaker": "user",
                "identity": self.identity,
                "language": future.result().language,
                "final": False,
                "text": future.result().text,
            },
        )

    def _continues(self, now: float) -> Carry | None:
        """Speech just started: does it continue the last turn? Yes while that turn's answer
        has not begun playing and the pause was short (audio.unfinished_wait_ms); then the
        answer being prepared is dropped and the two turns are heard as one."""
        carry, self.carry = self.carry, None
        if carry is None or carry.task.done() or self.session.speaking:
            return None
        if now - carry.ended_at > self.session.config.audio.unfinished_wait_ms / 1000:
            return None
        carry.task.cancel()
        self.session.counters["merged_turns"] += 1
        return carry

    def _turn_ended(self, turn: TurnEnded, now: float) -> None:
        early, self._early = self._early, None
        merge, self._merge = self._merge, None
        if self._started_while_speaking and not self._barged:
            # a noise over the agent's voice that still made a "turn": not a question
            if early is not None:
                early.future.cancel()
            return
        if merge is not None:
            turn = dataclasses.replace(turn, audio=np.concatenate([merge.audio, turn.audio]))
        task = self.session.on_turn(self, turn, early, now, over_agent=self._barged)
        if not self._barged:
            self.carry = Carry(turn.audio, now, task, self.session.turn)

    def _hear_again(self, carry: Carry, now: float) -> None:
        """Answer a held turn that nothing continued after all."""
        turn = TurnEnded(carry.audio, 0.0, 0.0, 0.0)
        task = self.session.on_turn(self, turn, None, now)
        self.carry = Carry(carry.audio, now, task, self.session.turn)
