"""Node registry in Redis: a sorted set of heartbeat times plus one expiring record per node.

Liveness is decided by the sorted set's scores against the Redis server's clock; the record's
TTL only cleans up after a node that died. Expired ids stay in the set until some node has
pruned the dead node's directory entries and calls forget().
"""

from __future__ import annotations

import dataclasses
import logging

from . import redis_scripts as lua
from .records import NodeInfo, RecordError
from .redis_keys import RedisKeys
from .redis_link import RedisLink

logger = logging.getLogger(__name__)


class RedisRegistry:
    def __init__(self, link: RedisLink, keys: RedisKeys, node_ttl_s: float) -> None:
        self.link = link
        self.keys = keys
        self.ttl_ms = max(1, round(node_ttl_s * 1000))
        client = link.client
        self._heartbeat = client.register_script(lua.HEARTBEAT)
        self._live = client.register_script(lua.LIVE_NODES)
        self._expired = client.register_script(lua.EXPIRED_NODES)
        self._forget = client.register_script(lua.FORGET_NODE)

    async def heartbeat(self, node: NodeInfo) -> bool:
        record = dataclasses.replace(node, heartbeat_at=0.0).dumps()
        # the node's record expires with node_ttl_s, so "it existed" is "it was live"
        was_live = await self.link.run(
            "heartbeat",
            self._heartbeat(
                keys=[self.keys.nodes, self.keys.node(node.node_id)],
                args=[node.node_id, record, self.ttl_ms],
            ),
        )
        return bool(was_live)

    async def deregister(self, node_id: str) -> None:
        async def both() -> None:
            async with self.link.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.nodes, node_id)
                pipe.delete(self.keys.node(node_id))
                await pipe.execute()

        await self.link.run("deregister", both())

    async def live_nodes(self) -> list[NodeInfo]:
        flat = await self.link.run(
            "list nodes",
            self._live(keys=[self.keys.nodes], args=[self.ttl_ms, self.keys.node("")]),
        )
        nodes = []
        for i in range(0, len(flat), 3):
            node_id, score, record = flat[i : i + 3]
            try:
                info = NodeInfo.loads(record)
            except RecordError as exc:  # a node of another version: list the others
                logger.warning("cluster: unreadable record of node %s: %s", node_id, exc)
                continue
            nodes.append(dataclasses.replace(info, heartbeat_at=float(score) / 1000))
        return sorted(nodes, key=lambda n: (n.region, n.node_id))

    async def get_node(self, node_id: str) -> NodeInfo | None:
        for node in await self.live_nodes():
            if node.node_id == node_id:
                return node
        return None

    async def expired_nodes(self) -> list[str]:
        ids = await self.link.run(
            "list expired nodes", self._expired(keys=[self.keys.nodes], args=[self.ttl_ms])
        )
        return sorted(ids)

    async def forget(self, node_id: str) -> None:
        await self.link.run(
            "forget node",
            self._forget(
                keys=[self.keys.nodes, self.keys.node(node_id)], args=[node_id, self.ttl_ms]
            ),
        )
