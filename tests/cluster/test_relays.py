"""Relays: a room that spans two nodes (two SFU apps in this process on a real redis-server).

A host publishes at node A (sa-east), viewers play at node B (eu-west): B receives each track
once over one node-to-node connection, whatever the number of its viewers, and closes it when
the last one leaves; keyframe requests of B's viewers reach the publisher through A; data
messages and participant events cross in order; two hosts on two nodes co-host one room.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sfu.client import RoomClient
from sfu.cluster.relay_edge import RemoteProducer
from tests.conftest import LOOPBACK, RunningNode, start_node
from tests.media_sources import ColorVideoTrack, ToneAudioTrack, mean_rgb

from .conftest import RedisServer, unique_prefix
from .test_nodes import cluster_config

ROOM = "shop"

pytestmark = pytest.mark.redis


async def until(check, timeout_s: float = 15.0, what: str = "condition"):
    """Poll a synchronous check until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not reached within {timeout_s} s")


class Pair:
    def __init__(self, a: RunningNode, b: RunningNode) -> None:
        self.a, self.b = a, b
        self.clients: list[RoomClient] = []

    async def join(self, node: RunningNode, identity: str, **kwargs) -> RoomClient:
        client = await RoomClient.connect(
            node.url, node.token(identity), network=LOOPBACK, **kwargs
        )
        self.clients.append(client)
        return client


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[Pair]:
    prefix = unique_prefix()
    a = await start_node(cluster_config(redis_server.url, prefix, "sa-east", "sa-1"))
    b = await start_node(cluster_config(redis_server.url, prefix, "eu-west", "eu-1"))
    pair = Pair(a, b)
    try:
        yield pair
    finally:
        for client in pair.clients:
            await client.close()
        await b.runner.cleanup()
        await a.runner.cleanup()


async def frame_of(client: RoomClient, kind: str = "video", publisher: str | None = None):
    remote = await client.next_track(kind=kind, timeout=20)
    if publisher is not None:
        while client.tracks.get(remote.track_id, {}).get("publisher") != publisher:
            remote = await client.next_track(kind=kind, timeout=20)
    return remote, await asyncio.wait_for(remote.track.recv(), 20)


async def test_publish_at_a_play_at_b_over_one_relay(pair: Pair):
    a, b = pair.a.node, pair.b.node
    host = await pair.join(pair.a, "host")
    await host.publish(
        [ColorVideoTrack((220, 40, 40)), ToneAudioTrack(440)], sources=["camera", "microphone"]
    )
    viewer = await pair.join(pair.b, "viewer-1")
    remote, frame = await frame_of(viewer)
    r, g, bl = mean_rgb(frame)
    assert r > 150 and g < 100, (r, g, bl)  # the host's red picture, through the relay
    assert viewer.participants.get("host", {}).get("node_id") == "sa-1"
    audio = await viewer.next_track(kind="audio", timeout=20)
    await asyncio.wait_for(audio.track.recv(), 20)

    # one relay each way of looking at it: B receives both tracks on one connection
    assert len(b.relay_edge.links) == 1
    assert len(a.relay_origin.relays) == 1
    relay = next(iter(a.relay_origin.relays.values()))
    assert relay.edge_node == "eu-1" and len(relay.mapping()) == 2

    # a second viewer at B reuses it: still one relay peer at A, one per track
    second = await pair.join(pair.b, "viewer-2")
    _, frame2 = await frame_of(second)
    assert mean_rgb(frame2)[0] > 150
    assert len(a.relay_origin.relays) == 1 and b.relay_edge.opened == 1
    room_b = b.rooms.rooms[ROOM]
    video_b = next(
        p for p in room_b.producers.values() if isinstance(p, RemoteProducer) and p.kind == "video"
    )
    assert len(video_b.forwarders) == 2
    room_a = a.rooms.rooms[ROOM]
    video_a = next(p for p in room_a.producers.values() if p.kind == "video")
    # A sends the track once toward B: one tap, no per-viewer forwarders at A
    assert len(video_a.forwarders) == 1

    # the last viewer at B leaves: the relay is closed on both nodes
    await viewer.leave()
    await second.leave()
    await until(lambda: not b.relay_edge.links, what="relay closed at B")
    await until(lambda: not a.relay_origin.relays, what="relay closed at A")
    await until(lambda: not video_a.forwarders, what="tap detached at A")
