"""Fast connect against a real browser: the SFU is the DTLS client and sends before the end.

A Chromium viewer joins with the browser SDK while an aiortc publisher is live. On the SFU's
subscriber connection to it this pins (see MediaPeer and docs/protocol.md, "Fast join"):

* the offer says `a=setup:active` and Chromium answers `passive`: the SFU is the DTLS client,
  Chromium the server (its own getStats() says so);
* ICE was used on Chromium's first check, before the SFU's own check was answered;
* SRTP keys were taken at the SFU's Finished (false start), before Chromium's Finished came
  back, and the cached keyframe sent then was decoded: the page shows a frame.

The round trip this saves is measured by benchmarks/join_time.py --rtt-ms 250 (root).
"""

from __future__ import annotations

import pytest

from benchmarks.join_time import VIEWER_JS
from sfu.client import RoomClient

from .browser import launch_chromium
from .conftest import LOOPBACK
from .media_sources import ColorVideoTrack, ToneAudioTrack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOM = "shop"

TRANSPORT_JS = """
async () => {
  const stats = await window.__room.subscriberPc.getStats();
  for (const s of stats.values()) if (s.type === "transport") return s;
  return null;
}
"""


async def test_sfu_is_dtls_client_and_keys_before_chromium_finishes(sfu_node):
    publisher = await RoomClient.connect(
        sfu_node.url, sfu_node.token("shopkeeper", publish=True), network=LOOPBACK
    )
    try:
        await publisher.publish([ColorVideoTrack((200, 40, 40)), ToneAudioTrack(440.0)])
        async with launch_chromium() as browser:
            page = await browser.open(f"{sfu_node.url}/healthz")
            result = await page.evaluate(
                VIEWER_JS,
                {
                    "sdkUrl": f"{sfu_node.url}/sdk/sfu-client.js",
                    "url": sfu_node.url,
                    "token": sfu_node.token("viewer", subscribe=True),
                    "options": {},
                    "timeoutMs": 15000,
                },
            )
            assert result["width"] > 0, result  # a frame was shown

            participant = sfu_node.node.rooms.rooms[ROOM].participants["viewer"]
            peer = participant.subscriber.peer
            assert "a=setup:active" in peer.local_sdp()
            assert "a=setup:passive" in peer.pc.remoteDescription.sdp
            assert peer.dtls_role == "client"
            transport = await page.evaluate(TRANSPORT_JS)
            assert transport["dtlsState"] == "connected", transport
            if "dtlsRole" in transport:
                assert transport["dtlsRole"] == "server", transport

            marks = peer.marks
            assert "ice_early" in marks, marks  # used on Chromium's check
            assert marks["ice_usable"] <= marks.get("ice_nominated", float("inf")), marks
            assert peer.false_started, marks
            assert marks["dtls_keys"] < marks["dtls_done"], marks
            assert peer._dtls._ssl.get_protocol_version_name() == "DTLSv1.2"
            # the first picture was the cached keyframe, sent at false start
            room = next(r for r in sfu_node.node.stats()["rooms"] if r["name"] == ROOM)
            entry = next(p for p in room["participants"] if p["identity"] == "viewer")
            video = [d for d in entry["downtracks"] if d["kind"] == "video"]
            assert video and video[0].get("keyframes_from_cache", 0) >= 1, video
            assert not browser.page_errors, browser.problems()
    finally:
        await publisher.leave()
