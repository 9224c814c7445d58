"""A Chromium viewer at node B plays a track published by an aiortc host at node A: the
browser sees a normal room (the SFU offers it the relayed track like a local one)."""

from __future__ import annotations

import asyncio
import time

import pytest

from sfu.client import RoomClient
from tests.browser import launch_chromium, screenshot, serve_pages
from tests.conftest import LOOPBACK, start_node
from tests.media_sources import ColorVideoTrack, ToneAudioTrack

from .conftest import RedisServer, unique_prefix
from .test_nodes import cluster_config

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.redis]


async def test_chromium_viewer_at_b_plays_a_host_at_a(redis_server: RedisServer):
    prefix = unique_prefix()
    a = await start_node(cluster_config(redis_server.url, prefix, "sa-east", "sa-1"))
    b = await start_node(cluster_config(redis_server.url, prefix, "eu-west", "eu-1"))
    host = None
    try:
        host = await RoomClient.connect(a.url, a.token("host"), network=LOOPBACK)
        await host.publish([ColorVideoTrack((200, 40, 40)), ToneAudioTrack(440.0)])
        async with launch_chromium() as browser, serve_pages() as pages:
            page = await browser.open(pages.url("interop.html"))
            ws_url = b.url.replace("http://", "ws://") + "/rtc"
            joined = await page.evaluate(
                "([url, token]) => wsPlay(url, token)",
                [ws_url, b.token("webviewer", subscribe=True)],
            )
            assert joined["type"] == "joined"
            assert {p["identity"]: p["node_id"] for p in joined["participants"]} == {"host": "sa-1"}
            deadline = time.monotonic() + 20
            colour = None
            while time.monotonic() < deadline:
                colour = await page.evaluate("remoteColour()")
                if colour and colour[0] > 150 and colour[2] < 90:
                    break
                await asyncio.sleep(0.25)
            assert colour and colour[0] > 150 and colour[2] < 90, f"Chromium shows {colour}"
            stats = await page.evaluate("receiveStats()")
            assert stats["video"]["framesDecoded"] > 0 and stats["audio"]["packetsReceived"] > 0
            await screenshot(page, "relay-chromium-viewer-at-b.png")
            assert not await page.evaluate("sfuState.errors"), browser.problems()
            assert len(a.node.relay_origin.relays) == 1  # the browser's media came over it
    finally:
        if host is not None:
            await host.close()
        await b.runner.cleanup()
        await a.runner.cleanup()
