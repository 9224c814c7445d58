"""Agent dispatch: jobs ("join room R as the agent") handed to agent workers over a WebSocket.

The node keeps a job registry in memory. A job is created by an admin call
(`POST /api/rooms/{room}/agents`: a node-wide admin token, or a room admin token for its own
room) or when the first buyer joins a room listed in `[agents] auto_rooms`; it ends when the
room's last non-agent participant leaves, when an admin deletes it, or when its worker reports
it done. A room admin sees and deletes only its room's jobs. Workers (`python -m agent worker`)
connect to `GET /api/agent-workers/ws` with a node-wide token (room "*") carrying the `agent`
grant (a worker receives job tokens for any room, so a room's token cannot register one), say
which job kinds they take and how many at once, and heartbeat. A worker whose socket closes,
or that stays silent for `worker_timeout_s`, loses its jobs to the other workers at once.

Worker protocol (JSON text messages):

    worker -> node  {"type": "register", "kinds": ["agent"], "capacity": 2, "name": "..."}
    node -> worker  {"type": "registered", "worker_id", "heartbeat_interval_s", "timeout_s"}
    node -> worker  {"type": "assign", "job": {"job_id", "room", "kind", "identity", "token",
                                               "attempt"}}
    worker -> node  {"type": "job_started", "job_id"}          (joined the room)
    worker -> node  {"type": "job_done", "job_id"} | {"type": "job_failed", "job_id", "error"}
    node -> worker  {"type": "cancel", "job_id", "reason"}     (leave the room now)
    worker -> node  {"type": "heartbeat", "jobs": [job ids it runs]}
    node -> worker  {"type": "error", "message"}

`kind` is free-form ("agent" for the conversational agent; other kinds, such as live captions,
use the same machinery): a job goes only to a worker that listed its kind.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..auth import Grants, mint_token
from .delegate import JobRequester
from .jobs import DEFAULT_KIND, KIND_CHARS, AgentJob, JobBook, is_agent_participant

if TYPE_CHECKING:
    from ..node import SfuNode
    from ..room import Room
    from ..rooms.participant import Participant

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 1.0
MAX_ATTEMPTS = 3  # a job a worker reports failed is retried this many times in all
JOB_TOKEN_TTL_S = 12 * 3600


class WorkerLink:
    """One connected worker: its socket, what it takes, and the jobs it holds."""

    def __init__(self, ws: web.WebSocketResponse, identity: str) -> None:
        self.id = "AW_" + uuid.uuid4().hex[:10]
        self.ws = ws
        self.identity = identity
        self.name = identity
        self.kinds: frozenset[str] = frozenset()
        self.capacity = 0
        self.jobs: set[str] = set()
        self.last_seen = time.monotonic()
        self.registered = False
        self.gone = False

    def free(self) -> int:
        return self.capacity - len(self.jobs)

    def send(self, message: dict) -> None:
        """Queue a message without awaiting (dispatch runs from synchronous room events)."""
        if self.gone or self.ws.closed:
            return
        asyncio.ensure_future(self._send(message))

    async def _send(self, message: dict) -> None:
        try:
            await self.ws.send_json(message)
        except (ConnectionError, RuntimeError):
            pass

    def to_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.id,
            "name": self.name,
            "kinds": sorted(self.kinds),
            "capacity": self.capacity,
            "jobs": sorted(self.jobs),
            "last_seen_s_ago": round(time.monotonic() - self.last_seen, 2),
        }


class AgentDispatcher:
    """The node's jobs and workers; hands pending jobs to workers with a free slot."""

    def __init__(self, node: SfuNode) -> None:
        self.node = node
        self.settings = node.config.agents
        self.book = JobBook()
        self.jobs = self.book.jobs  # by id (the book's own dict)
        self.workers: dict[str, WorkerLink] = {}
        self._watchdog: asyncio.Task | None = None
        node.rooms.listeners.append(self._on_room_event)
        # listener(event, job): "agent_job_started" (its worker joined the room) and
        # "agent_job_ended" (ended or failed for good); webhooks and metrics use them
        self.job_listeners: list[Callable[[str, AgentJob], None]] = []
        self.jobs_started = 0
        # [agents] dispatch_url: another node makes this node's auto-room jobs (delegate.py)
        self.requester = (
            JobRequester(self.settings.dispatch_url, node.config.auth, node.node_id)
            if self.settings.dispatch_url
            else None
        )

    def _job_event(self, event: str, job: AgentJob) -> None:
        if event == "agent_job_started":
            self.jobs_started += 1
        for listener in self.job_listeners:
            try:
                listener(event, job)
            except Exception:
                logger.exception("agent job listener failed on %s", event)

    # -- jobs ----------------------------------------------------------------------------------

    def create_job(self, room: str, kind: str = DEFAULT_KIND, source: str = "admin") -> AgentJob:
        job = self.book.new(room, kind, source)
        logger.info("agent job %s (%s) for room %s created (%s)", job.id, kind, room, source)
        self._dispatch()
        return job

    def active_jobs(self, room: str | None = None, kind: str | None = None) -> list[AgentJob]:
        return self.book.active(room, kind)

    def end_job(self, job: AgentJob, reason: str, state: str = "ended") -> None:
        """Finish a job; its worker (if any) is told to leave the room."""
        if not job.active:
            return
        worker = self.workers.get(job.worker) if job.worker else None
        if worker is not None:
            worker.jobs.discard(job.id)
            worker.send({"type": "cancel", "job_id": job.id, "reason": reason})
        job.set_state(state, reason)
        logger.info("agent job %s %s: %s", job.id, state, reason)
        self._job_event("agent_job_ended", job)
        self._dispatch()  # a slot came free

    def _dispatch(self) -> None:
        """Give every pending job (oldest first) to the least-loaded worker that takes its kind."""
        for job in self.book.oldest_first():
            if job.state != "pending":
                continue
            candidates = [
                w
                for w in self.workers.values()
                if w.registered and not w.gone and job.kind in w.kinds and w.free() > 0
            ]
            if not candidates:
                continue
            worker = max(candidates, key=lambda w: (w.free(), -len(w.jobs)))
            self._assign(job, worker)

    def _assign(self, job: AgentJob, worker: WorkerLink) -> None:
        job.worker = worker.id
        job.attempts += 1
        job.set_state("assigned")
        worker.jobs.add(job.id)
        token = mint_token(
            self.node.config.auth,
            identity=job.identity,
            room=job.room,
            grants=Grants(publish=True, subscribe=True),
            ttl_s=JOB_TOKEN_TTL_S,
            name="Shop assistant" if job.kind == DEFAULT_KIND else job.kind,
        )
        worker.send(
            {
                "type": "assign",
                "job": {
                    "job_id": job.id,
                    "room": job.room,
                    "kind": job.kind,
                    "identity": job.identity,
                    "token": token,
                    "attempt": job.attempts,
                },
            }
        )
        logger.info("agent job %s assigned to worker %s", job.id, worker.name)

    # -- rooms ---------------------------------------------------------------------------------

    def _on_room_event(self, event: str, room: Room, participant: Participant) -> None:
        if is_agent_participant(participant.identity, participant.metadata):
            return
        if event == "joined":
            if room.name not in self.settings.auto_rooms:
                return
            if self.requester is not None:
                self.requester.request(room.name, DEFAULT_KIND)
            elif not self.active_jobs(room.name, DEFAULT_KIND):
                self.create_job(room.name, DEFAULT_KIND, source="auto")
            return
        humans = [
            p
            for p in room.participants.values()
            if not is_agent_participant(p.identity, p.metadata)
        ]
        # buyers on the room's other nodes still want its agent
        humans += [
            r
            for r in room.remote.values()
            if not is_agent_participant(r["identity"], r.get("metadata"))
        ]
        if not humans:
            for job in self.active_jobs(room.name):
                self.end_job(job, "room is empty")

    # -- workers -------------------------------------------------------------------------------

    def _register(self, worker: WorkerLink, msg: dict) -> None:
        kinds = msg.get("kinds", [DEFAULT_KIND])
        capacity = msg.get("capacity", 1)
        if (
            not isinstance(kinds, list)
            or not kinds
            or not all(isinstance(k, str) and k and set(k) <= KIND_CHARS for k in kinds)
        ):
            raise ValueError("'kinds' must be a non-empty list of lower-case kind names")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= 64:
            raise ValueError("'capacity' must be an integer within 1..64")
        if isinstance(msg.get("name"), str):
            worker.name = msg["name"][:64]
        worker.kinds = frozenset(kinds)
        worker.capacity = capacity
        worker.registered = True
        self.workers[worker.id] = worker
        worker.send(
            {
                "type": "registered",
                "worker_id": worker.id,
                "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
                "timeout_s": self.settings.worker_timeout_s,
            }
        )
        logger.info(
            "agent worker %s registered: kinds %s, capacity %d", worker.name, kinds, capacity
        )
        self._dispatch()

    def on_worker_message(self, worker: WorkerLink, msg: dict) -> None:
        """One message of the worker protocol; ValueError for a bad one (answered `error`)."""
        kind = msg.get("type")
        worker.last_seen = time.monotonic()
        if kind == "register":
            self._register(worker, msg)
            return
        if not worker.registered:
            raise ValueError("send 'register' first")
        if kind == "heartbeat":
            jobs = msg.get("jobs", [])
            if isinstance(jobs, list):
                # a job it still runs but no longer holds (moved while it was unreachable)
                for job_id in jobs:
                    if isinstance(job_id, str) and job_id not in worker.jobs:
                        worker.send({"type": "cancel", "job_id": job_id, "reason": "moved"})
            return
        job_id = msg.get("job_id")
        job = self.book.get(job_id)
        if job is None or job.worker != worker.id or not job.active:
            return  # late news about a job that ended or moved
        if kind == "job_started":
            if job.state != "running":
                job.set_state("running")
                self._job_event("agent_job_started", job)
        elif kind == "job_done":
            worker.jobs.discard(job.id)
            job.set_state("ended", str(msg.get("reason", "done"))[:200])
            self._job_event("agent_job_ended", job)
            self._dispatch()
        elif kind == "job_failed":
            worker.jobs.discard(job.id)
            error = str(msg.get("error", "failed"))[:200]
            logger.warning("agent job %s failed on %s: %s", job.id, worker.name, error)
            if job.attempts < MAX_ATTEMPTS:
                job.worker = None
                job.set_state("pending", error)
            else:
                job.set_state("failed", error)
                self._job_event("agent_job_ended", job)
            self._dispatch()
        else:
            raise ValueError(f"unknown message type {kind!r}")

    def _worker_gone(self, worker: WorkerLink, reason: str) -> None:
        """Move the worker's jobs to the others (or back to pending until one registers)."""
        if worker.gone:
            return
        worker.gone = True
        self.workers.pop(worker.id, None)
        for job_id in list(worker.jobs):
            job = self.jobs.get(job_id)
            if job is not None and job.active:
                job.worker = None
                job.moves += 1
                job.set_state("pending", f"worker {worker.name} {reason}")
        worker.jobs.clear()
        if worker.registered:
            logger.warning("agent worker %s %s; moving its jobs", worker.name, reason)
        self._dispatch()

    async def _watch(self) -> None:
        """Drop workers that stopped heartbeating (a hung process keeps its socket open)."""
        timeout = self.settings.worker_timeout_s
        while True:
            await asyncio.sleep(min(0.5, timeout / 4))
            now = time.monotonic()
            for worker in list(self.workers.values()):
                if now - worker.last_seen > timeout:
                    self._worker_gone(worker, f"missed heartbeats for {timeout:g} s")
                    asyncio.ensure_future(worker.ws.close(code=4408, message=b"heartbeat timeout"))

    def connect(self, ws: web.WebSocketResponse, identity: str) -> WorkerLink:
        """A worker's socket is open (it registers with its first message)."""
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch())
        return WorkerLink(ws, identity)

    def disconnected(self, worker: WorkerLink) -> None:
        self._worker_gone(worker, "disconnected")

    def info(self, room: str | None = None) -> dict[str, Any]:
        """Workers and jobs; with `room`, that room's jobs only and no workers (a room admin's
        view: workers serve every room)."""
        jobs = self.book.oldest_first()
        return {
            "workers": [w.to_json() for w in self.workers.values()] if room is None else [],
            "jobs": [j.to_json() for j in jobs if room is None or j.room == room],
        }

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.requester is not None:
            await self.requester.close()


AGENTS_KEY: web.AppKey[AgentDispatcher] = web.AppKey("agent_dispatcher", AgentDispatcher)
