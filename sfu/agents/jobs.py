"""Agent jobs ("join room R as the agent") and the node's in-memory book of them.

A job is pending until a worker takes it (sfu/agents/dispatcher.py), then assigned, running
once its worker has joined the room, and ended or failed; finished jobs are kept a while for
the admin listing (sfu/api/agents.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

DEFAULT_KIND = "agent"
ACTIVE = ("pending", "assigned", "running")
FINISHED_KEPT = 200  # finished jobs kept for the admin listing
KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def is_agent_participant(identity: str, metadata: dict | None = None) -> bool:
    """Agents and captioners ("agent-…", "captioner-…", or that role in their metadata) are
    machines: they do not keep a room alive."""
    return identity.startswith(("agent", "captioner-")) or (metadata or {}).get("role") in (
        "agent",
        "captioner",
    )


@dataclass
class AgentJob:
    id: str
    room: str
    kind: str
    source: str  # "admin" or "auto"
    state: str = "pending"  # pending -> assigned -> running -> ended | failed
    worker: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    attempts: int = 0  # times a worker was given it
    moves: int = 0  # times it moved because its worker died
    reason: str = ""

    @property
    def identity(self) -> str:
        return f"agent-{self.id}"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def set_state(self, state: str, reason: str = "") -> None:
        self.state = state
        self.updated_at = time.time()
        if reason:
            self.reason = reason

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "room": self.room,
            "kind": self.kind,
            "source": self.source,
            "state": self.state,
            "worker": self.worker,
            "identity": self.identity,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
            "moves": self.moves,
            "reason": self.reason,
        }


def valid_kind(kind: Any) -> bool:
    """A job kind: a short lower-case name such as "agent" or "captions"."""
    return isinstance(kind, str) and 0 < len(kind) <= 32 and set(kind) <= KIND_CHARS


class JobBook:
    """The node's jobs by id: the active ones and the last FINISHED_KEPT finished ones."""

    def __init__(self) -> None:
        self.jobs: dict[str, AgentJob] = {}

    def new(self, room: str, kind: str, source: str) -> AgentJob:
        job = AgentJob(id=uuid.uuid4().hex[:12], room=room, kind=kind, source=source)
        self.jobs[job.id] = job
        self._trim()
        return job

    def get(self, job_id: Any) -> AgentJob | None:
        return self.jobs.get(job_id) if isinstance(job_id, str) else None

    def active(self, room: str | None = None, kind: str | None = None) -> list[AgentJob]:
        return [
            j
            for j in self.jobs.values()
            if j.active and (room is None or j.room == room) and (kind is None or j.kind == kind)
        ]

    def oldest_first(self) -> list[AgentJob]:
        return sorted(self.jobs.values(), key=lambda j: j.created_at)

    def _trim(self) -> None:
        finished = sorted(
            (j for j in self.jobs.values() if not j.active), key=lambda j: j.updated_at
        )
        for job in finished[: max(0, len(finished) - FINISHED_KEPT)]:
            del self.jobs[job.id]
