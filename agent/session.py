"""One agent in one room: hears every buyer, answers by voice, stops when talked over.

`AgentSession` joins with the Python SDK (`RoomClient`) as "agent-<job>" with metadata role
"agent", publishes one audio track (its voice, `AgentVoice`) and subscribes to the audio of
every other participant (WebSocket and WHIP publishers alike; never video, never other agents).
Per speaker, a `Listener` (agent/listener.py) turns the audio into turns. Per turn: STT ->
answer engine -> TTS sentence by sentence (the first sentence plays while the next is
synthesised) -> voice. CPU-heavy stages run in the pipeline's thread pool, never on the event
loop. The data messages it sends are listed in agent/messages.py.

Speech over the agent (past audio.barge_in_ms) pauses its voice at once; when the buyer stops,
what was said decides: a backchannel ("uh-huh", "sim", "vale") or a phantom (noise Whisper
wrote words for) resumes the answer where it stopped, anything else is a barge-in (the answer
is dropped and the buyer's turn answered). Speech longer than audio.backchannel_max_ms is a
barge-in without waiting for its end. A question that seems unfinished waits longer for the
rest (audio.unfinished_wait_ms); speech that resumes before an answer plays continues its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sfu.client.room_client import RoomClient
from sfu.media.peer import NetworkSettings

from .answer import Answer, ConversationState
from .audio.endpoint import TurnEnded
from .audio.kokoro_tts import COVER_MARGIN
from .audio.phantom import judge
from .audio.stt import Transcript
from .audio.tts import Stop
from .listener import EarlyStt, Listener
from .messages import TOPIC_ASK, TOPIC_INTERRUPTION, TOPIC_STATE, TOPIC_TOOL, TOPIC_TRANSCRIPT
from .pipeline import VoicePipeline
from .voice import AgentVoice, Utterance, low_latency_receiver, trim_frames

logger = logging.getLogger(__name__)

MAX_PAUSE_S = 4.0  # a pause for speech over the agent that nothing resolved becomes a barge-in
SENTENCE_PAUSE_FRAMES = 12  # silence kept after a sentence that another follows (240 ms)


def is_agent(identity: str, metadata: dict | None = None) -> bool:
    return identity.startswith("agent") or (metadata or {}).get("role") == "agent"


@dataclass
class JobSpec:
    """What the SFU's dispatcher hands a worker (see sfu/agents.py)."""

    job_id: str
    room: str
    kind: str
    identity: str
    token: str
    attempt: int = 1

    @classmethod
    def from_json(cls, data: dict) -> JobSpec:
        return cls(
            job_id=str(data["job_id"]),
            room=str(data["room"]),
            kind=str(data.get("kind", "agent")),
            identity=str(data.get("identity", f"agent-{data['job_id']}")),
            token=str(data["token"]),
            attempt=int(data.get("attempt", 1)),
        )


class AgentSession:
    """Runs until stopped, until its socket closes, or until no buyer was present for long."""

    def __init__(
        self,
        job: JobSpec,
        pipeline: VoicePipeline,
        url: str,
        network: NetworkSettings,
        on_started: Callable[[], Any] | None = None,
    ) -> None:
        self.job = job
        self.pipeline = pipeline
        self.config = pipeline.config
        self.url = url
        self.network = network
        self.on_started = on_started
        self.client: RoomClient | None = None
        self.voice = AgentVoice(self.config.audio.frame_ms, self.config.session.voice_queue_frames)
        self.listeners: dict[str, Listener] = {}  # by track id
        self.states: dict[str, ConversationState] = {}  # by buyer identity
        self.final_lines: set[str] = set()  # transcript lines already sent as final
        self.state = "idle"
        self.speaking = False
        self.turn = 0
        self.utterance: Utterance | None = None
        self.paused_by: Listener | None = None  # whose speech over the agent paused its voice
        self._paused_at = 0.0
        self._pause_timer: asyncio.TimerHandle | None = None
        self.history: list[dict[str, Any]] = []  # per answer: question, answer, heard
        self.counters = {
            "barge_ins": 0,
            "ignored_noises": 0,
            "backchannels": 0,
            "turns": 0,
            "merged_turns": 0,  # turns continued after a pause (the answer being made dropped)
            "unfinished_waits": 0,  # questions that seemed unfinished: a longer end of turn
        }
        self._reply: asyncio.Task | None = None  # the turn being answered
        self._claimed = 0  # its number
        self._talking: set[Listener] = set()  # speakers in the middle of a turn
        self._quiet = asyncio.Event()  # set while nobody is
        self._quiet.set()
        self._outbox: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        self._stop = asyncio.Event()
        self.stop_reason = ""
        self._tasks: set[asyncio.Task] = set()

    # -- lifetime --------------------------------------------------------------------------------

    async def run(self) -> str:
        """Join, serve, leave; returns why it ended."""
        client = self.client = await RoomClient.connect(
            self.url,
            self.job.token,
            name=self.config.session.name,
            metadata={"role": "agent", "job_id": self.job.job_id},
            auto_subscribe=False,
            network=self.network,
            publish=[self.voice],
            sources=["microphone"],
        )
        try:
            client.on("track_published", lambda m: self._spawn(self._listen_to(m["track"])))
            client.on("track_unpublished", lambda m: self._forget(m["track_id"]))
            client.on("error", self._on_error)
            client.on("data", self._on_data)
            self._spawn(self._send_loop())
            for info in list(client.tracks.values()):
                self._spawn(self._listen_to(info))
            self._set_state("listening")
            if self.on_started is not None:
                self.on_started()
            closed = asyncio.ensure_future(client.wait_closed())
            stopped = asyncio.ensure_future(self._stop.wait())
            idle = asyncio.ensure_future(self._idle_watch())
            done, _ = await asyncio.wait({closed, stopped, idle}, return_when="FIRST_COMPLETED")
            for task in (closed, stopped, idle):
                task.cancel()
            if closed in done and not self.stop_reason:
                self.stop_reason = "signalling socket closed"
            return self.stop_reason or "stopped"
        finally:
            await self._shutdown()

    def stop(self, reason: str = "stopped") -> None:
        if not self.stop_reason:
            self.stop_reason = reason
        self._stop.set()

    async def _shutdown(self) -> None:
        if self._reply is not None:
            self._reply.cancel()
        self.voice.interrupt()
        for listener in self.listeners.values():
            if listener.task is not None:
                listener.task.cancel()
        # let the last messages (state, transcripts) out before leaving
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self._outbox.join(), 1.0)
        for task in list(self._tasks):
            task.cancel()
        self.voice.interrupt()
        if self.client is not None:
            await self.client.leave()

    def _on_error(self, message: dict) -> None:
        if message.get("code") in ("replaced", "dropped"):
            self.stop(f"server: {message.get('code')}")

    async def _idle_watch(self) -> None:
        """Leave a room where no buyer has been for `idle_timeout_s`."""
        timeout = self.config.session.idle_timeout_s
        alone_since = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, timeout))
            others = [
                p
                for p in self.client.participants.values()
                if not is_agent(p["identity"], p.get("metadata"))
            ]
            if others:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since >= timeout:
                self.stop_reason = "no buyer in the room"
                return

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- subscriptions ---------------------------------------------------------------------------

    async def _listen_to(self, info: dict) -> None:
        client = self.client
        publisher = info.get("publisher", "")
        if info.get("kind") != "audio" or publisher == client.identity:
            return
        if is_agent(publisher, client.participants.get(publisher, {}).get("metadata")):
            return
        track_id = info["id"]
        if track_id in self.listeners:
            return
        try:
            await client.subscribe([track_id])
            remote = await client.next_track(track_id=track_id, timeout=10)
        except Exception as exc:
            logger.warning("agent %s: cannot subscribe to %s: %s", self.job.job_id, track_id, exc)
            return
        for receiver in client.subscriber.pc.getReceivers():
            if receiver.track is remote.track:
                low_latency_receiver(receiver)
        listener = Listener(self, publisher, remote)
        self.listeners[track_id] = listener
        listener.task = self._spawn(listener.run())
        logger.info("agent %s listens to %s (%s)", self.job.job_id, publisher, track_id)

    def _forget(self, track_id: str) -> None:
        listener = self.listeners.pop(track_id, None)
        if listener is not None:
            self.mark_talking(listener, False)
            if listener.task is not None:
                listener.task.cancel()

    def mark_talking(self, listener: Listener, talking: bool) -> None:
        if talking:
            self._talking.add(listener)
            self._quiet.clear()
        else:
            self._talking.discard(listener)
            if not self._talking:
                self._quiet.set()

    # -- messages --------------------------------------------------------------------------------

    def send(self, topic: str, payload: dict) -> None:
        """Queue a data message; one sender keeps them in order without blocking the caller."""
        self._outbox.put_nowait((topic, payload))

    async def _send_loop(self) -> None:
        while True:
            topic, payload = await self._outbox.get()
            try:
                await self.client.send_data(payload, topic=topic)
            except Exception as exc:  # the socket is going away; run() notices
                logger.debug("agent %s: data not sent: %s", self.job.job_id, exc)
            finally:
                self._outbox.task_done()

    def _set_state(self, state: str, **extra: Any) -> None:
        if state == self.state and not extra:
            return
        self.state = state
        self.send(TOPIC_STATE, {"state": state, "turn": self.turn, **extra})

    # -- turns -----------------------------------------------------------------------------------

    def transcribe_soon(
        self, audio16k: np.ndarray, state: ConversationState, language: str | None = None
    ) -> asyncio.Future:
        """STT in the pool: `language` forces one, else it is detected (the buyer's so far is
        the prior)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(
            self.pipeline.executor,
            self.pipeline.stt.transcribe,
            audio16k,
            language,
            state.language,
        )

    @property
    def speaking_language(self) -> str | None:
        """The language of the answer being spoken (the conversation's), if any."""
        return self.utterance.language if self.utterance is not None else None

    def state_for(self, identity: str) -> ConversationState:
        """The conversation with one buyer (kept across their turns, spoken or typed)."""
        state = self.states.get(identity)
        if state is None:
            state = self.states[identity] = ConversationState(customer=identity)
        return state

    def _new_turn(self, coro_factory) -> asyncio.Task:
        """Start on a new turn; it replaces the current answer once it proves to be words."""
        self.turn += 1
        self.counters["turns"] += 1
        return self._spawn(coro_factory(self.turn))

    def _claim(self, number: int) -> bool:
        """Make turn `number` the one being answered: the answer to an older turn (being
        prepared or spoken) is cancelled. False if a newer turn has claimed already."""
        if number < self._claimed:
            return False
        current = asyncio.current_task()
        if self._reply is not None and self._reply is not current and not self._reply.done():
            self._reply.cancel()
        self._reply, self._claimed = current, number
        return True

    def on_turn(
        self,
        listener: Listener,
        turn: TurnEnded,
        early: EarlyStt | None,
        now: float,
        over_agent: bool = False,
    ) -> asyncio.Task:
        """A buyer finished speaking a turn (`over_agent`: it paused the agent's voice)."""
        return self._new_turn(
            lambda number: self._hear(listener, turn, early, now, number, over_agent)
        )

    def _on_data(self, message: dict) -> None:
        """Typed questions (topic "ask": {text, language?}) are answered by voice too."""
        payload = message.get("payload")
        sender = message.get("from", "")
        if message.get("topic") != TOPIC_ASK or not isinstance(payload, dict):
            return
        text = payload.get("text")
        language = payload.get("language")
        if not isinstance(text, str) or not text.strip() or is_agent(sender):
            return
        language = language if language in self.config.stt.languages else None
        now = time.monotonic()
        self._new_turn(
            lambda number: self._respond(sender, text.strip()[:500], language, number, {}, now)
        )

    async def _hear(
        self,
        listener: Listener,
        turn: TurnEnded,
        early: EarlyStt | None,
        detected_at: float,
        number: int,
        over_agent: bool = False,
    ) -> None:
        """STT for a spoken turn (the early pass when it is still valid), then the answer.

        A turn that paused the agent is first judged: a backchannel or a phantom resumes the
        agent, anything else makes the pause a barge-in and is answered."""
        timings = {"endpointing": (detected_at - listener.last_voiced_at) * 1e3}
        if not self.speaking:
            self._set_state("thinking")
        state = self.state_for(listener.identity)
        line_id = listener.line_id
        t0 = time.monotonic()
        transcript: Transcript | None = None
        early_result: Transcript | None = None
        voiced_ms = turn.voiced_ms
        max_ms = self.config.audio.backchannel_max_ms
        if over_agent and self.paused_by is listener and voiced_ms <= max_ms:
            # the early pass of a turn over the agent was made in the conversation's language
            # (Listener): it heard all of a short turn, so it is the judgement's transcript
            if early is not None and early.language is not None:
                try:
                    transcript = await early.future
                except asyncio.CancelledError:
                    raise
                except Exception:
                    transcript = None
            if transcript is None:
                if early is not None:
                    early.future.cancel()
                transcript = await self.transcribe_soon(turn.audio, state, self.speaking_language)
            early = None
            kind = self.pipeline.judge_over_agent(transcript, voiced_ms)
            if kind != "interruption":
                self.resume_after(listener, kind, transcript.text, voiced_ms)
                return
        if over_agent and self.paused_by is listener:
            self.commit_barge_in(listener, voiced_ms)
        if early is not None and transcript is None:
            try:
                transcript = early_result = await early.future
            except asyncio.CancelledError:
                raise
            except Exception:
                transcript = None
        if transcript is None:
            transcript = await self.transcribe_soon(turn.audio, state)
        t1 = time.monotonic()
        timings["stt"] = transcript.timings_ms.get("total", (t1 - t0) * 1e3)
        timings["stt_wait"] = (t1 - t0) * 1e3
        verdict = judge(transcript)
        if verdict.phantom:
            # noise Whisper wrote words for ("Thank you.", "I'm gonna get you."): no turn
            logger.debug(
                "agent %s: phantom %r (%s)", self.job.job_id, transcript.text, verdict.reason
            )
            if self._reply is None or self._reply.done():
                self._set_state("listening")
            return
        if not over_agent and self.pipeline.unfinished(transcript.text, state):
            # "Does the …": wait a little longer for the rest; if the buyer goes on, this
            # task is cancelled and the turns are heard as one (Listener._continues)
            wait_s = self.config.audio.unfinished_wait_ms / 1000
            left = listener.last_voiced_at + wait_s - time.monotonic()
            if left > 0:
                self.counters["unfinished_waits"] += 1
                if not self.speaking:
                    self._set_state("listening")
                await asyncio.sleep(left)
            timings["endpointing"] = (time.monotonic() - listener.last_voiced_at) * 1e3
        await self._respond(
            listener.identity,
            transcript.text,
            transcript.language,
            number,
            timings,
            detected_at,
            line_id,
            early_stt=transcript is early_result,
        )

    async def _respond(
        self,
        identity: str,
        text: str,
        language: str | None,
        number: int,
        timings: dict[str, float],
        detected_at: float,
        line_id: str = "",
        **extra: Any,
    ) -> None:
        """The answer engine (tools included) for one turn's text, then speak the answer."""
        if not self._claim(number):
            return
        self._set_state("thinking")
        state = self.state_for(identity)
        line_id = line_id or f"{self.job.job_id}-{number}-user"
        self.final_lines.add(line_id)
        self.send(
            TOPIC_TRANSCRIPT,
            {
                "id": line_id,
                "speaker": "user",
                "identity": identity,
                "language": language or state.language,
                "final": True,
                "text": text,
                "turn": number,
                **extra,
            },
        )
        loop = asyncio.get_running_loop()
        t1 = time.monotonic()
        answer: Answer = await loop.run_in_executor(
            self.pipeline.executor, self.pipeline.engine.answer, text, state, language
        )
        timings["answer"] = (time.monotonic() - t1) * 1e3
        for call in answer.tool_calls:
            self.send(
                TOPIC_TOOL,
                {"name": call.name, "args": call.args, "result": call.result, "turn": number},
            )
        await self._speak(identity, text, answer, number, timings, detected_at)

    async def _speak(
        self,
        identity: str,
        question: str,
        answer: Answer,
        number: int,
        timings: dict[str, float],
        detected_at: float,
    ) -> None:
        """Synthesize sentence by sentence, one ahead of playback; play through the voice."""
        loop = asyncio.get_running_loop()
        pipeline = self.pipeline
        frame_ms = self.config.audio.frame_ms
        # sentences (Kokoro's first one cut short: its synthesis is what the buyer waits for)
        sentences = pipeline.tts.chunks(answer.text, answer.language) or [answer.text]
        stop = Stop()  # stopped when this answer ends, however: a stale sentence stops being made

        def synthesize(index: int) -> list[np.ndarray]:
            piece = sentences[index]
            frames = list(
                pipeline.tts.frames(piece, answer.language, frame_ms, split=False, stop=stop)
            )
            last = index == len(sentences) - 1
            return trim_frames(
                frames, lead=1 if index else 0, tail=2 if last else SENTENCE_PAUSE_FRAMES
            )

        reply_id = f"{self.job.job_id}-{number}-agent"
        utterance = Utterance(reply_id, answer.text, answer.language, frame_ms)
        entry = {
            "turn": number,
            "speaker": identity,
            "question": question,
            "answer": answer.text,
            "language": answer.language,
            "intent": answer.intent,
            "heard": "",
            "interrupted": False,
        }
        self.history.append(entry)
        t0 = time.monotonic()
        upcoming = loop.run_in_executor(pipeline.executor, synthesize, 0)
        generation = None
        try:
            for i, sentence in enumerate(sentences):
                frames = await upcoming
                if i + 1 < len(sentences):
                    upcoming = loop.run_in_executor(pipeline.executor, synthesize, i + 1)
                    if i == 0 and sentence.rstrip()[-1:] not in (".", "!", "?", ";"):
                        # cut inside its sentence: the rest of it must follow without a gap
                        await self._cover(upcoming, sentences[1], answer.language, len(frames))
                utterance.add(sentence, len(frames))
                if i == 0:
                    # turn-taking: someone is talking (a new turn is open): wait for its end;
                    # if it turns out to be a question, it replaces this answer
                    await self._quiet.wait()
                    now = time.monotonic()
                    timings["tts_first_audio"] = (now - t0) * 1e3
                    timings["reply"] = (now - detected_at) * 1e3
                    generation = self.voice.begin()
                    self.utterance = utterance
                    self.speaking = True
                    for listener in self.listeners.values():
                        if listener.carry is not None and listener.carry.number == number:
                            listener.carry = None  # answered: what follows is a new turn
                    self._set_state("speaking")
                    self.send(
                        TOPIC_TRANSCRIPT,
                        {
                            "id": reply_id,
                            "speaker": "agent",
                            "identity": self.client.identity,
                            "language": answer.language,
                            "final": True,
                            "text": answer.text,
                            "turn": number,
                            "intent": answer.intent,
                            "timings_ms": {k: round(v, 1) for k, v in timings.items()},
                        },
                    )
                for frame in frames:
                    if not await self.voice.put(frame, generation):
                        return
            await self.voice.drained(generation)
            if generation == self.voice.generation:
                entry["heard"] = answer.text
                self.speaking = False
                self.utterance = None
                self._set_state("listening")
        finally:
            stop.stop()  # a sentence still being made for this answer: not needed any more
            if generation is not None and generation == self.voice.generation:
                # cancelled (a newer turn, or leaving) while speaking: stop the voice too
                self.speaking = False
                self.voice.interrupt()
                if self.paused_by is not None:
                    self._unpause()

    async def _cover(
        self, upcoming: asyncio.Future, piece: str, language: str, first_frames: int
    ) -> None:
        """Before the first piece plays, wait as long as the next piece will take to make beyond
        the first one's playing time (estimated): a first piece made ahead (a product's name)
        starts at once on a fast CPU, and on a slow one a little later but with no gap inside
        the sentence (the buyer would hear one, and could take it for the end of the answer)."""
        started = time.monotonic()
        # with Kokoro's margin: its speed on a loaded CPU varies from one run to the next
        late = COVER_MARGIN * self.pipeline.tts.make_time(piece, language)
        late -= first_frames * self.config.audio.frame_ms / 1000
        if late > 0:
            await asyncio.wait({upcoming}, timeout=late - (time.monotonic() - started))

    # -- interruptions -----------------------------------------------------------------------------

    def pause_for(self, listener: Listener) -> bool:
        """Buyer speech over the agent: silence now, keep the answer until it is judged.
        False when the agent is not speaking or another buyer's speech paused it already."""
        if not self.speaking or self.paused_by is not None:
            return False
        self.voice.pause()  # first: the next frame out is silence
        self.paused_by = listener
        self._paused_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._pause_timer = loop.call_later(MAX_PAUSE_S, self._pause_expired, listener)
        return True

    def _pause_expired(self, listener: Listener) -> None:
        if self.paused_by is listener:
            self.commit_barge_in(listener, listener.endpointer.voiced_in_turn_ms)

    def _unpause(self) -> float:
        """Forget the pause; returns how long it lasted (ms)."""
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        self.paused_by = None
        return (time.monotonic() - self._paused_at) * 1e3

    def resume_after(self, listener: Listener, kind: str, text: str, voiced_ms: int) -> None:
        """The speech that paused the agent asked for nothing: go on where it stopped."""
        if self.paused_by is not listener:
            return
        paused_ms = self._unpause()
        self.voice.resume()
        self.counters["backchannels" if kind == "backchannel" else "ignored_noises"] += 1
        self.send(
            TOPIC_INTERRUPTION,
            {
                "kind": kind,
                "speaker": listener.identity,
                "voiced_ms": voiced_ms,
                "turn": self.turn,
                "text": text,
                "paused_ms": round(paused_ms, 1),
            },
        )
        logger.info(
            "agent %s: %s from %s (%r), resumed after %.0f ms",
            self.job.job_id,
            kind,
            listener.identity,
            text,
            paused_ms,
        )

    def commit_barge_in(self, listener: Listener, voiced_ms: int) -> None:
        """The speech that paused the agent is an interruption: drop the answer (what was
        queued, what was being prepared) and record what the buyer heard of it."""
        if self.paused_by is listener:
            self._unpause()
        if not self.speaking:
            return
        stopped = self.voice.interrupt()
        sent = self.voice.sent
        self.speaking = False
        if self._reply is not None:
            self._reply.cancel()
        utterance, self.utterance = self.utterance, None
        heard = utterance.heard(sent) if utterance is not None else ""
        if self.history:
            self.history[-1].update(heard=heard, interrupted=True)
        self.counters["barge_ins"] += 1
        payload = {
            "kind": "barge_in",
            "speaker": listener.identity,
            "voiced_ms": voiced_ms,
            "turn": self.turn,
            "heard_text": heard,
            "heard_ms": sent * self.voice.frame_ms,
            "total_ms": utterance.total_ms if utterance is not None else 0,
            "stopped_frames": stopped,
        }
        self.send(TOPIC_INTERRUPTION, payload)
        if utterance is not None:
            self.send(
                TOPIC_TRANSCRIPT,
                {
                    "id": utterance.reply_id,
                    "speaker": "agent",
                    "identity": self.client.identity,
                    "language": utterance.language,
                    "final": True,
                    "text": heard or "…",
                    "turn": self.turn,
                    "interrupted": True,
                    "full_text": utterance.text,
                },
            )
        self._set_state("interrupted", speaker=listener.identity)
        self._set_state("listening")
        logger.info(
            "agent %s interrupted by %s after %d ms of speech (heard %d ms)",
            self.job.job_id,
            listener.identity,
            voiced_ms,
            payload["heard_ms"],
        )

    def ignored_noise(self, listener: Listener, voiced_ms: int) -> None:
        """A burst too short to be a barge-in (cough, click): keep talking, count it."""
        self.counters["ignored_noises"] += 1
        self.send(
            TOPIC_INTERRUPTION,
            {
                "kind": "ignored_noise",
                "speaker": listener.identity,
                "voiced_ms": voiced_ms,
                "turn": self.turn,
            },
        )
