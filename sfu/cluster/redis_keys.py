"""Names of every Redis key and channel the cluster uses, in one place (see docs/cluster.md).

The variable part (a node id, a room name) always comes last, so no room or node name can make
one key look like another ("a" and "a:tracks" stay distinct).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "sfu"

    @property
    def nodes(self) -> str:
        """Sorted set: node id -> time of its last heartbeat (server clock, ms)."""
        return f"{self.prefix}:nodes"

    def node(self, node_id: str) -> str:
        """String: the node's NodeInfo as JSON, expiring node_ttl_s after its last heartbeat."""
        return f"{self.prefix}:node:{node_id}"

    def node_rooms(self, node_id: str) -> str:
        """Hash: room -> number of the node's directory entries in it (what to prune)."""
        return f"{self.prefix}:node-rooms:{node_id}"

    @property
    def rooms(self) -> str:
        """Set: every room name in the directory."""
        return f"{self.prefix}:rooms"

    def room(self, name: str) -> str:
        """Hash: created_at, created_by, metadata (JSON)."""
        return f"{self.prefix}:room:{name}"

    def participants(self, room: str) -> str:
        """Hash: identity -> ParticipantRecord JSON."""
        return f"{self.prefix}:room-participants:{room}"

    def tracks(self, room: str) -> str:
        """Hash: track id -> TrackRecord JSON."""
        return f"{self.prefix}:room-tracks:{room}"

    def room_channel(self, room: str) -> str:
        """Pub/sub channel of one room's messages."""
        return f"{self.prefix}:room-events:{room}"

    def node_channel(self, node_id: str) -> str:
        """Pub/sub channel of messages for one node."""
        return f"{self.prefix}:node-inbox:{node_id}"

    def seq(self, channel: str) -> str:
        """Counter: the last sequence number given on `channel`."""
        return f"{self.prefix}:seq:{channel}"
