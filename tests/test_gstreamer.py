"""Stock GStreamer (webrtcbin 1.22, Debian 12) publishing over WHIP and playing over WHEP.

webrtcbin signs DTLS with an RSA certificate by default; the node, as DTLS client, must offer
ECDHE-RSA suites beside its ECDSA ones or the session dies right after ICE ("no shared
cipher"). The GStreamer side runs in `tests/gst/webrtcbin_client.py` under the system Python
(Debian's python3-gi), as a subprocess; the node is real and in this process. Debian 12 has no
`whipclientsink`/`whepsrc` (they are in gst-plugins-rs): these clients are built on the same
webrtcbin with plain HTTP, which is all those elements add.

Without GStreamer, webrtcbin or python3-gi these tests fail (the subprocess cannot start its
pipeline); they are never skipped.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest

from sfu.client import RoomClient

from .conftest import LOOPBACK
from .test_whip_whep import RED, TONE_HZ, WhipPublisher, assert_tone, participants, wait_until

pytestmark = [pytest.mark.gstreamer, pytest.mark.timeout(40)]

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's GStreamer bindings live there, not in the venv
CLIENT = Path(__file__).parent / "gst" / "webrtcbin_client.py"


class GstClient:
    """A webrtcbin WHIP publisher or WHEP player running for `seconds` in a subprocess."""

    def __init__(self, mode: str, url: str, token: str, seconds: float) -> None:
        self.args = [SYSTEM_PYTHON, str(CLIENT), mode, url, token, "--seconds", str(seconds)]
        self.seconds = seconds
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )

    async def report(self) -> dict:
        """Wait for the client to finish; its JSON report (fails loudly if there is none)."""
        assert self.process is not None
        try:
            stdout, stderr = await asyncio.wait_for(self.process.communicate(), self.seconds + 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            pytest.fail(f"GStreamer client {self.args[2]} did not finish")
        lines = stdout.decode().strip().splitlines()
        if not lines or not lines[-1].startswith("{"):
            pytest.fail(
                f"GStreamer client {self.args[2]} gave no report (exit {self.process.returncode});"
                f" is GStreamer with webrtcbin and python3-gi installed?\n"
                f"{stderr.decode(errors='replace')[-3000:]}"
            )
        return json.loads(lines[-1])

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def _peer(node, identity: str, role: str):
    """The node's MediaPeer for a participant (publisher or subscriber side), or None;
    an identity ending in '-' names a WHEP player's prefix (`tv#whep-<id>`)."""
    for room in node.rooms.rooms.values():
        for participant in room.participants.values():
            if participant.identity == identity or (
                identity.endswith("-") and participant.identity.startswith(identity)
            ):
                session = getattr(participant, role)
                return session.peer if session is not None else None
    return None


def _packets(node, identity: str) -> dict[str, int]:
    seen = participants(node).get(identity, {})
    return {p["kind"]: p["packets"] for p in seen.get("producers", [])}


@pytest.mark.slow
async def test_gstreamer_whip_publisher_to_websocket_viewer_and_gstreamer_whep_player(sfu_node):
    """webrtcbin publishes VP8 + Opus over WHIP; an aiortc viewer and a webrtcbin WHEP player
    (both RSA-certificate peers of the node) receive and decode it."""
    node = sfu_node.node
    publisher = GstClient(
        "whip", f"{sfu_node.url}/whip/shop", sfu_node.token("gst", publish=True), seconds=9
    )
    player = GstClient(
        "whep", f"{sfu_node.url}/whep/shop", sfu_node.token("tv", subscribe=True), seconds=5
    )
    viewer = None
    try:
        await publisher.start()
        await wait_until(
            lambda: (
                _peer(node, "gst", "publisher") is not None
                and _peer(node, "gst", "publisher").connection_state == "connected"
            ),
            timeout=10,
            what="the GStreamer publisher to connect",
        )
        peer = _peer(node, "gst", "publisher")
        # the node was the DTLS client and webrtcbin's certificate is RSA
        assert peer.dtls_role == "client"
        assert peer.dtls_cipher.startswith("ECDHE-RSA-"), peer.dtls_cipher
        assert peer.false_started  # the early keys work with an RSA server too

        await player.start()
        viewer = await RoomClient.connect(
            sfu_node.url, sfu_node.token("viewer", subscribe=True), network=LOOPBACK
        )
        video = await viewer.next_track(kind="video", publisher="gst", timeout=10)
        audio = await viewer.next_track(kind="audio", publisher="gst", timeout=10)
        frames = [await asyncio.wait_for(video.track.recv(), 10) for _ in range(15)]
        assert (frames[-1].width, frames[-1].height) == (320, 240)
        # toward an ECDSA peer (aiortc) the node keeps its ECDSA suite and the early keys
        viewer_peer = _peer(node, "viewer", "subscriber")
        assert viewer_peer.dtls_role == "client"
        assert viewer_peer.dtls_cipher.startswith("ECDHE-ECDSA-"), viewer_peer.dtls_cipher
        assert viewer_peer.false_started
        await assert_tone(audio.track, 660.0)  # the script's audiotestsrc freq

        await wait_until(
            lambda: _peer(node, "tv#whep-", "subscriber") is not None,
            timeout=10,
            what="the GStreamer WHEP player to join",
        )
        whep_peer = _peer(node, "tv#whep-", "subscriber")
        await wait_until(
            lambda: whep_peer.connection_state == "connected", timeout=10, what="WHEP connected"
        )
        assert whep_peer.dtls_cipher.startswith("ECDHE-RSA-"), whep_peer.dtls_cipher

        played = await player.report()
        assert played["status"] == 201 and played["error"] is None, played
        assert played["dtls_states"] == ["connected", "connected"], played
        # ~4 s of 30 fps video and 50 audio frames/s decoded by GStreamer's own decoders
        assert played["decoded"]["video"] >= 30, played
        assert played["decoded"]["audio"] >= 50, played
        assert played["video_size"] == [320, 240], played
        assert played["delete_status"] == 200, played

        counts = _packets(node, "gst")
        assert counts.get("video", 0) >= 100 and counts.get("audio", 0) >= 100, counts
        published = await publisher.report()
        assert published["status"] == 201 and published["error"] is None, published
        assert published["connection_state"] == "connected", published
        assert published["sent_rtp"]["video"] >= 100, published
        assert published["delete_status"] == 200, published
        assert "gst" not in participants(node)  # the DELETE ended the session
    finally:
        if viewer is not None:
            await viewer.leave()
        await publisher.stop()
        await player.stop()


@pytest.mark.slow
async def test_gstreamer_whep_player_receives_an_aiortc_whip_publisher(sfu_node):
    """The other direction alone: an aiortc WHIP publisher (ECDSA) and a webrtcbin WHEP player
    (RSA) in one room; the player decodes the publisher's 320x240 video and Opus audio."""
    publisher = WhipPublisher(RED, TONE_HZ)
    player = GstClient(
        "whep", f"{sfu_node.url}/whep/shop", sfu_node.token("tv", subscribe=True), seconds=4
    )
    try:
        async with aiohttp.ClientSession() as session:
            await publisher.start(session, f"{sfu_node.url}/whip/shop", sfu_node.token("obs"))
        await wait_until(lambda: publisher.peer.connection_state == "connected", timeout=10)
        # ECDSA on both sides keeps the ECDSA suite and the early-keys (false start) path
        assert publisher.peer.dtls_role == "client"
        assert publisher.peer.dtls_cipher.startswith("ECDHE-ECDSA-"), publisher.peer.dtls_cipher
        assert publisher.peer.false_started
        await player.start()
        played = await player.report()
        assert played["status"] == 201 and played["error"] is None, played
        assert played["decoded"]["video"] >= 20, played
        assert played["decoded"]["audio"] >= 50, played
        assert played["video_size"] == [320, 240], played
    finally:
        await player.stop()
        await publisher.close()


def test_system_python_has_webrtcbin():
    """The precondition, stated on its own so a missing package names itself."""
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
        "from gi.repository import Gst; Gst.init(None);"
        "missing = [e for e in ('webrtcbin', 'nicesrc', 'vp8enc', 'vp8dec', 'opusenc',"
        " 'opusdec', 'rtpvp8pay', 'rtpopuspay') if Gst.ElementFactory.find(e) is None];"
        "print(','.join(missing))"
    )
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 0, f"{SYSTEM_PYTHON} cannot load GStreamer: {result.stderr[-2000:]}"
    assert result.stdout.strip() == "", f"GStreamer elements missing: {result.stdout.strip()}"
