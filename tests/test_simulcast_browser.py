"""Chromium's real simulcast sender -> SFU -> Chromium subscribers that ask for a quality.

The publisher is the browser SDK's `publishCamera({simulcast: true})` on Chromium's fake
camera at 1280x720, so the SFU receives rids q/h/f (320x180, 640x360, 1280x720). Subscribers
ask for low, then high quality with `setQuality`; the decoded frame width read through
getStats() must follow within a few seconds, and the decoder must report no errors (a broken
layer switch shows as frames dropped/undecodable or a stalled framesDecoded).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .browser import launch_chromium
from .conftest import start_node
from .test_browser_interop import _poll

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOM = "shop"

PAGE_HELPERS = """
window.sfu = await import("/sdk/sfu-client.js");
window.videoStats = async () => {
  const { subscriber } = await window.room.getStats();
  let out = null;
  if (!subscriber) return null;
  subscriber.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out = { framesDecoded: s.framesDecoded || 0, frameWidth: s.frameWidth || 0,
              frameHeight: s.frameHeight || 0, keyFramesDecoded: s.keyFramesDecoded || 0,
              freezeCount: s.freezeCount || 0, framesDropped: s.framesDropped || 0,
              packetsLost: s.packetsLost || 0, nackCount: s.nackCount || 0,
              pliCount: s.pliCount || 0 };
    }
  });
  return out;
};
"""


async def _open(browser, node, identity: str, publish: bool):
    page = await browser.open(f"{node.url}/healthz")
    token = node.token(identity, publish=publish, subscribe=True)
    await page.evaluate(
        "async ([helpers, url, token]) => {"
        "  await (new Function('return (async () => {' + helpers + '})()'))();"
        "  window.layerEvents = [];"
        "  window.room = await window.sfu.connect(url, token, {sendQualityMessages: true});"
        "  window.room.on('qualityChanged', (e) => window.layerEvents.push(e));"
        "}",
        [PAGE_HELPERS, node.url, token],
    )
    return page


def _subscriber_entry(node, identity: str) -> dict:
    room = next(r for r in node.node.stats()["rooms"] if r["name"] == ROOM)
    return next(p for p in room["participants"] if p["identity"] == identity)


async def test_chromium_simulcast_follows_requested_quality():
    node = await start_node()
    try:
        async with launch_chromium() as browser:
            host = await _open(browser, node, "host", publish=True)
            await host.evaluate("window.room.publishCamera({simulcast: true})")
            viewer = await _open(browser, node, "viewer", publish=False)

            # the SFU sees three layers, each measured and with its size from a keyframe
            producer = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                room = node.node.rooms.rooms.get(ROOM)
                producers = list(room.producers.values()) if room else []
                producer = next((p for p in producers if p.kind == "video"), None)
                if producer and all(e.width and e.packets > 50 for e in producer.layers):
                    break
                await asyncio.sleep(0.25)
            assert producer is not None and producer.simulcast, "no simulcast producer"
            widths = [e.width for e in producer.layers]
            assert [e.rid for e in producer.layers] == ["q", "h", "f"]
            assert widths == sorted(widths) and widths[0] < widths[-1], widths
            assert widths[-1] == 1280, widths

            track_id = producer.id
            started = await _poll(
                viewer,
                "videoStats()",
                lambda s: bool(s) and s["framesDecoded"] > 20,
                timeout=20,
            )
            assert started and started["framesDecoded"] > 20, (
                f"no video: {started}\nSFU: {_subscriber_entry(node, 'viewer')}"
            )

            # low: the smallest layer's width
            await viewer.evaluate(f"window.room.setQuality('{track_id}', {{quality: 'low'}})")
            low = await _poll(
                viewer, "videoStats()", lambda s: s["frameWidth"] == widths[0], timeout=8
            )
            assert low["frameWidth"] == widths[0], (low, widths)
            decoded_low = low["framesDecoded"]
            await asyncio.sleep(1.0)
            low_later = await viewer.evaluate("videoStats()")
            assert low_later["framesDecoded"] > decoded_low + 10, "video stalled on the low layer"

            # high: the top layer's width
            await viewer.evaluate(f"window.room.setQuality('{track_id}', {{quality: 'high'}})")
            high = await _poll(
                viewer, "videoStats()", lambda s: s["frameWidth"] == widths[-1], timeout=8
            )
            assert high["frameWidth"] == widths[-1], (high, widths)
            await asyncio.sleep(1.5)
            end = await viewer.evaluate("videoStats()")
            assert end["framesDecoded"] > high["framesDecoded"] + 15, "stalled after switching up"
            assert end["frameWidth"] == widths[-1]
            # a continuous stream: nothing was announced and lost, no frames dropped as broken
            assert end["packetsLost"] <= 2, end
            # (Chromium drops a few frames when the machine is busy: allow 10 %)
            assert end["framesDropped"] <= 0.1 * end["framesDecoded"], end

            # the SFU's view and the subscriber's events agree
            entry = _subscriber_entry(node, "viewer")
            [video] = [d for d in entry["downtracks"] if d["kind"] == "video"]
            assert video["spatial_layer"] == 2 and video["layer_switches"] >= 2, video
            assert entry["bandwidth"]["enabled"] is True
            events = await viewer.evaluate("window.layerEvents")
            assert [e["spatial"] for e in events][-2:] == [0, 2], events
            assert browser.page_errors == [], browser.problems()
    finally:
        await node.runner.cleanup()
