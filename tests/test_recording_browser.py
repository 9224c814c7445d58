"""A show recorded from headless Chromium (the demo host page's Record button, simulcast VP8
and Opus), decoded with PyAV, then played in Chromium's replay page with captions in the
viewer's language."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import av
import pytest

from sfu import Config

from .browser import launch_chromium, screenshot
from .conftest import start_node
from .test_demo_pages import _no_page_errors, _wait_js

ROOM = "rec1"
SPOKEN = "This bag is real leather"
TRANSLATED = "Esta bolsa é de couro legítimo"


def decode(path: Path) -> dict:
    out = {"video": 0, "audio": 0, "end": 0.0, "sizes": set()}
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                out["video"] += 1
                out["end"] = max(out["end"], float(frame.time))
                out["sizes"].add((frame.width, frame.height))
            else:
                out["audio"] += 1
    return out


@pytest.mark.browser
@pytest.mark.slow
async def test_chromium_show_is_recorded_decoded_and_replayed_with_captions(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("SFU_CAPTIONS_DB", str(tmp_path / "captions.sqlite3"))
    config = Config()
    config.server.demo_tokens = True
    config.recording.dir = str(tmp_path / "recordings")
    config.recording.min_free_mb = 0
    node = await start_node(config)
    admin = node.token("ops", room=ROOM, admin=True)
    captioner = node.token("captioner", room=ROOM, agent=True)
    try:
        async with launch_chromium() as browser, aiohttp.ClientSession() as session:
            host = await browser.open(f"{node.url}/demo/host.html?room={ROOM}")
            await host.wait_for_selector("#go-live:not([disabled])", timeout=10000)
            await host.click("#go-live")
            await _wait_js(host, "demo.live === true")
            await asyncio.sleep(1.5)  # the simulcast layers come up
            await host.click("#record")
            await _wait_js(host, "demo.recording && demo.recording.state")
            assert await host.is_visible("#rec-badge")
            started = time.time()
            # the captioner archives what the host said, as agent/captions.py does
            async with session.post(
                f"{node.url}/api/rooms/{ROOM}/captions",
                headers={"Authorization": f"Bearer {captioner}"},
                json={
                    "session": "cap1",
                    "started_at": started - 5,
                    "entries": [
                        {
                            "track": "TR_host",
                            "seq": 1,
                            "speaker": "host",
                            "start": started + 0.2,
                            "end": started + 3.0,
                            "lang": "en",
                            "text": SPOKEN,
                            "translations": {"pt": TRANSLATED},
                        }
                    ],
                },
            ) as response:
                assert response.status == 201, await response.text()
            await asyncio.sleep(4.5)
            producers = [
                p
                for entry in node.node.stats()["rooms"][0]["participants"]
                for p in entry.get("producers", [])
            ]
            video_layers = next(p["layers"] for p in producers if p["kind"] == "video")
            await host.click("#record")
            await _wait_js(host, "demo.recording === null")
            assert not await host.is_visible("#rec-badge")
            await _no_page_errors(browser, host)

            async with session.get(
                f"{node.url}/api/rooms/{ROOM}/recordings",
                headers={"Authorization": f"Bearer {admin}"},
            ) as response:
                listed = (await response.json())["recordings"]
            recording = listed[0]
            assert recording["state"] == "stopped", recording
            assert sorted(recording["captions"]) == ["en", "pt"], recording
            path = tmp_path / "recordings" / ROOM / recording["file"]
            got = await asyncio.to_thread(decode, path)
            assert 3.0 < got["end"] < 6.5, got
            assert got["video"] > 10 * got["end"], got  # Chromium's fake camera: ~30 fps
            assert got["audio"] > 0.8 * got["end"] / 0.02, got
            # the top layer the host sent is what was recorded
            widths = [layer.get("width", 0) for layer in video_layers]
            video_track = next(t for t in recording["tracks"] if t["kind"] == "video")
            assert len(widths) == 3 and video_track["layer"] == 2, (video_layers, video_track)
            assert max(w for w, _ in got["sizes"]) == max(widths), (got, video_layers)
            vtt = path.with_suffix(".pt.vtt").read_text()
            assert TRANSLATED in vtt and "-->" in vtt

            # the replay page: a viewer token, signed links, captions in the viewer's language
            replay = await browser.open(f"{node.url}/demo/replay.html?room={ROOM}&lang=pt")
            await _wait_js(replay, "demo.replay.recording !== null")
            await replay.evaluate("() => { const v = document.querySelector('#video');"
                                  " v.muted = true; return v.play(); }")  # fmt: skip
            await _wait_js(replay, "document.querySelector('#video').currentTime > 1.0", 20)
            cues = await _wait_js(
                replay,
                "(() => { const t = [...document.querySelector('#video').textTracks]"
                ".filter(t => t.mode === 'showing'); return t.length && t[0].cues"
                " && t[0].cues.length && [t.map(t => t.language), [...t[0].cues]"
                ".map(c => c.text)]; })()",
            )
            assert cues[0] == ["pt"], cues  # only the viewer's language is shown
            assert any(TRANSLATED in cue for cue in cues[1]), cues
            assert await replay.evaluate("demo.replay.lang") == "pt"
            await screenshot(replay, "demo-replay.png")
            await _no_page_errors(browser, replay)
    finally:
        await node.runner.cleanup()
