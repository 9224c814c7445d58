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
from .joins import JoinTimeline
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
        self.join_timeline: JoinTimeline | None = None
        self._held: list[dict] | None = None  # events held back until the join reply is out

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
        if self._held is not None:
            self._held.append(message)
            return
        try:
            self.events.put_nowait(message)
        except asyncio.QueueFull:
            logger.warning("%s: event queue full, dropping the participant", self.identity)
            self.drop("event queue overflow")

    def hold_events(self) -> None:
        """Keep events back while the join is being answered, so `joined` is the first one."""
        if self._held is None:
            self._held = []

    def release_events(self, first: dict | None = None) -> None:
        """Queue `first`, then every event held back since hold_events()."""
        held, self._held = self._held or [], None
        for message in ([first] if first is not None else []) + held:
            self.send_event(message)

    def probe_join(self, timeline: JoinTimeline) -> None:
        """Read the join's connection phases and first packets from the live sessions."""
        for label, session in (("subscriber", self.subscriber), ("publisher", self.publisher)):
            if session is None:
                continue
            peer = session.peer
            if peer.ice_connected_at is not None:
                timeline.mark(f"{label}_ice", peer.ice_connected_at)
            if peer.dtls_connected_at is not None:
                timeline.mark(f"{label}_dtls", peer.dtls_connected_at)
        if self.subscriber is None:
            return
        sent = [dt for dt in self.subscriber.downtracks if dt.packets_sent and dt.first_packet_s]
        for dt in sorted(sent, key=lambda dt: dt.first_packet_s):
            key = dt.forwarder.producer.id if dt.forwarder is not None else f"mid:{dt.mid}"
            timeline.first_packets.setdefault(key, dt.first_packet_s)
            timeline.mark("first_packet", dt.first_packet_s)
            timeline.mark(f"first_{dt.kind}_packet", dt.first_packet_s)

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
        if self.join_timeline is not None:
            self.join_timeline.freeze()  # last readings before the connections go
        self.closed = True
        current = asyncio.current_task()
        for task in self._watchdogs:
            if task is not current:
                task.cancel()
        if self.publisher is not None:
            await self.publisher.close()
        if self.subscriber is not None:
            await self.subscriber.close()
