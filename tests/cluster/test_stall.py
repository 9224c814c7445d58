"""A node whose loop stalled past node_ttl_s is taken for gone and its directory entries are
swept by another node; when its heartbeats resume it writes them again (seen in CI under load:
the sweep left a live node's participants and tracks out of the directory for good)."""

from __future__ import annotations

import logging

import pytest

from sfu.client import RoomClient
from sfu.cluster.redis_cluster import RedisCluster
from tests.conftest import LOOPBACK, start_node
from tests.media_sources import ColorVideoTrack

from .conftest import unique_prefix
from .test_nodes import ROOM, cluster_config, eventually


@pytest.mark.redis
async def test_a_node_taken_for_gone_writes_its_entries_again(redis_server, caplog):
    prefix = unique_prefix()
    observer = RedisCluster(redis_server.url, node_ttl_s=1.0, key_prefix=prefix)
    await observer.start()
    a = await start_node(cluster_config(redis_server.url, prefix, "sa-east", "sa-1"))
    host = None
    try:
        host = await RoomClient.connect(a.url, a.token("host"), network=LOOPBACK)
        await host.publish([ColorVideoTrack((220, 40, 40))], sources=["camera"])
        directory = observer.directory

        async def entries() -> list[tuple[str, str]]:
            parts = await directory.participants(ROOM)
            tracks = await directory.tracks(ROOM)
            return [(p.identity, p.node_id) for p in parts] + [
                (t.publisher, t.node_id) for t in tracks
            ]

        async def listed() -> bool:
            return await entries() == [("host", "sa-1"), ("host", "sa-1")]

        await eventually(listed)
        # what another node's sweep does to a node whose record expired during a stall
        caplog.set_level(logging.WARNING, logger="sfu.cluster.membership")
        await observer.registry.deregister("sa-1")
        await observer.directory.prune_node("sa-1")
        assert await entries() == []
        await eventually(listed)  # the next heartbeat finds itself gone and writes them again
        assert any("taken for gone" in r.getMessage() for r in caplog.records)
        assert [n.node_id for n in await observer.registry.live_nodes()] == ["sa-1"]
    finally:
        if host is not None:
            await host.leave()
        await a.runner.cleanup()
        await observer.close()
