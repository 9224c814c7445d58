"""The demo pages and the browser SDK, driven in headless Debian Chromium.

A live sale (host page → viewer page), a 1-to-1 consultation (two pages that see and hear each
other), the agent page (with a Python stand-in for the agent), chat, pinned products, and the
cleanup on the server when a page disconnects or closes. Screenshots land in test-output/.
The demo token endpoint must exist only when `server.demo_tokens` is on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from sfu import Config
from sfu.auth import verify_token
from sfu.client import RoomClient

from .browser import launch_chromium, screenshot
from .conftest import LOOPBACK, RunningNode, start_node

DESKTOP = {"width": 1180, "height": 800}
PHONE = {"width": 390, "height": 844}


@asynccontextmanager
async def demo_node(enabled: bool = True) -> AsyncIterator[RunningNode]:
    config = Config()
    config.server.demo_tokens = enabled
    node = await start_node(config)
    try:
        yield node
    finally:
        await node.runner.cleanup()


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _participants(node: RunningNode, room: str) -> list[dict]:
    for entry in node.node.stats()["rooms"]:
        if entry["name"] == room:
            return entry["participants"]
    return []


def _identities(node: RunningNode, room: str) -> set[str]:
    return {p["identity"] for p in _participants(node, room)}


async def _wait_js(page, expression: str, timeout: float = 15.0):
    """Wait until `expression` is truthy in the page; its value."""
    handle = await page.wait_for_function(expression, timeout=timeout * 1000, polling=100)
    return await handle.json_value()


async def _stats(page, selector: str) -> dict:
    return await page.evaluate("(s) => demo.stats(s)", selector)


async def _assert_playing(page, selector: str, *, audio: bool, who: str) -> dict:
    """videoWidth > 0 and framesDecoded (and inbound audio packets) rising."""
    ready = "s => demo.room && demo.stats(s).then(r => r.videoWidth > 0 && r.framesDecoded > 0)"
    await page.wait_for_function(f"({ready})('{selector}')", timeout=20000, polling=200)
    first = await _stats(page, selector)
    await asyncio.sleep(1.2)
    later = await _stats(page, selector)
    assert later["videoWidth"] > 0 and later["videoHeight"] > 0, (who, later)
    assert later["framesDecoded"] > first["framesDecoded"] + 5, (who, first, later)
    if audio:
        assert later["audioPackets"] > first["audioPackets"] + 10, (who, first, later)
    return later


async def _shot(page, name: str) -> None:
    """A screenshot from the top of the page (typing in the chat may have scrolled it)."""
    await page.evaluate("window.scrollTo(0, 0)")
    await screenshot(page, name)


async def _chat(page, text: str) -> None:
    await page.fill("#chat .chat-form input", text)
    await page.click("#chat .chat-form button")


async def _chat_received(page, text: str) -> None:
    await page.wait_for_function(
        "t => [...document.querySelectorAll('#chat .chat-log li:not(.mine)')]"
        ".some(li => li.textContent.includes(t))",
        arg=text,
        timeout=10000,
    )


async def _no_page_errors(browser, *pages) -> None:
    assert not browser.page_errors, browser.problems()
    assert not browser.console_errors, browser.problems()
    for page in pages:
        if not page.is_closed():
            assert await page.evaluate("window.demo ? window.demo.errors : []") == []


# -- the token endpoint (no browser) -----


async def test_demo_routes_are_off_by_default_but_the_sdk_is_served():
    async with demo_node(enabled=False) as node, aiohttp.ClientSession() as http:
        async with http.post(
            f"{node.url}/demo/token", json={"room": "r", "role": "host"}
        ) as response:
            assert response.status == 404
        for path in ("/", "/demo/host.html", "/demo/products.json"):
            async with http.get(node.url + path) as response:
                assert response.status == 404, path
        async with http.get(f"{node.url}/sdk/sfu-client.js") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/javascript")
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            body = await response.text()
            assert "export async function connect(" in body
        for path in ("/sdk/missing.js", "/sdk/..%2Fdemo.py", "/sdk/"):
            async with http.get(node.url + path) as response:
                assert response.status == 404, path


async def test_demo_token_endpoint_when_enabled():
    expected = {
        "host": (True, True),
        "viewer": (False, True),
        "buyer": (True, True),
        "assistant": (True, True),
    }
    async with demo_node() as node, aiohttp.ClientSession() as http:
        for role, (publish, subscribe) in expected.items():
            async with http.post(
                f"{node.url}/demo/token", json={"room": "live-demo", "role": role}
            ) as response:
                assert response.status == 200, role
                reply = await response.json()
            access = verify_token(node.config.auth, reply["token"])
            assert access.room == "live-demo" and reply["room"] == "live-demo"
            assert (access.grants.publish, access.grants.subscribe) == (publish, subscribe), role
            assert not access.grants.admin and not access.grants.agent
            assert access.identity == reply["identity"] and access.identity.startswith(role)
            assert reply["url"] == node.url
            assert access.expires_at - time.time() < 3 * 3600
        async with http.post(
            f"{node.url}/demo/token",
            json={"room": "c1", "role": "buyer", "identity": "ana", "name": "Ana"},
        ) as response:
            access = verify_token(node.config.auth, (await response.json())["token"])
            assert (access.identity, access.name, access.room) == ("ana", "Ana", "c1")
        bad = [
            {"room": "r", "role": "admin"},
            {"room": "", "role": "host"},
            {"room": "a b", "role": "host"},
            {"role": "host"},
            {"room": "r", "role": "host", "identity": "x" * 65},
            ["room", "role"],
        ]
        for body in bad:
            async with http.post(f"{node.url}/demo/token", json=body) as response:
                assert response.status == 400, body
                assert (await response.json())["error"] == "bad_request"
        async with http.post(f"{node.url}/demo/token", data=b"not json") as response:
            assert response.status == 400
        async with http.get(f"{node.url}/") as response:
            assert response.status == 200
            assert 'href="demo/host.html"' in await response.text()


# -- pages in Chromium -----


@pytest.mark.browser
@pytest.mark.slow
async def test_every_demo_page_loads_without_errors():
    async with demo_node() as node, launch_chromium() as browser:
        index = await browser.open(node.url + "/")
        await index.set_viewport_size(DESKTOP)
        hrefs = await index.eval_on_selector_all(".demo-link", "els => els.map(e => e.href)")
        assert hrefs == [
            f"{node.url}/demo/{name}.html" for name in ("host", "viewer", "consult", "agent")
        ]
        await _shot(index, "demo-index.png")
        await index.set_viewport_size(PHONE)
        await _shot(index, "demo-index-phone.png")

        host = await browser.open(hrefs[0])
        await host.set_viewport_size(DESKTOP)
        await host.wait_for_selector("#go-live:not([disabled])", timeout=10000)
        await host.wait_for_selector(".product[data-sku='W-401']")
        assert await host.locator(".product").count() == 4
        await _shot(host, "demo-host-preview.png")

        viewer = await browser.open(hrefs[1])
        await viewer.set_viewport_size(DESKTOP)
        await _wait_js(viewer, "demo.room && demo.room.state === 'connected'")
        assert "not started" in await viewer.inner_text("#placeholder-title")
        await _shot(viewer, "demo-viewer-waiting.png")

        consult = await browser.open(hrefs[2])
        await consult.set_viewport_size(DESKTOP)
        await consult.wait_for_selector("#as-buyer")
        await _shot(consult, "demo-consult-picker.png")

        agent = await browser.open(hrefs[3])
        await agent.set_viewport_size(DESKTOP)
        await _wait_js(agent, "demo.room && demo.room.state === 'connected'")
        assert await agent.inner_text("#agent-chip") == "Agent not connected"
        assert await agent.is_visible("#agent-note")
        await _shot(agent, "demo-agent-idle.png")

        assert _identities(node, "live-demo") and _identities(node, "agent-demo")
        await _no_page_errors(browser, index, host, viewer, consult, agent)
        for page in (viewer, agent):
            await page.close()
        await _until(lambda: not node.node.rooms.rooms, 10, "closed pages to leave")


@pytest.mark.browser
@pytest.mark.slow
async def test_live_sale_host_to_viewer_with_chat_and_products():
    async with demo_node() as node, launch_chromium() as browser:
        host = await browser.open(f"{node.url}/demo/host.html?room=sale1")
        await host.set_viewport_size(DESKTOP)
        await host.wait_for_selector("#go-live:not([disabled])", timeout=10000)
        await host.click(".product[data-sku='D-101'] .pin")  # pinned before going live
        await host.click("#go-live")
        await _wait_js(host, "demo.live === true")

        viewer = await browser.open(f"{node.url}/demo/viewer.html?room=sale1")
        await viewer.set_viewport_size(DESKTOP)
        await _assert_playing(viewer, "#video", audio=True, who="viewer")
        # a late viewer gets the pinned product at once
        await viewer.wait_for_selector("#card-slot .product-card[data-sku='D-101']", timeout=5000)
        await host.wait_for_function(
            "document.querySelector('#viewer-count').textContent === '1'", timeout=5000
        )
        # the quality selector records a preference (no layers until simulcast)
        await viewer.select_option("#quality", "low")
        prefs = await viewer.evaluate("[...demo.room.qualityPreferences.values()]")
        assert prefs == [{"quality": "low"}]

        await _chat(viewer, "Is the dress true to size?")
        await _chat_received(host, "Is the dress true to size?")
        await _chat(host, "Yes, take your usual size")
        await _chat_received(viewer, "Yes, take your usual size")

        await host.click(".product[data-sku='W-401'] .pin")
        await viewer.wait_for_selector("#card-slot .product-card[data-sku='W-401']", timeout=5000)
        assert await viewer.inner_text("#card-slot .price") == "$420.00"

        hosts = [p for p in _participants(node, "sale1") if p["identity"].startswith("host")]
        assert len(hosts) == 1 and len(_participants(node, "sale1")) == 2
        producers = hosts[0]["producers"]
        assert {p["kind"] for p in producers} == {"audio", "video"}
        assert all(p["packets"] > 0 and p["subscribers"] == 1 for p in producers), producers

        await _shot(host, "demo-host-live.png")
        await _shot(viewer, "demo-viewer-live.png")
        await viewer.set_viewport_size(PHONE)
        await asyncio.sleep(0.3)
        await _shot(viewer, "demo-viewer-live-phone.png")
        await _no_page_errors(browser, host, viewer)

        # closing the viewer's page removes it from the room; the host sees the count drop
        await viewer.close()
        await _until(lambda: len(_participants(node, "sale1")) == 1, 10, "the viewer to be removed")
        await host.wait_for_function(
            "document.querySelector('#viewer-count').textContent === '0'", timeout=5000
        )
        # ending the show disconnects: nothing is left on the server
        await host.click("#end-show")
        await _until(lambda: not node.node.rooms.rooms, 10, "the host to leave")
        await _wait_js(host, "demo.live === false")
        await _no_page_errors(browser, host)


@pytest.mark.browser
@pytest.mark.slow
async def test_consultation_both_sides_see_and_hear_each_other():
    async with demo_node() as node, launch_chromium() as browser:
        buyer = await browser.open(f"{node.url}/demo/consult.html?room=call1")
        await buyer.set_viewport_size(DESKTOP)
        await buyer.click("#as-buyer")
        await _until(
            lambda: any(p.get("producers") for p in _participants(node, "call1")),
            15,
            "the buyer to publish",
        )
        assistant = await browser.open(f"{node.url}/demo/consult.html?room=call1&role=assistant")
        await assistant.set_viewport_size(DESKTOP)
        await assistant.click("#as-assistant")

        for page, who in ((buyer, "buyer"), (assistant, "assistant")):
            await _assert_playing(page, "#remote", audio=True, who=who)
            join_ms = await _wait_js(page, "demo.joinMs")
            text = await page.inner_text("#join-time")
            assert re.fullmatch(r"\d+ ms", text), text
            assert 0 < join_ms < 10000 and text == f"{join_ms} ms", (who, join_ms, text)
        # the assistant joined a call already running: connect() -> first decoded frame
        assert await assistant.evaluate("demo.joinKind") == "connect"
        assert await buyer.evaluate("demo.joinKind") == "remote_live"
        assert "assistant" in (await buyer.inner_text("#remote-name")).lower()

        await _chat(buyer, "Can you show the tote in black?")
        await _chat_received(assistant, "Can you show the tote in black?")

        participants = _participants(node, "call1")
        assert len(participants) == 2
        for p in participants:
            assert {t["kind"] for t in p["producers"]} == {"audio", "video"}, p
            assert all(d["packets_sent"] > 0 for d in p["downtracks"]), p
        await _shot(buyer, "demo-consult-buyer.png")
        await _shot(assistant, "demo-consult-assistant.png")
        await _no_page_errors(browser, buyer, assistant)

        await buyer.click("#hangup")
        await _until(lambda: len(_participants(node, "call1")) == 1, 10, "the buyer to leave")
        await assistant.wait_for_selector("#placeholder:not(.hidden)", timeout=10000)
        await assistant.close()
        await _until(lambda: not node.node.rooms.rooms, 10, "the assistant to leave")
        await _no_page_errors(browser, buyer)


@pytest.mark.browser
@pytest.mark.slow
async def test_agent_page_transcript_and_state_from_data_messages():
    async with demo_node() as node, launch_chromium() as browser:
        page = await browser.open(f"{node.url}/demo/agent.html")
        await page.set_viewport_size(DESKTOP)
        await _wait_js(page, "demo.room && demo.room.state === 'connected'")
        assert await page.inner_text("#agent-chip") == "Agent not connected"
        await page.click("#talk")
        await _wait_js(page, "demo.micOn === true")

        # a stand-in for the agent: it receives the buyer's microphone and sends data messages
        agent = await RoomClient.connect(
            node.url,
            node.token("agent-1", room="agent-demo"),
            network=LOOPBACK,
            metadata={"role": "agent"},
        )
        try:
            mic = await agent.next_track(kind="audio", timeout=15)
            frame = await asyncio.wait_for(mic.track.recv(), 10)
            assert frame.sample_rate == 48000
            await _wait_js(page, "demo.agentConnected === true")
            await agent.send_data({"state": "listening"}, topic="agent_state")
            await page.wait_for_function(
                "document.querySelector('#agent-chip').textContent.includes('Listening')",
                timeout=5000,
            )
            await agent.send_data(
                {"speaker": "user", "text": "do you have the", "final": False, "id": "u1"},
                topic="transcript",
            )
            await agent.send_data(
                {"speaker": "user", "text": "Do you have the tote in black?", "id": "u1"},
                topic="transcript",
            )
            await agent.send_data(
                {"speaker": "agent", "text": "Yes, the B-301 tote comes in black.", "id": "a1"},
                topic="transcript",
            )
            await page.wait_for_function(
                "document.querySelectorAll('#transcript li').length === 2", timeout=5000
            )
            lines = await page.eval_on_selector_all(
                "#transcript li", "els => els.map(e => [e.className, e.textContent])"
            )
            assert lines == [
                ["user", "YouDo you have the tote in black?"],
                ["agent", "AgentYes, the B-301 tote comes in black."],
            ], lines
            await _shot(page, "demo-agent-transcript.png")

            # stop and start the microphone again: one audio track, never a leftover m-line
            first_id = mic.track_id
            await page.click("#talk")
            await _wait_js(page, "demo.micOn === false")
            gone = await agent.wait_for("track_unpublished", timeout=10)
            assert gone["track_id"] == first_id
            await page.click("#talk")
            await _wait_js(page, "demo.micOn === true")
            again = await agent.wait_for("track_published", lambda m: m["track"]["id"] != first_id)
            assert again["track"]["kind"] == "audio"
            buyer = next(p for p in _participants(node, "agent-demo") if p["identity"] != "agent-1")
            assert [p["kind"] for p in buyer["producers"]] == ["audio"], buyer
        finally:
            await agent.leave()
        await page.wait_for_function(
            "document.querySelector('#agent-chip').textContent === 'Agent not connected'",
            timeout=5000,
        )
        await _no_page_errors(browser, page)
        await page.close()
        await _until(lambda: not node.node.rooms.rooms, 10, "the buyer to leave")
