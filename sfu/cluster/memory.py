"""The in-process cluster: one node, no Redis (the default, `[cluster] redis_url = ""`).

The same contract as the Redis implementation, kept in dictionaries. Every method runs
without awaiting anything, so each one is atomic on the event loop, as a Lua script is in
Redis. It never fails with ClusterUnavailable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import RoomNotFound
from .interface import MessageHandler
from .records import (
    ClusterMessage,
    DirectoryChange,
    NodeInfo,
    NodeSnapshot,
    ParticipantLeft,
    ParticipantRecord,
    RoomRecord,
    TrackRecord,
    TrackRemoved,
)

logger = logging.getLogger(__name__)


class MemoryRegistry:
    def __init__(self, node_ttl_s: float) -> None:
        self.node_ttl_s = node_ttl_s
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}  # id -> (record, monotonic time)

    def _live(self, entry: tuple[NodeInfo, float]) -> bool:
        return time.monotonic() - entry[1] < self.node_ttl_s

    async def heartbeat(self, node: NodeInfo) -> bool:
        entry = self._nodes.get(node.node_id)
        was_live = entry is not None and self._live(entry)
        stamped = dataclasses.replace(node, heartbeat_at=time.time())
        self._nodes[node.node_id] = (stamped, time.monotonic())
        return was_live

    async def deregister(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def live_nodes(self) -> list[NodeInfo]:
        live = [info for info, t in self._nodes.values() if self._live((info, t))]
        return sorted(live, key=lambda n: (n.region, n.node_id))

    async def get_node(self, node_id: str) -> NodeInfo | None:
        entry = self._nodes.get(node_id)
        return entry[0] if entry is not None and self._live(entry) else None

    async def expired_nodes(self) -> list[str]:
        return sorted(n for n, entry in self._nodes.items() if not self._live(entry))

    async def forget(self, node_id: str) -> None:
        entry = self._nodes.get(node_id)
        if entry is not None and not self._live(entry):
            del self._nodes[node_id]


class MemoryDirectory:
    def __init__(self) -> None:
        self._rooms: dict[str, RoomRecord] = {}
        self._participants: dict[str, dict[str, ParticipantRecord]] = {}
        self._tracks: dict[str, dict[str, TrackRecord]] = {}

    def _ensure_room(
        self, name: str, node_id: str, metadata: dict[str, Any] | None = None
    ) -> tuple[RoomRecord, bool]:
        room = self._rooms.get(name)
        if room is not None:
            return room, False
        room = RoomRecord(name, time.time(), node_id, dict(metadata or {}))
        self._rooms[name] = room
        self._participants[name] = {}
        self._tracks[name] = {}
        return room, True

    def _drop_if_empty(self, name: str) -> None:
        if name in self._rooms and not self._participants[name] and not self._tracks[name]:
            del self._rooms[name], self._participants[name], self._tracks[name]

    async def create_room(
        self, name: str, node_id: str, metadata: dict[str, Any] | None = None
    ) -> tuple[RoomRecord, bool]:
        return self._ensure_room(name, node_id, metadata)

    async def get_room(self, name: str) -> RoomRecord | None:
        return self._rooms.get(name)

    async def set_room_metadata(self, name: str, metadata: dict[str, Any]) -> RoomRecord:
        room = self._rooms.get(name)
        if room is None:
            raise RoomNotFound(name)
        room = dataclasses.replace(room, metadata=dict(metadata))
        self._rooms[name] = room
        return room

    async def list_rooms(self) -> list[str]:
        return sorted(self._rooms)

    async def add_participant(self, record: ParticipantRecord) -> RoomRecord:
        room, _ = self._ensure_room(record.room, record.node_id)
        self._put_participant(record)
        return room

    def _put_participant(self, record: ParticipantRecord) -> None:
        members = self._participants[record.room]
        current = members.get(record.identity)
        if current is None or not current.is_later_connection_than(record):
            members[record.identity] = record

    async def remove_participant(self, room: str, identity: str, sid: str) -> bool:
        members = self._participants.get(room, {})
        current = members.get(identity)
        if current is None or current.sid != sid:
            return False
        del members[identity]
        self._drop_if_empty(room)
        return True

    async def add_track(self, record: TrackRecord) -> None:
        self._ensure_room(record.room, record.node_id)
        self._tracks[record.room][record.track_id] = record

    async def remove_track(self, room: str, track_id: str) -> bool:
        if self._tracks.get(room, {}).pop(track_id, None) is None:
            return False
        self._drop_if_empty(room)
        return True

    async def apply(self, changes: Sequence[DirectoryChange]) -> None:
        for change in changes:
            if isinstance(change, ParticipantRecord):
                await self.add_participant(change)
            elif isinstance(change, ParticipantLeft):
                await self.remove_participant(change.room, change.identity, change.sid)
            elif isinstance(change, TrackRecord):
                await self.add_track(change)
            elif isinstance(change, TrackRemoved):
                await self.remove_track(change.room, change.track_id)

    async def participants(self, room: str) -> list[ParticipantRecord]:
        return sorted(self._participants.get(room, {}).values(), key=lambda p: p.identity)

    async def tracks(self, room: str) -> list[TrackRecord]:
        return sorted(self._tracks.get(room, {}).values(), key=lambda t: t.track_id)

    def _remove_node_entries(self, node_id: str) -> list[str]:
        touched = set()
        for name in list(self._rooms):
            for table in (self._participants[name], self._tracks[name]):
                for key in [k for k, rec in table.items() if rec.node_id == node_id]:
                    del table[key]
                    touched.add(name)
        return sorted(touched)

    async def sync_node(self, snapshot: NodeSnapshot) -> None:
        touched = self._remove_node_entries(snapshot.node_id)
        for p in snapshot.participants:
            self._ensure_room(p.room, p.node_id)
            self._put_participant(p)
        for t in snapshot.tracks:
            self._ensure_room(t.room, t.node_id)
            self._tracks[t.room][t.track_id] = t
        for name in touched:
            self._drop_if_empty(name)

    async def prune_node(self, node_id: str) -> list[str]:
        touched = self._remove_node_entries(node_id)
        for name in touched:
            self._drop_if_empty(name)
        return touched


class MemoryHub:
    """The channels of one in-process cluster: channel -> {bus: handler}, and the counters."""

    def __init__(self) -> None:
        self.subscribers: dict[str, dict[MemoryBus, MessageHandler]] = {}
        self.seq: dict[str, int] = {}


class MemoryBus:
    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub

    async def publish(self, message: ClusterMessage) -> int:
        channel = f"node:{message.target}" if message.target else f"room:{message.room}"
        subscribers = self.hub.subscribers.get(channel)
        seq = self.hub.seq.get(channel, 0) + 1
        if not subscribers:  # nobody to number it for: keep no counter (rooms come and go)
            return seq
        self.hub.seq[channel] = seq
        numbered = message.with_seq(seq)
        loop = asyncio.get_running_loop()
        for handler in subscribers.values():
            # call_soon runs callbacks first in, first out: delivery keeps the publish order
            loop.call_soon(_deliver, handler, numbered)
        return seq

    def _subscribe(self, channel: str, handler: MessageHandler) -> None:
        self.hub.subscribers.setdefault(channel, {})[self] = handler

    async def subscribe_room(self, room: str, handler: MessageHandler) -> None:
        self._subscribe(f"room:{room}", handler)

    async def unsubscribe_room(self, room: str) -> None:
        self._unsubscribe(f"room:{room}")

    def _unsubscribe(self, channel: str) -> None:
        subscribers = self.hub.subscribers.get(channel, {})
        subscribers.pop(self, None)
        if not subscribers:  # numbering restarts, which receivers take as a restart
            self.hub.subscribers.pop(channel, None)
            self.hub.seq.pop(channel, None)

    async def subscribe_node(self, node_id: str, handler: MessageHandler) -> None:
        self._subscribe(f"node:{node_id}", handler)

    def unsubscribe_all(self) -> None:
        for channel in list(self.hub.subscribers):
            self._unsubscribe(channel)


def _deliver(handler: MessageHandler, message: ClusterMessage) -> None:
    try:
        handler(message)
    except Exception:  # one bad handler must not stop delivery to the others
        logger.exception("cluster message handler failed on %s", message.kind)


class MemoryCluster:
    """A single node's cluster state, in this process. `sibling()` gives another client of
    the same state (as a second Redis client would be), for tests of concurrent callers."""

    def __init__(self, node_ttl_s: float = 5.0) -> None:
        self.registry = MemoryRegistry(node_ttl_s)
        self.directory = MemoryDirectory()
        self.hub = MemoryHub()
        self.bus = MemoryBus(self.hub)

    def sibling(self) -> MemoryCluster:
        other = MemoryCluster.__new__(MemoryCluster)
        other.registry, other.directory, other.hub = self.registry, self.directory, self.hub
        other.bus = MemoryBus(self.hub)
        return other

    @property
    def available(self) -> bool:
        return True

    @property
    def description(self) -> str:
        return "in-process (single node)"

    def on_recovered(self, callback: Callable[[], None]) -> None:
        """Never called: in-process state does not go away."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.bus.unsubscribe_all()
