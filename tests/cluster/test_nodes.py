"""Nodes in a cluster: two SFU apps in this process sharing a real redis-server see each other
in the registry (with their load) and in the room directory, hear each other's room events,
sweep a node that died, and ride out a Redis restart; without Redis a node runs as before."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sfu import Config
from sfu.auth import Grants, mint_token
from sfu.client import RoomClient
from sfu.cluster import (
    ClusterMessage,
    ClusterUnavailable,
    MemoryCluster,
    MessageKind,
    NodeInfo,
    ParticipantRecord,
    TrackRecord,
)
from sfu.cluster.redis_cluster import RedisCluster
from tests.conftest import LOOPBACK, RunningNode, start_node
from tests.media_sources import ColorVideoTrack, mean_rgb

from .conftest import RedisServer, unique_prefix

ROOM = "shop"


def cluster_config(redis_url: str, prefix: str, region: str, node_id: str) -> Config:
    config = Config()
    config.server.region = region
    config.server.node_id = node_id
    config.cluster.redis_url = redis_url
    config.cluster.key_prefix = prefix
    config.cluster.heartbeat_s = 0.2
    config.cluster.node_ttl_s = 1.0
    config.cluster.redis_timeout_s = 1.0
    return config


async def eventually(check, timeout_s: float = 10.0, interval_s: float = 0.05):
    """Poll an async check until it returns something truthy (bounded); returns it."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = await check()
        except (AssertionError, ClusterUnavailable) as exc:
            last_error, value = exc, None
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"not reached within {timeout_s} s (last error: {last_error})")


def admin(node: RunningNode) -> dict[str, str]:
    token = mint_token(node.config.auth, identity="ops", room="*", grants=Grants(admin=True))
    return {"Authorization": f"Bearer {token}"}


async def get_json(node: RunningNode, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.url}{path}", headers=admin(node)) as response:
            return response.status, await response.json()


class Heard:
    """Messages a node received from other nodes."""

    def __init__(self, node: RunningNode) -> None:
        self.messages: list[ClusterMessage] = []
        node.node.cluster.listeners.append(self.messages.append)

    def kinds(self, room: str = ROOM) -> list[tuple[MessageKind, str]]:
        return [(m.kind, m.origin) for m in self.messages if m.room == room]


@pytest.fixture
async def observer(redis_server: RedisServer) -> AsyncIterator[RedisCluster]:
    """A plain client of the cluster's Redis (as another node or an operator's tool)."""
    client = RedisCluster(redis_server.url, node_ttl_s=1.0, key_prefix=unique_prefix())
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.redis
async def test_two_nodes_see_each_other_and_each_others_rooms(redis_server, observer):
    prefix = observer.keys.prefix
    a = await start_node(cluster_config(redis_server.url, prefix, "sa-east", "sa-1"))
    b = await start_node(cluster_config(redis_server.url, prefix, "eu-west", "eu-1"))
    heard_at_b = Heard(b)
    host = viewer = None
    try:
        # registered by the time the apps have started
        nodes = await observer.registry.live_nodes()
        assert [(n.node_id, n.region, n.public_url) for n in nodes] == [
            ("eu-1", "eu-west", b.url),
            ("sa-1", "sa-east", a.url),
        ]

        viewer = await RoomClient.connect(b.url, b.token("viewer"), network=LOOPBACK)
        # B follows the room's channel once it has a participant there
        await eventually(lambda: _true_if(ROOM in b.node.cluster.following))
        host = await RoomClient.connect(a.url, a.token("host"), network=LOOPBACK)
        await host.publish([ColorVideoTrack((220, 40, 40))], sources=["camera"])

        async def directory_filled() -> bool:
            parts = await b.node.cluster.backend.directory.participants(ROOM)
            tracks = await b.node.cluster.backend.directory.tracks(ROOM)
            return [(p.identity, p.node_id) for p in parts] == [
                ("host", "sa-1"),
                ("viewer", "eu-1"),
            ] and [(t.publisher, t.node_id, t.kind) for t in tracks] == [("host", "sa-1", "video")]

        await eventually(directory_filled)
        [track_id] = a.node.rooms.rooms[ROOM].producers
        status, body = await get_json(b, "/api/rooms?scope=cluster")
        assert status == 200
        [room] = body["rooms"]
        assert room["name"] == ROOM and room["created_by"] == "eu-1"  # the viewer came first
        assert {(p["identity"], p["node_id"]) for p in room["participants"]} == {
            ("host", "sa-1"),
            ("viewer", "eu-1"),
        }
        assert [(t["track_id"], t["node_id"]) for t in room["tracks"]] == [(track_id, "sa-1")]
        status, local = await get_json(a, "/api/rooms")
        [host_entry] = local["rooms"][0]["participants"]
        assert host_entry["node_id"] == "sa-1"
        assert [(t["id"], t["node_id"]) for t in host_entry["tracks"]] == [(track_id, "sa-1")]

        async def a_reports_its_load():
            node = await observer.registry.get_node("sa-1")
            load = node.load if node else None
            if load and load.participants == 1 and load.tracks == 1 and load.bitrate_bps > 0:
                return node

        node_a: NodeInfo = await eventually(a_reports_its_load)
        assert node_a.load.rooms == 1
        assert node_a.load.cpu_pct > 0  # the process did work in the interval
        assert node_a.load.bitrate_bps < 50_000_000  # a 320x240 picture, not nonsense

        # B heard A's events, in order
        await eventually(lambda: _true_if(len(heard_at_b.kinds()) >= 2))
        assert heard_at_b.kinds()[:2] == [
            (MessageKind.PARTICIPANT_JOINED, "sa-1"),
            (MessageKind.TRACK_PUBLISHED, "sa-1"),
        ]

        await host.leave()
        host = None

        async def host_gone() -> bool:
            parts = await observer_view(b).participants(ROOM)
            return [p.identity for p in parts] == ["viewer"] and not await observer_view(b).tracks(
                ROOM
            )

        await eventually(host_gone)
        await eventually(lambda: _true_if(len(heard_at_b.kinds()) >= 4))
        assert heard_at_b.kinds()[2:4] == [
            (MessageKind.TRACK_UNPUBLISHED, "sa-1"),
            (MessageKind.PARTICIPANT_LEFT, "sa-1"),
        ]
        assert [m.seq for m in heard_at_b.messages] == sorted(m.seq for m in heard_at_b.messages)

        await a.runner.cleanup()  # a clean shutdown deregisters at once
        a = None
        assert [n.node_id for n in await observer.registry.live_nodes()] == ["eu-1"]
        assert await observer.registry.expired_nodes() == []
    finally:
        for client in (host, viewer):
            if client is not None:
                await client.close()
        for node in (a, b):
            if node is not None:
                await node.runner.cleanup()
    assert await observer.registry.live_nodes() == []
    assert await observer.directory.list_rooms() == []  # nothing left behind


def observer_view(node: RunningNode):
    return node.node.cluster.backend.directory


async def _true_if(value: bool) -> bool:
    return value


@pytest.mark.redis
async def test_a_node_that_died_is_dropped_and_its_entries_swept(redis_server, observer):
    prefix = observer.keys.prefix
    b = await start_node(cluster_config(redis_server.url, prefix, "eu-west", "eu-1"))
    try:
        # a node that registered, took a room, then died without a word (no heartbeats)
        ghost = RedisCluster(redis_server.url, node_ttl_s=1.0, key_prefix=prefix)
        await ghost.start()
        await ghost.registry.heartbeat(NodeInfo("ghost-1", "sa-east", "http://127.0.0.1:9"))
        await ghost.directory.add_participant(ParticipantRecord(ROOM, "host", "PA_1", "ghost-1"))
        await ghost.directory.add_track(TrackRecord(ROOM, "TR_1", "host", "ghost-1", "video"))
        await ghost.close()
        assert "ghost-1" in [n.node_id for n in await observer.registry.live_nodes()]

        async def swept() -> bool:
            live = [n.node_id for n in await observer.registry.live_nodes()]
            return (
                live == ["eu-1"]
                and await observer.directory.list_rooms() == []
                and await observer.registry.expired_nodes() == []
            )

        await eventually(swept, timeout_s=10)
    finally:
        await b.runner.cleanup()


@pytest.mark.redis
async def test_redis_restart_local_rooms_keep_working_and_the_node_catches_up(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="sfu.cluster")
    prefix = unique_prefix()
    a = await start_node(cluster_config(private_redis.url, prefix, "sa-east", "sa-1"))
    heard = Heard(a)
    clients: list[RoomClient] = []
    try:
        host = await RoomClient.connect(a.url, a.token("host"), network=LOOPBACK)
        clients.append(host)
        await host.publish([ColorVideoTrack((30, 200, 30))], sources=["camera"])
        directory = a.node.cluster.backend.directory
        await eventually(lambda: _has_track(directory))

        private_redis.stop()
        await asyncio.sleep(1.0)  # several heartbeats fail meanwhile

        # the node's own room keeps working: a new viewer joins and sees the picture
        viewer = await RoomClient.connect(a.url, a.token("viewer"), network=LOOPBACK)
        clients.append(viewer)
        remote = await viewer.next_track(kind="video", timeout=15)
        frame = await asyncio.wait_for(remote.track.recv(), 15)
        assert mean_rgb(frame)[1] > 120  # green: the host's picture

        # cluster calls fail with a clear, typed error
        with pytest.raises(ClusterUnavailable, match="unreachable"):
            await directory.list_rooms()
        status, body = await get_json(a, "/api/rooms?scope=cluster")
        assert status == 503 and body["error"] == "cluster_unavailable"
        assert "Redis at redis://127.0.0.1" in body["message"]
        status, stats = await get_json(a, "/api/stats")
        assert stats["cluster"]["available"] is False and stats["cluster"]["in_step"] is False
        status, local = await get_json(a, "/api/rooms")
        assert {p["identity"] for p in local["rooms"][0]["participants"]} == {"host", "viewer"}
        down = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down) == 1, [r.getMessage() for r in down]  # logged once, not per call

        # Redis comes back empty (no persistence): the node re-registers and re-fills it
        private_redis.start()
        check = RedisCluster(private_redis.url, node_ttl_s=1.0, key_prefix=prefix)
        await check.start()
        try:

            async def caught_up() -> bool:
                live = [n.node_id for n in await check.registry.live_nodes()]
                parts = [p.identity for p in await check.directory.participants(ROOM)]
                tracks = [t.publisher for t in await check.directory.tracks(ROOM)]
                return live == ["sa-1"] and parts == ["host", "viewer"] and tracks == ["host"]

            await eventually(caught_up, timeout_s=15)
            back = [r for r in caplog.records if "reachable again" in r.getMessage()]
            assert len(back) == 1

            async def in_step() -> bool:
                status, stats = await get_json(a, "/api/stats")
                return stats["cluster"]["available"] and stats["cluster"]["in_step"]

            await eventually(in_step)

            # and it follows its room's channel again: another node's message reaches it
            async def heard_data() -> bool:
                await check.bus.publish(
                    ClusterMessage(MessageKind.DATA, "eu-9", room=ROOM, body={"text": "oi"})
                )
                await asyncio.sleep(0.1)
                return any(m.kind == MessageKind.DATA for m in heard.messages)

            await eventually(heard_data, timeout_s=10, interval_s=0.2)
        finally:
            await check.close()
    finally:
        for client in clients:
            await client.close()
        await a.runner.cleanup()


async def _has_track(directory) -> bool:
    return bool(await directory.tracks(ROOM))


async def test_single_node_without_redis_is_unchanged(sfu_node):
    cluster = sfu_node.node.cluster
    assert isinstance(cluster.backend, MemoryCluster)
    host = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    viewer = None
    try:
        await host.publish([ColorVideoTrack((40, 40, 220))], sources=["camera"])
        viewer = await RoomClient.connect(sfu_node.url, sfu_node.token("viewer"), network=LOOPBACK)
        remote = await viewer.next_track(kind="video", timeout=10)
        frame = await asyncio.wait_for(remote.track.recv(), 10)
        assert mean_rgb(frame)[2] > 120

        # the in-process directory and registry hold the node's own state
        async def listed() -> bool:
            parts = await cluster.backend.directory.participants(ROOM)
            return [(p.identity, p.node_id) for p in parts] == [
                ("host", sfu_node.node.node_id),
                ("viewer", sfu_node.node.node_id),
            ]

        await eventually(listed)
        [me] = await cluster.backend.registry.live_nodes()
        assert me.node_id == sfu_node.node.node_id and me.public_url == sfu_node.url
        status, stats = await get_json(sfu_node, "/api/stats")
        assert stats["cluster"]["backend"] == "in-process (single node)"
        assert stats["cluster"]["available"] is True
        status, body = await get_json(sfu_node, "/api/rooms?scope=cluster")
        assert status == 200 and [r["name"] for r in body["rooms"]] == [ROOM]
        status, _ = await get_json(sfu_node, "/api/rooms?scope=everywhere")
        assert status == 400
        # a room admin sees its own room only, on this node and in the directory
        for room, seen in (("other", []), (ROOM, [ROOM])):
            token = mint_token(
                sfu_node.config.auth, identity="ops", room=room, grants=Grants(admin=True)
            )
            for scope in ("local", "cluster"):
                async with aiohttp.ClientSession() as http:
                    async with http.get(
                        f"{sfu_node.url}/api/rooms?scope={scope}",
                        headers={"Authorization": f"Bearer {token}"},
                    ) as response:
                        assert response.status == 200
                        body = await response.json()
                assert [r["name"] for r in body["rooms"]] == seen, (room, scope)
    finally:
        for client in (host, viewer):
            if client is not None:
                await client.close()


def test_a_node_without_redis_url_never_imports_redis():
    code = (
        "import sys, asyncio\n"
        "from sfu import Config, create_app\n"
        "create_app(Config())\n"
        "print('redis' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.redis
async def test_a_second_node_with_the_same_id_is_warned_about(
    redis_server, observer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="sfu.cluster")
    prefix = observer.keys.prefix
    a = await start_node(cluster_config(redis_server.url, prefix, "sa-east", "sa-1"))
    try:
        assert not [r for r in caplog.records if "already live" in r.getMessage()]
        twin = await start_node(cluster_config(redis_server.url, prefix, "sa-east", "sa-1"))
        await twin.runner.cleanup()
        [warning] = [r for r in caplog.records if "already live" in r.getMessage()]
        assert a.url in warning.getMessage() and "must be unique" in warning.getMessage()
    finally:
        await a.runner.cleanup()


@pytest.mark.redis
async def test_a_hung_redis_times_out_and_stale_entries_are_removed_on_catch_up(
    private_redis: RedisServer,
):
    """Redis stops answering (SIGSTOP: connections open, no replies) rather than going away:
    calls time out into ClusterUnavailable; a participant who leaves meanwhile is gone from
    the directory once Redis answers again (the catch-up replaces the node's entries)."""
    prefix = unique_prefix()
    a = await start_node(cluster_config(private_redis.url, prefix, "sa-east", "sa-1"))
    check = RedisCluster(private_redis.url, node_ttl_s=1.0, key_prefix=prefix)
    await check.start()
    clients: list[RoomClient] = []
    assert private_redis.process is not None
    pid = private_redis.process.pid
    try:
        for identity in ("host", "viewer"):
            clients.append(await RoomClient.connect(a.url, a.token(identity), network=LOOPBACK))

        async def identities() -> list[str]:
            return [p.identity for p in await check.directory.participants(ROOM)]

        await eventually(lambda: _equals(identities(), ["host", "viewer"]))

        os.kill(pid, signal.SIGSTOP)
        try:

            async def unavailable() -> bool:
                _, stats = await get_json(a, "/api/stats")
                return stats["cluster"]["available"] is False

            await eventually(unavailable, timeout_s=15)
            with pytest.raises(ClusterUnavailable):
                await a.node.cluster.backend.directory.list_rooms()
            viewer = clients.pop()
            await viewer.leave()  # the node's own room goes on without Redis
            await eventually(
                lambda: _true_if("viewer" not in a.node.rooms.rooms[ROOM].participants)
            )
        finally:
            os.kill(pid, signal.SIGCONT)

        await eventually(lambda: _equals(identities(), ["host"]), timeout_s=15)

        async def in_step() -> bool:
            _, stats = await get_json(a, "/api/stats")
            return stats["cluster"]["available"] and stats["cluster"]["in_step"]

        await eventually(in_step)
    finally:
        for client in clients:
            await client.close()
        await check.close()
        await a.runner.cleanup()


async def _equals(value, expected) -> bool:
    return await value == expected
