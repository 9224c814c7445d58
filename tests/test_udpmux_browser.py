"""Chromium behind the node's one UDP port (media.udp_port): two players in one browser, over
WHEP and over our WebSocket protocol, and the aiortc publisher they watch, all on one socket."""

from __future__ import annotations

import pytest

from .browser import launch_chromium, serve_pages
from .test_browser_interop import ROOM, _aiortc_publisher, _assert_chromium_plays, _participant
from .test_udpmux import candidate_ports, mux_node, node_peers  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_chromium_players_share_the_one_port(mux_node):  # noqa: F811
    port = mux_node.config.media.udp_port
    publisher, track_ids = await _aiortc_publisher(mux_node)
    try:
        async with launch_chromium() as browser, serve_pages() as pages:
            whep = await browser.open(pages.url("interop.html"))
            reply = await whep.evaluate(
                "([base, room, token]) => whepPlay(base, room, token)",
                [mux_node.url, ROOM, mux_node.token("player", subscribe=True)],
            )
            assert reply["status"] == 201, reply
            ws = await browser.open(pages.url("interop.html"))
            joined = await ws.evaluate(
                "([url, token]) => wsPlay(url, token)",
                [
                    mux_node.url.replace("http://", "ws://") + "/rtc",
                    mux_node.token("webviewer", subscribe=True),
                ],
            )
            assert joined["type"] == "joined", joined
            await _assert_chromium_plays(whep, browser, "udpmux-whep.png")
            await _assert_chromium_plays(ws, browser, "udpmux-ws.png")
            peers = node_peers(mux_node)
            assert len(peers) == 3  # the publisher, the WHEP player, the WebSocket player
            for peer in peers:
                assert candidate_ports(peer.pc.localDescription.sdp) == {port}
            assert mux_node.node.network.sockets.muxes["127.0.0.1"].peers == 3
            for identity in ("player#whep", "webviewer"):
                viewer = _participant(mux_node.node, identity)
                assert all(d["packets_sent"] > 0 for d in viewer["downtracks"]), viewer
    finally:
        await publisher.leave()
