"""One WebRTC peer connection whose RTP path belongs to us, not to aiortc's codecs.

aiortc supplies ICE, DTLS, SRTP and SDP. Everything that reaches into its private parts lives
in this module, so an aiortc upgrade has one place to check:

* host candidates are gathered only on the configured addresses and UDP port range;
* decrypted RTP and RTCP are handed to our callbacks instead of aiortc's receivers
  (so nothing is depacketised, jitter-buffered or decoded);
* outgoing packets are SRTP-protected and written straight to the nominated ICE pair's
  socket, without aiortc's encoders or per-packet coroutines.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pylibsrtp
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcdtlstransport import RTCDtlsTransport

from .rtp import is_rtcp

logger = logging.getLogger(__name__)

NTP_UNIX_OFFSET_S = 2208988800  # 1900-01-01 to 1970-01-01

RtpCallback = Callable[[bytes, int], None]
RtcpCallback = Callable[[bytes], None]


@dataclass(frozen=True)
class NetworkSettings:
    """Where a peer's ICE host candidates live and which address is announced for them."""

    addresses: tuple[str, ...] = ("127.0.0.1",)  # empty: every non-loopback interface
    port_min: int = 0  # 0: any ephemeral port
    port_max: int = 0
    announced_ip: str = ""
    ice_servers: tuple[dict, ...] = ()


def _ntp_ms() -> int:
    """Now in milliseconds since the NTP epoch: aiortc's clock.current_ms(), without datetime."""
    return int((time.time() + NTP_UNIX_OFFSET_S) * 1000)


def ice_servers_from_dicts(servers: Iterable[dict]) -> list[RTCIceServer]:
    result = []
    for server in servers:
        urls = server.get("urls", [])
        result.append(
            RTCIceServer(
                urls=urls, username=server.get("username"), credential=server.get("credential")
            )
        )
    return result


class MediaPeer:
    """An RTCPeerConnection with candidate gathering and the RTP path taken over.

    `on_rtp(data, arrival_ms)` and `on_rtcp(data)` receive decrypted packets; they run
    inline in the socket's receive callback, so they must be quick and must not raise (errors
    are caught and logged here so that one bad packet never tears the connection down).
    When both callbacks are None, aiortc's own receivers get the packets (client use).
    """

    def __init__(
        self,
        network: NetworkSettings,
        *,
        on_rtp: RtpCallback | None = None,
        on_rtcp: RtcpCallback | None = None,
        label: str = "peer",
    ) -> None:
        self.network = network
        self.label = label
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=ice_servers_from_dicts(network.ice_servers) or None,
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )
        )
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._prepared: set[int] = set()
        self._dtls: RTCDtlsTransport | None = None
        self._tx_srtp = None
        self._ice_connection = None
        # send route of the nominated pair, looked up once per pair instead of per packet
        self._route_pair = None
        self._route_send: Callable[[bytes, tuple], object] | None = None
        self._route_addr: tuple = ()
        self.connected = asyncio.Event()
        # when ICE and DTLS connected (monotonic seconds): join-time metrics read these
        self.ice_connected_at: float | None = None
        self.dtls_connected_at: float | None = None
        self.closed = False
        self.errors = 0
        self.pc.on("connectionstatechange", self._on_state_change)
        self.pc.on("iceconnectionstatechange", self._on_ice_state)

    # -- negotiation ---------------------------------------------------------------------------

    def prepare_transports(self) -> None:
        """Hook every transport the connection has now; call before setLocalDescription."""
        for transport in self._dtls_transports():
            if id(transport) in self._prepared:
                continue
            self._prepared.add(id(transport))
            connection = transport.transport.iceGatherer._connection
            connection.gather_candidates = _host_gatherer(connection, self.network)
            connection.connect = _prompt_connect(connection)
            if self._on_rtp is not None or self._on_rtcp is not None:
                transport._handle_rtp_data = self._handle_rtp_data
                transport._handle_rtcp_data = self._handle_rtcp_data
                connection.data_received = self._srtp_receiver(transport, connection.data_received)
            transport.on("statechange", lambda t=transport: self._on_dtls_state(t))
            if self._dtls is None:
                self._dtls = transport

    async def answer(self, offer_sdp: str) -> str:
        """Take a remote offer and return our answer with all candidates in it."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self.prepare_transports()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.local_sdp()

    async def offer(self) -> str:
        self.prepare_transports()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.local_sdp()

    async def accept_answer(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    def local_sdp(self) -> str:
        sdp = self.pc.localDescription.sdp
        if self.network.announced_ip:
            sdp = announce_ip(sdp, self.network.announced_ip)
        return sdp

    # -- packets ---------------------------------------------------------------------------------

    def send_rtp(self, data: bytes) -> bool:
        """Protect and send one RTP packet now; False if the transport is not up yet."""
        srtp = self._tx_srtp
        if srtp is None:
            return False
        pair = self._ice_connection._nominated.get(1)
        if pair is None:
            return False
        if pair is not self._route_pair:
            self._set_route(pair)
        self._route_send(srtp.protect(data), self._route_addr)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        srtp = self._tx_srtp
        if srtp is None:
            return False
        pair = self._ice_connection._nominated.get(1)
        if pair is None:
            return False
        if pair is not self._route_pair:
            self._set_route(pair)
        self._route_send(srtp.protect_rtcp(data), self._route_addr)
        return True

    def _set_route(self, pair) -> None:
        """Cache how to reach a nominated pair: the socket's sendto, or TURN's coroutine."""
        protocol = pair.protocol
        if type(protocol) is StunProtocol:
            self._route_send = protocol.transport.sendto
        else:  # a TURN allocation: its send path is a coroutine

            def send_via_turn(data: bytes, addr: tuple, protocol=protocol) -> None:
                asyncio.ensure_future(protocol.send_data(data, addr))

            self._route_send = send_via_turn
        self._route_addr = pair.remote_addr
        self._route_pair = pair

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        if self._on_rtp is None:
            return
        try:
            self._on_rtp(data, arrival_time_ms)
        except Exception:
            self._count_error("RTP")

    async def _handle_rtcp_data(self, data: bytes) -> None:
        if self._on_rtcp is None:
            return
        try:
            self._on_rtcp(data)
        except Exception:
            self._count_error("RTCP")

    def _srtp_receiver(
        self, transport: RTCDtlsTransport, queue_datagram: Callable[[bytes, int], None]
    ) -> Callable[[bytes, int], None]:
        """aioice's Connection.data_received, with SRTP and SRTCP decrypted and handed over now.

        aioice queues every datagram for RTCDtlsTransport's receive task, which must wake up,
        read the clock through datetime and await two coroutines before our callback runs;
        at a 20-way fan-out that hop was about a tenth of the SFU's Python time. Media takes
        the short way once DTLS has set up SRTP; DTLS itself, and anything earlier, still
        goes through the queue.
        """

        def data_received(data: bytes, component: int) -> None:
            srtp = transport._rx_srtp
            if (
                srtp is None
                or self.closed
                or len(data) < 12
                or not 127 < data[0] < 192
                or transport.state != "connected"
            ):
                queue_datagram(data, component)
                return
            rtcp = is_rtcp(data)
            try:
                if rtcp:
                    if self._on_rtcp is not None:
                        self._on_rtcp(srtp.unprotect_rtcp(data))
                elif self._on_rtp is not None:
                    self._on_rtp(srtp.unprotect(data), _ntp_ms())
            except pylibsrtp.Error:
                pass  # failed authentication or a replay: dropped, as aiortc does
            except Exception:
                self._count_error("RTCP" if rtcp else "RTP")

        return data_received

    def _count_error(self, what: str) -> None:
        self.errors += 1
        if self.errors <= 5 or self.errors % 1000 == 0:
            logger.exception(
                "%s: error handling %s packet (%d so far)", self.label, what, self.errors
            )

    # -- state -------------------------------------------------------------------------------

    def _dtls_transports(self) -> list[RTCDtlsTransport]:
        transports = []
        for transceiver in self.pc.getTransceivers():
            t = transceiver.receiver.transport
            if t is not None and t not in transports:
                transports.append(t)
        if self.pc.sctp is not None and self.pc.sctp.transport not in transports:
            transports.append(self.pc.sctp.transport)
        return transports

    def _on_dtls_state(self, transport: RTCDtlsTransport) -> None:
        if transport.state == "connected" and transport is self._dtls:
            self._tx_srtp = transport._tx_srtp
            self._ice_connection = transport.transport._connection
            if self.dtls_connected_at is None:
                self.dtls_connected_at = time.monotonic()
            self.connected.set()
        elif transport.state in ("closed", "failed") and transport is self._dtls:
            self._tx_srtp = None

    def _on_ice_state(self) -> None:
        if self.pc.iceConnectionState == "completed" and self.ice_connected_at is None:
            self.ice_connected_at = time.monotonic()

    def _on_state_change(self) -> None:
        logger.debug("%s: connection %s", self.label, self.pc.connectionState)

    @property
    def connection_state(self) -> str:
        return self.pc.connectionState

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._tx_srtp = None
        try:
            await self.pc.close()
        except Exception:  # closing must always finish
            logger.exception("%s: error while closing", self.label)


def _prompt_connect(connection):
    """Wrap aioice's connect() so it returns as soon as a pair is nominated.

    aioice paces its checks with a 20 ms sleep and only notices a completed check list at the
    next tick, which delays ICE (and so DTLS and the first packet) by 0-20 ms. Here the caller
    is released at once; aioice's connect() still finishes at its tick in the background
    (cancelling the remaining checks, starting consent freshness checks).
    """
    original_connect = connection.connect
    original_maybe_complete = connection._check_list_maybe_complete

    async def connect() -> None:
        completed = asyncio.Event()

        def check_list_maybe_complete() -> bool:
            complete = original_maybe_complete()
            if complete:
                completed.set()
            return complete

        connection._check_list_maybe_complete = check_list_maybe_complete
        task = asyncio.ensure_future(original_connect())
        waiter = asyncio.ensure_future(completed.wait())
        try:
            await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            waiter.cancel()
        if task.done():
            return task.result()  # (raises if ICE failed)
        task.add_done_callback(lambda t: _connect_finished(connection, t))

    return connect


def _connect_finished(connection, task: asyncio.Task) -> None:
    """aioice's connect() ended after we moved on: tidy up if the connection closed meanwhile."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("ICE connect ended with %r after completing", task.exception())
    if connection._closing:
        consent = connection._query_consent_task
        if consent is not None and not consent.done():
            consent.cancel()


def _host_gatherer(connection, network: NetworkSettings):
    """Replacement for aioice's gather_candidates: host candidates on our addresses and ports."""
    original = connection.gather_candidates

    async def gather_candidates() -> None:
        addresses = list(network.addresses)
        if not addresses:
            if not network.port_min:
                await original()  # any interface, any port, STUN/TURN as configured
                return
            addresses = get_host_addresses(connection._use_ipv4, connection._use_ipv6)
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        loop = asyncio.get_running_loop()
        for component in sorted(connection._components):
            for address in addresses:
                protocol = await _bind_in_range(loop, connection, address, network)
                candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", address),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=address,
                    port=protocol.transport.get_extra_info("sockname")[1],
                    type="host",
                )
                protocol.local_candidate = candidate
                connection._protocols.append(protocol)
                connection._local_candidates.append(candidate)
        connection._local_candidates_end = True

    return gather_candidates


async def _bind_in_range(loop, connection, address: str, network: NetworkSettings) -> StunProtocol:
    if not network.port_min:
        ports: Iterable[int] = [0]
    else:
        span = network.port_max - network.port_min + 1
        start = random.randrange(span)
        ports = (network.port_min + (start + i) % span for i in range(min(span, 256)))
    last_error: OSError | None = None
    for port in ports:
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(connection), local_addr=(address, port)
            )
            return protocol
        except OSError as exc:
            last_error = exc
    raise OSError(f"no free UDP port on {address} in the media port range: {last_error}")


def announce_ip(sdp: str, public_ip: str) -> str:
    """Rewrite host candidate and connection addresses to the announced (NAT) address."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and " typ host" in line:
            parts = line.split(" ")
            if len(parts) > 5:
                parts[4] = public_ip
            line = " ".join(parts)
        elif line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {public_ip}"
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


__all__ = ["MediaPeer", "NetworkSettings", "announce_ip", "is_rtcp"]
