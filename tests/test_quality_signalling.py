"""The `quality` message over the real signalling WebSocket, and `layer_changed` events.

The publisher offers simulcast (an aiortc offer edited into Chromium's three rids) and never
connects; the viewer joins and is subscribed to the track at once, which is all `quality`
needs. The last test lets media flow: synthetic simulcast packets are handed to the
publisher's session, a real aiortc viewer connects, and the layer it is sent follows its
requested quality, told by `layer_changed` events.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sfu import Config
from sfu.client import RoomClient

from .conftest import LOOPBACK, RunningNode, start_node
from .simulcast_packets import (
    L1T3,
    aiortc_video_offer,
    payload_types,
    three_layers,
    to_rid_simulcast,
)
from .test_faults import RawSocket


async def publish_simulcast(node: RunningNode, identity: str = "pub") -> tuple[RawSocket, dict]:
    pub = await RawSocket.open(node)
    await pub.send({"type": "join", "token": node.token(identity)})
    await pub.next("joined")
    offer = to_rid_simulcast(await aiortc_video_offer())
    await pub.send({"type": "publish", "sdp": offer, "tracks": [{"source": "camera"}]})
    answer = await pub.next("publish_answer")
    assert "a=simulcast:recv q;h;f" in answer["sdp"]
    return pub, answer


async def test_quality_validation_and_quality_set(sfu_node) -> None:
    pub, answer = await publish_simulcast(sfu_node)
    viewer = await RawSocket.open(sfu_node)
    try:
        (track,) = answer["tracks"]
        track_id = track["id"]
        # before join
        await viewer.error({"type": "quality", "track_id": track_id}, "not_joined")
        await viewer.send({"type": "join", "token": sfu_node.token("viewer")})
        joined = await viewer.next("joined")
        assert [t["id"] for t in joined["tracks"]] == [track_id]

        bad_requests: list[dict] = [
            {"quality": "ultra"},
            {"quality": "HIGH"},
            {"quality": 2},
            {"quality": None},
            {"max_width": "640"},
            {"max_width": 640.5},
            {"max_width": True},
            {"max_width": -1},
            {"max_width": 16385},
            {"max_height": [360]},
            {"max_height": {"px": 360}},
        ]
        for extra in bad_requests:
            error = await viewer.error(
                {"type": "quality", "track_id": track_id, "request_id": "r", **extra},
                "bad_request",
            )
            assert error["request_id"] == "r"
        for message in (
            {"type": "quality", "quality": "low"},  # no track_id
            {"type": "quality", "track_id": "", "quality": "low"},
            {"type": "quality", "track_id": 7, "quality": "low"},
            {"type": "quality", "track_id": "T" * 65, "quality": "low"},
        ):
            await viewer.error(message, "bad_request")
        await viewer.error(
            {"type": "quality", "track_id": "TR_nope", "quality": "low"}, "not_found"
        )

        # valid ones
        await viewer.send(
            {"type": "quality", "track_id": track_id, "quality": "low", "request_id": 41}
        )
        reply = await viewer.next("quality_set")
        assert reply == {
            "type": "quality_set",
            "track_id": track_id,
            "quality": "low",
            "request_id": 41,
        }
        subscriber = sfu_node.node.rooms.rooms["shop"].participants["viewer"].subscriber
        assert subscriber._quality[track_id] == (0, 0, 0)
        await viewer.send(
            {"type": "quality", "track_id": track_id, "max_width": 640, "max_height": 0}
        )
        reply = await viewer.next("quality_set")
        assert reply["quality"] == "auto"
        assert subscriber._quality[track_id] == (None, 640, 0)
        await viewer.send({"type": "quality", "track_id": track_id, "max_width": None})
        assert (await viewer.next("quality_set"))["quality"] == "auto"
        # the socket still serves after all that
        await viewer.send({"type": "ping", "ts": 1})
        await viewer.next("pong")
        assert not [m for m in viewer.seen if m.get("code") == "internal"]
    finally:
        await viewer.close()
        await pub.close()


@pytest.mark.parametrize("quality", [["high"], {"q": "high"}])
async def test_quality_of_unhashable_type_is_a_bad_request(sfu_node, quality) -> None:
    pub, answer = await publish_simulcast(sfu_node)
    viewer = await RawSocket.open(sfu_node)
    try:
        track_id = answer["tracks"][0]["id"]
        await viewer.send({"type": "join", "token": sfu_node.token("viewer")})
        await viewer.next("joined")
        await viewer.error(
            {"type": "quality", "track_id": track_id, "quality": quality}, "bad_request"
        )
    finally:
        await viewer.close()
        await pub.close()


async def test_quality_needs_the_subscribe_grant(sfu_node) -> None:
    pub, answer = await publish_simulcast(sfu_node)
    other = await RawSocket.open(sfu_node)
    try:
        await other.send(
            {"type": "join", "token": sfu_node.token("pub2", publish=True, subscribe=False)}
        )
        await other.next("joined")
        await other.error(
            {"type": "quality", "track_id": answer["tracks"][0]["id"], "quality": "low"},
            "forbidden",
        )
        # the publisher is not subscribed to its own track
        await pub.error(
            {"type": "quality", "track_id": answer["tracks"][0]["id"], "quality": "low"},
            "not_found",
        )
    finally:
        await other.close()
        await pub.close()


# -- layer_changed with media flowing --------------------------------------------------------------


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_layer_changed_events_follow_the_requested_quality() -> None:
    config = Config()
    config.rtc.bwe = False  # the requested quality alone decides (no estimate in the way)
    node = await start_node(config)
    pub = viewer = feeding = None
    try:
        pub, answer = await publish_simulcast(node)
        track_id = answer["tracks"][0]["id"]
        session = node.node.rooms.rooms["shop"].participants["pub"].publisher
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

        events: list[dict] = []
        viewer = await RoomClient.connect(node.url, node.token("viewer"), network=LOOPBACK)
        viewer.on("layer_changed", events.append)
        subscriber = node.node.rooms.rooms["shop"].participants["viewer"].subscriber
        await until(lambda: any(dt.forwarder for dt in subscriber.downtracks))
        feeding = asyncio.ensure_future(publish_frames())

        # no limit: the top layer
        await until(lambda: any(e["spatial"] == 2 for e in events))
        top = next(e for e in events if e["spatial"] == 2)
        assert top["track_id"] == track_id
        assert (top["rid"], top["width"], top["height"]) == ("f", 1280, 720)
        assert events[0]["reason"] == "start"

        for quality, spatial, reason in (("low", 0, "down"), ("medium", 1, "up")):
            seen = len(events)
            reply = await viewer.request(
                {"type": "quality", "track_id": track_id, "quality": quality}
            )
            assert reply["type"] == "quality_set" and reply["quality"] == quality
            await until(lambda seen=seen, s=spatial: any(e["spatial"] == s for e in events[seen:]))
            event = next(e for e in events[seen:] if e["spatial"] == spatial)
            assert event["reason"] == reason
            assert event["rid"] == "qhf"[spatial]
            assert (event["width"], event["height"]) == (
                streams[spatial].width,
                streams[spatial].height,
            )
            settled = len(events)
            await asyncio.sleep(0.4)  # more keyframes of every layer: no other layer
            assert all(e["spatial"] == spatial for e in events[settled:]), events[settled:]
        assert all(e["track_id"] == track_id for e in events)
    finally:
        if feeding is not None:
            feeding.cancel()
        if viewer is not None:
            await viewer.close()
        if pub is not None:
            await pub.close()
        await node.runner.cleanup()
