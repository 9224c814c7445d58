"""Cluster state: which nodes are live, which rooms live where, messages between nodes.

`create_backend(settings)` gives the in-process implementation when `[cluster] redis_url` is
empty (one node, today's behaviour) and the Redis one otherwise; both keep the contract of
`interface.ClusterBackend`. `membership.ClusterMembership` ties a node to it (register,
heartbeat, directory entries, catching up after an outage). See docs/cluster.md.
"""

from __future__ import annotations

from ..config import ClusterSettings
from .errors import ClusterError, ClusterUnavailable, RoomNotFound
from .interface import ClusterBackend, MessageBus, NodeRegistry, RoomDirectory
from .memory import MemoryCluster
from .records import (
    ClusterMessage,
    MessageKind,
    NodeInfo,
    NodeLoad,
    NodeSnapshot,
    ParticipantRecord,
    RoomRecord,
    TrackRecord,
)


def create_backend(settings: ClusterSettings) -> ClusterBackend:
    if not settings.redis_url:
        return MemoryCluster(settings.node_ttl_s)
    from .redis_cluster import RedisCluster

    return RedisCluster(
        settings.redis_url,
        node_ttl_s=settings.node_ttl_s,
        key_prefix=settings.key_prefix,
        timeout_s=settings.redis_timeout_s,
    )


__all__ = [
    "ClusterBackend",
    "ClusterError",
    "ClusterMessage",
    "ClusterUnavailable",
    "MemoryCluster",
    "MessageBus",
    "MessageKind",
    "NodeInfo",
    "NodeLoad",
    "NodeRegistry",
    "NodeSnapshot",
    "ParticipantRecord",
    "RoomDirectory",
    "RoomNotFound",
    "RoomRecord",
    "TrackRecord",
    "create_backend",
]
