"""What the hardening tests share: a legitimate audio stream whose rate is watched while an
attack runs, a WebSocket client that stops reading, and small HTTP helpers.

Everything runs on loopback against a real node (tests/conftest.py's start_node) with real
aiortc peers; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import aiohttp

from sfu.auth import Grants, mint_token
from sfu.client import RoomClient

from .conftest import LOOPBACK, RunningNode
from .media_sources import ToneAudioTrack

SDP = "application/sdp"


class Observer:
    """A publisher sending a tone and a viewer receiving it: the stream an attack must spare.

    The viewer's packet count is read from its own RTCPeerConnection (inbound-rtp), so what
    is measured is what a real viewer got, not what the node believes it sent.
    """

    def __init__(self, node: RunningNode, room: str = "shop") -> None:
        self.node = node
        self.room = room
        self.publisher: RoomClient | None = None
        self.viewer: RoomClient | None = None
        self._drain: asyncio.Task | None = None

    async def start(self) -> None:
        node = self.node
        self.publisher = await RoomClient.connect(
            node.url, node.token("observer-cam", room=self.room), network=LOOPBACK
        )
        await self.publisher.publish([ToneAudioTrack(440.0)], sources=["microphone"])
        self.viewer = await RoomClient.connect(
            node.url,
            node.token("observer", room=self.room, subscribe=True, publish=False),
            network=LOOPBACK,
        )
        remote = await self.viewer.next_track(kind="audio", timeout=10)
        self._drain = asyncio.ensure_future(_drain(remote.track))
        await self.wait_flowing()

    async def wait_flowing(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        first = await self.packets()
        while await self.packets() < first + 20:
            assert time.monotonic() < deadline, "the observer's stream never started"
            await asyncio.sleep(0.1)

    async def packets(self) -> int:
        assert self.viewer is not None and self.viewer.subscriber is not None
        report = await self.viewer.subscriber.pc.getStats()
        return sum(s.packetsReceived for s in report.values() if s.type == "inbound-rtp")

    async def rate(self, seconds: float) -> float:
        """Packets a second the viewer received over the next `seconds`."""
        start, t0 = await self.packets(), time.monotonic()
        await asyncio.sleep(seconds)
        return (await self.packets() - start) / (time.monotonic() - t0)

    async def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
        for client in (self.viewer, self.publisher):
            if client is not None:
                await client.close()


async def _drain(track) -> None:
    """Consume decoded audio so it does not pile up in the track's queue."""
    try:
        while True:
            await track.recv()
    except Exception:
        return


class StalledSocket:
    """A WebSocket client that joins in the upgrade request and then never reads again.

    A raw TCP socket with a tiny receive buffer: the node's writes back up into its own send
    buffer and then into the participant's event queue, as with a client on a dead link.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def join(cls, node: RunningNode, identity: str, room: str = "shop") -> StalledSocket:
        token = node.token(identity, room=room, subscribe=True, publish=False)
        return await cls.open(node, f"/rtc?access_token={token}&join=1&auto_subscribe=0")

    @classmethod
    async def open(cls, node: RunningNode, target: str = "/rtc") -> StalledSocket:
        """The WebSocket upgrade for `target`, and then not another byte read."""
        url = urlsplit(node.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {target} HTTP/1.1\r\n"
                f"Host: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert b" 101 " in status, status
        return cls(reader, writer)

    async def wait_closed_by_node(self, timeout: float) -> bytes:
        """Read (now) until the node closes or resets the connection; what came, or raise."""
        received = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the node kept the socket open ({len(received)} bytes read)")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except ConnectionResetError:
                return bytes(received)
            if not chunk:
                return bytes(received)
            received += chunk

    def close(self) -> None:
        self.writer.transport.abort()


async def healthz_s(node: RunningNode) -> float:
    """How long /healthz takes to answer (the node's event loop latency, roughly)."""
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as http:
        async with http.get(node.url + "/healthz") as response:
            assert response.status == 200
    return time.monotonic() - t0


async def stats(node: RunningNode) -> dict:
    """The node's /api/stats (admin token), e.g. its `dropped` counters."""
    token = mint_token(node.config.auth, identity="ops", room="*", grants=Grants(admin=True))
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(node.url + "/api/stats", headers=headers) as response:
            assert response.status == 200
            return await response.json()


class LogCapture(logging.Handler):
    """Every record the node logs (any level), to count lines and find tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str, level: int = logging.DEBUG) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= level and text in r.getMessage()]

    def errors(self) -> list[str]:
        """ERROR lines and anything logged with a traceback (asyncio's included)."""
        return [
            r.getMessage()
            for r in self.records
            if r.levelno >= logging.ERROR or r.exc_info is not None
        ]


@contextmanager
def captured_logs(level: int = logging.INFO) -> Iterator[LogCapture]:
    """Capture the sfu (from `level` up), aiortc, aioice and asyncio loggers' records."""
    handler = LogCapture()
    loggers = [logging.getLogger(name) for name in ("sfu", "aiortc", "aioice", "asyncio")]
    sfu, sfu_level = loggers[0], loggers[0].level
    if sfu.getEffectiveLevel() > level:
        sfu.setLevel(level)  # (the others keep theirs: their warnings and errors are enough)
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        sfu.setLevel(sfu_level)
