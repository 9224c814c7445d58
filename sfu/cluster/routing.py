"""Which node serves a join, and where a client goes when that node fails.

The join answer names the node that serves the client (`node`): normally the one it asked.
A node that is full (`[cluster] max_participants`) sends a new join to another live node of
its own region that is not draining, the least loaded one; the answer then carries
`code: "redirect"` and that node, and the client joins there with the same token (every node
shares the API keys). A draining node refuses joins itself (`draining`, drain.py). Each answer
also lists fallback node URLs (`fallbacks`, drain.py's FallbackNodes: same region first).

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
        fallbacks: Callable[[], list[str]],
    ) -> None:
        self.config = config
        self.membership = membership
        self._participants = participants
        self._fallbacks = fallbacks
        self.redirected = 0

    def full(self) -> bool:
        cap = self.config.cluster.max_participants
        return bool(cap) and self._participants() >= cap

    def route(self) -> Route:
        me = self.membership.info()
        fallbacks = self._fallbacks()
        if self.full():
            others = [
                n
                for n in self.membership.nodes
                if n.node_id != me.node_id and n.region == me.region and not n.draining
            ]
            if others:
                target = min(others, key=lambda n: (n.load.participants, n.node_id))
                self.redirected += 1
                rest = [url for url in fallbacks if url != target.public_url]
                return Route(node_ref(target), rest, redirect=True)
        return Route(node_ref(me), fallbacks)
