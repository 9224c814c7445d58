"""The browser SDK's HTTP join (`POST /rtc/join`, docs/protocol.md "Fast join") with Chromium:
the first frame is decoded, the WebSocket attaches to the joined participant and delivers what
happened before it did; from another origin (CORS) too; and when the HTTP join is refused the
SDK joins over the WebSocket by itself."""

from __future__ import annotations

import asyncio

import pytest

from sfu.api import websocket
from sfu.api.http_join import HTTP_JOINS_KEY
from sfu.client import RoomClient

from .browser import launch_chromium, serve_pages
from .conftest import LOOPBACK
from .media_sources import ColorVideoTrack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# connect(), then the first decoded frame; the events that came, and how the SDK joined
JOIN_JS = """
async ({url, token, options}) => {
  const { connect } = await import(url + "/sdk/sfu-client.js");
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  document.body.appendChild(video);
  const t0 = performance.now();
  let room;
  try {
    room = await connect(url, token, options);
  } catch (err) {
    return { error: err.code || String(err) };
  }
  window.__room = room;
  const events = [];
  room.on("participantJoined", (p) => events.push(["participantJoined", p.identity]));
  room.on("data", (m) => events.push(["data", m.from, m.payload]));
  room.on("error", (e) => events.push(["error", e.code]));
  window.__events = events;
  const joinPath = room.joinPath;
  const frameMs = await new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error("no frame")), 10000);
    const attach = (remote) => {
      if (remote.kind !== "video" || video.srcObject) return;
      video.srcObject = remote.stream;
      video.requestVideoFrameCallback(() => resolve(performance.now() - t0));
    };
    for (const remote of room.remoteTracks.values()) attach(remote);
    room.on("trackSubscribed", attach);
  });
  return { frameMs, joinPath, width: video.videoWidth, identity: room.localParticipant.identity };
}
"""

WAIT_EVENTS_JS = """
async (count) => {
  for (let i = 0; i < 500 && window.__events.length < count; i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  return { events: window.__events, timings: window.__room.timings, state: window.__room.state };
}
"""


async def test_browser_http_join_attaches_and_gets_what_happened_before(sfu_node, monkeypatch):
    pub = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    others: list[RoomClient] = []
    original_attach = websocket._attach

    async def attach_after_events(joins, ws, session_id):
        # Between the HTTP join and the socket's attach: someone joins and says hello.
        session = joins.get(session_id)
        if session is not None and not others:
            other = await RoomClient.connect(
                sfu_node.url, sfu_node.token("latecomer"), network=LOOPBACK
            )
            others.append(other)
            await other.send({"type": "data", "topic": "chat", "payload": {"text": "hello"}})
            queue = session.connection.participant.events
            for _ in range(200):
                if queue.qsize() >= 2:
                    break
                await asyncio.sleep(0.01)
        await original_attach(joins, ws, session_id)

    monkeypatch.setattr(websocket, "_attach", attach_after_events)
    try:
        await pub.publish([ColorVideoTrack((200, 30, 30))], sources=["camera"])
        async with launch_chromium() as browser:
            page = await browser.open(f"{sfu_node.url}/healthz")  # a page from the node
            token = sfu_node.token("viewer", publish=False, subscribe=True)
            result = await page.evaluate(
                JOIN_JS, {"url": sfu_node.url, "token": token, "options": {}}
            )
            assert result.get("joinPath") == "http", result
            assert result["width"] == 320, result
            state = await page.evaluate(WAIT_EVENTS_JS, 2)
            events = state["events"]
            assert ["participantJoined", "latecomer"] in events, state
            assert ["data", "latecomer", {"text": "hello"}] in events, state
            assert events.index(["participantJoined", "latecomer"]) < events.index(
                ["data", "latecomer", {"text": "hello"}]
            )
            timings = state["timings"]
            # the offer came with the HTTP reply (the answer goes by POST or, when the socket
            # is open first, as on a fast loopback, over it)
            assert timings["joined"] <= timings["offer"] <= timings["answerSent"], timings
            assert timings["wsOpen"] <= timings["attached"], timings
            # the server: one participant, its session attached, its join made over HTTP
            participant = sfu_node.node.rooms.rooms["shop"].participants["viewer"]
            sessions = list(sfu_node.app[HTTP_JOINS_KEY].sessions.values())
            assert [s.connection.participant for s in sessions] == [participant]
            assert sessions[0].attached
            join = participant.join_timeline.to_json()
            assert join["http_join"] is True and "attached" in join["ms"]
            # data the page sends goes over the attached socket
            await page.evaluate("window.__room.sendData({text: 'hi'}, {topic: 'chat'})")
            message = await pub.wait_for("data", lambda m: m["from"] == "viewer", timeout=5)
            assert message["payload"] == {"text": "hi"}
            # leaving cleans up: no participant, no session
            await page.evaluate("window.__room.disconnect()")
            for _ in range(200):
                if "viewer" not in sfu_node.node.rooms.rooms["shop"].participants:
                    break
                await asyncio.sleep(0.02)
            assert "viewer" not in sfu_node.node.rooms.rooms["shop"].participants
            assert sfu_node.app[HTTP_JOINS_KEY].sessions == {}
            assert browser.page_errors == [], browser.problems()
    finally:
        for other in others:
            await other.leave()
        await pub.leave()


async def test_browser_falls_back_to_the_websocket_join(sfu_node):
    pub = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    try:
        await pub.publish([ColorVideoTrack((30, 30, 200))])
        async with launch_chromium() as browser, serve_pages() as pages:
            page = await browser.open(f"{sfu_node.url}/healthz")
            results = {}
            # refused by something in front of the node (no such route), a network error
            # (e.g. CORS), or turned off: each joins over the WebSocket instead
            await page.route("**/rtc/join", lambda route: route.fulfill(status=404, body="no"))
            results["404"] = await page.evaluate(
                JOIN_JS,
                {"url": sfu_node.url, "token": sfu_node.token("v404"), "options": {}},
            )
            await page.unroute("**/rtc/join")
            await page.route("**/rtc/join", lambda route: route.abort())
            results["network"] = await page.evaluate(
                JOIN_JS,
                {"url": sfu_node.url, "token": sfu_node.token("vnet"), "options": {}},
            )
            await page.unroute("**/rtc/join")
            off = {"httpJoin": False}
            results["off"] = await page.evaluate(
                JOIN_JS, {"url": sfu_node.url, "token": sfu_node.token("voff"), "options": off}
            )
            for label, result in results.items():
                assert result.get("joinPath") == "websocket", (label, result)
                assert result["width"] == 320, (label, result)
            assert sfu_node.app[HTTP_JOINS_KEY].sessions == {}
            # a refusal of the join itself is final: no second try over the WebSocket
            result = await page.evaluate(
                JOIN_JS, {"url": sfu_node.url, "token": "forged", "options": {}}
            )
            assert result == {"error": "unauthorized"}
            joins = sfu_node.node.stats()["joins"]["count"]
            assert joins == 4  # host + three fallbacks; the forged one never joined

            # from a page of another origin (a shop embedding the SDK): CORS lets it through
            cross = await browser.open(pages.url("interop.html"))
            result = await cross.evaluate(
                JOIN_JS, {"url": sfu_node.url, "token": sfu_node.token("vcors"), "options": {}}
            )
            assert result.get("joinPath") == "http", result
            assert result["width"] == 320, result
            assert browser.page_errors == [], browser.problems()
    finally:
        await pub.leave()
