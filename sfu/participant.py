"""Participant: one identity in a room, with its publish and subscribe connections.

A participant comes from a WebSocket client (events delivered to it), a WHIP publisher or a
WHEP player (no events; the HTTP resource is its whole lifetime). It is dropped when its
connections fail, or never connect within the configured time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from .auth import Grants
from .media.peer import MediaPeer
from .media.publisher import PublisherSession
from .media.subscriber import SubscriberSession

if TYPE_CHECKING:
    from .room import Room

logger = logging.getLogger(__name__)

EVENT_QUEUE_LIMIT = 1000


class ParticipantKind(enum.StrEnum):
    WEBSOCKET = "websocket"
    WHIP = "whip"
    WHEP = "whep"


class Participant:
    def __init__(
        self,
        *,
        identity: str,
        name: str,
        kind: ParticipantKind,
        grants: Grants,
        room: Room,
        auto_subscribe: bool = True,
        metadata: dict | None = None,
    ) -> None:
        self.sid = "PA_" + uuid.uuid4().hex[:12]
        self.identity = identity
        self.name = name
        self.kind = kind
        self.grants = grants
        self.room = room
        self.auto_subscribe = auto_subscribe
        self.metadata = metadata or {}
        self.publisher: PublisherSession | None = None
        self.subscriber: SubscriberSession | None = None
        self.joined_at = time.time()
        self.events: asyncio.Queue[dict] | None = (
            asyncio.Queue(EVENT_QUEUE_LIMIT) if kind == ParticipantKind.WEBSOCKET else None
        )
        self.closed = False
        self._watchdogs: list[asyncio.Task] = []
        self.on_dropped: Callable[[str], None] | None = None

    def info(self) -> dict:
        return {
            "sid": self.sid,
            "identity": self.identity,
            "name": self.name,
            "kind": self.kind.value,
            "metadata": self.metadata,
            "tracks": [p.info.to_json() for p in self.published()],
        }

    def published(self):
        return list(self.publisher.producers.values()) if self.publisher else []

    def send_event(self, message: dict) -> None:
        """Queue an event for the client; a client too slow to drain its queue is dropped."""
        if self.events is None or self.closed:
            return
        try:
            self.events.put_nowait(message)
        except asyncio.QueueFull:
            logger.warning("%s: event queue full, dropping the participant", self.identity)
            self.drop("event queue overflow")

    # -- connection health ---------------------------------------------------------------------

    def watch(self, peer: MediaPeer, timeout_s: float) -> None:
        """Drop the participant if `peer` does not connect in time or fails later."""

        def on_state() -> None:
            if peer.connection_state == "failed" and not peer.closed:
                self.drop(f"{peer.label}: connection failed")

        peer.pc.on("connectionstatechange", on_state)
        self._watchdogs.append(asyncio.ensure_future(self._connect_deadline(peer, timeout_s)))

    async def _connect_deadline(self, peer: MediaPeer, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(peer.connected.wait(), timeout_s)
        except TimeoutError:
            if not peer.closed:
                self.drop(f"{peer.label}: ICE/DTLS not connected within {timeout_s:g} s")

    def drop(self, reason: str) -> None:
        """Remove the participant from its room (from any context, without awaiting)."""
        if self.closed:
            return
        logger.info("dropping %s from %s: %s", self.identity, self.room.name, reason)
        if self.on_dropped is not None:
            self.on_dropped(reason)
        asyncio.ensure_future(self.room.remove(self))

    async def close(self) -> None:
        """Close both connections; every producer it published is unpublished."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in self._watchdogs:
            if task is not current:
                task.cancel()
        if self.publisher is not None:
            await self.publisher.close()
        if self.subscriber is not None:
            await self.subscriber.close()
