"""Joins route to the right node: the join answer names the node serving the client and
fallback nodes (same region first); a full node sends new joins to another node of its region
and the Python client and the browser SDK follow it there."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sfu.client import RoomClient
from sfu.client.room_client import SignallingError
from tests.browser import launch_chromium
from tests.conftest import LOOPBACK, RunningNode, start_node
from tests.media_sources import ColorVideoTrack
from tests.test_http_join_browser import JOIN_JS

from .conftest import RedisServer, unique_prefix
from .test_nodes import cluster_config
from .test_relays import until

pytestmark = pytest.mark.redis


@pytest.fixture
async def three(redis_server: RedisServer) -> AsyncIterator[dict[str, RunningNode]]:
    """sa-1 (full at one participant) and sa-2 in sa-east, eu-1 in eu-west."""
    prefix = unique_prefix()
    nodes: dict[str, RunningNode] = {}
    try:
        for node_id, region in (("sa-1", "sa-east"), ("sa-2", "sa-east"), ("eu-1", "eu-west")):
            config = cluster_config(redis_server.url, prefix, region, node_id)
            config.cluster.node_ttl_s = 5.0  # no node taken as gone on a loaded machine
            if node_id == "sa-1":
                config.cluster.max_participants = 1
            nodes[node_id] = await start_node(config)
        for running in nodes.values():  # each has heard every heartbeat
            await until(lambda r=running: len(r.node.cluster.nodes) == 3, 30, "registry")
            await until(lambda r=running: len(r.node.fallbacks.urls()) == 2, 30, "fallbacks")
        yield nodes
    finally:
        for running in reversed(nodes.values()):
            await running.runner.cleanup()


async def test_join_answer_names_the_node_and_fallbacks_and_a_full_node_redirects(three):
    sa1, sa2, eu1 = three["sa-1"], three["sa-2"], three["eu-1"]
    clients: list[RoomClient] = []
    try:
        host = await RoomClient.connect(sa1.url, sa1.token("host"), network=LOOPBACK)
        clients.append(host)
        assert host.node == {"node_id": "sa-1", "region": "sa-east", "url": sa1.url}
        # same region first, then the other regions
        assert host.fallbacks == [sa2.url, eu1.url]

        # sa-1 is full: a viewer who asks it is sent to sa-2 and the client follows
        viewer = await RoomClient.connect(sa1.url, sa1.token("viewer"), network=LOOPBACK)
        clients.append(viewer)
        assert viewer.node["node_id"] == "sa-2"
        assert "viewer" in sa2.node.rooms.rooms["shop"].participants
        assert "viewer" not in sa1.node.rooms.rooms["shop"].participants
        assert viewer.fallbacks == [sa1.url, eu1.url]
        assert sa1.node.router.redirected == 1

        # without following: the refusal names the node
        with pytest.raises(SignallingError) as refused:
            await RoomClient.connect(sa1.url, sa1.token("other"), network=LOOPBACK, redirects=0)
        assert refused.value.code == "redirect"
        assert refused.value.details["node"]["node_id"] == "sa-2"

        # a node of another region is never a redirect target, only a fallback
        eu_viewer = await RoomClient.connect(eu1.url, eu1.token("eu-viewer"), network=LOOPBACK)
        clients.append(eu_viewer)
        assert eu_viewer.node["node_id"] == "eu-1"
        assert set(eu_viewer.fallbacks) == {sa1.url, sa2.url}
    finally:
        for client in clients:
            await client.close()


@pytest.mark.browser
@pytest.mark.slow
async def test_browser_sdk_follows_a_redirect_and_plays_through_a_relay(three):
    sa1, sa2 = three["sa-1"], three["sa-2"]
    host = await RoomClient.connect(sa1.url, sa1.token("host"), network=LOOPBACK)
    try:
        await host.publish([ColorVideoTrack((30, 30, 200))])
        async with launch_chromium() as browser:
            page = await browser.open(f"{sa1.url}/healthz")
            result = await page.evaluate(
                JOIN_JS, {"url": sa1.url, "token": sa1.token("webviewer"), "options": {}}
            )
            assert "error" not in result, result
            assert result["frameMs"] > 0 and result["width"] > 0
            node = await page.evaluate("window.__room.node")
            assert node["node_id"] == "sa-2"
            fallbacks = await page.evaluate("window.__room.fallbacks")
            assert fallbacks == [sa1.url, three["eu-1"].url]
        assert sa2.node.relay_edge.opened == 1  # the host's video came from sa-1 to sa-2
    finally:
        await host.close()
