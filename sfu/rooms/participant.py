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
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..auth import Grants
from ..config import LimitSettings
from ..media.peer import MediaPeer
from ..media.publisher import PublisherSession
from ..media.subscriber import SubscriberSession
from .timeline import JoinTimeline

if TYPE_CHECKING:
    from ..room import Room

logger = logging.getLogger(__name__)

# What an event is taken to cost in the outbound queue when the sender does not say (most
# events are a few hundred bytes of JSON; `data` and `offer` events pass their real size).
EVENT_COST = 256
REPLACED = "replaced"  # the error code (and `dropped` reason) of a connection a rejoin replaced


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
        limits: LimitSettings | None = None,
        token_identity: str | None = None,
    ) -> None:
        self.sid = "PA_" + uuid.uuid4().hex[:12]
        self.identity = identity
        # the identity in the token (a WHEP player's own identity has a suffix)
        self.token_identity = token_identity or identity
        self.name = name
        self.kind = kind
        self.grants = grants
        self.room = room
        self.auto_subscribe = auto_subscribe
        self.metadata = metadata or {}
        self.publisher: PublisherSession | None = None
        self.subscriber: SubscriberSession | None = None
        self.joined_at = time.time()
        limits = limits or LimitSettings()
        self.queue_limit = limits.max_event_queue
        self.queue_bytes_limit = limits.max_event_queue_bytes
        # Outbound events for a WebSocket client, drained by its writer. Unbounded as a queue:
        # send_event() enforces the limits (so the final `dropped` notice always fits).
        self.events: asyncio.Queue[dict] | None = (
            asyncio.Queue() if kind == ParticipantKind.WEBSOCKET else None
        )
        self.queued_bytes = 0
        self._sizes: deque[int] = deque()  # cost of each queued event, in queue order
        self.closed = False
        self.dropped: str | None = None  # why, once drop() was called
        self._watchdogs: list[asyncio.Task] = []
        self.on_dropped: Callable[[str], None] | None = None
        self.join_timeline: JoinTimeline | None = None
        # the node serving this join and the fallback nodes (sfu/cluster/routing.py)
        self.route: dict = {}
        # events (and their sizes) held back until the join reply is out
        self._held: list[tuple[dict, int]] | None = None
        self._held_bytes = 0

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

    def send_event(self, message: dict, size: int = EVENT_COST) -> None:
        """Queue an event for the client; a client too slow to drain its queue is dropped.

        `size`: what the event costs in the queue's byte budget (its JSON length, roughly).
        Once dropped, a participant takes no more events (its queue is not refilled while
        the room is still removing it).
        """
        if self.events is None or self.closed or self.dropped is not None:
            return
        held = self._held
        queued = self.events.qsize() + (len(held) if held is not None else 0)
        queued_bytes = self.queued_bytes + self._held_bytes
        if queued >= self.queue_limit or queued_bytes + size > self.queue_bytes_limit:
            self._clear_events()  # it will never read them: free them now
            self.drop(
                f"event queue overflow ({queued} events, {queued_bytes} bytes unread)",
                warning=True,
            )
            return
        if held is not None:
            held.append((message, size))
            self._held_bytes += size
            return
        self._put(message, size)

    def _put(self, message: dict, size: int) -> None:
        assert self.events is not None
        self.events.put_nowait(message)
        self._sizes.append(size)
        self.queued_bytes += size

    async def next_event(self) -> dict:
        """The next queued event (for the socket's writer)."""
        assert self.events is not None
        message = await self.events.get()
        self._took_one()
        return message

    def take_events(self) -> list[dict]:
        """Everything still queued, emptying the queue."""
        events = []
        while self.events is not None and not self.events.empty():
            events.append(self.events.get_nowait())
            self._took_one()
        return events

    def _took_one(self) -> None:
        if self._sizes:
            self.queued_bytes -= self._sizes.popleft()

    def _clear_events(self) -> None:
        self.take_events()
        self.queued_bytes = 0
        if self._held is not None:
            self._held = []
            self._held_bytes = 0

    def hold_events(self) -> None:
        """Keep events back while the join is being answered, so `joined` is the first one."""
        if self._held is None:
            self._held = []

    def release_events(self, first: dict | None = None) -> None:
        """Queue `first`, then every event held back since hold_events()."""
        held, self._held = self._held or [], None
        self._held_bytes = 0
        if first is not None:
            held.insert(0, (first, _size_of(first)))
        for message, size in held:
            self.send_event(message, size)

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

    def drop(self, reason: str, *, warning: bool = False) -> None:
        """Remove the participant from its room (from any context, without awaiting).

        Idempotent: the first call logs one line, queues one `dropped` error for the client
        (beyond the queue limits, so it always fits), tells `on_dropped` and schedules the
        removal; later calls (e.g. every event that would overflow the queue meanwhile) do
        nothing.
        """
        if self.closed or self.dropped is not None:
            return
        self.dropped = reason
        log = logger.warning if warning else logger.info
        log("dropping %s from %s: %s", self.identity, self.room.name, reason)
        if self.events is not None:
            self._put({"type": "error", "code": "dropped", "message": reason}, EVENT_COST)
        if self.on_dropped is not None:
            self.on_dropped(reason)
        asyncio.ensure_future(self.room.remove(self))

    def replaced(self) -> None:
        """The same identity joined again (this node or another): this connection ends.

        Like drop() it queues one error (`replaced`) and tells `on_dropped` (which closes the
        signalling socket once that error is flushed, so the old client can act no more as
        this identity, e.g. send data); the caller removes it from the room.
        """
        if self.closed or self.dropped is not None:
            return
        self.dropped = REPLACED
        logger.info("%s in %s: replaced by a new connection", self.identity, self.room.name)
        if self.events is not None:
            self._put(
                {"type": "error", "code": REPLACED, "message": "same identity joined again"},
                EVENT_COST,
            )
        if self.on_dropped is not None:
            self.on_dropped(REPLACED)

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


def _size_of(message: dict) -> int:
    """An event's cost when its sender gave none: its SDPs (top level or in `offer` or
    `publish_answer`) and the fixed EVENT_COST; no serialising."""
    size = EVENT_COST
    for value in message.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, dict) and isinstance(value.get("sdp"), str):
            size += len(value["sdp"])
    return size
