"""The host page's captions switch on the demo server: `POST /demo/captions` starts a real
captioner (`python -m agent.captions`, no worker for the "captions" kind is registered) that
joins the room as role "captioner", and switching off makes it leave."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

pytestmark = pytest.mark.slow


def _captioners(node, room: str) -> list[dict]:
    for entry in node.node.stats()["rooms"]:
        if entry["name"] == room:
            return [p for p in entry["participants"] if p["metadata"].get("role") == "captioner"]
    return []


async def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_switch_starts_and_stops_a_captioner(captions_node, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_CACHE_DIR", str(tmp_path / "cache"))
    url = f"{captions_node.url}/demo/captions"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"room": "show", "enabled": True}) as r:
            assert r.status == 200
            started = await r.json()
        assert started["via"] == "subprocess" and started["started"] is True
        assert started["identity"].startswith("captioner-")
        await _until(lambda: _captioners(captions_node, "show"), 60, "the captioner to join")
        [captioner] = _captioners(captions_node, "show")
        assert captioner["identity"] == started["identity"]
        async with http.post(url, json={"room": "show", "enabled": True}) as r:
            assert (await r.json())["started"] is False  # one captioner per room
        async with http.post(url, json={"room": "show", "enabled": False}) as r:
            assert r.status == 200 and (await r.json())["stopped"] is True
        await _until(lambda: not _captioners(captions_node, "show"), 30, "the captioner to leave")
