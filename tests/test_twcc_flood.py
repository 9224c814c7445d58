"""A viewer flooding the node with transport-cc feedback bombs (issue 12, item 4).

Each bomb is 40 bytes claiming 65535 packet statuses. Before the parser and the sequencer were
bounded, 200 of them a second from one viewer took more than a CPU core; here a real node, a
publisher and an observer viewer (all aiortc, loopback) run while a second viewer sends ~200
bombs a second through its own SRTCP session, and the observer's packet rate must hold.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sfu.client import RoomClient
from sfu.media.rtp import EXT_TRANSPORT_CC
from sfu.media.sdp import add_transport_cc, answered_extension

from .conftest import LOOPBACK
from .media_sources import ColorVideoTrack, ToneAudioTrack
from .test_twcc import twcc_bomb

WINDOW_S = 3.0
BOMBS_PER_S = 200


class TransportCcViewer(RoomClient):
    """An aiortc viewer whose answers accept transport-cc (aiortc alone declines it), so the
    node stamps transport-wide numbers on what it sends it, as for a browser."""

    async def _answer(self, message: dict) -> None:
        self._twcc_id = next(iter(answered_extension(message["sdp"], EXT_TRANSPORT_CC).values()))
        await super()._answer(message)

    async def send(self, message: dict) -> None:
        if message.get("type") == "answer":
            message = {**message, "sdp": add_transport_cc(message["sdp"], self._twcc_id)}
        await super().send(message)


async def packets_received(client: RoomClient) -> int:
    """RTP packets the client's subscriber connection has received (aiortc's own stats)."""
    assert client.subscriber is not None
    report = await client.subscriber.pc.getStats()
    return sum(s.packetsReceived for s in report.values() if s.type == "inbound-rtp")


async def rate(client: RoomClient, seconds: float) -> float:
    start, t0 = await packets_received(client), time.monotonic()
    await asyncio.sleep(seconds)
    return (await packets_received(client) - start) / (time.monotonic() - t0)


async def rate_and_cpu(client: RoomClient, seconds: float) -> tuple[float, float]:
    """The client's packet rate, and the CPU this process (node and clients) used, in cores."""
    cpu, t0 = time.process_time(), time.monotonic()
    packets = await rate(client, seconds)
    return packets, (time.process_time() - cpu) / (time.monotonic() - t0)


async def flood(attacker: RoomClient, sequencer, seconds: float) -> int:
    """Send bombs at BOMBS_PER_S for `seconds` (bounded count); returns how many went out."""
    assert attacker.subscriber is not None
    sent = 0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline and sent < BOMBS_PER_S * seconds * 1.1:
        # aimed at the numbers the node really sent this viewer (as a real attacker reads
        # them from the transport-cc extension): the worst case for the sequencer
        base = (sequencer.last_seq - 2000) & 0xFFFF
        if attacker.subscriber.send_rtcp(twcc_bomb(base_seq=base)):
            sent += 1
        next_at += 1 / BOMBS_PER_S
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


@pytest.mark.slow
async def test_transport_cc_bombs_from_one_viewer_do_not_slow_the_others(sfu_node):
    publisher = await RoomClient.connect(
        sfu_node.url,
        sfu_node.token("cam"),
        network=LOOPBACK,
        publish=[ColorVideoTrack((40, 120, 200)), ToneAudioTrack()],
    )
    observer = await RoomClient.connect(sfu_node.url, sfu_node.token("observer"), network=LOOPBACK)
    attacker = await TransportCcViewer.connect(
        sfu_node.url, sfu_node.token("attacker"), network=LOOPBACK
    )
    try:
        for viewer in (observer, attacker):
            await viewer.next_track(kind="video", publisher="cam", timeout=15)
            await viewer.next_track(kind="audio", publisher="cam", timeout=15)
        room = sfu_node.node.rooms.rooms["shop"]
        sequencer = room.participants["attacker"].subscriber.bandwidth.sequencer
        deadline = time.monotonic() + 10
        while await packets_received(observer) < 100 or sequencer.last_seq < 100:
            assert time.monotonic() < deadline, (
                await packets_received(observer),
                sequencer.last_seq,
            )
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # past the first keyframes and the estimate's start

        before, cpu_before = await rate_and_cpu(observer, WINDOW_S)
        feedback_before = sequencer.feedback_packets
        (during, cpu_during), sent = await asyncio.gather(
            rate_and_cpu(observer, WINDOW_S), flood(attacker, sequencer, WINDOW_S)
        )
        await asyncio.sleep(0.3)  # the last bombs in flight
        arrived = sequencer.feedback_packets - feedback_before

        assert before > 50, before  # ~30 fps video plus 50 audio packets a second
        assert sent >= BOMBS_PER_S * WINDOW_S * 0.8, sent
        assert arrived >= sent * 0.9, (arrived, sent)  # the node parsed and joined them all
        assert during >= 0.9 * before, (during, before)
        # what the bombs cost: unbounded, they took a core (~6 ms each); bounded, ~1 %
        assert cpu_during - cpu_before < 0.25, (cpu_before, cpu_during)
        # the attacker is still served too (its own estimate may suffer: its own lie)
        assert await rate(attacker, 1.0) > 0
    finally:
        for client in (attacker, observer, publisher):
            await client.close()
