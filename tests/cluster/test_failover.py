"""Failures (issue 11 item 5): nodes as real `python -m sfu serve` processes on a real
redis-server, clients as real aiortc peers through the Python client with `reconnect`.

* a node killed (SIGKILL) under a publisher and a viewer: both resume on the fallback node the
  join answer named, the viewer sees the host's picture again, one participant per identity;
* a node drained (SIGTERM): joins refused with 503 `draining`, its registry record says
  draining, its clients are told to `move` and do, and it exits within its drain timeout.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sfu.client import Reconnect, RoomClient
from sfu.cluster.redis_cluster import RedisCluster
from sfu.media.peer import MediaPeer
from tests.conftest import LOOPBACK
from tests.media_sources import ColorVideoTrack, mean_rgb

from .conftest import RedisServer, unique_prefix
from .failover_rig import NodeProcess, eventually, token

pytestmark = pytest.mark.redis

RED = (220, 30, 30)


def is_red(frame) -> bool:
    r, g, b = mean_rgb(frame)
    return r > 120 and g < 100 and b < 100


async def picture(track, timeout_s: float = 15.0):
    """A decoded frame of the host's colour (the first frames may still be grey)."""
    deadline = time.monotonic() + timeout_s
    while True:
        frame = await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic()))
        if is_red(frame):
            return frame


async def fallbacks_known(node: NodeProcess, other: NodeProcess) -> None:
    """Until `node` lists `other` as a fallback (it reads the registry each heartbeat)."""

    async def check():
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {token('ops', room='*', admin=True)}"}
            async with http.get(f"{node.url}/api/stats", headers=headers) as response:
                stats = await response.json()
        return stats["cluster"]["fallbacks"] == [other.url]

    await eventually(check)


@pytest.fixture
async def nodes(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[tuple]:
    prefix = unique_prefix()
    a = NodeProcess(tmp_path, "node-a", redis_server.url, prefix, udp_ports=(42000, 42999))
    b = NodeProcess(tmp_path, "node-b", redis_server.url, prefix, udp_ports=(43000, 43999))
    try:
        await asyncio.gather(a.wait_healthy(), b.wait_healthy())
        await asyncio.gather(fallbacks_known(a, b), fallbacks_known(b, a))
        yield a, b, prefix
    finally:
        a.stop()
        b.stop()


async def test_killed_node_publisher_and_viewer_resume_on_the_fallback(nodes, redis_server):
    a, b, prefix = nodes
    policy = Reconnect(dead_after_s=2.0)
    host = await RoomClient.connect(
        a.url,
        token("host"),
        network=LOOPBACK,
        publish=[ColorVideoTrack(RED)],
        sources=["camera"],
        reconnect=policy,
    )
    viewer = await RoomClient.connect(a.url, token("viewer"), network=LOOPBACK, reconnect=policy)
    # a viewer that picks its tracks: after the resume it takes up the host's camera again
    picker = await RoomClient.connect(
        a.url, token("picker"), network=LOOPBACK, auto_subscribe=False, reconnect=policy
    )
    try:
        # the join answer names the other node; the clients keep it
        assert host.fallbacks == [b.url] and viewer.fallbacks == [b.url]
        remote = await viewer.next_track(kind="video", publisher="host", timeout=15)
        await picture(remote.track)
        old_track_id = host.published[0]["id"]
        await picker.subscribe([old_track_id])
        await picture((await picker.next_track(track_id=old_track_id, timeout=15)).track)

        killed_at = time.monotonic()
        a.kill()
        host_resumed = await host.wait_for("resumed", timeout=20)
        viewer_resumed = await viewer.wait_for("resumed", timeout=20)
        assert host_resumed["url"] == b.url and viewer_resumed["url"] == b.url
        # the host's track as republished on node B (with relays, node B may also have offered
        # the host's old track on node A for the moment node A still looked alive)
        new_track_id = host_resumed["tracks"][old_track_id]
        remote = await viewer.next_track(track_id=new_track_id, timeout=15)
        await picture(remote.track)
        recovered_s = time.monotonic() - killed_at
        assert (await picker.wait_for("resumed", timeout=20))["url"] == b.url
        await picture((await picker.next_track(track_id=new_track_id, timeout=15)).track)
        print(f"viewer saw the host again {recovered_s:.2f} s after the kill")
        assert recovered_s < 15, recovered_s  # (a bound, not a speed target)

        # no lost publication: the host publishes again, under a new id, on node B
        [track] = host.published
        assert track["id"] != old_track_id
        assert host_resumed["tracks"] == {old_track_id: track["id"]}
        # one participant per identity, on node B, locally and in the cluster's directory
        assert await b.identities() == ["host", "picker", "viewer"]
        cluster = RedisCluster(redis_server.url, node_ttl_s=1.0, key_prefix=prefix)
        try:

            async def directory_settled():
                records = await cluster.directory.participants("shop")
                tracks = await cluster.directory.tracks("shop")
                return [(p.identity, p.node_id) for p in records] == [
                    ("host", "node-b"),
                    ("picker", "node-b"),
                    ("viewer", "node-b"),
                ] and [(t.track_id, t.node_id) for t in tracks] == [(track["id"], "node-b")]

            await eventually(directory_settled)  # (node A's entries pruned once it expired)
            assert [n.node_id for n in await cluster.registry.live_nodes()] == ["node-b"]
        finally:
            await cluster.link.close()
    finally:
        await picker.leave()
        await viewer.leave()
        await host.leave()


async def test_sigterm_drains_clients_move_and_the_node_exits_in_time(redis_server, tmp_path: Path):
    prefix = unique_prefix()
    drain_s = 6.0
    a = NodeProcess(
        tmp_path,
        "node-a",
        redis_server.url,
        prefix,
        udp_ports=(44000, 44999),
        drain_timeout_s=drain_s,
    )
    b = NodeProcess(tmp_path, "node-b", redis_server.url, prefix, udp_ports=(45000, 45999))
    cluster = RedisCluster(redis_server.url, node_ttl_s=1.0, key_prefix=prefix)
    clients: list[RoomClient] = []
    try:
        await asyncio.gather(a.wait_healthy(), b.wait_healthy())
        await fallbacks_known(a, b)
        policy = Reconnect()
        host = await RoomClient.connect(
            a.url,
            token("host"),
            network=LOOPBACK,
            publish=[ColorVideoTrack(RED)],
            sources=["camera"],
            reconnect=policy,
        )
        clients.append(host)
        viewer = await RoomClient.connect(
            a.url, token("viewer"), network=LOOPBACK, reconnect=policy
        )
        clients.append(viewer)
        # a client that ignores `move` (no reconnect): the node waits for it, bounded
        stubborn = await RoomClient.connect(a.url, token("stubborn"), network=LOOPBACK)
        clients.append(stubborn)
        await picture((await viewer.next_track(kind="video", timeout=15)).track)

        terminated_at = time.monotonic()
        a.terminate()
        move = await viewer.wait_for("move", timeout=10)
        assert move["reason"] == "draining" and move["fallbacks"] == [b.url]
        assert (await stubborn.wait_for("move", timeout=10))["fallbacks"] == [b.url]

        # new joins are refused with a clear error; the registry says the node drains
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{a.url}/rtc/join", json={"token": token("late")}) as response:
                assert response.status == 503
                body = await response.json()
            assert body["code"] == "draining" and "another node" in body["message"]
            async with http.get(f"{a.url}/healthz") as response:
                assert response.status == 503 and (await response.json())["status"] == "draining"
            obs = MediaPeer(LOOPBACK, label="test-whip")  # WHIP (OBS) is refused the same way
            obs.pc.addTransceiver(ColorVideoTrack(RED), direction="sendonly")
            try:
                async with http.post(
                    f"{a.url}/whip/shop",
                    data=await obs.offer(),
                    headers={
                        "Authorization": f"Bearer {token('obs')}",
                        "Content-Type": "application/sdp",
                    },
                ) as response:
                    assert response.status == 503
                    assert "draining" in await response.text()
            finally:
                await obs.close()
        with pytest.raises(Exception, match="draining"):
            await RoomClient.connect(a.url, token("late"), network=LOOPBACK)
        [record] = [n for n in await cluster.registry.live_nodes() if n.node_id == "node-a"]
        assert record.draining is True

        # the clients that follow `move` resume on node B, with the host's publication
        assert (await host.wait_for("resumed", timeout=15))["url"] == b.url
        assert (await viewer.wait_for("resumed", timeout=15))["url"] == b.url
        await picture((await viewer.next_track(kind="video", timeout=15)).track)
        assert await b.identities() == ["host", "viewer"]

        # the node exits once the drain timeout is over (the stubborn client held it), cleanly
        code = await asyncio.to_thread(a.proc.wait, drain_s + 10)
        took = time.monotonic() - terminated_at
        assert code == 0, a.log()
        assert drain_s - 1 <= took <= drain_s + 10, took
        assert "still connected after" in a.log()
        await stubborn.wait_closed()  # its socket was closed by the node's shutdown
        assert [n.node_id for n in await cluster.registry.live_nodes()] == ["node-b"]
    finally:
        for client in clients:
            await client.close()
        await cluster.link.close()
        a.stop()
        b.stop()


async def test_drain_without_stragglers_exits_at_once(redis_server, tmp_path: Path):
    """Every client moved: the node does not wait out its drain timeout."""
    prefix = unique_prefix()
    a = NodeProcess(
        tmp_path,
        "node-a",
        redis_server.url,
        prefix,
        udp_ports=(46000, 46999),
        drain_timeout_s=30.0,
    )
    b = NodeProcess(tmp_path, "node-b", redis_server.url, prefix, udp_ports=(47000, 47999))
    viewer = None
    try:
        await asyncio.gather(a.wait_healthy(), b.wait_healthy())
        await fallbacks_known(a, b)
        minted: list[str] = []

        async def fresh_token() -> str:  # (tokens expire: each attempt may get a new one)
            minted.append(token("viewer"))
            return minted[-1]

        viewer = await RoomClient.connect(
            a.url, token("viewer"), network=LOOPBACK, reconnect=Reconnect(token=fresh_token)
        )
        started = time.monotonic()
        a.terminate()
        assert (await viewer.wait_for("resumed", timeout=15))["url"] == b.url
        code = await asyncio.to_thread(a.proc.wait, 20)
        assert code == 0 and time.monotonic() - started < 20
        assert "drained in" in a.log()
        assert await b.identities() == ["viewer"]
        assert len(minted) == 1
    finally:
        if viewer is not None:
            await viewer.close()
        a.stop()
        b.stop()


async def test_hung_node_viewer_notices_no_media_and_both_resume_elsewhere(nodes):
    """A node that stops answering (SIGSTOP: its sockets stay open, nothing closes): the
    viewer sees no media while the node does not answer a ping, the publisher's socket misses
    its pongs; both resume on the fallback, trying the silent node last."""
    a, b, _prefix = nodes
    policy = Reconnect(dead_after_s=1.5)
    host = await RoomClient.connect(
        a.url,
        token("host"),
        network=LOOPBACK,
        publish=[ColorVideoTrack(RED)],
        sources=["camera"],
        reconnect=policy,
    )
    viewer = await RoomClient.connect(a.url, token("viewer"), network=LOOPBACK, reconnect=policy)
    try:
        await picture((await viewer.next_track(kind="video", publisher="host", timeout=15)).track)
        a.proc.send_signal(signal.SIGSTOP)
        viewer_resumed = await viewer.wait_for("resumed", timeout=20)
        assert viewer_resumed["url"] == b.url
        assert viewer_resumed["reason"].startswith("no media")
        assert viewer_resumed["attempts"] == 1  # (the hung node was not tried first)
        host_resumed = await host.wait_for("resumed", timeout=25)
        assert host_resumed["url"] == b.url
        assert "pings" in host_resumed["reason"]
        await picture((await viewer.next_track(kind="video", publisher="host", timeout=15)).track)
        assert await b.identities() == ["host", "viewer"]
    finally:
        a.proc.send_signal(signal.SIGKILL)  # (not SIGCONT: it would come back with stale state)
        await viewer.leave()
        await host.leave()


async def test_redis_away_drain_still_moves_clients_to_the_last_known_fallback(
    private_redis: RedisServer, tmp_path: Path
):
    """Redis stopped, then SIGTERM: the node cannot mark itself draining in the registry
    (bounded, logged) but still refuses joins, tells its clients to move to the fallbacks it
    last read, and exits in time; node B takes the clients with no Redis at all (rooms on one
    node need none)."""
    prefix = unique_prefix()
    a = NodeProcess(
        tmp_path,
        "node-a",
        private_redis.url,
        prefix,
        udp_ports=(48000, 48999),
        drain_timeout_s=8.0,
    )
    b = NodeProcess(tmp_path, "node-b", private_redis.url, prefix, udp_ports=(49000, 49499))
    clients: list[RoomClient] = []
    try:
        await asyncio.gather(a.wait_healthy(), b.wait_healthy())
        await fallbacks_known(a, b)
        host = await RoomClient.connect(
            a.url,
            token("host"),
            network=LOOPBACK,
            publish=[ColorVideoTrack(RED)],
            reconnect=Reconnect(),
        )
        viewer = await RoomClient.connect(
            a.url, token("viewer"), network=LOOPBACK, reconnect=Reconnect()
        )
        clients += [host, viewer]
        await picture((await viewer.next_track(kind="video", timeout=15)).track)

        private_redis.stop()
        await asyncio.sleep(1.5)  # (both nodes notice: their heartbeats fail)
        started = time.monotonic()
        a.terminate()
        move = await viewer.wait_for("move", timeout=10)
        assert move["fallbacks"] == [b.url]
        assert (await host.wait_for("resumed", timeout=20))["url"] == b.url
        assert (await viewer.wait_for("resumed", timeout=20))["url"] == b.url
        await picture((await viewer.next_track(kind="video", timeout=15)).track)
        assert await b.identities() == ["host", "viewer"]
        code = await asyncio.to_thread(a.proc.wait, 20)
        assert code == 0 and time.monotonic() - started < 20
        assert "draining without the registry" in a.log()
    finally:
        for client in clients:
            await client.close()
        a.stop()
        b.stop()
