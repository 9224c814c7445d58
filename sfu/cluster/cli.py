"""`python -m sfu nodes --config FILE`: the live nodes of the cluster with their load, read
from the registry in Redis (a node alone keeps its registry in its own process: nothing to
read from outside)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from ..config import Config
from .errors import ClusterError
from .records import NodeInfo


def _table(nodes: list[NodeInfo], now: float) -> str:
    header = (
        *("NODE", "REGION", "URL", "CPU%", "ROOMS", "PARTS", "TRACKS", "MBIT/S", "SEEN", "STATE"),
    )
    rows = [header]
    for n in nodes:
        rows.append(
            (
                n.node_id,
                n.region,
                n.public_url,
                f"{n.load.cpu_pct:.1f}",
                str(n.load.rooms),
                str(n.load.participants),
                str(n.load.tracks),
                f"{n.load.bitrate_bps / 1e6:.2f}",
                f"{max(0.0, now - n.heartbeat_at):.1f}s ago",
                "draining" if n.draining else "live",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def _fetch(config: Config) -> list[NodeInfo]:
    from .redis_cluster import RedisCluster

    settings = config.cluster
    cluster = RedisCluster(
        settings.redis_url,
        node_ttl_s=settings.node_ttl_s,
        key_prefix=settings.key_prefix,
        timeout_s=settings.redis_timeout_s,
    )
    try:
        return await cluster.registry.live_nodes()
    finally:
        await cluster.link.close()


def list_nodes(config: Config, as_json: bool = False) -> int:
    if not config.cluster.redis_url:
        print(
            "cluster.redis_url is empty: this node runs alone and keeps no shared registry "
            "(its own load is in /api/stats)",
            file=sys.stderr,
        )
        return 1
    # the error is printed below; the serving node's "rooms keep working" log is not for here
    logging.getLogger("sfu.cluster.redis_link").setLevel(logging.CRITICAL)
    try:
        nodes = asyncio.run(_fetch(config))
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps([n.to_json() for n in nodes], indent=2))
    elif nodes:
        print(_table(nodes, time.time()))
    else:
        print("no live nodes", file=sys.stderr)
    return 0
