"""Viewers flooding the node with RTCP feedback that asks for much work (issue 12, item 4).

* transport-cc bombs: 40 bytes claiming 65535 packet statuses. Before the parser and the
  sequencer were bounded, 200 a second from one viewer took more than a CPU core.
* NACK floods: ~100 bytes listing every packet the node still remembers for that viewer.
  Before retransmissions had a budget without a transport-cc estimate (and a packet could be
  resent at once again), 200 a second made the node resend ~70k packets/s: a core.

A real node, a publisher and an observer viewer (all aiortc, loopback) run while a second
viewer sends ~200 such packets a second through its own SRTCP session; the observer's packet
rate must hold, and the CPU this process uses may not grow by more than a quarter core.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sfu.client import RoomClient
from sfu.media.rtcp import Nack
from sfu.media.rtp import EXT_TRANSPORT_CC
from sfu.media.sdp import add_transport_cc, answered_extension

from .conftest import LOOPBACK
from .media_sources import ColorVideoTrack, ToneAudioTrack
from .test_twcc import twcc_bomb

WINDOW_S = 3.0
PACKETS_PER_S = 200


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


async def flood(attacker: RoomClient, make_packet, seconds: float) -> int:
    """Send RTCP at PACKETS_PER_S for `seconds` (bounded count); returns how many went out."""
    assert attacker.subscriber is not None
    sent = 0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline and sent < PACKETS_PER_S * seconds * 1.1:
        if attacker.subscriber.send_rtcp(make_packet()):
            sent += 1
        next_at += 1 / PACKETS_PER_S
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


class Rig:
    """Publisher, observer and attacker in one room of a running node."""

    def __init__(self, node, attacker: type[RoomClient] = TransportCcViewer) -> None:
        self.node = node
        self.attacker_class = attacker

    async def __aenter__(self) -> Rig:
        node = self.node
        self.publisher = await RoomClient.connect(
            node.url,
            node.token("cam"),
            network=LOOPBACK,
            publish=[ColorVideoTrack((40, 120, 200)), ToneAudioTrack()],
        )
        self.observer = await RoomClient.connect(node.url, node.token("observer"), network=LOOPBACK)
        self.attacker = await self.attacker_class.connect(
            node.url, node.token("attacker"), network=LOOPBACK
        )
        for viewer in (self.observer, self.attacker):
            await viewer.next_track(kind="video", publisher="cam", timeout=15)
            await viewer.next_track(kind="audio", publisher="cam", timeout=15)
        room = node.node.rooms.rooms["shop"]
        self.session = room.participants["attacker"].subscriber
        self.sequencer = self.session.bandwidth.sequencer
        deadline = time.monotonic() + 10
        stamped = issubclass(self.attacker_class, TransportCcViewer)  # transport-cc numbers
        while (
            await packets_received(self.observer) < 100
            or await packets_received(self.attacker) < 100
            or (stamped and self.sequencer.last_seq < 100)
        ):
            assert time.monotonic() < deadline, "media never reached the viewers"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # past the first keyframes and the estimate's start
        return self

    async def __aexit__(self, *exc) -> None:
        for client in (self.attacker, self.observer, self.publisher):
            await client.close()

    async def attack(self, make_packet) -> tuple[float, float, float, float, int]:
        """(observer rate before, during, CPU before, during, packets sent)."""
        before, cpu_before = await rate_and_cpu(self.observer, WINDOW_S)
        (during, cpu_during), sent = await asyncio.gather(
            rate_and_cpu(self.observer, WINDOW_S), flood(self.attacker, make_packet, WINDOW_S)
        )
        await asyncio.sleep(0.3)  # the last packets in flight
        assert before > 50, before  # ~30 fps video plus 50 audio packets a second
        assert sent >= PACKETS_PER_S * WINDOW_S * 0.8, sent
        return before, during, cpu_before, cpu_during, sent


@pytest.mark.slow
async def test_transport_cc_bombs_from_one_viewer_do_not_slow_the_others(sfu_node):
    async with Rig(sfu_node) as rig:
        sequencer = rig.sequencer
        feedback_before = sequencer.feedback_packets

        def bomb() -> bytes:
            # aimed at the numbers the node really sent this viewer (as a real attacker reads
            # them from the transport-cc extension): the worst case for the sequencer
            return twcc_bomb(base_seq=(sequencer.last_seq - 2000) & 0xFFFF)

        before, during, cpu_before, cpu_during, sent = await rig.attack(bomb)
        arrived = sequencer.feedback_packets - feedback_before
        assert arrived >= sent * 0.9, (arrived, sent)  # the node parsed and joined them all
        assert during >= 0.9 * before, (during, before)
        # what the bombs cost: unbounded, they took a core (~6 ms each); bounded, ~1 %
        assert cpu_during - cpu_before < 0.25, (cpu_before, cpu_during)
        assert await rate(rig.attacker, 1.0) > 0  # the attacker is still served too


@pytest.mark.slow
async def test_nack_floods_from_one_viewer_do_not_slow_the_others(sfu_node):
    # a plain aiortc viewer: no transport-cc, so no estimate to budget retransmissions by
    async with Rig(sfu_node, attacker=RoomClient) as rig:
        video = next(dt for dt in rig.session.downtracks if dt.kind == "video")
        fw = video.forwarder
        assert fw is not None and video.rtx_budget_bps is None
        deadline = time.monotonic() + 15
        while len(fw._ring) - fw._ring.count(None) < 150:  # a few seconds of video
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

        def nack_everything() -> bytes:
            # every packet the node remembers for this viewer (a real attacker lists the
            # sequence numbers it received)
            remembered = [entry[0] for entry in fw._ring if entry is not None]
            return Nack(1, video.ssrc, remembered).serialize()

        resent_before = video.retransmitted
        before, during, cpu_before, cpu_during, sent = await rig.attack(nack_everything)
        resent = video.retransmitted - resent_before
        assert video.retransmissions_skipped > 0
        # some are resent (the budget is a share of what the track sends)...
        assert 0 < resent, resent
        # ...but far from what was asked for (hundreds per NACK)
        assert resent < sent * 5, (resent, sent)
        assert during >= 0.9 * before, (during, before)
        assert cpu_during - cpu_before < 0.25, (cpu_before, cpu_during)
