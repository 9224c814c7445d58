"""RED audio end to end: a Chromium publisher that sends RED (the SFU's answer lists it first),
a Chromium viewer that accepts RED (the SFU's offer proposes it) and an aiortc viewer that does
not (it gets plain Opus unwrapped by the SFU). Audio must arrive, and decode, at both.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sfu.client import RoomClient

from .browser import launch_chromium, serve_pages
from .conftest import LOOPBACK
from .media_sources import collect_audio
from .test_browser_interop import ROOM, _participant, _poll

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _audio_downtrack(node, identity: str) -> dict:
    viewer = _participant(node, identity)
    return next(d for d in viewer["downtracks"] if d["kind"] == "audio")


async def test_chromium_red_publisher_to_red_and_plain_viewers(sfu_node):
    aiortc_viewer = await RoomClient.connect(
        sfu_node.url, sfu_node.token("aiortc-viewer", subscribe=True), network=LOOPBACK
    )
    try:
        async with launch_chromium() as browser, serve_pages() as pages:
            publisher = await browser.open(pages.url("interop.html"))
            token = sfu_node.token("seller", publish=True)
            reply = await publisher.evaluate(
                "([base, room, token]) => whipPublish(base, room, token)",
                [sfu_node.url, ROOM, token],
            )
            assert reply["status"] == 201, reply
            audio_mline = next(x for x in reply["body"].splitlines() if x.startswith("m=audio"))
            assert audio_mline.split()[3] == "63", audio_mline  # RED first: Chromium sends it

            await _poll(
                publisher,
                "sendStats()",
                lambda s: bool(s["audio"] and s["audio"]["packetsSent"] > 10),
                timeout=15,
            )
            # (Chromium's stats name the Opus inside; the SFU counts what came as RED)
            seller = _participant(sfu_node.node, "seller")
            audio_producer = next(p for p in seller["producers"] if p["kind"] == "audio")
            assert audio_producer["red"], audio_producer
            assert audio_producer["red_packets"] > 0.9 * audio_producer["packets"], audio_producer

            viewer = await browser.open(pages.url("interop.html"))
            ws_url = sfu_node.url.replace("http://", "ws://") + "/rtc"
            joined = await viewer.evaluate(
                "([url, token]) => wsPlay(url, token)",
                [ws_url, sfu_node.token("chromium-viewer", subscribe=True)],
            )
            assert joined["type"] == "joined"

            def _hearing(stats: dict) -> bool:
                return bool(stats["audio"] and stats["audio"]["totalSamplesReceived"] > 48000)

            first = await _poll(viewer, "receiveStats()", _hearing, timeout=20)
            assert _hearing(first), f"{first}\n{browser.problems()}"
            await asyncio.sleep(2.0)
            later = await viewer.evaluate("receiveStats()")
            a0, a1 = first["audio"], later["audio"]
            samples = a1["totalSamplesReceived"] - a0["totalSamplesReceived"]
            concealed = a1["concealedSamples"] - a0["concealedSamples"]
            assert samples > 48000, (a0, a1)
            # RED blocks the decoder could not use would be concealed (nearly all of them)
            assert concealed / samples < 0.3, (a0, a1)
            assert a1["packetsReceived"] > a0["packetsReceived"], (a0, a1)
            assert _audio_downtrack(sfu_node.node, "chromium-viewer")["red"]

            # the aiortc viewer decodes plain Opus: the fake microphone's beep is there
            track = await aiortc_viewer.next_track(kind="audio", timeout=15)
            pcm, rate = await collect_audio(track.track, 2.0)
            assert rate == 48000 and len(pcm) >= 2 * rate
            assert int(np.abs(pcm).max()) > 1000, int(np.abs(pcm).max())
            plain = _audio_downtrack(sfu_node.node, "aiortc-viewer")
            assert not plain["red"] and plain["packets_sent"] > 50, plain
            assert not browser.page_errors, browser.problems()
    finally:
        await aiortc_viewer.leave()
