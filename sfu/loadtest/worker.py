"""A load-test worker process: publishers or viewers, reporting JSON lines on stdout.

    python -m sfu.loadtest.worker '<json settings>'

Lines: {"event": "progress", ...} every second, {"event": "ready"} once every client of
this worker is up (or has failed), {"event": "result", ...} at the end. Viewers count packets
in MediaPeer's RTP callback (after SRTP): nothing is depacketised or decoded. The layer a
viewer receives is read from the VP8 keyframe header (its width x height).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from typing import Any
from urllib.parse import urlparse

from ..auth import Grants, mint_token
from ..config import AuthSettings
from ..media.peer import NetworkSettings
from ..media.vp8 import parse_vp8
from .simulcast import (
    Layer,
    encode_layers,
    feedback_handler,
    send_layers,
    silent_video_track,
    sim_offer,
    vp8_payload_type,
)

FREEZE_S = 0.5  # no video packet for this long, after video started: a freeze
PROGRESS_S = 1.0


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def network_for(url: str, bind: list[str]) -> NetworkSettings:
    """Loopback URLs need loopback candidates; others every interface (or --bind)."""
    if bind:
        return NetworkSettings(addresses=tuple(bind))
    host = urlparse(url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        return NetworkSettings(addresses=("127.0.0.1",))
    return NetworkSettings(addresses=())


def token(s: dict[str, Any], identity: str, **grants: bool) -> str:
    auth = AuthSettings(api_keys={s["api_key"]: s["api_secret"]})
    return mint_token(
        auth, identity=identity, room=s["room"], grants=Grants(**grants), ttl_s=s["ttl_s"]
    )


class StreamCount:
    """One received SSRC: packets, bytes, sequence span, video gaps and layer."""

    __slots__ = (
        "packets",
        "octets",
        "first_seq",
        "ext_seq",
        "max_ext",
        "last_at",
        "freezes",
        "gaps",
        "width",
        "height",
        "kind",
        "first_at",
    )

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.packets = 0
        self.octets = 0
        self.first_seq = -1
        self.ext_seq = 0
        self.max_ext = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.freezes = 0
        self.gaps = array.array("d")
        self.width = self.height = 0


class Viewer:
    """A packet-counting subscriber (RoomClient with a counting MediaPeer)."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.client = None
        self.join_ms: float | None = None
        self.first_video_ms: float | None = None
        self.joined_at = 0.0
        self.error: str | None = None
        self.streams: dict[int, StreamCount] = {}
        self.kinds: dict[int, str] = {}

    def on_rtp(self, data: bytes, arrival_ms: int) -> None:
        now = time.monotonic()
        ssrc = int.from_bytes(data[8:12], "big")
        s = self.streams.get(ssrc)
        if s is None:
            s = self.streams[ssrc] = StreamCount(self._kind(ssrc))
            s.first_at = now
        seq = (data[2] << 8) | data[3]
        if s.first_seq < 0:
            s.first_seq = s.ext_seq = s.max_ext = seq
        else:
            s.ext_seq += ((seq - s.ext_seq + 0x8000) & 0xFFFF) - 0x8000
            s.max_ext = max(s.max_ext, s.ext_seq)
        if s.kind == "video":
            if self.first_video_ms is None:
                self.first_video_ms = (now - self.joined_at) * 1000
            if s.last_at and now - s.last_at > FREEZE_S:
                s.freezes += 1
                if len(s.gaps) < 200:  # (start after join, length) of the first freezes
                    s.gaps.extend((s.last_at - self.joined_at, now - s.last_at))
            self._layer(s, data)
        s.packets += 1
        s.octets += len(data)
        s.last_at = now

    def _kind(self, ssrc: int) -> str:
        if ssrc not in self.kinds:
            self._read_kinds()
        return self.kinds.get(ssrc, "?")

    def _read_kinds(self) -> None:
        from ..media.sdp import parse_offer

        peer = self.client.subscriber if self.client is not None else None
        if peer is None or peer.pc.remoteDescription is None:
            return
        for m in parse_offer(peer.pc.remoteDescription.sdp):
            for ssrc in m.ssrcs:
                self.kinds[ssrc] = m.kind

    @staticmethod
    def _layer(s: StreamCount, data: bytes) -> None:
        cc = data[0] & 0x0F
        offset = 12 + 4 * cc
        if data[0] & 0x10 and len(data) >= offset + 4:
            offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
        info = parse_vp8(memoryview(data)[offset:])
        if info is None or not info.keyframe:
            return
        start = offset + info.header_size
        if data[start + 3 : start + 6] == b"\x9d\x01\x2a":
            s.width = (data[start + 6] | (data[start + 7] << 8)) & 0x3FFF
            s.height = (data[start + 8] | (data[start + 9] << 8)) & 0x3FFF

    def result(self, until: float) -> dict[str, Any]:
        video = [s for s in self.streams.values() if s.kind == "video"]
        audio = [s for s in self.streams.values() if s.kind == "audio"]

        def kbps(streams: list[StreamCount]) -> float:
            total = sum(s.octets for s in streams)
            span = max((until - min(s.first_at for s in streams)) if streams else 0, 1e-3)
            return round(total * 8 / span / 1000, 1)

        expected = sum(s.max_ext - s.first_seq + 1 for s in self.streams.values())
        received = sum(s.packets for s in self.streams.values())
        lost = max(0, expected - received)
        tail_freeze = sum(1 for s in video if s.last_at and until - s.last_at > FREEZE_S)
        newest = max(video, key=lambda s: s.last_at, default=None)
        layer = (newest.width, newest.height) if newest is not None else (0, 0)
        return {
            "identity": self.identity,
            "join_ms": None if self.join_ms is None else round(self.join_ms, 1),
            "first_video_ms": (
                None if self.first_video_ms is None else round(self.first_video_ms, 1)
            ),
            "video_kbps": kbps(video),
            "audio_kbps": kbps(audio),
            "layer": f"{layer[0]}x{layer[1]}" if layer[0] else "",
            "packets": received,
            "lost": lost,
            "loss_pct": round(100 * lost / expected, 2) if expected else 0.0,
            "freezes": sum(s.freezes for s in video) + tail_freeze,
            "freezes_at_s": [
                [round(st.gaps[i], 2), round(st.gaps[i + 1], 2)]
                for st in video
                for i in range(0, min(len(st.gaps), 10), 2)
            ],
            "error": self.error,
        }


def counting_client_class():
    from ..client import RoomClient
    from ..media.peer import MediaPeer

    class CountingClient(RoomClient):
        viewer: Viewer

        async def _answer(self, message: dict) -> None:
            if self.subscriber is None:
                self.subscriber = MediaPeer(
                    self.network, on_rtp=self.viewer.on_rtp, label=f"loadtest:{self.identity}"
                )
                self.subscriber.pc.on("track", self._on_track)
            await super()._answer(message)
            self.viewer._read_kinds()

    return CountingClient


async def run_viewers(s: dict[str, Any]) -> None:
    cls = counting_client_class()
    network = network_for(s["url"], s["bind"])
    viewers = [Viewer(identity) for identity in s["identities"]]
    deadline = time.monotonic() + s["join_window_s"]  # joins not started by then fail

    async def join(viewer: Viewer) -> None:
        started = time.monotonic()
        viewer.joined_at = started
        try:
            cls.viewer = viewer  # read in _answer, which runs before connect() returns
            client = await cls.connect(
                s["url"],
                token(s, viewer.identity, subscribe=True),
                network=network,
                timeout=s["join_timeout_s"],
                metadata={"role": "viewer", "loadtest": True},
            )
            client.viewer = viewer
            viewer.client = client
            viewer.join_ms = (time.monotonic() - started) * 1000
        except Exception as exc:
            viewer.error = f"join: {type(exc).__name__}: {exc}"[:200]

    async def joins() -> None:
        for viewer in viewers:  # one at a time per worker: a burst of handshakes starves a node
            if time.monotonic() > deadline:
                viewer.error = "join: not started before the deadline"
                continue
            await join(viewer)

    joining = asyncio.ensure_future(joins())
    measure_until = None
    while measure_until is None or time.monotonic() < measure_until:
        await asyncio.wait([joining], timeout=PROGRESS_S)
        emit(
            {
                "event": "progress",
                "joined": sum(v.join_ms is not None for v in viewers),
                "failed": sum(v.error is not None for v in viewers),
                "media": sum(v.first_video_ms is not None for v in viewers),
                "octets": sum(st.octets for v in viewers for st in v.streams.values()),
            }
        )
        if measure_until is None and (joining.done() or time.monotonic() > deadline):
            # every viewer of this worker is in (or failed): measure for `duration`
            measure_until = time.monotonic() + s["duration_s"]
            emit({"event": "ready"})
    joining.cancel()
    until = time.monotonic()
    emit({"event": "result", "viewers": [v.result(until) for v in viewers]})
    for viewer in viewers:
        if viewer.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(viewer.client.close(), 2)


async def run_publishers(s: dict[str, Any]) -> None:
    from ..client import RoomClient
    from .media import (
        AUDIO_FRAME,
        AUDIO_RATE,
        FPS,
        VIDEO_CLOCK,
        encode_audio,
        encode_video,
        looping_track,
    )

    width, height = s["video_size"]
    audio = encode_audio(s["clip_s"])
    if s["simulcast"]:
        layers = encode_layers(width, height, s["video_bitrate"], s["clip_s"])
        video = layers[-1].frames
    else:
        layers = []
        video = encode_video(s["clip_s"], width, height, s["video_bitrate"])
    emit({"event": "encoded", "video_frames": len(video), "audio_packets": len(audio)})
    network = network_for(s["url"], s["bind"])
    clients, errors, join_ms = [], [], []
    stop = asyncio.Event()
    senders = []
    for identity in s["identities"]:
        started = time.monotonic()
        try:
            if s["simulcast"]:
                client, sender = await publish_simulcast(s, identity, network, layers, audio, stop)
                senders.append(sender)
            else:
                client = await RoomClient.connect(
                    s["url"],
                    token(s, identity, publish=True, subscribe=True),
                    network=network,
                    auto_subscribe=False,
                    timeout=s["join_timeout_s"],
                    metadata={"role": "host", "loadtest": True},
                    publish=[
                        looping_track("video", video, FPS, VIDEO_CLOCK),
                        looping_track("audio", audio, AUDIO_RATE / AUDIO_FRAME, AUDIO_RATE),
                    ],
                    sources=["camera", "microphone"],
                )
            clients.append(client)
            join_ms.append(round((time.monotonic() - started) * 1000, 1))
        except Exception as exc:
            errors.append(f"{identity}: {type(exc).__name__}: {exc}"[:200])
    emit({"event": "ready", "published": len(clients), "errors": errors})
    # publish until the orchestrator closes our stdin (viewers done), at most this long
    await until_stdin_closes(s["join_window_s"] + s["duration_s"] + 60)
    stop.set()
    for sender in senders:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, 2)
    emit({"event": "result", "publishers": len(clients), "join_ms": join_ms, "errors": errors})
    for client in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 2)


async def until_stdin_closes(timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    def wait() -> None:
        with contextlib.suppress(Exception):
            sys.stdin.buffer.read()
        loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=wait, daemon=True).start()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(closed.wait(), timeout_s)


async def publish_simulcast(s, identity, network, layers, audio, stop):
    """Join, then publish simulcast video (raw RTP layers) and Opus; (client, sender task)."""
    from ..client import RoomClient
    from ..media.peer import MediaPeer
    from .media import AUDIO_FRAME, AUDIO_RATE, looping_track

    client = await RoomClient.connect(
        s["url"],
        token(s, identity, publish=True, subscribe=True),
        network=network,
        auto_subscribe=False,
        timeout=s["join_timeout_s"],
        metadata={"role": "host", "loadtest": True},
    )
    layers = [Layer(layer.frames) for layer in layers]  # own SSRCs and sequence numbers
    try:
        peer = None

        def resend(packet: bytes) -> None:
            if peer is not None:
                peer.send_rtp(packet)

        client.publisher = peer = MediaPeer(
            network, on_rtcp=feedback_handler(layers, resend), label=f"loadtest-pub:{identity}"
        )
        video = peer.pc.addTransceiver(silent_video_track(), direction="sendonly")
        sound = looping_track("audio", audio, AUDIO_RATE / AUDIO_FRAME, AUDIO_RATE)
        voice = peer.pc.addTransceiver(sound, direction="sendonly")
        offer = sim_offer(await peer.offer(), video.mid, layers)
        reply = await client.request(
            {
                "type": "publish",
                "sdp": offer,
                "tracks": [
                    {"mid": video.mid, "kind": "video", "source": "camera"},
                    {"mid": voice.mid, "kind": "audio", "source": "microphone"},
                ],
            },
            timeout=s["join_timeout_s"],
        )
        await peer.accept_answer(reply["sdp"])
        pt = vp8_payload_type(reply["sdp"])
    except BaseException:
        await client.close()
        raise
    return client, asyncio.ensure_future(send_layers(peer, layers, pt, stop))


def main(argv: list[str] | None = None) -> int:
    settings = json.loads((argv or sys.argv[1:])[0])
    if settings.get("batch") and hasattr(os, "SCHED_BATCH"):
        # the node shares this machine: each packet it sends wakes a client process, which
        # at normal priority would preempt the node in the middle of its fan-out
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    logging.getLogger("aioice").setLevel(logging.ERROR)
    run = run_publishers if settings["role"] == "publishers" else run_viewers
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
