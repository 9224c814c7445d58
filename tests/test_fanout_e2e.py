"""An aiortc publisher -> SFU -> three aiortc subscribers, over WebSocket signalling."""

from __future__ import annotations

import asyncio

import pytest

from sfu.client import RoomClient

from .conftest import LOOPBACK
from .media_sources import (
    ColorVideoTrack,
    ToneAudioTrack,
    collect_audio,
    dominant_frequency,
    mean_rgb,
)

pytestmark = pytest.mark.slow

COLOUR = (200, 40, 40)
TONE_HZ = 660.0


async def _decoded_colour(track, frames: int = 10, timeout: float = 15.0):
    frame = None
    for _ in range(frames):
        frame = await asyncio.wait_for(track.recv(), timeout)
    return mean_rgb(frame), frame


async def test_publisher_to_three_subscribers(sfu_node):
    publisher = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    subscribers = []
    try:
        published = await publisher.publish([ColorVideoTrack(COLOUR), ToneAudioTrack(TONE_HZ)])
        assert {t["kind"] for t in published} == {"video", "audio"}
        for i in range(3):
            subscribers.append(
                await RoomClient.connect(
                    sfu_node.url, sfu_node.token(f"viewer{i}"), network=LOOPBACK
                )
            )
        for sub in subscribers:
            video = await sub.next_track(kind="video", timeout=15)
            audio = await sub.next_track(kind="audio", timeout=15)
            assert video.publisher == "host"
            (r, g, b), frame = await _decoded_colour(video.track)
            assert frame.width == 320 and frame.height == 240
            assert r > 150 and g < 90 and b < 90, (r, g, b)
            samples, rate = await collect_audio(audio.track, 0.5)
            assert abs(dominant_frequency(samples[-rate // 4 :], rate) - TONE_HZ) < 20
        # the SFU forwarded without decoding: every producer's packets went out to 3 subscribers
        stats = sfu_node.node.stats()
        host = next(p for p in stats["rooms"][0]["participants"] if p["identity"] == "host")
        assert all(p["subscribers"] == 3 for p in host["producers"])
    finally:
        for client in [publisher, *subscribers]:
            await client.leave()


async def test_unpublish_then_publish_does_not_revive_the_old_track(sfu_node):
    publisher = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    viewer = await RoomClient.connect(sfu_node.url, sfu_node.token("viewer"), network=LOOPBACK)
    try:
        first = await publisher.publish([ColorVideoTrack(COLOUR), ToneAudioTrack(TONE_HZ)])
        video_id = next(t["id"] for t in first if t["kind"] == "video")
        await publisher.unpublish(video_id)
        await viewer.wait_for("track_unpublished", lambda m: m["track_id"] == video_id)
        second = await publisher.publish([ColorVideoTrack((40, 40, 200))])
        assert [t["kind"] for t in second] == ["video"]
        assert second[0]["id"] != video_id and second[0]["mid"] != first[0]["mid"]
        room = sfu_node.node.rooms.rooms["shop"]
        assert video_id not in room.producers
        assert sorted(p.kind for p in room.producers.values()) == ["audio", "video"]
        track = await viewer.next_track(track_id=second[0]["id"], timeout=15)
        (r, g, b), _ = await _decoded_colour(track.track)
        assert b > 150 and r < 90, (r, g, b)
    finally:
        await publisher.leave()
        await viewer.leave()
