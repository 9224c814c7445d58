"""Failures, the node's side: where its clients should go if it dies, and the drain on SIGTERM.

* `FallbackNodes` keeps the other live nodes' URLs, read from the registry once per heartbeat
  interval, so a join (whose answer lists them as `fallbacks`) never waits for Redis. Nodes of
  this node's region come first, the least loaded first; draining nodes are left out. When
  Redis is away the last list is kept: a stale hint is still worth a try for a client whose
  node died.
* `drain()`: the node stops taking joins (they get 503 / `draining`), its registry record says
  `draining` (so no node routes clients to it), every client with a signalling socket gets a
  `move` event with the fallback URLs, and the node waits up to `[server] drain_timeout_s` for
  them to leave. Then the caller shuts the node down (`python -m sfu serve` does on SIGTERM).
  WHIP/WHEP sessions have no event channel: they are closed with the node, and their clients
  (OBS, players) reconnect on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .errors import ClusterError
from .records import NodeInfo
from .tasks import stop_task

if TYPE_CHECKING:
    from ..node import SfuNode
    from .membership import ClusterMembership

logger = logging.getLogger(__name__)

MAX_FALLBACKS = 4  # URLs in a join answer or a `move` event


def order_fallbacks(nodes: list[NodeInfo], own_id: str, region: str) -> list[str]:
    """The URLs clients should fall back to: other live, not draining nodes; own region first,
    then by participants, then by CPU (most room first)."""
    candidates = [n for n in nodes if n.node_id != own_id and not n.draining and n.public_url]
    candidates.sort(
        key=lambda n: (n.region != region, n.load.participants, n.load.cpu_pct, n.node_id)
    )
    urls: list[str] = []
    for node in candidates:
        if node.public_url not in urls:
            urls.append(node.public_url)
    return urls[:MAX_FALLBACKS]


class FallbackNodes:
    """Other nodes' URLs for the join answer and the `move` event, refreshed in the background."""

    def __init__(self, membership: ClusterMembership) -> None:
        self.membership = membership
        self._urls: list[str] = []
        self._task: asyncio.Task | None = None
        self.refreshed_at = 0.0  # monotonic time of the last successful read

    def urls(self) -> list[str]:
        return list(self._urls)

    async def refresh(self) -> list[str]:
        """Read the registry now (raises ClusterError when it cannot be read)."""
        membership = self.membership
        nodes = await membership.backend.registry.live_nodes()
        self._urls = order_fallbacks(nodes, membership.node_id, membership.config.server.region)
        self.refreshed_at = time.monotonic()
        return self.urls()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="cluster-fallbacks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)  # (a plain cancel can be lost in a Redis call: tasks.py)

    async def _loop(self) -> None:
        interval = self.membership.settings.heartbeat_s
        while True:
            with contextlib.suppress(ClusterError):  # outages are logged once by the link
                await self.refresh()
            await asyncio.sleep(interval)


def websocket_participants(node: SfuNode) -> list:
    """Participants with a signalling socket (those a `move` event reaches)."""
    return [
        p
        for room in node.rooms.rooms.values()
        for p in room.participants.values()
        if p.kind.value == "websocket" and not p.closed
    ]


async def drain(node: SfuNode, timeout_s: float) -> bool:
    """Stop taking joins, tell the clients to move, wait (at most `timeout_s`) until they have
    left. True if every client told to move has left in time."""
    if node.draining:
        logger.info("node %s: already draining", node.node_id)
    node.draining = True
    started = time.monotonic()
    settings = node.config.cluster
    try:  # both bounded: a Redis that is away must not hold the drain up
        await asyncio.wait_for(node.cluster.mark_draining(), 2 * settings.redis_timeout_s)
        await asyncio.wait_for(node.fallbacks.refresh(), settings.redis_timeout_s)
    except (ClusterError, TimeoutError) as exc:
        logger.warning("node %s: draining without the registry: %s", node.node_id, exc)
    fallbacks = node.fallbacks.urls()
    clients = websocket_participants(node)
    move = {
        "type": "move",
        "reason": "draining",
        "fallbacks": fallbacks,
        "within_s": timeout_s,
    }
    for participant in clients:
        participant.send_event(dict(move))
    logger.info(
        "node %s draining: %d client(s) told to move to %s; waiting up to %g s",
        node.node_id,
        len(clients),
        ", ".join(fallbacks) or "(no other node known)",
        timeout_s,
    )
    await _wait_until_left(node, started + timeout_s)
    left = websocket_participants(node)
    if left:
        logger.warning(
            "node %s: %d client(s) still connected after %g s; closing them",
            node.node_id,
            len(left),
            timeout_s,
        )
    else:
        logger.info("node %s drained in %.1f s", node.node_id, time.monotonic() - started)
    return not left


async def _wait_until_left(node: SfuNode, deadline: float) -> None:
    """Until no client with a socket is left, or the deadline (woken by each leave)."""
    changed = asyncio.Event()

    def on_room_change(event: str, room: object, participant: object) -> None:
        changed.set()

    node.rooms.listeners.append(on_room_change)
    try:
        while websocket_participants(node):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
    finally:
        node.rooms.listeners.remove(on_room_change)
