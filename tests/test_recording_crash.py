"""Recordings of a `python -m sfu serve` process that dies (SIGKILL) or whose disk fills up:
the file cut by the kill still decodes; a write error ends the recording, not the node."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av

from sfu import Config
from sfu.auth import Grants, mint_token
from sfu.client import RoomClient

from .conftest import LOOPBACK, free_port
from .media_sources import ColorVideoTrack, ToneAudioTrack
from .test_webhooks import KEY, SECRET

ROOT = Path(__file__).resolve().parent.parent
ROOM = "show"


def node_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[server]
port = {port}
[auth.api_keys]
{KEY} = "{SECRET}"
[recording]
dir = "{tmp_path / "recordings"}"
min_free_mb = 0
cluster_ms = 500
"""
    )
    return path


def token(identity: str, **grants: bool) -> str:
    config = Config()
    config.auth.api_keys = {KEY: SECRET}
    return mint_token(config.auth, identity=identity, room=ROOM, grants=Grants(**grants))


def spawn(tmp_path: Path, port: int, log: Path, preexec=None) -> subprocess.Popen:
    env = {**os.environ, "SFU_CAPTIONS_DB": str(tmp_path / "captions.sqlite3")}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sfu", "serve", "--config", str(node_config(tmp_path, port))],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec,
        )


async def start_serve(tmp_path: Path, preexec=None) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp_path / "sfu.log"
    proc = spawn(tmp_path, port, log, preexec)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return proc, base, log
            except aiohttp.ClientError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.2)


async def control(base: str, action: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/api/rooms/{ROOM}/recording",
            json={"action": action},
            headers={"Authorization": f"Bearer {token('ops', admin=True)}"},
        ) as response:
            return response.status, await response.json()


def count_frames(path: Path) -> tuple[int, int, float]:
    video = audio = 0
    end = 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                video += 1
                end = max(end, float(frame.time))
            else:
                audio += 1
    return video, audio, end


async def test_recording_cut_by_sigkill_still_decodes(tmp_path: Path):
    proc, base, log = await start_serve(tmp_path)
    publisher = None
    try:
        publisher = await RoomClient.connect(
            base, token("host", publish=True, subscribe=True), network=LOOPBACK
        )
        await publisher.publish([ColorVideoTrack((20, 160, 40)), ToneAudioTrack(440)])
        await asyncio.sleep(0.5)
        status, started = await control(base, "start")
        assert status == 201, started
        await asyncio.sleep(4.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if publisher is not None:
            await publisher.close()
    path = tmp_path / "recordings" / ROOM / started["file"]
    assert path.stat().st_size > 10_000, log.read_text()
    video, audio, end = await asyncio.to_thread(count_frames, path)
    # about 4 s were sent; up to a cluster (0.5 s) and the keyframe wait may be missing
    assert 2.5 < end < 4.5, (video, audio, end)
    assert video > 8 * end and audio > 0.8 * end / 0.02, (video, audio, end)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["state"] == "recording"  # never finished
    # a node started again on the same directory lists it as interrupted, and serves it
    proc, base, log = await start_serve(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{base}/api/rooms/{ROOM}/recordings",
                headers={"Authorization": f"Bearer {token('viewer', subscribe=True)}"},
            ) as response:
                listed = (await response.json())["recordings"]
            assert [r["state"] for r in listed] == ["interrupted"], listed
            assert 2.0 <= listed[0]["duration_s"] <= end + 0.1, listed  # as of its last update
            async with session.get(base + listed[0]["url"]) as response:
                assert response.status == 200
                assert len(await response.read()) == path.stat().st_size
    finally:
        proc.terminate()
        proc.wait(10)


def _small_files() -> None:
    """In the node's process: files may not grow past 300 kB; writes past it fail (EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


async def test_a_write_error_ends_the_recording_and_the_node_keeps_serving(tmp_path: Path):
    proc, base, log = await start_serve(tmp_path, preexec=_small_files)
    publisher = viewer = None
    try:
        publisher = await RoomClient.connect(
            base, token("host", publish=True, subscribe=True), network=LOOPBACK
        )
        await publisher.publish([ColorVideoTrack((20, 160, 40), 640, 480), ToneAudioTrack(440)])
        status, started = await control(base, "start")
        assert status == 201, started
        deadline = time.monotonic() + 30
        while "write failed" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        status, body = await control(base, "stop")
        assert status == 409 and body["error"] == "not_recording"  # it ended by itself
        # the node goes on: a viewer joins and receives the host's video
        viewer = await RoomClient.connect(base, token("viewer", subscribe=True), network=LOOPBACK)
        track = await viewer.next_track(kind="video", timeout=15)
        frame = await asyncio.wait_for(track.track.recv(), 10)
        assert frame.width == 640
        assert proc.poll() is None
        listing = tmp_path / "recordings" / ROOM / started["file"].replace(".webm", ".json")
        sidecar = json.loads(listing.read_text())
        assert sidecar["state"] == "failed" and "File too large" in sidecar["error"], sidecar
    finally:
        for client in (publisher, viewer):
            if client is not None:
                await client.close()
        proc.terminate()
        proc.wait(10)
    assert "recording" in log.read_text() and "ended (error)" in log.read_text()
