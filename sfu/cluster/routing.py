"""Which node serves a join, and where a client goes when that node fails.

The join answer names the node that serves the client: normally the one it asked. A node
that is full (`[cluster] max_participants`) or draining sends a new join to another live node
of its own region, the least loaded one; the answer then carries `code: "redirect"` and that
node, and the client joins there with the same token (every node shares the API keys). Each
answer also lists fallback nodes: the other live nodes, those of the same region first, least
loaded first, for the client to try when its node goes away.

Everything comes from the registry as of the node's last heartbeat (`membership.nodes`):
routing a join never waits for Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config
    from .membership import ClusterMembership
    from .records import NodeInfo


def node_ref(node: NodeInfo) -> dict[str, Any]:
    """A node as a client sees it in a join answer."""
    return {"node_id": node.node_id, "region": node.region, "url": node.public_url}


@dataclass(frozen=True)
class Route:
    """Where a join goes: `node` serves it; `redirect` when that is not this node."""

    node: dict[str, Any]
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    redirect: bool = False


class JoinRouter:
    def __init__(
        self,
        config: Config,
        membership: ClusterMembership,
        participants: Callable[[], int],
        draining: Callable[[], bool],
    ) -> None:
        self.config = config
        self.membership = membership
        self._participants = participants
        self._draining = draining
        self.redirected = 0

    def full(self) -> bool:
        cap = self.config.cluster.max_participants
        return bool(cap) and self._participants() >= cap

    def route(self) -> Route:
        me = self.membership.info()
        region = me.region
        others = [n for n in self.membership.nodes if n.node_id != me.node_id]
        # same region first, then the others; least loaded first within each
        others.sort(key=lambda n: (n.region != region, n.load.participants, n.node_id))
        count = self.config.cluster.fallback_nodes
        if self.full() or self._draining():
            target = next((n for n in others if n.region == region), None)
            if target is not None:
                self.redirected += 1
                rest = [node_ref(n) for n in others if n is not target]
                return Route(node_ref(target), rest[:count], redirect=True)
        return Route(node_ref(me), [node_ref(n) for n in others[:count]])
