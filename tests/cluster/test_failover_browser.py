"""The browser SDK resumes after its node is killed (headless Chromium, two `python -m sfu
serve` processes on a real redis-server): a host publishing its (fake) camera and a viewer,
both on node A through the SDK; A is killed (SIGKILL); both reconnect to node B, the fallback
A's join answer named, the host publishes its camera again and the viewer decodes frames of
it again; node B holds one participant per identity."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.browser import launch_chromium, screenshot, serve_pages

from .conftest import unique_prefix
from .failover_rig import NodeProcess, token
from .test_failover import fallbacks_known, nodes  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.redis]

START_JS = """
async ({sdk, url, token, role}) => {
  const { connect } = await import(sdk);
  const state = { frames: 0, events: [], fallbacks: [], error: null };
  window.__state = state;
  const room = await connect(url, token, { reconnect: { deadAfterMs: 2000 } });
  window.__room = room;
  state.fallbacks = room.fallbacks;
  for (const name of ["reconnecting", "reconnected", "connectionStateChanged", "error"]) {
    room.on(name, (e) => state.events.push([name, e && (e.url || e.code || e)]));
  }
  if (role === "host") {
    await room.publishCamera({ simulcast: false, video: { width: 320, height: 240 } });
    return { fallbacks: room.fallbacks };
  }
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  document.body.appendChild(video);
  const count = () => {
    state.frames += 1;
    video.requestVideoFrameCallback(count);
  };
  video.requestVideoFrameCallback(count);
  const attach = (remote) => {
    if (remote.kind === "video") video.srcObject = remote.stream;
  };
  for (const remote of room.remoteTracks.values()) attach(remote);
  room.on("trackSubscribed", attach);
  return { fallbacks: room.fallbacks };
}
"""


async def until(page, expression: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await page.evaluate(expression)
        if value:
            return value
        await asyncio.sleep(0.2)
    state = await page.evaluate("window.__state")
    raise AssertionError(f"not reached within {timeout_s} s: {expression}; state {state}")


async def test_browser_sdk_resumes_on_the_fallback_after_a_node_is_killed(nodes):  # noqa: F811
    a, b, _prefix = nodes
    sdk = f"{b.url}/sdk/sfu-client.js"  # (served by the node that stays)
    async with launch_chromium() as browser, serve_pages() as pages:
        host = await browser.open(pages.url("interop.html"))
        viewer = await browser.open(pages.url("interop.html"))
        started = await host.evaluate(
            START_JS, {"sdk": sdk, "url": a.url, "token": token("host"), "role": "host"}
        )
        assert started["fallbacks"] == [b.url]
        await viewer.evaluate(
            START_JS, {"sdk": sdk, "url": a.url, "token": token("viewer"), "role": "viewer"}
        )
        await until(viewer, "window.__state.frames > 15")

        killed_at = time.monotonic()
        a.kill()
        for page in (host, viewer):
            await until(
                page,
                "window.__state.events.some(([n, u]) => n === 'reconnected')",
            )
            events = await page.evaluate("window.__state.events")
            assert ["reconnected", b.url] in events, events
            assert ["connectionStateChanged", "reconnecting"] in events, events
        frames_then = await viewer.evaluate("window.__state.frames")
        await until(viewer, f"window.__state.frames > {frames_then + 15}")
        print(f"browser viewer decoding again {time.monotonic() - killed_at:.2f} s after the kill")
        assert await viewer.evaluate("window.__room.state") == "connected"
        assert await host.evaluate("window.__room.localTracks.size") == 1
        assert await b.identities() == ["host", "viewer"]
        # disconnect() is no failure: the rooms end and do not come back
        await viewer.evaluate("window.__room.disconnect()")
        await host.evaluate("window.__room.disconnect()")
        await asyncio.sleep(1.5)
        for page in (host, viewer):
            assert await page.evaluate("window.__room.state") == "disconnected"
            assert await page.evaluate("window.__room.resumes") == 1
        assert await b.identities() == []


DEMO_PLAYING = (
    "demo.room && demo.room.state === 'connected' && demo.room.resumes >= {resumes} && "
    "demo.stats('#video').then(r => r.videoWidth > 0 && r.framesDecoded > {frames})"
)


async def test_demo_pages_live_sale_goes_on_after_the_node_is_killed(redis_server, tmp_path: Path):
    """The demo host and viewer pages (served by node A, SDK from A) keep the show going
    when A is killed: both say `Reconnecting…`, then the host is live again on node B and the
    viewer plays it."""
    prefix = unique_prefix()
    a = NodeProcess(
        tmp_path, "node-a", redis_server.url, prefix, udp_ports=(42000, 42999), demo_tokens=True
    )
    b = NodeProcess(
        tmp_path, "node-b", redis_server.url, prefix, udp_ports=(43000, 43999), demo_tokens=True
    )
    try:
        await asyncio.gather(a.wait_healthy(), b.wait_healthy())
        await asyncio.gather(fallbacks_known(a, b), fallbacks_known(b, a))
        async with launch_chromium() as browser:
            host = await browser.open(f"{a.url}/demo/host.html?room=sale1")
            await host.wait_for_selector("#go-live:not([disabled])", timeout=15000)
            await host.click("#go-live")
            await host.wait_for_function("demo.live === true", timeout=15000)
            viewer = await browser.open(f"{a.url}/demo/viewer.html?room=sale1")
            await viewer.wait_for_function(
                DEMO_PLAYING.format(resumes=0, frames=10), timeout=20000, polling=200
            )
            a.kill()
            await host.wait_for_function(
                "demo.room.resumes >= 1 && demo.room.state === 'connected'",
                timeout=20000,
                polling=200,
            )
            assert "live" in (await host.inner_text("#status")).lower()
            assert await host.evaluate("demo.live") is True
            first = await viewer.evaluate("demo.stats('#video')")
            await viewer.wait_for_function(
                DEMO_PLAYING.format(resumes=1, frames=first["framesDecoded"] + 10),
                timeout=20000,
                polling=200,
            )
            assert await viewer.evaluate("demo.room._url") == b.url  # (resumed on B)
            assert len(await b.identities("sale1")) == 2
            await screenshot(viewer, "failover-demo-viewer.png")
    finally:
        a.stop()
        b.stop()
