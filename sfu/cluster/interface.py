"""The cluster's one interface: node registry, room directory and message bus.

Two implementations keep the same contract (tests/cluster/test_contract.py runs the same
tests against both): `memory` (one node, no Redis; the default) and `redis_*` (several nodes
sharing one Redis). Every method may raise ClusterUnavailable when the shared state cannot be
reached; the in-process implementation never does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .records import (
    ClusterMessage,
    DirectoryChange,
    NodeInfo,
    NodeSnapshot,
    ParticipantRecord,
    RoomRecord,
    TrackRecord,
)

MessageHandler = Callable[[ClusterMessage], None]


class NodeRegistry(Protocol):
    """Live nodes: a node is live while its last heartbeat is younger than node_ttl_s."""

    async def heartbeat(self, node: NodeInfo) -> bool:
        """Register the node, or refresh its record and load; the registry stamps the time.
        True when the node was live before this heartbeat; False when it registers afresh
        (first start, or after others took it for gone and may have pruned its entries)."""

    async def deregister(self, node_id: str) -> None:
        """Remove the node at once (clean shutdown), without waiting for the TTL."""

    async def live_nodes(self) -> list[NodeInfo]:
        """Every live node, sorted by region, then node id."""

    async def get_node(self, node_id: str) -> NodeInfo | None:
        """The node's record if it is live, else None."""

    async def expired_nodes(self) -> list[str]:
        """Nodes known to have been live whose heartbeat is now too old (they died
        without deregistering); their directory entries are still to be pruned."""

    async def forget(self, node_id: str) -> None:
        """Drop an expired node from the registry's memory once it has been pruned."""


class RoomDirectory(Protocol):
    """Rooms of the whole cluster: who is where, what is published where."""

    async def create_room(
        self, name: str, node_id: str, metadata: dict[str, Any] | None = None
    ) -> tuple[RoomRecord, bool]:
        """The room's record, created by this call (True) or found (False). Atomic: of
        concurrent callers exactly one creates it and all get the same record."""

    async def get_room(self, name: str) -> RoomRecord | None: ...

    async def set_room_metadata(self, name: str, metadata: dict[str, Any]) -> RoomRecord:
        """Replace the room's metadata; RoomNotFound if there is no such room."""

    async def list_rooms(self) -> list[str]:
        """Names of every room in the cluster, sorted."""

    async def add_participant(self, record: ParticipantRecord) -> RoomRecord:
        """Put the participant in its room (created atomically if needed), replacing any
        earlier record for the same identity."""

    async def remove_participant(self, room: str, identity: str, sid: str) -> bool:
        """Remove the record if it is still this connection's (same sid). A room with no
        participants and no tracks left is deleted. True if a record was removed."""

    async def add_track(self, record: TrackRecord) -> None: ...

    async def remove_track(self, room: str, track_id: str) -> bool: ...

    async def apply(self, changes: Sequence[DirectoryChange]) -> None:
        """Several changes in their order, as the single calls would make them (add or
        remove a participant or a track), in one round trip."""

    async def participants(self, room: str) -> list[ParticipantRecord]:
        """Sorted by identity."""

    async def tracks(self, room: str) -> list[TrackRecord]:
        """Sorted by track id."""

    async def sync_node(self, snapshot: NodeSnapshot) -> None:
        """Make the directory hold exactly the snapshot's entries for its node (after an
        outage): stale entries removed, missing ones added, in one atomic step."""

    async def prune_node(self, node_id: str) -> list[str]:
        """Remove every entry of a node (it left or died); returns the rooms touched."""


class MessageBus(Protocol):
    """Messages between nodes, in order per room (and per target node)."""

    async def publish(self, message: ClusterMessage) -> int:
        """Send to the room's channel, or to `message.target`'s; returns the seq given."""

    async def subscribe_room(self, room: str, handler: MessageHandler) -> None:
        """Deliver the room's messages (this node's own included) to `handler`, in order,
        on the event loop. One handler per room; subscribing again replaces it."""

    async def unsubscribe_room(self, room: str) -> None: ...

    async def subscribe_node(self, node_id: str, handler: MessageHandler) -> None:
        """Deliver messages whose target is `node_id`."""


class ClusterBackend(Protocol):
    """The three parts over one store, with its lifecycle."""

    registry: NodeRegistry
    directory: RoomDirectory
    bus: MessageBus

    @property
    def available(self) -> bool:
        """False while the shared state is known to be unreachable."""

    @property
    def description(self) -> str:
        """Where the state lives, for logs and the CLI (never with a password)."""

    def on_recovered(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the shared state is reachable again after a failure."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...
