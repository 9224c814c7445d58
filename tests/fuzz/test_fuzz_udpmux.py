"""The node's shared media socket (sfu/media/udpmux.py): anything from a stranger.

Whatever arrives from an address no peer authenticated (random bytes, STUN-shaped requests,
answers and indications with any attributes) is dropped, counted exactly once, reaches no
peer, gets no answer and never raises into the event loop; the mux has a peer, so a route
exists to be misused.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from aioice import stun
from hypothesis import given
from hypothesis import strategies as st

from sfu.media.udpmux import DropCounters, UdpMux

from .budget import fuzz

pytestmark = pytest.mark.fuzz

UFRAG = "abcdefghijklmnop"


def stun_datagram(message_type: int, attributes: list[tuple[int, bytes]], tid: bytes) -> bytes:
    body = b""
    for kind, value in attributes:
        body += struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)
    return struct.pack("!HHI", message_type, len(body), stun.COOKIE) + tid + body


attribute = st.tuples(
    st.sampled_from([0x0006, 0x0008, 0x0024, 0x0025, 0x8028, 0x8029, 0x802A, 0x0020, 0x0009]),
    st.binary(max_size=40),
)
usernames = st.one_of(
    st.just(f"{UFRAG}:remote".encode()), st.binary(max_size=30), st.just(UFRAG.encode())
)
stun_like = st.builds(
    lambda kind, username, extra, tid: stun_datagram(kind, [(0x0006, username), *extra], tid),
    st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011, 0x0002]),
    usernames,
    st.lists(attribute, max_size=4),
    st.binary(min_size=12, max_size=12),
)
datagrams = st.lists(st.one_of(st.binary(max_size=300), stun_like), max_size=20)


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))


@fuzz(examples=200)
@given(datagrams)
def test_any_datagram_from_a_stranger_is_dropped_and_counted(datagrams: list[bytes]) -> None:
    mux = UdpMux(DropCounters())
    transport = Transport()
    mux.connection_made(transport)  # type: ignore[arg-type]
    delivered: list = []
    answered: list = []

    class Connection:
        """What the mux asks of an aioice Connection; its checks are aioice's own."""

        local_username = UFRAG
        remote_password = "q" * 22
        _nominated: dict = {}
        _check_list: list = []

        def data_received(self, data: bytes, component: int) -> None:
            delivered.append(data)

        def request_received(self, message, addr, protocol) -> None:
            answered.append(message)  # (aioice would answer 401: no valid integrity here)

    async def receive() -> None:  # (aioice's protocol needs a running loop)
        mux.add(Connection())
        for data in datagrams:
            mux.datagram_received(data, ("192.0.2.1", 5000))

    asyncio.run(receive())
    drops = mux.drops
    handed = len(answered)
    assert drops.malformed_stun + drops.unknown_ufrag + drops.unknown_source + handed == len(
        datagrams
    )
    # only a well-formed request naming our ufrag reaches the connection (to be authenticated)
    for message in answered:
        assert message.message_class == stun.Class.REQUEST
        assert message.attributes["USERNAME"].split(":", 1)[0] == UFRAG
    assert delivered == [] and transport.sent == []
    assert mux._data_routes == {}
