"""Recording a live show: a real aiortc publisher through the node, the file decoded by PyAV,
the admin API's auth, signed links, webhooks, and a write error that stops only the recording."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu import Config
from sfu.client import RoomClient
from sfu.recording import links
from sfu.recording.routes import RECORDER_KEY
from sfu.recording.writer import MkvWriter, StreamSpec

from .conftest import LOOPBACK, start_node
from .media_sources import ColorVideoTrack, ToneAudioTrack, mean_rgb
from .test_webhooks import KEY, SECRET, Receiver, wait_for

ROOM = "shop"
COLOUR = (200, 30, 40)


def recording_config(tmp_path: Path, *hooks: str) -> Config:
    config = Config()
    config.auth.api_keys = {KEY: SECRET}
    config.recording.dir = str(tmp_path / "recordings")
    config.recording.min_free_mb = 0
    config.webhooks.urls = list(hooks)
    return config


def decode(path: Path) -> dict:
    """Frames and last timestamps per kind, decoding every packet of the file."""
    out = {"video": 0, "audio": 0, "video_end": 0.0, "audio_end": 0.0, "rgb": None}
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            out[kind] += 1
            out[f"{kind}_end"] = float(frame.time)
            if kind == "video" and out["video"] == 20:
                out["rgb"] = mean_rgb(frame)
                out["size"] = (frame.width, frame.height)
        out["duration"] = (container.duration or 0) / 1e6
    return out


async def control(session, url, token, action, room=ROOM, **extra):
    async with session.post(
        f"{url}/api/rooms/{room}/recording",
        json={"action": action, **extra},
        headers={"Authorization": f"Bearer {token}"} if token else {},
    ) as response:
        return response.status, await response.json()


async def test_live_aiortc_publisher_is_recorded_and_decodes(tmp_path: Path):
    receiver = await Receiver().start()
    node = await start_node(recording_config(tmp_path, receiver.url))
    admin = node.token("ops", room=ROOM, admin=True)
    publisher = await RoomClient.connect(node.url, node.token("host"), network=LOOPBACK)
    try:
        await publisher.publish(
            [ColorVideoTrack(COLOUR), ToneAudioTrack(440)], sources=["camera", "microphone"]
        )
        await asyncio.sleep(1.0)  # media flowing
        async with aiohttp.ClientSession() as session:
            status, started = await control(session, node.url, admin, "start")
            assert status == 201, started
            assert started["identity"] == "host" and started["state"] == "starting"
            status, again = await control(session, node.url, admin, "start")
            assert status == 409 and again["error"] == "conflict"
            t0 = time.monotonic()
            await asyncio.sleep(5.0)
            status, stopped = await control(session, node.url, admin, "stop")
            wall = time.monotonic() - t0
            assert status == 200, stopped
            assert stopped["state"] == "stopped", stopped
            status, _ = await control(session, node.url, admin, "stop")
            assert status == 409
        path = tmp_path / "recordings" / ROOM / stopped["file"]
        got = await asyncio.to_thread(decode, path)
        # time zero is the first keyframe (one PLI round trip after start)
        assert wall - 1.5 < got["duration"] <= wall + 0.5, (got, wall)
        assert abs(got["video_end"] - stopped["duration_s"]) < 0.5, (got, stopped)
        video_frames = [t["frames"] for t in stopped["tracks"] if t["kind"] == "video"][0]
        assert got["video"] == video_frames  # every frame written decodes
        # aiortc sends 30 fps; a loaded machine encodes fewer, never more
        assert 8 * got["duration"] < got["video"] <= 31 * got["duration"] + 2, got
        assert abs(got["audio"] - got["duration"] / 0.02) < 0.15 * got["duration"] / 0.02, got
        assert got["size"] == (320, 240)
        r, g, b = got["rgb"]
        assert r > 150 and g < 90 and b < 90, got["rgb"]
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["state"] == "stopped" and sidecar["id"] == stopped["id"]
        await wait_for(lambda: "recording_ended" in receiver.names(ROOM))
        names = receiver.names(ROOM)
        assert names.index("recording_started") < names.index("recording_ended")
        ended = next(e for e in receiver.events if e["event"] == "recording_ended")
        assert ended["recording"]["file"] == stopped["file"]
        assert ended["recording"]["duration_s"] == stopped["duration_s"]
    finally:
        await publisher.leave()
        await node.runner.cleanup()
        await receiver.stop()


async def test_recording_api_needs_an_admin_token_for_the_room(tmp_path: Path):
    node = await start_node(recording_config(tmp_path))
    publisher = await RoomClient.connect(node.url, node.token("host"), network=LOOPBACK)
    try:
        await publisher.publish([ToneAudioTrack(440)], sources=["microphone"])
        async with aiohttp.ClientSession() as session:
            status, body = await control(session, node.url, None, "start")
            assert status == 401 and body["error"] == "unauthorized"
            status, _ = await control(session, node.url, "not-a-token", "start")
            assert status == 401
            viewer = node.token("viewer", room=ROOM, subscribe=True)
            status, body = await control(session, node.url, viewer, "start")
            assert status == 403 and body["error"] == "forbidden"
            other_admin = node.token("ops", room="other", admin=True)
            status, _ = await control(session, node.url, other_admin, "start")
            assert status == 403
            node_admin = node.token("ops", room="*", admin=True)
            status, body = await control(session, node.url, node_admin, "pause")
            assert status == 400
            status, body = await control(session, node.url, node_admin, "start", room="nobody")
            assert status == 404
            room_admin = node.token("ops", room=ROOM, admin=True)
            status, body = await control(session, node.url, room_admin, "start")
            assert status == 201 and body["tracks"][0]["kind"] == "audio", body
            await asyncio.sleep(1.5)
            status, body = await control(session, node.url, node_admin, "stop")
            assert status == 200 and body["state"] == "stopped", body

            # the listing: admin or a subscriber of that room; links signed per file
            async def listing(token):
                async with session.get(
                    f"{node.url}/api/rooms/{ROOM}/recordings",
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    return response.status, await response.json()

            status, listed = await listing(viewer)
            assert status == 200 and listed["recordings"][0]["id"] == body["id"]
            status, _ = await listing(node.token("v2", room="other", subscribe=True))
            assert status == 403
            status, _ = await listing(node.token("p", room=ROOM, publish=True))
            assert status == 403
            url = node.url + listed["recordings"][0]["url"]
            async with session.get(url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "video/webm"
                data = await response.read()
            assert data[:4] == b"\x1a\x45\xdf\xa3"  # EBML
            async with session.get(url, headers={"Range": "bytes=0-99"}) as response:
                assert response.status == 206 and len(await response.read()) == 100
            name = f"{ROOM}/{body['file']}"
            for bad in (
                url.split("?")[0],  # unsigned
                url.replace("sig=", "sig=0"),  # tampered
                f"{node.url}/recordings/{name}?{links.signed_query(SECRET, name, -5)}",  # expired
                f"{node.url}/recordings/{name}?{links.signed_query('x' * 40, name, 60)}",
            ):
                async with session.get(bad) as response:
                    assert response.status == 403, bad
    finally:
        await publisher.leave()
        await node.runner.cleanup()


def test_disk_full_stops_the_writer_with_an_error():
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    errors: list[str] = []
    writer = MkvWriter(
        Path("/dev/full"), [StreamSpec("audio", "opus")], on_error=errors.append, max_queue=50
    )
    packet = bytes([0xFC]) + bytes(60)  # an Opus TOC byte and a body (never decoded here)
    for i in range(40):
        writer.put(0, packet, i * 20, True)
    writer.close()
    assert writer.error is not None and "No space left" in writer.error, writer.error
    assert errors == [writer.error]
    assert not writer.put(0, packet, 1000, True)


@pytest.mark.parametrize("ttl", [60])
def test_link_signatures_cover_the_file_and_the_expiry(ttl: int):
    name = "shop/shop-1.webm"
    exp, sig = (part.split("=")[1] for part in links.signed_query(SECRET, name, ttl).split("&"))
    assert links.check(SECRET, name, exp, sig, ttl)
    assert not links.check(SECRET, "shop/other.webm", exp, sig, ttl)
    assert not links.check(SECRET, name, str(int(exp) + 1), sig, ttl)
    assert not links.check(SECRET, name, str(int(time.time()) + 10 * ttl), sig, ttl)
    assert not links.check(SECRET, name, exp, None, ttl)


async def test_malformed_requests_are_refused_not_crashing(tmp_path: Path):
    config = recording_config(tmp_path)
    config.server.demo_tokens = True
    node = await start_node(config)
    admin = node.token("ops", room="*", admin=True)
    bodies = [
        b"",
        b"not json",
        b"[]",
        b'"start"',
        b"{}",
        b'{"action": 1}',
        b'{"action": "start", "identity": 5}',
        b'{"action": "start", "identity": "../../etc"}',
        b'{"action": "start", "identity": "' + b"x" * 200 + b'"}',
        b'{"action": "stop"}',
        b'{"action": "start"}',  # the room does not exist
        b'{"room": "../x", "action": "start"}',
        b'{"room": {"a": 1}, "action": "start"}',
        '{"action": "st\u00e4rt"}'.encode(),
    ]
    try:
        async with aiohttp.ClientSession() as session:
            for body in bodies:
                for url, headers in (
                    (
                        f"{node.url}/api/rooms/{ROOM}/recording",
                        {"Authorization": f"Bearer {admin}"},
                    ),
                    (f"{node.url}/demo/recording", {}),
                ):
                    async with session.post(url, data=body, headers=headers) as response:
                        assert response.status in (400, 404, 409), (url, body, response.status)
                        assert "error" in await response.json()
            for name in (
                "..%2F..%2Fetc/passwd",
                "shop/..%2Fnode.toml",
                "shop/x.json",
                "shop/" + "a" * 300 + ".webm",
                "%00/x.webm",
                "shop/x.webm?exp=99999999999999&sig=" + "0" * 64,
                "shop/x.webm?exp=-1&sig=zz",
            ):
                async with session.get(f"{node.url}/recordings/{name}") as response:
                    assert response.status in (403, 404), (name, response.status)
            async with session.get(f"{node.url}/api/rooms/{ROOM}/recordings") as response:
                assert response.status == 401
    finally:
        await node.runner.cleanup()


@given(
    st.text(max_size=80),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.text(max_size=80)),
)
def test_any_link_fields_never_raise_and_never_pass_unsigned(name, exp, sig):
    assert links.check(SECRET, name, exp, sig, 3600) is False


async def test_captions_archived_after_the_stop_still_reach_the_webvtt(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SFU_CAPTIONS_DB", str(tmp_path / "captions.sqlite3"))
    node = await start_node(recording_config(tmp_path))
    node.app[RECORDER_KEY].late_captions_s = 1.0
    admin = node.token("ops", room=ROOM, admin=True)
    captioner = node.token("captioner", room=ROOM, agent=True)
    publisher = await RoomClient.connect(node.url, node.token("host"), network=LOOPBACK)

    async def archive(session, seq: int, start: float, text: str, pt: str) -> None:
        entry = {"track": "TR_a", "seq": seq, "speaker": "host", "start": start,
                 "end": start + 1.0, "lang": "en", "text": text,
                 "translations": {"pt": pt}}  # fmt: skip
        async with session.post(
            f"{node.url}/api/rooms/{ROOM}/captions",
            headers={"Authorization": f"Bearer {captioner}"},
            json={"session": "c1", "started_at": start - 1, "entries": [entry]},
        ) as response:
            assert response.status == 201

    try:
        await publisher.publish([ToneAudioTrack(440)], sources=["microphone"])
        async with aiohttp.ClientSession() as session:
            status, started = await control(session, node.url, admin, "start")
            assert status == 201
            t0 = time.time()
            await archive(session, 1, t0 + 0.2, "Welcome to the sale", "Bem-vindos à venda")
            await asyncio.sleep(2.0)
            status, stopped = await control(session, node.url, admin, "stop")
            assert stopped["captions"] == ["en", "pt"], stopped
            base = tmp_path / "recordings" / ROOM / stopped["file"][: -len(".webm")]

            def vtt(lang: str) -> str:
                return base.with_name(f"{base.name}.{lang}.vtt").read_text()

            first = vtt("pt")
            assert "Bem-vindos à venda" in first and "Última" not in first
            # the final of the last sentence reaches the archive after the stop
            await archive(session, 2, t0 + 1.5, "Last call", "Última chamada")
            await wait_for(lambda: "Última chamada" in vtt("pt"), 10)
            later = vtt("pt")
            assert later.index("Bem-vindos") < later.index("Última chamada")
            assert "Last call" in vtt("en")
            # cue times count from the file's start: the first cue starts about 0.2 s in
            assert "00:00:00." in later.split("Bem-vindos")[0].splitlines()[-1]
    finally:
        await publisher.leave()
        await node.runner.cleanup()
