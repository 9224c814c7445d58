"""The agent worker runs captions as a job kind: the host page's switch (POST /demo/captions)
becomes a "captions" job when a worker takes that kind, the worker's runner joins the room as
the captioner, and its finals reach the archive (posted with the worker's own agent token)."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from agent.config import AgentConfig
from agent.worker import KINDS, AgentWorker
from sfu.client import RoomClient

from ..conftest import LOOPBACK
from .conftest import admin_token, silence
from .test_room import subscribed, until

pytestmark = pytest.mark.slow
ROOM = "worker-live"


def _captioner(node) -> dict | None:
    for room in node.node.stats()["rooms"]:
        if room["name"] == ROOM:
            for p in room["participants"]:
                if p["metadata"].get("role") == "captioner":
                    return p
    return None


async def test_worker_runs_the_captions_job(captions_node, caption_models, speech):
    node = captions_node
    assert "captions" in KINDS  # agent/worker.py registers the kind
    worker = AgentWorker(
        node.url,
        node.config,
        AgentConfig(),
        kinds=["captions"],
        capacity=1,
        network=LOOPBACK,
        resources={"captions_models": caption_models},
    )
    running = asyncio.ensure_future(worker.run())
    host = None
    from agent.captions.playback import PcmAudioTrack

    track = PcmAudioTrack()
    try:
        await asyncio.wait_for(worker.registered.wait(), 10)
        host = await RoomClient.connect(
            node.url, node.token("host", ROOM), metadata={"role": "host"}, network=LOOPBACK
        )
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{node.url}/demo/captions", json={"room": ROOM, "enabled": True}
            ) as r:
                switched = await r.json()
        assert switched["via"] == "worker" and switched["started"] is True
        await until(lambda: _captioner(node) is not None, 30, "the worker's captioner")
        assert _captioner(node)["identity"].startswith("agent-")  # the dispatcher's identity
        await host.publish([track], sources=["microphone"])
        identity = _captioner(node)["identity"]
        await until(lambda: subscribed(node, identity), 15, "the captioner's audio")
        await asyncio.sleep(0.3)
        script = "We ship to Brazil in about one week."
        playback = track.play(np.concatenate([speech(script, "en"), silence(0.1)]))
        await asyncio.wait_for(playback.finished, 15)
        headers = {"Authorization": f"Bearer {admin_token(node)}"}
        archived: dict = {}

        async def fetch() -> None:
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.get(f"{node.url}/api/rooms/{ROOM}/captions.json") as r:
                    archived.update(await r.json() if r.status == 200 else {})

        for _ in range(120):  # (generous: CI machines run other jobs too)
            await fetch()
            if archived.get("captions"):
                break
            await asyncio.sleep(0.25)
        assert archived.get("captions"), f"nothing archived: {archived}"
        assert archived["session"] == f"job-{switched['job_id']}"
        [caption] = archived["captions"]
        assert "brazil" in caption["source_text"].lower()
        assert caption["translations"].get("pt"), caption  # archived in the other language too
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{node.url}/demo/captions", json={"room": ROOM, "enabled": False}
            ) as r:
                assert (await r.json())["stopped"] is True
        await until(
            lambda: _captioner(node) is None, 30, f"the captioner to leave ({_captioner(node)})"
        )
    finally:
        if host is not None:
            await host.leave()
        track.stop()
        worker.close()
        await asyncio.wait_for(running, 30)
