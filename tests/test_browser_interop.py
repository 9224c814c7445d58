"""Headless Chromium against the SFU, in both directions, over standard protocols.

(a) Chromium publishes its fake camera and microphone over WHIP; an aiortc subscriber (our
    RoomClient) decodes the video and audio.
(b) An aiortc publisher sends colour video and a tone; Chromium plays them over WHEP, and over
    our WebSocket protocol (where the SFU is the offerer). getStats() in the page must show
    frames decoded and audio received.
The page (tests/pages/interop.html) is served from another origin than the SFU, like a shop's
page would be, so the WHIP/WHEP CORS headers are exercised as well.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sfu.client import RoomClient

from .browser import launch_chromium, save_frame, screenshot, serve_pages
from .conftest import LOOPBACK
from .media_sources import ColorVideoTrack, ToneAudioTrack, collect_audio, mean_rgb

pytestmark = [pytest.mark.browser, pytest.mark.slow]

COLOUR = (200, 40, 40)
BLUE = (40, 40, 200)
ROOM = "shop"


async def _poll(page, script: str, ready: Callable[[Any], bool], timeout: float) -> Any:
    """Evaluate `script` in the page until `ready(result)`; the last result either way."""
    deadline = time.monotonic() + timeout
    while True:
        result = await page.evaluate(script)
        if ready(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.25)


def _participant(node, identity_prefix: str) -> dict:
    room = next(r for r in node.stats()["rooms"] if r["name"] == ROOM)
    return next(p for p in room["participants"] if p["identity"].startswith(identity_prefix))


async def _aiortc_publisher(sfu_node) -> tuple[RoomClient, dict[str, str]]:
    publisher = await RoomClient.connect(
        sfu_node.url, sfu_node.token("shopkeeper", publish=True), network=LOOPBACK
    )
    published = await publisher.publish([ColorVideoTrack(COLOUR), ToneAudioTrack(440.0)])
    return publisher, {t["kind"]: t["id"] for t in published}


def _decoding(stats: dict, frames: int = 10) -> bool:
    video, audio = stats.get("video"), stats.get("audio")
    return bool(
        video
        and audio
        and video["framesDecoded"] > frames
        and audio["packetsReceived"] > 0
        and stats.get("videoWidth", 0) > 0
    )


async def _assert_chromium_plays(page, browser, name: str) -> dict:
    """Frames decoded (> 10) and audio packets/bytes rising, read through getStats()."""
    first = await _poll(page, "receiveStats()", _decoding, timeout=20)
    assert _decoding(first), f"Chromium is not decoding: {first}\npage errors: {browser.problems()}"
    await asyncio.sleep(1.0)
    later = await page.evaluate("receiveStats()")
    video, audio = later["video"], later["audio"]
    assert video["framesDecoded"] > first["video"]["framesDecoded"], (first, later)
    assert audio["packetsReceived"] > first["audio"]["packetsReceived"], (first, later)
    assert audio["bytesReceived"] > first["audio"]["bytesReceived"], (first, later)
    assert video["mimeType"].lower() == "video/vp8" and audio["mimeType"].lower() == "audio/opus"
    assert later["videoWidth"] == 320 and later["videoHeight"] == 240, later
    assert video["frameWidth"] == 320, later
    colour = await page.evaluate("remoteColour()")
    assert colour is not None
    r, g, b = colour
    assert r > 150 and g < 90 and b < 90, f"Chromium shows {colour}, expected about {COLOUR}"
    await screenshot(page, name)
    assert not browser.page_errors, browser.problems()
    assert not await page.evaluate("sfuState.errors"), browser.problems()
    return later


async def test_chromium_whip_publisher_to_aiortc_subscriber(sfu_node):
    viewer = await RoomClient.connect(
        sfu_node.url, sfu_node.token("viewer", subscribe=True), network=LOOPBACK
    )
    try:
        async with launch_chromium() as browser, serve_pages() as pages:
            page = await browser.open(pages.url("interop.html"))
            token = sfu_node.token("chromium", publish=True)
            reply = await page.evaluate(
                "([base, room, token]) => whipPublish(base, room, token)",
                [sfu_node.url, ROOM, token],
            )
            assert reply["status"] == 201, reply
            assert reply["contentType"].startswith("application/sdp")
            assert reply["location"].startswith(f"/whip/{ROOM}/"), reply  # CORS exposes it

            video = await viewer.next_track(kind="video", timeout=15)
            audio = await viewer.next_track(kind="audio", timeout=15)
            assert video.publisher == audio.publisher == "chromium"

            frames = []
            for _ in range(15):
                frames.append(await asyncio.wait_for(video.track.recv(), 10))
            sizes = {(f.width, f.height) for f in frames}
            assert all(w > 0 and h > 0 for w, h in sizes), sizes
            # Chromium's fake camera draws a moving pattern on a mostly green background
            r, g, b = mean_rgb(frames[-1])
            assert g > r and g > b, (r, g, b)
            save_frame(frames[-1], "browser-whip-aiortc-decoded.png")

            samples, rate = await collect_audio(audio.track, 1.5)
            assert rate == 48000
            assert len(samples) >= int(1.5 * rate)
            # the fake microphone beeps once a second: there must be sound, not only silence
            assert int(np.abs(samples).max()) > 1000, int(np.abs(samples).max())

            sent = await page.evaluate("sendStats()")
            assert sent["connectionState"] == "connected", sent
            assert sent["video"]["framesEncoded"] > 10, sent
            plis_before = sent["video"]["pliCount"]

            chromium = _participant(sfu_node.node, "chromium")
            assert {p["kind"] for p in chromium["producers"]} == {"audio", "video"}
            assert all(p["packets"] > 0 and p["subscribers"] == 1 for p in chromium["producers"])
            viewer_stats = _participant(sfu_node.node, "viewer")
            assert all(d["packets_sent"] > 0 for d in viewer_stats["downtracks"]), viewer_stats

            # A late viewer needs a keyframe now: the SFU's PLI must reach Chromium's encoder
            # (which sends no periodic keyframes) and the new viewer must decode.
            late = await RoomClient.connect(
                sfu_node.url, sfu_node.token("late", subscribe=True), network=LOOPBACK
            )
            try:
                late_video = await late.next_track(kind="video", timeout=10)
                frame = await asyncio.wait_for(late_video.track.recv(), 5)
                assert frame.width > 0 and frame.height > 0
            finally:
                await late.leave()
            # (Chromium counts the PLI when its RTCP arrives and caches getStats results for
            # a moment: read until it shows, within a bound)
            for _ in range(30):
                sent = await page.evaluate("sendStats()")
                if sent["video"]["pliCount"] > plis_before:
                    break
                await asyncio.sleep(0.1)
            assert sent["video"]["pliCount"] > plis_before, sent

            await screenshot(page, "browser-whip-publisher.png")
            status = await page.evaluate(
                "([base, location, token]) => endSession(base, location, token)",
                [sfu_node.url, reply["location"], token],
            )
            assert status == 200
            gone = await viewer.wait_for("track_unpublished", timeout=10)
            assert gone["track_id"] in (video.track_id, audio.track_id)
            assert not browser.page_errors, browser.problems()
    finally:
        await viewer.leave()


async def test_aiortc_publisher_to_chromium_whep_player(sfu_node):
    publisher, track_ids = await _aiortc_publisher(sfu_node)
    try:
        async with launch_chromium() as browser, serve_pages() as pages:
            page = await browser.open(pages.url("interop.html"))
            token = sfu_node.token("player", subscribe=True)
            reply = await page.evaluate(
                "([base, room, token]) => whepPlay(base, room, token)",
                [sfu_node.url, ROOM, token],
            )
            assert reply["status"] == 201, reply
            assert reply["location"].startswith(f"/whep/{ROOM}/"), reply
            await _assert_chromium_plays(page, browser, "browser-whep-subscriber.png")
            player = _participant(sfu_node.node, "player#whep")
            sent = {d["track_id"]: d["packets_sent"] for d in player["downtracks"]}
            assert set(sent) == set(track_ids.values()) and all(sent.values()), player
            status = await page.evaluate(
                "([base, location, token]) => endSession(base, location, token)",
                [sfu_node.url, reply["location"], token],
            )
            assert status == 200
    finally:
        await publisher.leave()


async def test_aiortc_publisher_to_chromium_over_websocket(sfu_node):
    """The SFU is the offerer here: Chromium must accept its offers and decode the media."""
    publisher, track_ids = await _aiortc_publisher(sfu_node)
    try:
        async with launch_chromium() as browser, serve_pages() as pages:
            page = await browser.open(pages.url("interop.html"))
            ws_url = sfu_node.url.replace("http://", "ws://") + "/rtc"
            joined = await page.evaluate(
                "([url, token]) => wsPlay(url, token)",
                [ws_url, sfu_node.token("webviewer", subscribe=True)],
            )
            assert joined["type"] == "joined" and joined["room"] == ROOM
            assert {t["id"] for t in joined["tracks"]} == set(track_ids.values())
            await _assert_chromium_plays(page, browser, "browser-ws-subscriber.png")
            events = await page.evaluate("sfuState.events")
            offered = {}
            for event in events:
                if event["type"] == "offer":
                    offered.update(event["tracks"])
            assert set(offered.values()) == set(track_ids.values()), events
            mid_of = {track_id: mid for mid, track_id in offered.items()}
            mids = {kind: mid_of[track_id] for kind, track_id in track_ids.items()}
            viewer = _participant(sfu_node.node, "webviewer")
            assert viewer["subscriber_state"] == "connected", viewer
            assert all(d["packets_sent"] > 0 for d in viewer["downtracks"]), viewer

            # Renegotiation, SFU offering: the publisher leaves (its m-lines go inactive), then
            # another one publishes blue video and audio, which reuse those m-lines.
            await publisher.leave()
            await _poll(page, "sfuState.offers", lambda n: n >= 2, timeout=10)
            publisher = await RoomClient.connect(
                sfu_node.url, sfu_node.token("shopkeeper2", publish=True), network=LOOPBACK
            )
            published = await publisher.publish([ColorVideoTrack(BLUE), ToneAudioTrack(660.0)])
            new_ids = {t["kind"]: t["id"] for t in published}
            offers = await _poll(page, "sfuState.offers", lambda n: n >= 3, timeout=10)
            events = await page.evaluate("sfuState.events")
            assert offers >= 3, events
            last_offer = [e for e in events if e["type"] == "offer"][-1]
            reused = {mid: new_ids[kind] for kind, mid in mids.items()}
            assert last_offer["tracks"] == reused, (last_offer, reused)
            colour = await _poll(
                page, "remoteColour()", lambda c: bool(c) and c[2] > 150 and c[0] < 90, timeout=10
            )
            assert colour and colour[2] > 150 and colour[0] < 90, f"Chromium shows {colour}"
            before = await page.evaluate("receiveStats()")
            await asyncio.sleep(0.5)
            after = await page.evaluate("receiveStats()")
            assert after["video"]["framesDecoded"] > before["video"]["framesDecoded"]
            assert after["audio"]["packetsReceived"] > before["audio"]["packetsReceived"]
            await screenshot(page, "browser-ws-subscriber-renegotiated.png")
            assert not await page.evaluate("sfuState.errors"), browser.problems()
            await page.evaluate("sfuState.ws.send(JSON.stringify({type: 'leave'}))")
            types = await _poll(
                page,
                "sfuState.events.map(e => e.type)",
                lambda types: "closed" in types,
                timeout=5,
            )
            assert types[-2:] == ["left", "closed"], types
            assert not [
                p
                for p in sfu_node.node.stats()["rooms"][0]["participants"]
                if p["identity"] == "webviewer"
            ]
    finally:
        await publisher.leave()
