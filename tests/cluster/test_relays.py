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
from sfu.media.rtcp import Pli
from tests.conftest import LOOPBACK, RunningNode, start_node
from tests.media_sources import ColorVideoTrack, ToneAudioTrack, mean_rgb
from tests.simulcast_packets import L1T3, payload_types, three_layers
from tests.test_quality_signalling import publish_simulcast

from .conftest import RedisServer, unique_prefix
from .test_nodes import cluster_config, get_json

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


def relay_config(redis_url: str, prefix: str, region: str, node_id: str, ttl_s: float = 5.0):
    config = cluster_config(redis_url, prefix, region, node_id)
    config.cluster.node_ttl_s = ttl_s  # (5 s: no node taken as gone on a loaded machine)
    return config


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[Pair]:
    prefix = unique_prefix()
    a = await start_node(relay_config(redis_server.url, prefix, "sa-east", "sa-1"))
    b = await start_node(relay_config(redis_server.url, prefix, "eu-west", "eu-1"))
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
    # B's /api/rooms: who is where, the host and its tracks on A, the viewer on B
    status, body = await get_json(pair.b, "/api/rooms")
    assert status == 200
    (room,) = body["rooms"]
    assert [(p["identity"], p["node_id"]) for p in room["participants"]] == [("viewer-1", "eu-1")]
    (host_entry,) = room["remote_participants"]
    assert (host_entry["identity"], host_entry["node_id"]) == ("host", "sa-1")
    assert sorted(t["kind"] for t in host_entry["tracks"]) == ["audio", "video"]
    assert {t["node_id"] for t in host_entry["tracks"]} == {"sa-1"}

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


async def test_simulcast_crosses_once_and_each_b_viewer_gets_its_own_layer(
    redis_server: RedisServer,
):
    """Every layer of a simulcast track crosses on one relay; B picks each viewer's layer."""
    prefix = unique_prefix()
    configs = [
        relay_config(redis_server.url, prefix, "sa-east", "sa-1"),
        relay_config(redis_server.url, prefix, "eu-west", "eu-1"),
    ]
    for config in configs:
        config.rtc.bwe = False  # the requested quality alone decides (no estimate in the way)
    a = await start_node(configs[0])
    b = await start_node(configs[1])
    pub = feeding = None
    viewers: list[RoomClient] = []
    try:
        pub, answer = await publish_simulcast(a)
        track_id = answer["tracks"][0]["id"]
        session = a.node.rooms.rooms[ROOM].participants["pub"].publisher
        (mid,) = session.producers
        mid_id, rid_id = session._ext.mid, session._ext.rid
        vp8_pt, _ = payload_types(answer["sdp"])
        streams = three_layers()

        async def publish_frames() -> None:
            k = 0
            while True:
                tid = L1T3[k % 4]
                for i, stream in enumerate(streams):
                    ext = [(mid_id, mid.encode()), (rid_id, "qhf"[i].encode())]
                    for p in stream.frame(keyframe=k % 8 == 0, tid=tid, pt=vp8_pt, ext=ext):
                        session._on_rtp(p, 0)
                k += 1
                await asyncio.sleep(1 / 30)

        feeding = asyncio.ensure_future(publish_frames())
        events: dict[str, list[dict]] = {"low": [], "auto": []}
        for name in ("low", "auto"):
            viewer = await RoomClient.connect(b.url, b.token(name), network=LOOPBACK)
            viewers.append(viewer)
            viewer.on("layer_changed", events[name].append)
        for viewer in viewers:  # (the track may reach B's directory read or channel later)
            if track_id not in viewer.tracks:
                await viewer.wait_for(
                    "track_published", lambda m: m["track"]["id"] == track_id, timeout=15
                )
        subscribers = [
            b.node.rooms.rooms[ROOM].participants[name].subscriber for name in ("low", "auto")
        ]
        await until(lambda: all(track_id in s.subscriptions for s in subscribers), what="subs")
        await viewers[0].request({"type": "quality", "track_id": track_id, "quality": "low"})
        await until(lambda: any(e["spatial"] == 2 for e in events["auto"]), what="auto on f")
        await until(lambda: any(e["spatial"] == 0 for e in events["low"]), what="low on q")
        assert events["auto"][-1]["rid"] == "f" and events["auto"][-1]["width"] == 1280
        assert events["low"][-1]["rid"] == "q"

        # the low viewer moves up: B switches its layer, from the layers it already has
        seen = len(events["low"])
        await viewers[0].request({"type": "quality", "track_id": track_id, "quality": "medium"})
        await until(lambda: any(e["spatial"] == 1 for e in events["low"][seen:]), what="h")
        assert events["low"][-1]["reason"] == "up"

        # one relay carries all three layers; A's producer has one tap, not one per viewer
        assert len(a.node.relay_origin.relays) == 1 and b.node.relay_edge.opened == 1
        remote = b.node.rooms.rooms[ROOM].producers[track_id]
        assert isinstance(remote, RemoteProducer) and len(remote.layers) == 3
        assert all(layer.packets > 0 for layer in remote.layers)
        assert [(e.width, e.height) for e in remote.layers] == [
            (s.width, s.height) for s in streams
        ]
        assert len(a.node.rooms.rooms[ROOM].producers[track_id].forwarders) == 1
    finally:
        if feeding is not None:
            feeding.cancel()
        for viewer in viewers:
            await viewer.close()
        if pub is not None:
            await pub.close()
        await b.runner.cleanup()
        await a.runner.cleanup()


async def test_data_messages_and_events_cross_nodes_in_order(pair: Pair):
    a, b = pair.a.node, pair.b.node
    host = await pair.join(pair.a, "host")
    viewer = await pair.join(pair.b, "viewer")
    other = await pair.join(pair.b, "other")
    # each node knows the room's participants of the other
    await until(lambda: {"viewer", "other"} <= set(a.rooms.rooms[ROOM].remote), what="A sees B")
    await until(lambda: "host" in b.rooms.rooms[ROOM].remote, what="B sees A")
    # the viewer at B was told of the host at A (in `joined`, or by an event)
    await until(lambda: "host" in viewer.participants, what="viewer told of the host")
    assert viewer.participants["host"]["node_id"] == "sa-1"
    assert host.participants["viewer"]["node_id"] == "eu-1"

    received: dict[str, list] = {"host": [], "viewer": [], "other": []}
    for name, client in (("host", host), ("viewer", viewer), ("other", other)):
        client.on("data", lambda m, name=name: received[name].append((m["from"], m["payload"])))
    for i in range(30):
        await host.send_data({"n": i}, topic="chat")
        await viewer.send_data({"n": i}, topic="chat")
    await host.send_data("for the viewer only", to=["viewer"])
    await until(
        lambda: (
            len(received["host"]) >= 30
            and len(received["other"]) >= 60
            and len(received["viewer"]) >= 31
        ),
        what="all data delivered",
    )
    await asyncio.sleep(0.3)  # nothing more arrives
    # in the order each sender sent them, across the nodes
    assert [p["n"] for f, p in received["host"]] == list(range(30))
    assert all(f == "viewer" for f, _ in received["host"])
    assert [p["n"] for f, p in received["viewer"] if f == "host" and isinstance(p, dict)] == list(
        range(30)
    )
    assert [p for f, p in received["other"] if f == "host"] == [{"n": i} for i in range(30)]
    assert received["viewer"][-1] == ("host", "for the viewer only")
    assert "for the viewer only" not in [p for _, p in received["other"]]

    # a participant leaving at A is seen leaving at B
    await host.leave()
    await viewer.wait_for("participant_left", lambda m: m["identity"] == "host", timeout=10)
    await until(lambda: "host" not in b.rooms.rooms[ROOM].remote, what="host gone at B")


async def test_two_hosts_on_two_nodes_cohost_and_each_nodes_viewers_see_both(pair: Pair):
    host_a = await pair.join(pair.a, "host-a")
    await host_a.publish([ColorVideoTrack((220, 40, 40))], sources=["camera"])
    host_b = await pair.join(pair.b, "host-b")
    await host_b.publish([ColorVideoTrack((40, 40, 220))], sources=["camera"])
    viewer_a = await pair.join(pair.a, "viewer-a")
    viewer_b = await pair.join(pair.b, "viewer-b")
    for viewer in (viewer_a, viewer_b):
        red = await viewer.next_track(kind="video", publisher="host-a", timeout=20)
        blue = await viewer.next_track(kind="video", publisher="host-b", timeout=20)
        red_frame = await asyncio.wait_for(red.track.recv(), 20)
        blue_frame = await asyncio.wait_for(blue.track.recv(), 20)
        assert mean_rgb(red_frame)[0] > 150 and mean_rgb(blue_frame)[2] > 150
    # the hosts see each other too
    seen_by_a = await host_a.next_track(kind="video", publisher="host-b", timeout=20)
    assert mean_rgb(await asyncio.wait_for(seen_by_a.track.recv(), 20))[2] > 150
    # one relay each way
    assert len(pair.a.node.relay_origin.relays) == 1 and len(pair.b.node.relay_origin.relays) == 1
    assert len(pair.a.node.relay_edge.links) == 1 and len(pair.b.node.relay_edge.links) == 1


async def test_keyframe_request_of_a_b_viewer_reaches_the_publisher_at_a(pair: Pair):
    host = await pair.join(pair.a, "host")
    await host.publish([ColorVideoTrack((220, 40, 40))], sources=["camera"])
    plis: list[float] = []
    sender = host.publisher.pc.getTransceivers()[0].sender
    original = sender._handle_rtcp_packet

    async def handle_rtcp(packet) -> None:
        if getattr(packet, "fmt", None) == 1 and type(packet).__name__ == "RtcpPsfbPacket":
            plis.append(time.monotonic())
        await original(packet)

    sender._handle_rtcp_packet = handle_rtcp
    viewer = await pair.join(pair.b, "viewer")
    await frame_of(viewer)
    relay = next(iter(pair.a.node.relay_origin.relays.values()))
    await asyncio.sleep(1.0)  # past every throttle
    before, relayed_before = len(plis), relay.keyframe_requests
    # the viewer's own PLI, for the video m-line B sends it
    downtrack = next(
        dt
        for dt in pair.b.node.rooms.rooms[ROOM].participants["viewer"].subscriber.downtracks
        if dt.kind == "video"
    )
    assert viewer.subscriber.send_rtcp(Pli(0x1234, downtrack.ssrc).serialize())
    await until(lambda: relay.keyframe_requests > relayed_before, what="PLI relayed to A")
    await until(lambda: len(plis) > before, what="PLI at the publisher")


async def test_a_dead_origins_participants_and_tracks_leave_b_and_its_relay_closes(
    redis_server: RedisServer,
):
    prefix = unique_prefix()
    a = await start_node(relay_config(redis_server.url, prefix, "sa-east", "sa-1", ttl_s=1.0))
    b = await start_node(relay_config(redis_server.url, prefix, "eu-west", "eu-1", ttl_s=1.0))
    pair = Pair(a, b)
    try:
        host = await pair.join(a, "host")
        await host.publish([ColorVideoTrack((220, 40, 40))], sources=["camera"])
        viewer = await pair.join(b, "viewer")
        remote, _ = await frame_of(viewer)
        assert len(b.node.relay_edge.links) == 1
        # node A stops heartbeating, as a node that died would (no leave, no messages)
        for task in a.node.cluster._tasks:
            task.cancel()
        await viewer.wait_for("participant_left", lambda m: m["identity"] == "host", timeout=15)
        await viewer.wait_for(
            "track_unpublished", lambda m: m["track_id"] == remote.track_id, timeout=15
        )
        room = b.node.rooms.rooms[ROOM]
        assert not room.remote and not room.remote_tracks
        await until(lambda: not b.node.relay_edge.links, what="relay from the dead node closed")
    finally:
        for client in pair.clients:
            await client.close()
        await b.runner.cleanup()
        await a.runner.cleanup()


async def test_a_publisher_that_resumed_here_is_not_offered_from_its_dead_node(
    redis_server: RedisServer,
):
    """A's node dies quietly (still listed as live until its record expires); the host
    resumes at B and publishes again. B reading the room's other nodes from the directory
    meanwhile (as it does when it starts following the room) does not take in the host's old
    track at A: B's viewers are offered the new track only (a browser viewer showed the dead
    one, frozen, after a failover)."""
    prefix = unique_prefix()
    a = await start_node(relay_config(redis_server.url, prefix, "sa-east", "sa-1"))
    b = await start_node(relay_config(redis_server.url, prefix, "eu-west", "eu-1"))
    pair = Pair(a, b)
    directory = b.node.cluster.backend.directory
    try:
        host = await pair.join(a, "host")
        await host.publish([ColorVideoTrack((220, 40, 40))], sources=["camera"])
        old_id = host.published[0]["id"]
        deadline = time.monotonic() + 15
        while old_id not in {t.track_id for t in await directory.tracks(ROOM)}:
            assert time.monotonic() < deadline, "the host's track never reached the directory"
            await asyncio.sleep(0.05)
        for task in a.node.cluster._tasks:  # A writes and heartbeats no more, as if it died
            task.cancel()

        resumed = await pair.join(b, "host")
        await resumed.publish([ColorVideoTrack((40, 40, 220))], sources=["camera"])
        new_id = resumed.published[0]["id"]
        await b.node.remote_rooms.load(ROOM)  # (what following the room does, at any time)
        live = {n.node_id for n in await b.node.cluster.backend.registry.live_nodes()}
        assert "sa-1" in live  # A still looks live: its entries are still read
        assert old_id in {t.track_id for t in await directory.tracks(ROOM)}
        room = b.node.rooms.rooms[ROOM]
        assert old_id not in room.producers and not room.remote_tracks
        assert "host" not in room.remote

        viewer = await pair.join(b, "viewer")
        assert list(viewer.tracks) == [new_id]
        remote, frame = await frame_of(viewer, publisher="host")
        assert remote.track_id == new_id and mean_rgb(frame)[2] > 150
    finally:
        for client in pair.clients:
            await client.close()
        await b.runner.cleanup()
        await a.runner.cleanup()
