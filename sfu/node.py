"""SfuNode: everything one server instance owns (settings, rooms, HTTP media sessions).

One node per `create_app()`; nothing lives at module level, so several nodes can run in one
process (tests do) and a shop's own aiohttp service can mount one beside its routes.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
import uuid

from .auth import AccessToken, AuthError, verify_token
from .cluster import create_backend
from .cluster.drain import FallbackNodes, drain
from .cluster.membership import ClusterMembership
from .cluster.relay_edge import RelayEdge
from .cluster.relay_origin import RelayOrigin
from .cluster.remote_rooms import RemoteRooms
from .cluster.routing import JoinRouter
from .cluster.takeover import replace_on_rejoin_elsewhere
from .config import Config
from .media.peer import NetworkSettings
from .room import RoomRegistry
from .rooms.joins import JoinService
from .rooms.participant import Participant
from .rooms.timeline import JoinLog

logger = logging.getLogger(__name__)


class SfuNode:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = config.server.node_id or f"{config.server.region}-{uuid.uuid4().hex[:6]}"
        self.rooms = RoomRegistry(config.limits)
        media = config.media
        self.network = NetworkSettings(
            addresses=tuple(media.bind_addresses),
            port_min=media.udp_port_min,
            port_max=media.udp_port_max,
            udp_port=media.udp_port,
            announced_ip=media.announced_ip,
        )
        # WHIP/WHEP resources: resource id -> participant
        self.http_sessions: dict[str, Participant] = {}
        self.started_at = time.time()
        self.closing = False
        self.websockets: set = set()
        self.joins = JoinLog()  # join-time metrics of the recent joins
        # registry, room directory, messages between nodes (in-process without Redis)
        self.cluster = ClusterMembership(
            self.node_id, config, self.rooms, create_backend(config.cluster)
        )
        # other nodes' URLs for the clients' fallback (join answer, `move`); the SIGTERM drain
        self.fallbacks = FallbackNodes(self.cluster)
        self.cluster.listeners.append(replace_on_rejoin_elsewhere(self.rooms))
        self.draining = False
        # relays: tracks published here sent to other nodes, and theirs received here
        self.relay_origin = RelayOrigin(self.rooms, self.network, config.rtc.rtcp_interval_s)
        self.relay_edge = RelayEdge(
            self.node_id, config, self.rooms, self.network, self.cluster.backend.registry
        )
        self.remote_rooms = RemoteRooms(
            self.node_id, config, self.rooms, self.cluster, self.relay_edge
        )
        self.router = JoinRouter(
            config,
            self.cluster,
            participants=lambda: sum(len(r.participants) for r in self.rooms.rooms.values()),
            fallbacks=lambda: self.fallbacks.urls(),
        )
        # the one join / publish / subscribe path every surface (sfu/api/) goes through
        self.join_service = JoinService(self)

    def authenticate(self, token: str | None) -> AccessToken:
        return verify_token(self.config.auth, token)

    @staticmethod
    def new_resource_id() -> str:
        return secrets.token_urlsafe(16)

    def ice_servers(self) -> list[dict]:
        return list(self.config.media.ice_servers)

    def stats(self) -> dict:
        now = time.monotonic()
        rooms = []
        for room in self.rooms.rooms.values():
            participants = []
            for p in room.participants.values():
                entry = p.info()
                if p.subscriber is not None:
                    entry["downtracks"] = p.subscriber.stats()
                    entry["bandwidth"] = p.subscriber.bandwidth.snapshot()
                    entry["subscriber_state"] = p.subscriber.peer.connection_state
                if p.join_timeline is not None:
                    entry["join"] = p.join_timeline.to_json()
                if p.publisher is not None:
                    entry["publisher_state"] = p.publisher.peer.connection_state
                    entry["producers"] = [
                        {
                            "id": prod.id,
                            "kind": prod.kind,
                            "ssrc": prod.ssrc,
                            "packets": prod.packets,
                            "subscribers": len(prod.forwarders),
                            "keyframe_requests": prod.keyframe_requests,
                            "lost": prod.stats.packets_lost if prod.stats else 0,
                            "nacks_sent": prod.nack.nacks_sent if prod.nack else 0,
                            "simulcast": prod.simulcast,
                            "layers": prod.layers_json(now),
                            "red": prod.red is not None,
                            "red_packets": prod.red.red_packets if prod.red else 0,
                            "red_recovered": prod.red.recovered if prod.red else 0,
                        }
                        for prod in p.published()
                    ]
                participants.append(entry)
            rooms.append({"name": room.name, "participants": participants})
        return {
            "node_id": self.node_id,
            "region": self.config.server.region,
            "uptime_s": round(time.time() - self.started_at, 1),
            "rooms": rooms,
            "joins": self.joins.summary(),
            "dropped": dataclasses.asdict(self.network.drops),
            "cluster": {
                **self.cluster.status(),
                "draining": self.draining,
                "fallbacks": self.fallbacks.urls(),
            },
            "relays": {"out": self.relay_origin.stats(), **self.remote_rooms.status()},
        }

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse joins, tell clients to move to other nodes, wait for them (bounded; default
        `[server] drain_timeout_s`). Call close() (or shut the app down) afterwards."""
        if timeout_s is None:
            timeout_s = self.config.server.drain_timeout_s
        return await drain(self, timeout_s)

    async def close(self) -> None:
        """Graceful shutdown: tell clients, then close every peer connection."""
        self.closing = True
        for ws in list(self.websockets):
            try:
                await ws.close(code=1001, message=b"server shutting down")
            except Exception:
                pass
        await self.rooms.close()
        await self.relay_edge.close()
        await self.relay_origin.close_all()
        self.http_sessions.clear()
        await self.fallbacks.stop()
        await self.cluster.stop()
        self.network.sockets.close()
        logger.info("node %s closed", self.node_id)


__all__ = ["SfuNode", "AuthError"]
