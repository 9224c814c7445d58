"""One UDP port for every peer of a node (media.udp_port, sfu.media.udpmux), with real peers.

aiortc clients publish and watch through a node whose peers all share one socket: the
candidates name that one port, every viewer gets media, a viewer whose address changes
(its NAT rebinds) is followed, and what nobody authenticated (STUN for an unknown ufrag,
garbage, media from a stranger) is dropped, counted, and harms no stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import struct

import pytest
from aioice import stun
from aiortc.mediastreams import MediaStreamError

from sfu import Config
from sfu.client import RoomClient
from sfu.config import ConfigError
from sfu.media.udpmux import SharedPortProtocol, UdpMux

from .conftest import LOOPBACK, start_node
from .hardening_rig import Observer, captured_logs, stats


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def mux_node():
    config = Config()
    config.media.udp_port = free_udp_port()
    node = await start_node(config)
    try:
        yield node
    finally:
        await node.runner.cleanup()


def candidate_ports(sdp: str) -> set[int]:
    return {int(p) for p in re.findall(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ", sdp)}


def node_peers(node) -> list:
    peers = []
    for room in node.node.rooms.rooms.values():
        for participant in room.participants.values():
            for side in (participant.publisher, participant.subscriber):
                if side is not None and side.peer.pc.localDescription is not None:
                    peers.append(side.peer)  # (a subscriber with nothing to watch has none)
    return peers


def binding_request(username: str) -> bytes:
    """A well-formed, signed Binding request, as a stranger guessing a ufrag sends it."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 12345
    request.attributes["ICE-CONTROLLED"] = 1
    request.add_message_integrity(os.urandom(16))
    request.add_fingerprint()
    return bytes(request)


@pytest.mark.slow
async def test_several_peers_share_the_one_port(mux_node):
    port = mux_node.config.media.udp_port
    observer = Observer(mux_node)
    viewers: list[RoomClient] = []
    try:
        await observer.start()
        for i in range(3):
            viewers.append(
                await RoomClient.connect(
                    mux_node.url,
                    mux_node.token(f"viewer{i}", subscribe=True, publish=False),
                    network=LOOPBACK,
                )
            )
        drains = []
        for viewer in viewers:
            remote = await viewer.next_track(kind="audio", timeout=10)
            drains.append(asyncio.ensure_future(_count(remote.track)))
        peers = node_peers(mux_node)
        assert len(peers) == 5  # the observer's camera and viewer, three more viewers
        for peer in peers:
            assert candidate_ports(peer.pc.localDescription.sdp) == {port}
            connection = peer._dtls.transport.iceGatherer._connection
            assert all(type(p) is SharedPortProtocol for p in connection._protocols)
        mux: UdpMux = mux_node.node.network.sockets.muxes["127.0.0.1"]
        assert mux.peers == len(peers)
        # every viewer receives: its own inbound-rtp count grows
        for viewer in viewers:
            before = await _received(viewer)
            await asyncio.sleep(0.5)
            assert await _received(viewer) > before
        for task in drains:
            task.cancel()
    finally:
        for viewer in viewers:
            await viewer.close()
        await observer.close()
    # everyone left: nothing is routed any more
    await asyncio.sleep(0.5)
    assert mux.peers == 0
    assert not mux._data_routes


@pytest.mark.slow
async def test_strangers_and_garbage_are_dropped_without_harm(mux_node):
    port = mux_node.config.media.udp_port
    observer = Observer(mux_node)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sent = {"unknown_ufrag": 0, "unknown_source": 0, "malformed_stun": 0}
    with captured_logs() as logs:
        try:
            await observer.start()
            before = await observer.rate(2.0)
            # the observer's real ufrag, with a wrong password: answered 401, never routed
            viewer_peer = mux_node.node.rooms.rooms["shop"].participants["observer"]
            ufrag = viewer_peer.subscriber.peer._ice_connection.local_username

            async def attack() -> None:
                for _ in range(20):
                    for _ in range(20):
                        stranger = binding_request(f"{os.urandom(8).hex()}:x")
                        sock.sendto(stranger, ("127.0.0.1", port))
                        sent["unknown_ufrag"] += 1
                        # DTLS-, RTP- and RTCP-looking bytes from an address nobody authenticated
                        for first in (22, 0x80, 0x81):
                            sock.sendto(bytes([first]) + os.urandom(99), ("127.0.0.1", port))
                            sent["unknown_source"] += 1
                        # a malformed attribute (PRIORITY of 2 bytes)
                        attribute = struct.pack("!HH", 0x0024, 2) + b"\x01\x02\x00\x00"
                        header = struct.pack("!HHI", 1, len(attribute), stun.COOKIE)
                        sock.sendto(header + os.urandom(12) + attribute, ("127.0.0.1", port))
                        sent["malformed_stun"] += 1
                    sock.sendto(binding_request(f"{ufrag}:x"), ("127.0.0.1", port))
                    await asyncio.sleep(0.05)

            attacking = asyncio.ensure_future(attack())
            during = await observer.rate(1.5)
            await attacking
            await asyncio.sleep(0.2)
            dropped = (await stats(mux_node))["dropped"]
            for key, count in sent.items():
                # (loopback UDP may lose a few under load; none may be handled otherwise)
                assert 0.9 * count <= dropped[key] <= count, (key, dropped, sent)
            assert during >= 0.8 * before, (before, during)
            # nothing came back but the 401s for the real ufrag with the wrong password
            answers = []
            while True:
                try:
                    answers.append(stun.parse_message(sock.recv(2048)))
                except BlockingIOError:
                    break
            assert answers, "the signed request for a real ufrag got no answer"
            for answer in answers:
                assert answer.message_class == stun.Class.ERROR
                assert answer.attributes["ERROR-CODE"][0] == 401
            mux: UdpMux = mux_node.node.network.sockets.muxes["127.0.0.1"]
            assert sock.getsockname() not in mux._data_routes
            assert await observer.rate(1.0) >= 0.8 * before  # still up
        finally:
            sock.close()
            await observer.close()
    assert logs.errors() == []


class _Dropper(asyncio.DatagramProtocol):
    """What a dead NAT binding is: datagrams to the old address reach nobody."""

    def __init__(self) -> None:
        self.count = 0

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.count += 1


class _Forward(asyncio.DatagramProtocol):
    def __init__(self, target) -> None:
        self.target = target

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.target.datagram_received(data, addr)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_viewer_whose_address_changes_is_followed(mux_node):
    observer = Observer(mux_node)
    try:
        await observer.start()
        assert await observer.rate(1.0) > 0
        # the viewer's NAT rebinds: from now on it sends from a new port, and what the node
        # sends to the old one is lost
        connection = observer.viewer.subscriber._ice_connection
        pair = connection._nominated[1]
        protocol = pair.protocol
        old_transport = protocol.transport
        loop = asyncio.get_running_loop()
        new_transport, _ = await loop.create_datagram_endpoint(
            lambda: _Forward(protocol), local_addr=("127.0.0.1", 0)
        )
        dropper = _Dropper()
        old_transport.set_protocol(dropper)
        protocol.transport = new_transport
        old_port = old_transport.get_extra_info("sockname")[1]
        new_port = new_transport.get_extra_info("sockname")[1]
        # the viewer's next consent check (aioice: every ~5 s) comes from the new port; its
        # next RTCP then moves the node's sending there
        node_peer = mux_node.node.rooms.rooms["shop"].participants["observer"].subscriber.peer
        for _ in range(150):
            if node_peer._ice_connection._nominated[1].remote_addr[1] == new_port:
                break
            await asyncio.sleep(0.1)
        assert node_peer._ice_connection._nominated[1].remote_addr == ("127.0.0.1", new_port)
        lost_before = dropper.count
        assert await observer.rate(1.5) > 0  # media arrives at the new port
        await asyncio.sleep(0.3)
        assert dropper.count - lost_before <= 5, "the node still sends to the old port"
        assert old_port != new_port
        new_transport.close()
    finally:
        await observer.close()


async def _count(track) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


async def _received(client: RoomClient) -> int:
    report = await client.subscriber.pc.getStats()
    return sum(s.packetsReceived for s in report.values() if s.type == "inbound-rtp")


@pytest.mark.parametrize("value", ["-1", "65536", "true"])
def test_the_udp_port_setting_is_checked(tmp_path, value: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f"[media]\nudp_port = {value}\n")
    with pytest.raises(ConfigError, match="udp_port"):
        Config.load(path)
