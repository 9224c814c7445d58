"""The records the cluster shares: nodes and their load, rooms, participants, tracks, messages.

Plain dataclasses with a JSON form, so the in-process and the Redis implementations store the
same thing and a record read back from Redis compares equal to the one written.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Self


class RecordError(ValueError):
    """A stored or received record that cannot be decoded (another version, or garbage)."""


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_origin(hints[f.name]) or hints[f.name] for f in dataclasses.fields(cls)
    }


def _fits(expected: Any, value: Any) -> bool:
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _from_json(cls: type, data: Any) -> Any:
    """Build a dataclass from a dict, refusing missing, unknown or mistyped fields: records
    come from other processes over the network."""
    if not isinstance(data, dict):
        raise RecordError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    types = _field_types(cls)
    unknown = set(data) - set(types)
    if unknown:
        raise RecordError(
            f"{cls.__name__}: unknown field(s) {', '.join(sorted(map(str, unknown)))}"
        )
    for name, value in data.items():
        if not _fits(types[name], value):
            raise RecordError(f"{cls.__name__}.{name}: {type(value).__name__} is not {types[name]}")
    try:
        return cls(**data)
    except TypeError as exc:  # a missing field
        raise RecordError(f"{cls.__name__}: {exc}") from exc


class _Record:
    """JSON round trip shared by every record."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, data: Any) -> Self:
        return _from_json(cls, data)

    @classmethod
    def loads(cls, text: str | bytes) -> Self:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"{cls.__name__}: not JSON ({exc})") from exc
        return cls.from_json(data)


@dataclass(frozen=True)
class NodeLoad(_Record):
    """What a node is carrying, measured over its last heartbeat interval."""

    cpu_pct: float = 0.0  # percent of one core used by the node's process
    rooms: int = 0
    participants: int = 0
    tracks: int = 0  # published tracks (producers)
    bitrate_bps: int = 0  # media in plus media out


@dataclass(frozen=True)
class NodeInfo(_Record):
    """One live node as the registry holds it."""

    node_id: str
    region: str
    public_url: str
    started_at: float = 0.0  # wall clock, seconds
    load: NodeLoad = field(default_factory=NodeLoad)
    # Time of the last heartbeat, set by the registry (Redis: the server's clock, so nodes'
    # clocks need not agree); 0 in a record a node sends.
    heartbeat_at: float = 0.0
    # Shutting down (SIGTERM): takes no joins, its clients are moving; route none to it.
    draining: bool = False
    # Where other nodes send node-to-node requests (relays); "": public_url.
    internal_url: str = ""

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        if not data["internal_url"]:  # (left out: nodes without the field read the record)
            del data["internal_url"]
        return data

    @classmethod
    def from_json(cls, data: Any) -> NodeInfo:
        if isinstance(data, dict) and isinstance(data.get("load"), dict):
            data = {**data, "load": NodeLoad.from_json(data["load"])}
        return _from_json(cls, data)


@dataclass(frozen=True)
class RoomRecord(_Record):
    """A room of the cluster: created once (atomically), on whichever node came first."""

    name: str
    created_at: float
    created_by: str  # node id
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParticipantRecord(_Record):
    """Who is in a room, and on which node."""

    room: str
    identity: str
    sid: str  # this connection's id: a rejoin with the same identity has another one
    node_id: str
    kind: str = "websocket"  # websocket, whip, whep
    name: str = ""
    joined_at: float = 0.0

    def is_later_connection_than(self, other: ParticipantRecord) -> bool:
        """Which of two connections of one identity stays: the one that joined later; ties go
        to the larger sid. Every node and the directory scripts order them the same way, so
        writes that reach the directory out of order still leave the newest connection."""
        return (self.joined_at, self.sid) > (other.joined_at, other.sid)


@dataclass(frozen=True)
class TrackRecord(_Record):
    """A track published in a room, and the node its publisher is connected to."""

    room: str
    track_id: str
    publisher: str  # participant identity
    node_id: str
    kind: str  # audio or video
    source: str = ""
    simulcast: bool = False
    # what an edge node needs to stand in for the track before its media arrives (relays)
    name: str = ""
    codec: str = ""  # mime type, e.g. video/VP8
    layers: int = 1  # simulcast layers (encodings), lowest first
    rids: list[str] = field(default_factory=list)  # their rids, when the publisher named them


class MessageKind(enum.StrEnum):
    """What nodes tell each other."""

    PARTICIPANT_JOINED = "participant_joined"
    PARTICIPANT_LEFT = "participant_left"
    TRACK_PUBLISHED = "track_published"
    TRACK_UNPUBLISHED = "track_unpublished"
    ROOM_METADATA = "room_metadata"
    DATA = "data"  # chat, pinned product, captions
    QUALITY_REQUEST = "quality_request"  # a subscribing node asks for layers of a track
    KEYFRAME_REQUEST = "keyframe_request"  # a subscribing node asks the publisher's node


@dataclass(frozen=True)
class ClusterMessage(_Record):
    """One message between nodes: to every node with participants in `room`, or, with
    `target`, to that one node. `seq` is set by the bus: 1, 2, 3... per channel, so a
    receiver sees the order and notices a gap."""

    kind: MessageKind
    origin: str  # the sending node's id
    room: str = ""
    target: str = ""  # a node id: a message for that node alone
    body: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    @classmethod
    def from_json(cls, data: Any) -> ClusterMessage:
        if isinstance(data, dict) and "kind" in data:
            try:
                data = {**data, "kind": MessageKind(data["kind"])}
            except ValueError as exc:
                raise RecordError(f"ClusterMessage: unknown kind {data['kind']!r}") from exc
        return _from_json(cls, data)

    def with_seq(self, seq: int) -> ClusterMessage:
        return dataclasses.replace(self, seq=seq)


@dataclass(frozen=True)
class ParticipantLeft:
    """A directory change: the connection `sid` of `identity` left `room`."""

    room: str
    identity: str
    sid: str


@dataclass(frozen=True)
class TrackRemoved:
    """A directory change: a track is no longer published."""

    room: str
    track_id: str


# What RoomDirectory.apply takes: a record adds (or replaces) an entry.
DirectoryChange = ParticipantRecord | ParticipantLeft | TrackRecord | TrackRemoved


@dataclass(frozen=True)
class NodeSnapshot:
    """Everything one node holds, for re-synchronising the directory after Redis was away."""

    node_id: str
    participants: list[ParticipantRecord] = field(default_factory=list)
    tracks: list[TrackRecord] = field(default_factory=list)

    def rooms(self) -> set[str]:
        return {p.room for p in self.participants} | {t.room for t in self.tracks}
