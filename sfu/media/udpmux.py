"""One UDP socket per node address for every peer: ICE, DTLS and SRTP demultiplexed in Python.

With `media.udp_port` set, a node binds one socket per media address on that port, and every
peer's ICE host candidate is that address and port (as mediasoup's WebRtcServer, LiveKit's and
Jitsi's single port do); a firewall then needs one UDP port per node. Datagrams are told apart
by what they carry (RFC 7983: STUN < 4 <= DTLS < 64, RTP/RTCP 128-191):

* a STUN request goes to the peer whose local ICE ufrag is the first half of its USERNAME; the
  peer's aioice Connection authenticates it as it always does. A request nobody's ufrag matches
  is dropped (and counted), unanswered;
* a STUN response goes to the peer that sent the request (by transaction id);
* anything else goes to the peer that the remote address belongs to. An address belongs to a
  peer once that peer has answered an authenticated check from it (or got an authenticated
  answer to its own check from it), so a remote that moves to a new address or port is
  followed after its first check from there, and nobody can claim an address without the
  peer's ICE password. Datagrams from unknown addresses are dropped (and counted).

The peers' aioice Connections keep their logic (checks, nomination, consent); only their
sockets are replaced by `SharedPortProtocol`, a StunProtocol whose transport is the shared one.
Media then costs one dict lookup per datagram before MediaPeer's SRTP receiver, instead of a
socket, a protocol object and a STUN parse attempt per peer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from aioice import stun
from aioice.ice import StunProtocol

logger = logging.getLogger(__name__)

UFRAG_ALPHABET = string.ascii_letters + string.digits
UFRAG_LENGTH = 16  # ~95 bits: ufrags of a node's peers never collide by chance
MAX_PENDING_TRANSACTIONS = 4096  # STUN requests in flight, all peers; pruned past this


@dataclass
class DropCounters:
    """Datagrams the media sockets of one node dropped (shown in /api/stats)."""

    malformed_stun: int = 0
    unknown_ufrag: int = 0  # STUN request for no peer of this node
    # DTLS/SRTP from an address no peer has authenticated, STUN answers nobody waits for
    unknown_source: int = 0


def new_ufrag() -> str:
    return "".join(secrets.choice(UFRAG_ALPHABET) for _ in range(UFRAG_LENGTH))


class SharedPortProtocol(StunProtocol):
    """One peer's (one aioice Connection's) view of a shared socket."""

    def __init__(self, connection: Any, mux: UdpMux) -> None:
        super().__init__(connection)
        self.mux = mux
        self.transport = mux.transport
        self.addresses: set[tuple] = set()  # remote addresses routed to this peer
        self.closed = False

    def send_stun(self, message: stun.Message, addr: tuple) -> None:
        if message.message_class == stun.Class.REQUEST:
            self.mux.expect_response(message.transaction_id, self)
        elif message.message_class == stun.Class.RESPONSE:
            # aioice answers a check with success only once it has authenticated it
            self.mux.route(addr, self)
        self.transport.sendto(bytes(message), addr)

    def moved(self, addr: tuple, component: int) -> None:
        """The remote now sends from `addr` (authenticated): send there too, on the pair that
        aioice made for it when its check came in."""
        connection = self.receiver
        current = connection._nominated.get(component)
        if current is None or current.remote_addr == addr:
            return
        pair = next(
            (p for p in connection._check_list if p.protocol is self and p.remote_addr == addr),
            None,
        )
        if pair is None:
            return
        connection._nominated[component] = pair
        logger.info("ICE peer moved from %s:%d to %s:%d", *current.remote_addr, *addr)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.mux.remove(self)
            self.connection_lost(None)


class UdpMux(asyncio.DatagramProtocol):
    """The shared socket of one address: routes each datagram to one peer (see module doc)."""

    def __init__(self, drops: DropCounters) -> None:
        self.drops = drops
        self.transport: asyncio.DatagramTransport | None = None
        self._by_ufrag: dict[str, SharedPortProtocol] = {}
        self._by_address: dict[tuple, SharedPortProtocol] = {}
        # fast path: remote address -> (Connection.data_received, component)
        self._data_routes: dict[tuple, tuple[Any, int]] = {}
        self._transactions: dict[bytes, SharedPortProtocol] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    # -- peers -----------------------------------------------------------------------------------

    def add(self, connection: Any) -> SharedPortProtocol:
        """A protocol for `connection` on this socket, found by its local ufrag."""
        protocol = SharedPortProtocol(connection, self)
        ufrag = connection.local_username
        if ufrag in self._by_ufrag:
            raise ValueError("ICE ufrag already in use on this socket")
        self._by_ufrag[ufrag] = protocol
        return protocol

    def remove(self, protocol: SharedPortProtocol) -> None:
        ufrag = protocol.receiver.local_username
        if self._by_ufrag.get(ufrag) is protocol:
            del self._by_ufrag[ufrag]
        for addr in protocol.addresses:
            if self._by_address.get(addr) is protocol:
                del self._by_address[addr]
                self._data_routes.pop(addr, None)
        protocol.addresses.clear()
        for tid in [t for t, p in self._transactions.items() if p is protocol]:
            del self._transactions[tid]

    def route(self, addr: tuple, protocol: SharedPortProtocol) -> None:
        """Datagrams from `addr` go to `protocol` from now on (it authenticated `addr`).

        A further address of a connected peer (a NAT rebinding, a new network) gets a route
        that, on its first datagram, makes it the peer's send address too (`moved`) and then
        gives way to the plain one: the remote sends from there, so it reads there."""
        if protocol.closed:
            return
        addr = (addr[0], addr[1])
        previous = self._by_address.get(addr)
        if previous is protocol:
            return
        if previous is not None:
            previous.addresses.discard(addr)
        self._by_address[addr] = protocol
        protocol.addresses.add(addr)
        component = protocol.local_candidate.component
        receive = protocol.receiver.data_received
        if not protocol.receiver._nominated:
            self._data_routes[addr] = (receive, component)
            return

        def first_from_new_address(data: bytes, component: int) -> None:
            self._data_routes[addr] = (receive, component)
            protocol.moved(addr, component)
            receive(data, component)

        self._data_routes[addr] = (first_from_new_address, component)

    def expect_response(self, transaction_id: bytes, protocol: SharedPortProtocol) -> None:
        if len(self._transactions) >= MAX_PENDING_TRANSACTIONS:
            # drop the finished ones (aioice removes a transaction once it is answered or
            # timed out); its own dict is the authority
            self._transactions = {
                t: p for t, p in self._transactions.items() if t in p.transactions
            }
        self._transactions[transaction_id] = protocol

    @property
    def peers(self) -> int:
        return len(self._by_ufrag)

    # -- datagrams -----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data and data[0] >= 4:  # DTLS, RTP, RTCP: by remote address
            route = self._data_routes.get(addr)
            if route is None:
                self.drops.unknown_source += 1
                return
            route[0](data, route[1])
            return
        try:
            self._stun_received(data, (addr[0], addr[1]))
        except Exception as exc:  # a malformed attribute makes aioice's parser raise anything
            self.drops.malformed_stun += 1
            logger.debug("malformed STUN from %s dropped: %r", addr, exc)

    def _stun_received(self, data: bytes, addr: tuple) -> None:
        message = stun.parse_message(data)
        if message.message_class == stun.Class.REQUEST:
            username = message.attributes.get("USERNAME")
            protocol = None
            if isinstance(username, str):
                protocol = self._by_ufrag.get(username.split(":", 1)[0])
            if protocol is None:
                self.drops.unknown_ufrag += 1
                return
            protocol.receiver.request_received(message, addr, protocol)
            return
        protocol = None
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            protocol = self._transactions.pop(message.transaction_id, None)
        transaction = protocol and protocol.transactions.get(message.transaction_id)
        if protocol is None or transaction is None:  # an answer nobody waits for, an indication
            self.drops.unknown_source += 1
            return
        password = (protocol.receiver.remote_password or "").encode("utf8")
        if (
            message.message_class == stun.Class.RESPONSE
            and password
            and "MESSAGE-INTEGRITY" in message.attributes
            and message.check_message_integrity(password)
        ):
            self.route(addr, protocol)  # our check was answered from there, authenticated
        transaction.response_received(message, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("shared media socket: %r", exc)


@dataclass
class SharedSockets:
    """A node's shared media sockets, one per address, opened on first use."""

    muxes: dict[str, UdpMux] = field(default_factory=dict)
    _opening: dict[str, asyncio.Future] = field(default_factory=dict)

    async def get(self, address: str, port: int, drops: DropCounters) -> UdpMux:
        mux = self.muxes.get(address)
        if mux is not None:
            return mux
        opening = self._opening.get(address)
        if opening is None:
            opening = self._opening[address] = asyncio.ensure_future(
                self._open(address, port, drops)
            )
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done():
                self._opening.pop(address, None)

    async def _open(self, address: str, port: int, drops: DropCounters) -> UdpMux:
        loop = asyncio.get_running_loop()
        try:
            transport, mux = await loop.create_datagram_endpoint(
                lambda: UdpMux(drops), local_addr=(address, port)
            )
        except OSError as exc:
            raise OSError(f"cannot bind the media port {address}:{port}: {exc}") from exc
        self.muxes[address] = mux
        logger.info("media on one UDP port: %s:%d", address, port)
        return mux

    def close(self) -> None:
        for mux in self.muxes.values():
            if mux.transport is not None:
                mux.transport.close()
        self.muxes.clear()


__all__ = ["DropCounters", "SharedPortProtocol", "SharedSockets", "UdpMux", "new_ufrag"]
