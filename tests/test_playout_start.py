"""A far viewer's playout delay from its first frame: the RTT of the ICE handshake.

Unit part: the BandwidthController seeded with a handshake RTT (fake clock). End to end: a
real aiortc client joins over loopback and the SFU's own ICE checks give both peer
connections a handshake RTT.
"""

from __future__ import annotations

import asyncio

import pytest

from sfu.client import RoomClient
from sfu.media import bandwidth as bandwidth_module
from sfu.media.bandwidth import PLAYOUT_DELAY_START_S, BandwidthController
from sfu.media.forwarder import DownTrack

from .conftest import LOOPBACK
from .media_sources import ColorVideoTrack
from .test_bandwidth_tuning import NOTABLE_LOSS, Clock, playout_downtrack, report


def _controller(monkeypatch, t: float = 500.0):
    clock = Clock(t)
    monkeypatch.setattr(bandwidth_module, "time", clock)
    dt, _ = playout_downtrack()
    audio = DownTrack(kind="audio", mid="a", ssrc=78, send=lambda _: True)
    return clock, dt, BandwidthController([dt, audio], adaptive_playout_delay=True)


def test_a_far_link_gets_its_playout_delay_from_the_handshake(monkeypatch) -> None:
    clock, dt, ctrl = _controller(monkeypatch)
    ctrl.seed_rtt(0.3)  # before any receiver report, before the first frame
    assert dt.playout_delay is not None
    assert abs(dt.playout_delay[0] * 10 - (1.5 * 0.3 + 0.1) * 1000) <= 10
    assert ctrl.estimator.rtt_s == pytest.approx(0.3)
    ctrl.seed_rtt(0.05)  # seeded once: a later call changes nothing
    assert ctrl.handshake_rtt_s == pytest.approx(0.3)
    # reports without loss: kept through the start window, then taken off
    clock.t += PLAYOUT_DELAY_START_S - 1
    report(dt, clock.t, 0.31)
    ctrl.tick(clock.t)
    assert dt.playout_delay is not None
    clock.t += 2
    report(dt, clock.t, 0.31)
    ctrl.tick(clock.t)
    assert dt.playout_delay is None
    # loss later: the usual rule puts it back
    report(dt, clock.t + 1, 0.31, fraction_lost=NOTABLE_LOSS + 5)
    clock.t += 1
    ctrl.tick(clock.t)
    assert dt.playout_delay is not None


def test_a_near_link_gets_no_playout_delay_from_the_handshake(monkeypatch) -> None:
    _, dt, ctrl = _controller(monkeypatch)
    ctrl.seed_rtt(0.04)
    ctrl.tick(500.1)
    assert dt.playout_delay is None
    _, dt2, off = _controller(monkeypatch)
    off.adaptive_playout_delay = False
    off.seed_rtt(0.4)
    assert dt2.playout_delay is None


async def test_both_connections_measure_a_handshake_rtt(sfu_node) -> None:
    publisher = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    viewer = await RoomClient.connect(sfu_node.url, sfu_node.token("viewer"), network=LOOPBACK)
    try:
        await publisher.publish([ColorVideoTrack((200, 40, 40))])
        remote = await viewer.next_track(kind="video", timeout=10)
        await asyncio.wait_for(remote.track.recv(), 10)
        room = sfu_node.node.rooms.rooms["shop"]
        sub_peer = room.participants["viewer"].subscriber.peer
        pub_peer = room.participants["host"].publisher.peer
        for peer in (sub_peer, pub_peer):
            assert peer.handshake_rtt_s is not None, peer.label
            assert 0.0 <= peer.handshake_rtt_s < 5.0, peer.handshake_rtt_s  # measured at all
    finally:
        await viewer.leave()
        await publisher.leave()
