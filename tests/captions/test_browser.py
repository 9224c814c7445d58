"""Headless Chromium: the demo viewer page shows live captions in the language it asked for
(partials grey, then the final, in a box that keeps its size), and Chromium's own WebVTT parser
reads the archive's export."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from agent.captions.config import CaptionSettings
from agent.captions.job import run_captions_job
from agent.captions.playback import PcmAudioTrack
from sfu.client import RoomClient

from ..browser import launch_chromium, screenshot
from ..conftest import LOOPBACK
from .conftest import admin_token, captioner_token, silence
from .test_room import subscribed, until

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOM = "browser-live"
SCRIPT = "Welcome to our live sale from the studio."

# records every caption line the page shows, with its class, while the test runs
OBSERVE = """() => {
  window.seen = [];
  const box = document.querySelector('#captions');
  new MutationObserver(() => {
    for (const p of box.querySelectorAll('p')) window.seen.push([p.className, p.textContent]);
  }).observe(box, {childList: true, subtree: true});
  return box.getBoundingClientRect().height;
}"""

READ_VTT = """async (text) => {
  const video = document.createElement('video');
  const track = document.createElement('track');
  track.kind = 'captions';
  track.default = true;
  track.src = URL.createObjectURL(new Blob([text], {type: 'text/vtt'}));
  video.append(track);
  document.body.append(video);
  track.track.mode = 'hidden';
  await new Promise((resolve, reject) => {
    track.addEventListener('load', resolve);
    track.addEventListener('error', () => reject(new Error('track error')));
    setTimeout(() => reject(new Error('track load timeout')), 5000);
  });
  return [...track.track.cues].map((c) => [c.startTime, c.endTime, c.text]);
}"""


async def test_viewer_page_shows_live_captions_in_its_language(
    captions_node, caption_models, speech
):
    node = captions_node
    stop = asyncio.Event()
    job = asyncio.ensure_future(
        run_captions_job(
            node.url,
            captioner_token(node, ROOM),
            ROOM,
            CaptionSettings(idle_exit_s=0),
            stop=stop,
            network=LOOPBACK,
            models=caption_models,
        )
    )
    track = PcmAudioTrack()
    host = None
    try:
        async with launch_chromium() as browser:
            page = await browser.open(f"{node.url}/demo/viewer.html?room={ROOM}&captions=pt")
            await page.wait_for_function(
                "window.demo && demo.room && demo.room.state === 'connected' && "
                "[...demo.room.participants.values()].some(p => p.metadata.role === 'captioner')",
                timeout=20000,
            )
            assert await page.eval_on_selector("#caption-lang", "s => s.value") == "pt"
            height = await page.evaluate(OBSERVE)
            host = await RoomClient.connect(
                node.url, node.token("host", ROOM), metadata={"role": "host"}, network=LOOPBACK
            )
            await host.publish([track], sources=["microphone"])
            await until(lambda: subscribed(node, "captioner-test"), 10, "the captioner's audio")
            playback = track.play(np.concatenate([speech(SCRIPT, "en"), silence(0.1)]))
            await asyncio.wait_for(playback.finished, 20)
            await page.wait_for_selector("#captions p.caption-final", timeout=30000)
            final = await page.text_content("#captions p.caption-final")
            assert any(w in final.lower() for w in ("bem-vind", "venda", "estúdio")), final
            seen = await page.evaluate("window.seen")
            assert any(cls == "caption-partial" for cls, _ in seen), seen
            first_final = next(i for i, (cls, _) in enumerate(seen) if cls == "caption-final")
            assert any(cls == "caption-partial" for cls, _ in seen[:first_final]), seen
            # partials grey, finals white, and the box never changed size
            colours = await page.evaluate(
                "() => [getComputedStyle(document.querySelector('#captions p.caption-final'))"
                ".color, document.querySelector('#captions').getBoundingClientRect().height]"
            )
            assert colours[0] == "rgb(243, 243, 243)" and colours[1] == height
            await page.set_viewport_size({"width": 1180, "height": 800})
            await page.evaluate("document.querySelector('#captions').scrollIntoView(false)")
            await screenshot(page, "captions-viewer.png")
            assert not browser.page_errors, browser.problems()
            assert await page.evaluate("demo.errors") == []

            # after the show: the archive's WebVTT, read by Chromium's parser
            stop.set()
            await asyncio.wait_for(job, 30)
            headers = {"Authorization": f"Bearer {admin_token(node)}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.get(f"{node.url}/api/rooms/{ROOM}/captions.vtt?lang=pt") as r:
                    vtt = await r.text()
            cues = await page.evaluate(READ_VTT, vtt)
            assert len(cues) == 1, (vtt, cues)
            start, end, text = cues[0]
            assert 0 <= start < end and text == final, (cues, final)
    finally:
        stop.set()
        await asyncio.wait_for(job, 30)
        if host is not None:
            await host.leave()
        track.stop()


async def test_host_page_captions_switch(captions_node, tmp_path, monkeypatch):
    """The host page's switch starts a captioner for its room (here the demo server's own
    subprocess: no worker takes "captions") and ending the show stops it."""
    monkeypatch.setenv("AGENT_CACHE_DIR", str(tmp_path / "cache"))
    node = captions_node

    def captioners() -> list[dict]:
        for room in node.node.stats()["rooms"]:
            if room["name"] == "switch-room":
                return [p for p in room["participants"] if p["metadata"].get("role") == "captioner"]
        return []

    async with launch_chromium() as browser:
        page = await browser.open(f"{node.url}/demo/host.html?room=switch-room")
        await page.wait_for_selector("#go-live:not([disabled])", timeout=10000)
        await page.select_option("#host-lang", "pt")
        await page.check("#captions-switch")  # before going live: applied when live
        await page.click("#go-live")
        await page.wait_for_function("demo.live === true && demo.captions === true", timeout=15000)
        host = next(
            p
            for room in node.node.stats()["rooms"]
            for p in room["participants"]
            if p["metadata"].get("role") == "host"
        )
        assert host["metadata"] == {"role": "host", "language": "pt"}
        await until(lambda: bool(captioners()), 60, "the captioner to join")
        await page.uncheck("#captions-switch")
        await page.wait_for_function("demo.captions === false", timeout=10000)
        await until(lambda: not captioners(), 30, "the captioner to leave")
        await page.check("#captions-switch")
        await until(lambda: bool(captioners()), 60, "the captioner to join again")
        await page.click("#end-show")  # ending the show switches captions off too
        await until(lambda: not captioners(), 30, "the captioner to leave with the show")
        assert not browser.page_errors, browser.problems()
        assert await page.evaluate("demo.errors") == []
