"""A rejoin on another node replaces the participant on the first (one participant per
identity across the cluster, when the client moved while its old node is still alive)."""

from __future__ import annotations

import asyncio

import pytest

from sfu.client import RoomClient
from tests.conftest import LOOPBACK, start_node

from .conftest import unique_prefix
from .test_nodes import cluster_config, eventually

pytestmark = pytest.mark.redis


async def test_rejoin_on_another_node_replaces_the_old_connection(redis_server):
    prefix = unique_prefix()
    a = await start_node(cluster_config(redis_server.url, prefix, "r", "node-a"))
    b = await start_node(cluster_config(redis_server.url, prefix, "r", "node-b"))
    clients: list[RoomClient] = []
    try:
        bob = await RoomClient.connect(a.url, a.token("bob"), network=LOOPBACK)
        old = await RoomClient.connect(a.url, a.token("ann"), network=LOOPBACK)
        clients += [bob, old]

        async def a_follows_the_room():
            return "shop" in a.node.cluster.following

        await eventually(a_follows_the_room)
        new = await RoomClient.connect(b.url, b.token("ann"), network=LOOPBACK)
        clients.append(new)
        assert await old.wait_for("error", lambda m: m["code"] == "replaced", timeout=10)
        await asyncio.wait_for(old.wait_closed(), 5)
        left = await bob.wait_for("participant_left", lambda m: m["identity"] == "ann")
        assert left
        assert set(a.node.rooms.rooms["shop"].participants) == {"bob"}
        assert set(b.node.rooms.rooms["shop"].participants) == {"ann"}

        async def one_ann_in_the_directory():
            records = await a.node.cluster.backend.directory.participants("shop")
            return [(p.identity, p.node_id) for p in records] == [
                ("ann", "node-b"),
                ("bob", "node-a"),
            ]

        await eventually(one_ann_in_the_directory)
    finally:
        for client in clients:
            await client.close()
        await a.runner.cleanup()
        await b.runner.cleanup()
