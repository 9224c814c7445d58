"""Room directory in Redis: a hash per room, and per room a hash of participants and one of
tracks, each entry naming its node. Every change is one Lua script (redis_scripts.py), so room
creation is atomic and a room is deleted in the same step that removes its last entry."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from . import redis_scripts as lua
from .errors import RoomNotFound
from .records import (
    DirectoryChange,
    NodeSnapshot,
    ParticipantLeft,
    ParticipantRecord,
    RecordError,
    RoomRecord,
    TrackRecord,
    TrackRemoved,
)
from .redis_keys import RedisKeys
from .redis_link import RedisLink

logger = logging.getLogger(__name__)


def _room(name: str, fields: list[str | None]) -> RoomRecord:
    created_at, created_by, metadata = fields
    return RoomRecord(
        name=name,
        created_at=float(created_at or 0),
        created_by=created_by or "",
        metadata=json.loads(metadata) if metadata else {},
    )


class RedisDirectory:
    def __init__(self, link: RedisLink, keys: RedisKeys) -> None:
        self.link = link
        self.keys = keys
        client = link.client
        self._create = client.register_script(lua.CREATE_ROOM)
        self._set_metadata = client.register_script(lua.SET_ROOM_METADATA)
        self._add_participant = client.register_script(lua.ADD_PARTICIPANT)
        self._remove_participant = client.register_script(lua.REMOVE_PARTICIPANT)
        self._add_track = client.register_script(lua.ADD_TRACK)
        self._remove_track = client.register_script(lua.REMOVE_TRACK)
        self._prune = client.register_script(lua.PRUNE_NODE)
        self._sync = client.register_script(lua.SYNC_NODE)

    def _args(self, *args: Any) -> list[Any]:
        return [self.keys.prefix, *args]

    async def create_room(
        self, name: str, node_id: str, metadata: dict[str, Any] | None = None
    ) -> tuple[RoomRecord, bool]:
        created, fields = await self.link.run(
            "create room",
            self._create(args=self._args(name, node_id, json.dumps(metadata or {}))),
        )
        return _room(name, fields), bool(created)

    async def get_room(self, name: str) -> RoomRecord | None:
        fields = await self.link.run(
            "read room",
            self.link.client.hmget(self.keys.room(name), ["created_at", "created_by", "metadata"]),
        )
        return None if fields[0] is None else _room(name, fields)

    async def set_room_metadata(self, name: str, metadata: dict[str, Any]) -> RoomRecord:
        fields = await self.link.run(
            "set room metadata", self._set_metadata(args=self._args(name, json.dumps(metadata)))
        )
        if not fields:
            raise RoomNotFound(name)
        return _room(name, fields)

    async def list_rooms(self) -> list[str]:
        return sorted(await self.link.run("list rooms", self.link.client.smembers(self.keys.rooms)))

    async def add_participant(self, record: ParticipantRecord) -> RoomRecord:
        fields = await self.link.run(
            "add participant",
            self._add_participant(
                args=self._args(record.room, record.node_id, record.identity, record.dumps())
            ),
        )
        return _room(record.room, fields)

    async def remove_participant(self, room: str, identity: str, sid: str) -> bool:
        done = await self.link.run(
            "remove participant", self._remove_participant(args=self._args(room, identity, sid))
        )
        return bool(done)

    async def add_track(self, record: TrackRecord) -> None:
        await self.link.run(
            "add track",
            self._add_track(
                args=self._args(record.room, record.node_id, record.track_id, record.dumps())
            ),
        )

    async def remove_track(self, room: str, track_id: str) -> bool:
        done = await self.link.run(
            "remove track", self._remove_track(args=self._args(room, track_id))
        )
        return bool(done)

    async def apply(self, changes: Sequence[DirectoryChange]) -> None:
        if changes:
            await self.link.run("update directory", self._apply_pipelined(changes))

    async def _apply_pipelined(self, changes: Sequence[DirectoryChange]) -> None:
        """One pipeline: Redis runs the scripts in this order, one round trip for all."""
        async with self.link.client.pipeline(transaction=False) as pipe:
            for change in changes:
                if isinstance(change, ParticipantRecord):
                    script, args = (
                        self._add_participant,
                        (change.room, change.node_id, change.identity, change.dumps()),
                    )
                elif isinstance(change, ParticipantLeft):
                    script, args = (
                        self._remove_participant,
                        (change.room, change.identity, change.sid),
                    )
                elif isinstance(change, TrackRecord):
                    script, args = (
                        self._add_track,
                        (change.room, change.node_id, change.track_id, change.dumps()),
                    )
                else:
                    assert isinstance(change, TrackRemoved)
                    script, args = self._remove_track, (change.room, change.track_id)
                await script(args=self._args(*args), client=pipe)  # queues on the pipeline
            await pipe.execute()

    async def participants(self, room: str) -> list[ParticipantRecord]:
        raw = await self.link.run(
            "list participants", self.link.client.hvals(self.keys.participants(room))
        )
        return sorted(_decode(ParticipantRecord, raw), key=lambda p: p.identity)

    async def tracks(self, room: str) -> list[TrackRecord]:
        raw = await self.link.run("list tracks", self.link.client.hvals(self.keys.tracks(room)))
        return sorted(_decode(TrackRecord, raw), key=lambda t: t.track_id)

    async def sync_node(self, snapshot: NodeSnapshot) -> None:
        body = {
            "participants": [[p.room, p.identity, p.dumps()] for p in snapshot.participants],
            "tracks": [[t.room, t.track_id, t.dumps()] for t in snapshot.tracks],
        }
        await self.link.run(
            "sync node", self._sync(args=self._args(snapshot.node_id, json.dumps(body)))
        )

    async def prune_node(self, node_id: str) -> list[str]:
        rooms = await self.link.run("prune node", self._prune(args=self._args(node_id)))
        return sorted(rooms)


def _decode(cls: Any, raw: list[str]) -> list[Any]:
    out = []
    for text in raw:
        try:
            out.append(cls.loads(text))
        except RecordError as exc:  # another version's record: skip it, keep the others
            logger.warning("cluster: unreadable directory entry: %s", exc)
    return out
