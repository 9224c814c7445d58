"""WHIP ingest and WHEP playback with plain aiortc peers and plain HTTP, not our SDK.

The clients below do what OBS or a WHEP player does: POST an SDP offer with a bearer token,
apply the answer, DELETE the Location to leave. `MediaPeer(LOOPBACK)` is used only so that
their ICE candidates stay on 127.0.0.1; its `pc` is an ordinary RTCPeerConnection.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from sfu.auth import Grants, mint_token
from sfu.client import RoomClient
from sfu.config import DEV_API_KEY, AuthSettings
from sfu.media.peer import MediaPeer

from .conftest import LOOPBACK
from .media_sources import (
    ColorVideoTrack,
    ToneAudioTrack,
    collect_audio,
    dominant_frequency,
    mean_rgb,
)

SDP = "application/sdp"
RED, BLUE = (200, 40, 40), (40, 40, 200)
TONE_HZ, OTHER_TONE_HZ = 660.0, 880.0


class WhipPublisher:
    """A standard WHIP client: sendonly video + audio, one POST, one DELETE."""

    def __init__(self, rgb: tuple[int, int, int], tone_hz: float) -> None:
        self.peer = MediaPeer(LOOPBACK, label="test-whip")
        self.peer.pc.addTransceiver(ColorVideoTrack(rgb), direction="sendonly")
        self.peer.pc.addTransceiver(ToneAudioTrack(tone_hz), direction="sendonly")
        self.location = ""

    async def start(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        offer = await self.peer.offer()
        async with session.post(
            url, data=offer, headers={"Authorization": f"Bearer {token}", "Content-Type": SDP}
        ) as response:
            body = await response.text()
            assert response.status == 201, body
            assert response.content_type == SDP
            self.location = response.headers["Location"]
        await self.peer.accept_answer(body)

    async def close(self) -> None:
        await self.peer.close()


class WhepPlayer:
    """A standard WHEP player: recvonly video + audio offer, tracks from the 'track' event."""

    def __init__(self) -> None:
        self.peer = MediaPeer(LOOPBACK, label="test-whep")
        self.peer.pc.addTransceiver("video", direction="recvonly")
        self.peer.pc.addTransceiver("audio", direction="recvonly")
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.peer.pc.on("track", lambda track: self.tracks.setdefault(track.kind, track))
        self.location = ""
        self.answer = ""

    async def start(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        offer = await self.peer.offer()
        async with session.post(
            url, data=offer, headers={"Authorization": f"Bearer {token}", "Content-Type": SDP}
        ) as response:
            self.answer = await response.text()
            assert response.status == 201, self.answer
            assert response.content_type == SDP
            self.location = response.headers["Location"]
        await self.peer.accept_answer(self.answer)

    async def track(self, kind: str, timeout: float = 10.0) -> MediaStreamTrack:
        deadline = time.monotonic() + timeout
        while kind not in self.tracks:
            assert time.monotonic() < deadline, f"no {kind} track"
            await asyncio.sleep(0.05)
        return self.tracks[kind]

    async def close(self) -> None:
        await self.peer.close()


async def assert_colour(track: MediaStreamTrack, rgb: tuple[int, int, int], frames: int = 8):
    frame = None
    for _ in range(frames):
        frame = await asyncio.wait_for(track.recv(), 15)
    r, g, b = mean_rgb(frame)
    assert frame.width == 320 and frame.height == 240
    assert all(abs(got - want) < 50 for got, want in zip((r, g, b), rgb, strict=True)), (r, g, b)


async def assert_tone(track: MediaStreamTrack, tone_hz: float) -> None:
    samples, rate = await collect_audio(track, 0.5)
    assert abs(dominant_frequency(samples[-rate // 4 :], rate) - tone_hz) < 20


def participants(node) -> dict[str, dict]:
    return {p["identity"]: p for r in node.stats()["rooms"] for p in r["participants"]}


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_whip_publisher_to_whep_player_and_websocket_subscriber(sfu_node):
    publisher, player, viewer = WhipPublisher(RED, TONE_HZ), WhepPlayer(), None
    async with aiohttp.ClientSession() as session:
        try:
            await publisher.start(session, f"{sfu_node.url}/whip/shop", sfu_node.token("obs"))
            assert publisher.location.startswith("/whip/shop/")
            await player.start(
                session, f"{sfu_node.url}/whep/shop", sfu_node.token("tv", subscribe=True)
            )
            assert player.location.startswith("/whep/shop/")
            assert player.location != publisher.location

            await assert_colour(await player.track("video"), RED)
            await assert_tone(await player.track("audio"), TONE_HZ)

            viewer = await RoomClient.connect(
                sfu_node.url, sfu_node.token("viewer", subscribe=True), network=LOOPBACK
            )
            assert viewer.participants["obs"]["kind"] == "whip"
            video = await viewer.next_track(kind="video", publisher="obs", timeout=15)
            audio = await viewer.next_track(kind="audio", publisher="obs", timeout=15)
            await assert_colour(video.track, RED)
            await assert_tone(audio.track, TONE_HZ)

            seen = participants(sfu_node.node)
            assert seen["obs"]["kind"] == "whip"
            assert [p["subscribers"] for p in seen["obs"]["producers"]] == [2, 2]
            whep_id = next(i for i in seen if i.startswith("tv#whep-"))
            assert {d["track_id"] for d in seen[whep_id]["downtracks"]} == {
                p["id"] for p in seen["obs"]["producers"]
            }

            # DELETE ends the WHIP session: its tracks are unpublished everywhere
            async with session.delete(f"{sfu_node.url}{publisher.location}") as response:
                assert response.status == 200
            assert "obs" not in participants(sfu_node.node)
            unpublished = await viewer.wait_for("track_unpublished", timeout=5)
            assert unpublished["track_id"] in {video.track_id, audio.track_id}
            await viewer.wait_for("participant_left", lambda m: m["identity"] == "obs")
            whep = participants(sfu_node.node)[whep_id]
            assert [d["track_id"] for d in whep["downtracks"]] == [None, None]
            async with session.delete(f"{sfu_node.url}{publisher.location}") as response:
                assert response.status == 404

            # DELETE ends the WHEP session: the SFU closes its connection, the tracks end
            async with session.delete(f"{sfu_node.url}{player.location}") as response:
                assert response.status == 200
            assert whep_id not in participants(sfu_node.node)
            with pytest.raises(MediaStreamError):
                for _ in range(500):  # buffered frames first, then the end
                    await asyncio.wait_for(player.tracks["video"].recv(), 5)
            async with session.delete(f"{sfu_node.url}{player.location}") as response:
                assert response.status == 404
            assert sfu_node.node.http_sessions == {}
        finally:
            if viewer is not None:
                await viewer.leave()
            await publisher.close()
            await player.close()


@pytest.mark.slow
async def test_whep_player_before_the_publisher_gets_media_when_it_arrives(sfu_node):
    publisher, player = WhipPublisher(BLUE, OTHER_TONE_HZ), WhepPlayer()
    async with aiohttp.ClientSession() as session:
        try:
            await player.start(
                session, f"{sfu_node.url}/whep/shop", sfu_node.token("tv", subscribe=True)
            )
            assert "m=video" in player.answer and "m=audio" in player.answer
            await asyncio.sleep(0.3)  # the player is connected and idle, nothing published
            await publisher.start(
                session, f"{sfu_node.url}/whip/shop", sfu_node.token("obs", publish=True)
            )
            await assert_colour(await player.track("video"), BLUE)
            await assert_tone(await player.track("audio"), OTHER_TONE_HZ)
        finally:
            await publisher.close()
            await player.close()


# -- error statuses ------------------------------------------------------------------------------


async def _post(session, url: str, body: str, token: str | None, content_type: str = SDP):
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with session.post(url, data=body.encode(), headers=headers) as response:
        return response.status, await response.text(), response.headers


@pytest.fixture
async def offers():
    """A real sendonly (WHIP) and recvonly (WHEP) offer, gathered once per test."""
    send, recv = MediaPeer(LOOPBACK, label="offer-send"), MediaPeer(LOOPBACK, label="offer-recv")
    send.pc.addTransceiver(ColorVideoTrack(RED), direction="sendonly")
    recv.pc.addTransceiver("video", direction="recvonly")
    recv.pc.addTransceiver("audio", direction="recvonly")
    try:
        yield {"whip": await send.offer(), "whep": await recv.offer()}
    finally:
        await send.close()
        await recv.close()


@pytest.mark.parametrize("kind", ["whip", "whep"])
async def test_error_statuses(sfu_node, offers, kind: str):
    url = f"{sfu_node.url}/{kind}/shop"
    offer = offers[kind]
    foreign = mint_token(  # the node's key id, signed with another secret
        AuthSettings(api_keys={DEV_API_KEY: "not-the-node-secret-" + "x" * 20}),
        identity="mallory",
        room="shop",
        grants=Grants(publish=True, subscribe=True),
    )
    wrong_grant = (
        sfu_node.token("a", subscribe=True) if kind == "whip" else sfu_node.token("a", publish=True)
    )
    async with aiohttp.ClientSession() as session:
        for token, why in [
            (None, "missing access token"),
            ("not-a-jwt", "malformed token"),
            (foreign, "invalid token"),
            (sfu_node.token("a", ttl_s=-30), "token expired"),
        ]:
            status, text, headers = await _post(session, url, offer, token)
            assert status == 401, (why, status, text)
            assert why in text and headers["WWW-Authenticate"] == "Bearer"
        status, text, _ = await _post(session, url, offer, sfu_node.token("a", room="vip"))
        assert status == 403 and "not 'shop'" in text
        grant = "publish" if kind == "whip" else "subscribe"
        status, text, _ = await _post(session, url, offer, wrong_grant)
        assert status == 403 and f"lacks the {grant!r} grant" in text

        token = sfu_node.token("a")
        for content_type in ("application/json", "text/plain"):
            status, text, _ = await _post(session, url, offer, token, content_type)
            assert status == 415 and SDP in text
        for junk, reason in [
            ("hello", "SDP must start with v=0"),
            ("", "empty SDP"),
            ("v=0\r\nm=video nonsense\r\n", "unparseable SDP"),
        ]:
            status, text, _ = await _post(session, url, junk, token)
            assert status == 400, (junk, status, text)
            assert reason in text and 0 < len(text) < 200
        assert sfu_node.node.rooms.rooms == {} and sfu_node.node.http_sessions == {}

        async with session.delete(f"{url}/no-such-session") as response:
            assert response.status == 404
        async with session.options(url) as response:
            assert response.status == 204 and response.headers["Accept-Post"] == SDP


async def test_created_headers_and_wrong_room_delete(sfu_node, offers):
    async with aiohttp.ClientSession() as session:
        status, answer, headers = await _post(
            session, f"{sfu_node.url}/whep/shop", offers["whep"], sfu_node.token("tv")
        )
        assert status == 201
        assert headers["Content-Type"].startswith(SDP)
        assert answer.startswith("v=0") and "a=sendonly" in answer
        location = headers["Location"]
        resource = location.rsplit("/", 1)[1]
        assert location == f"/whep/shop/{resource}" and resource in sfu_node.node.http_sessions
        # the same resource under another room is not found; a forged token is refused
        async with session.delete(f"{sfu_node.url}/whep/vip/{resource}") as response:
            assert response.status == 404
        # no trickle ICE (the README: send the whole offer at once): PATCH is refused, clearly
        trickle = {"Content-Type": "application/trickle-ice-sdpfrag"}
        async with session.patch(f"{sfu_node.url}{location}", headers=trickle, data="a=x") as r:
            assert r.status == 405 and r.headers["Allow"] == "DELETE"
        bad = {"Authorization": f"Bearer {sfu_node.token('tv', ttl_s=-30)}"}
        async with session.delete(f"{sfu_node.url}{location}", headers=bad) as response:
            assert response.status == 401
        good = {"Authorization": f"Bearer {sfu_node.token('tv')}"}
        async with session.delete(f"{sfu_node.url}{location}", headers=good) as response:
            assert response.status == 200
        assert sfu_node.node.http_sessions == {} and sfu_node.node.rooms.rooms == {}
