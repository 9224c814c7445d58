"""One WebRTC peer connection whose RTP path belongs to us, not to aiortc's codecs.

aiortc supplies ICE, DTLS, SRTP and SDP. Everything that reaches into its private parts lives
in this module, so an aiortc upgrade has one place to check:

* host candidates are gathered only on the configured addresses and UDP port range;
* decrypted RTP and RTCP are handed to our callbacks instead of aiortc's receivers
  (so nothing is depacketised, jitter-buffered or decoded);
* outgoing packets are SRTP-protected and written straight to the nominated ICE pair's
  socket, without aiortc's encoders or per-packet coroutines;
* the connection comes up a round trip sooner ("fast connect", see `MediaPeer`): ICE is
  usable on the first authenticated check from the remote side, our offers make us the DTLS
  client (`a=setup:active`), and SRTP keys are taken as soon as our last DTLS 1.2 flight is
  out (false start) instead of after the peer's Finished comes back;
* DTLS accepts peers whose certificate is RSA (GStreamer's webrtcbin), not only ECDSA ones;
* with `udp_port`, every peer's ICE runs on one shared socket per address (sfu.media.udpmux).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pylibsrtp
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses
from aioice.stun import RETRY_RTO as STUN_RETRY_RTO
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcdtlstransport import (
    X509_DIGEST_ALGORITHMS,
    RTCDtlsTransport,
    certificate_digest,
)
from OpenSSL import SSL

from .rtp import is_rtcp
from .udpmux import DropCounters, SharedPortProtocol, SharedSockets, new_ufrag

logger = logging.getLogger(__name__)

NTP_UNIX_OFFSET_S = 2208988800  # 1900-01-01 to 1970-01-01

# aiortc's DTLS context offers only ECDHE-ECDSA suites (its own certificates are ECDSA): as DTLS
# client that shuts out a server whose certificate is RSA, as GStreamer webrtcbin 1.22's default
# one is ("no shared cipher"). AEAD suites first (false start needs one), ECDSA preferred; as
# DTLS server our ECDSA certificate leaves only the ECDSA suites anyway.
DTLS_CIPHERS = b":".join(
    (
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-CHACHA20-POLY1305",
        b"ECDHE-ECDSA-AES128-SHA",
        b"ECDHE-ECDSA-AES256-SHA",
        b"ECDHE-RSA-AES128-SHA",
        b"ECDHE-RSA-AES256-SHA",
    )
)

RtpCallback = Callable[[bytes, int], None]
RtcpCallback = Callable[[bytes], None]


@dataclass(frozen=True)
class NetworkSettings:
    """Where a peer's ICE host candidates live and which address is announced for them."""

    addresses: tuple[str, ...] = ("127.0.0.1",)  # empty: every non-loopback interface
    port_min: int = 0  # 0: any ephemeral port
    port_max: int = 0
    # one UDP port for every peer (sfu.media.udpmux); 0: a port per peer from the range above
    udp_port: int = 0
    announced_ip: str = ""
    ice_servers: tuple[dict, ...] = ()
    # shared by every peer made with these settings (one node's)
    drops: DropCounters = field(default_factory=DropCounters, compare=False, repr=False)
    sockets: SharedSockets = field(default_factory=SharedSockets, compare=False, repr=False)


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

    With `fast_connect` (the default) the path from the remote's answer to the first packet
    it can decrypt is one round trip shorter than aiortc's own (at RTT R, join ≈ 4 R instead of
    5 R; docs/protocol.md, "Fast join"):

    * ICE: an authenticated check from the remote side proves that the path works both ways
      far enough for the remote to use it (it gets our response), so the pair it came on is
      used at once, as an ICE-lite server would, while our own (triggered) check runs on: that
      check nominates the pair (aioice nominates aggressively as the controlling agent), and if
      it fails the connection is closed. Without this, our DTLS would wait a round trip for
      our own check's response.
    * DTLS role: our offers say `a=setup:active`, so we are the DTLS client and our
      ClientHello leaves together with that first check response, instead of the browser's
      ClientHello following its own check's response (actpass let the browser pick client).
    * False start (RFC 7918's idea applied to DTLS-SRTP): as DTLS 1.2 client we have the
      master secret once our final flight (Certificate ... Finished) is sent; the peer's
      certificate (checked against its fingerprint) and its signed key exchange are in hand.
      SRTP keys are exported then and `connected` is set, so the first packets travel right
      behind our Finished; the peer has its keys as soon as it has read our Finished. Only
      with an AEAD cipher; when the handshake completes, the keys are checked to be the same.
    """

    def __init__(
        self,
        network: NetworkSettings,
        *,
        on_rtp: RtpCallback | None = None,
        on_rtcp: RtcpCallback | None = None,
        label: str = "peer",
        fast_connect: bool = True,
    ) -> None:
        self.network = network
        self.label = label
        self.fast_connect = fast_connect
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
        self._tx_protect: Callable[[bytes], bytes] | None = None  # _tx_srtp's protect, fast
        self._ice_connection = None
        # send route of the nominated pair, looked up once per pair instead of per packet
        self._route_pair = None
        self._route_send: Callable[[bytes, tuple], object] | None = None
        self._route_addr: tuple = ()
        self.connected = asyncio.Event()
        # when ICE and DTLS connected (monotonic seconds): join-time metrics read these
        self.ice_connected_at: float | None = None
        self.dtls_connected_at: float | None = None
        # connection milestones (monotonic seconds), first occurrence each: ice_request_arrived
        # (a STUN request from the remote), ice_check_received (an authenticated one, handled
        # once we have the answer), ice_early (a pair used on such a check, fast connect),
        # ice_usable (ICE released: early or nominated), ice_nominated (aioice's check list
        # completed), dtls_keys (SRTP keys: false start or handshake done), dtls_done
        # (handshake completed)
        self.marks: dict[str, float] = {}
        # the lowest round trip of our own ICE connectivity checks: the path's RTT before any
        # RTCP report (a far viewer's playout delay can start with its first frame)
        self.handshake_rtt_s: float | None = None
        self.false_started = False
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
            _no_start_after_close(transport.transport)
            connection = transport.transport.iceGatherer._connection
            if self.network.udp_port:
                # the shared socket finds a peer by its ufrag: a long random one, before
                # the description (which carries it) is made
                connection._local_username = new_ufrag()
            connection.gather_candidates = _host_gatherer(connection, self.network)
            connection.connect = _prompt_connect(connection, self._mark, early=self.fast_connect)
            connection.check_start = _timed_checks(connection, self._on_check_rtt)
            _accept_rsa_peers(transport)
            if self.fast_connect:
                _enable_false_start(transport, self._on_early_keys)
            if self._on_rtp is not None or self._on_rtcp is not None:
                transport._handle_rtp_data = self._handle_rtp_data
                transport._handle_rtcp_data = self._handle_rtcp_data
                connection.data_received = self._srtp_receiver(transport, connection.data_received)
            transport.on("statechange", lambda t=transport: self._on_dtls_state(t))
            if self._dtls is None:
                self._dtls = transport
        if self._on_rtp is not None or self._on_rtcp is not None:
            for transceiver in self.pc.getTransceivers():
                _quiet_rtcp_loop(transceiver.sender, "_RTCRtpSender")
                _quiet_rtcp_loop(transceiver.receiver, "_RTCRtpReceiver")

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
        description = self.pc.localDescription
        sdp = description.sdp
        if self.fast_connect and description.type == "offer":
            # we are the DTLS client (aiortc offers actpass and would let the answer decide);
            # the answer must then say passive, which sets our role to client
            sdp = sdp.replace("a=setup:actpass\r\n", "a=setup:active\r\n")
        if self.network.announced_ip:
            sdp = announce_ip(sdp, self.network.announced_ip)
        return sdp

    # -- packets ---------------------------------------------------------------------------------

    def send_rtp(self, data: bytes) -> bool:
        """Protect and send one RTP packet now; False if the transport is not up yet."""
        protect = self._tx_protect  # None until DTLS is up and again once it closed
        if protect is None:
            return False
        pair = self._ice_connection._nominated.get(1)
        if pair is None:
            return False
        if pair is not self._route_pair:
            self._set_route(pair)
        self._route_send(protect(data), self._route_addr)
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
        if type(protocol) in (SharedPortProtocol, GuardedStunProtocol, StunProtocol):
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

    def _on_check_rtt(self, rtt_s: float) -> None:
        if self.handshake_rtt_s is None or rtt_s < self.handshake_rtt_s:
            self.handshake_rtt_s = rtt_s

    def _mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = time.monotonic()

    @property
    def dtls_role(self) -> str | None:
        """Our DTLS role once negotiated: "client", "server" (or "auto" before the answer)."""
        return self._dtls._role if self._dtls is not None else None

    @property
    def dtls_cipher(self) -> str | None:
        """The DTLS cipher suite in use (OpenSSL's name) once the handshake has chosen one."""
        ssl = self._dtls._ssl if self._dtls is not None else None
        return ssl.get_cipher_name() if ssl is not None else None

    def _on_early_keys(self, transport: RTCDtlsTransport) -> None:
        """False start: SRTP keys before the peer's Finished; media may flow now."""
        if transport is not self._dtls or self.closed:
            return
        self.false_started = True
        self._mark("dtls_keys")
        self._tx_srtp = transport._tx_srtp
        self._tx_protect = srtp_protector(self._tx_srtp)
        self._ice_connection = transport.transport._connection
        if self.dtls_connected_at is None:
            self.dtls_connected_at = time.monotonic()
        self.connected.set()

    def _on_dtls_state(self, transport: RTCDtlsTransport) -> None:
        if transport.state == "connected" and transport is self._dtls:
            self._tx_srtp = transport._tx_srtp
            self._tx_protect = srtp_protector(self._tx_srtp)
            self._ice_connection = transport.transport._connection
            self._mark("dtls_keys")
            self._mark("dtls_done")
            if self.dtls_connected_at is None:
                self.dtls_connected_at = time.monotonic()
            self.connected.set()
        elif transport.state in ("closed", "failed") and transport is self._dtls:
            self._tx_srtp = self._tx_protect = None

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
        self._tx_srtp = self._tx_protect = None
        try:
            await self.pc.close()
        except Exception:  # closing must always finish
            logger.exception("%s: error while closing", self.label)


def _prompt_connect(connection, mark: Callable[[str], None], *, early: bool = True):
    """Wrap aioice's connect() so it returns as soon as the connection can be used.

    aioice paces its checks with a 20 ms sleep and only notices a completed check list at the
    next tick, which delays ICE (and so DTLS and the first packet) by 0-20 ms. Here the caller
    is released at once; aioice's connect() still finishes at its tick in the background
    (cancelling the remaining checks, starting consent freshness checks).

    With `early`, the caller is released even sooner: on the first authenticated check from
    the remote side (see MediaPeer, fast connect), whose pair is then used until aioice
    nominates one. Our triggered check on that pair still runs (as controlling agent aioice
    puts USE-CANDIDATE on every check, so that check nominates it); if ICE fails after all,
    the connection is closed, which fails the transports above it.
    """
    original_connect = connection.connect
    original_maybe_complete = connection._check_list_maybe_complete
    original_check_incoming = connection.check_incoming
    released: list[asyncio.Event] = []  # the running connect()'s event, once it runs

    def release() -> None:
        if released:
            released[0].set()

    def check_list_maybe_complete() -> bool:
        # a pair we only use early does not complete the check list: a nominated one does
        if any(not pair.nominated for pair in connection._nominated.values()):
            return False
        complete = original_maybe_complete()
        if complete:
            mark("ice_usable")
            mark("ice_nominated")
            release()
        return complete

    def check_incoming(message, addr, protocol) -> None:
        original_check_incoming(message, addr, protocol)  # (starts the triggered check)
        mark("ice_check_received")
        if not early or connection._closing:
            return
        component = protocol.local_candidate.component
        if component in connection._nominated:
            return
        pair = next(
            (p for p in connection._check_list if p.protocol is protocol and p.remote_addr == addr),
            None,
        )
        if pair is None or pair.state == pair.State.FAILED:
            return
        connection._nominated[component] = pair
        if len(connection._nominated) == len(connection._components):
            mark("ice_early")
            mark("ice_usable")
            release()

    original_request_received = connection.request_received

    def request_received(message, addr, protocol) -> None:
        mark("ice_request_arrived")  # (before it is authenticated: timing only)
        original_request_received(message, addr, protocol)

    connection._check_list_maybe_complete = check_list_maybe_complete
    connection.check_incoming = check_incoming
    connection.request_received = request_received

    async def connect() -> None:
        ready = asyncio.Event()
        released.append(ready)
        task = asyncio.ensure_future(original_connect())
        waiter = asyncio.ensure_future(ready.wait())
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


def _timed_checks(connection, on_rtt: Callable[[float], None]):
    """Wrap aioice's check_start to time each successful connectivity check: one STUN request
    and its response, a round trip on the path media will take. Only checks answered before
    the first retransmission could go out count (a later answer may be to a retransmission),
    and not where a second request nominates the pair (controlling toward an ICE-lite peer)."""
    original = connection.check_start

    async def check_start(pair) -> None:
        started = time.monotonic()
        await original(pair)
        elapsed = time.monotonic() - started
        two_requests = connection.ice_controlling and connection.remote_is_lite
        if pair.state == pair.State.SUCCEEDED and elapsed < STUN_RETRY_RTO and not two_requests:
            on_rtt(elapsed)

    return check_start


def _connect_finished(connection, task: asyncio.Task) -> None:
    """aioice's connect() ended after we moved on: tidy up, or close if ICE failed after all."""
    if task.cancelled():
        return
    exc = task.exception()
    if connection._closing:
        consent = connection._query_consent_task
        if consent is not None and not consent.done():
            consent.cancel()
    elif exc is not None:
        # the pair used early was never confirmed by our own check: give up on it, so that
        # the transports above fail rather than wait on a path that does not work
        logger.info("ICE failed after the connection was used early: %r", exc)
        asyncio.ensure_future(connection.close())


def _accept_rsa_peers(transport: RTCDtlsTransport) -> None:
    """Widen the transport's DTLS cipher list to DTLS_CIPHERS (see there).

    aiortc builds the SSL context from the connection's certificate object when DTLS starts;
    the certificate belongs to one RTCPeerConnection, so wrapping it changes only this peer.
    """
    certificate = transport._RTCDtlsTransport__local_certificate
    if getattr(certificate, "_sfu_cipher_list", None) == DTLS_CIPHERS:
        return  # shared by this connection's transports: wrapped once
    original = certificate._create_ssl_context

    def create_ssl_context(srtp_profiles):
        context = original(srtp_profiles)
        context.set_cipher_list(DTLS_CIPHERS)
        return context

    certificate._create_ssl_context = create_ssl_context
    certificate._sfu_cipher_list = DTLS_CIPHERS


def _enable_false_start(transport: RTCDtlsTransport, on_keys: Callable[[RTCDtlsTransport], None]):
    """Let a DTLS 1.2 client set up SRTP once its last flight is out (see MediaPeer).

    aiortc's handshake loop writes each flight through `_write_ssl`; after a write, when we
    are the client, have sent our Finished and not yet read the server's, with an AEAD cipher
    and the server's certificate matching its fingerprint, the keys are exported (aiortc's own
    `_setup_srtp`) and `on_keys` is called. When the handshake completes, aiortc sets SRTP up
    again: the keys are exported once more and, being the same, the sessions are kept.
    """
    original_start = transport.start
    original_write_ssl = transport._write_ssl
    original_setup_srtp = transport._setup_srtp
    state: dict = {"remote": None, "material": None}

    async def start(remoteParameters) -> None:
        state["remote"] = remoteParameters
        await original_start(remoteParameters)

    def export_material() -> bytes | None:
        ssl = transport._ssl
        selected = ssl.get_selected_srtp_profile()
        for profile in transport._srtp_profiles:
            if profile.openssl_profile == selected:
                length = 2 * (profile.key_length + profile.salt_length)
                return ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", length)
        return None

    def ready_for_false_start() -> bool:
        ssl = transport._ssl
        if (
            transport._role != "client"
            or transport.encrypted
            or transport.state != "connecting"
            or state["remote"] is None
            or ssl is None
            or ssl.get_finished() is None  # our Finished is not written yet
            or ssl.get_peer_finished() is not None  # (then the handshake is done anyway)
            or ssl.get_protocol_version_name() != "DTLSv1.2"
        ):
            return False
        cipher = ssl.get_cipher_name() or ""
        if "GCM" not in cipher and "CHACHA20" not in cipher:
            return False
        certificate = ssl.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            return False
        checked = [
            f for f in state["remote"].fingerprints if f.algorithm.lower() in X509_DIGEST_ALGORITHMS
        ]
        return bool(checked) and all(
            f.value.upper() == certificate_digest(certificate, f.algorithm.lower()) for f in checked
        )

    async def write_ssl() -> None:
        await original_write_ssl()
        if state["material"] is not None or not ready_for_false_start():
            return
        # the rest of our last flight, if it took more than one datagram, before any media
        while True:
            try:
                data = transport._ssl.bio_read(1500)
            except SSL.Error:
                break
            if not data:
                break
            await transport.transport._send(data)
        material = export_material()
        if material is None:
            return
        state["material"] = material
        original_setup_srtp()
        on_keys(transport)

    def setup_srtp() -> None:
        if state["material"] is not None:
            if export_material() == state["material"]:
                return  # the sessions made at false start stay
            logger.warning("DTLS keys changed after false start: SRTP set up again")
        original_setup_srtp()

    transport.start = start
    transport._write_ssl = write_ssl
    transport._setup_srtp = setup_srtp


def _host_gatherer(connection, network: NetworkSettings):
    """Replacement for aioice's gather_candidates: host candidates on our addresses and ports."""
    original = connection.gather_candidates

    async def gather_candidates() -> None:
        addresses = list(network.addresses)
        if not addresses:
            if not network.port_min and not network.udp_port:
                await original()  # any interface, any port, STUN/TURN as configured
                return
            addresses = get_host_addresses(connection._use_ipv4, connection._use_ipv6)
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        loop = asyncio.get_running_loop()
        for component in sorted(connection._components):
            for address in addresses:
                if network.udp_port:
                    mux = await network.sockets.get(address, network.udp_port, network.drops)
                    protocol = mux.add(connection)
                else:
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


def srtp_protector(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """`session.protect`, minus pylibsrtp's per-call overhead (a type check, a length
    pointer allocated per packet, two method calls): ~2.05 instead of ~2.75 µs per 1100-byte
    packet here, and one copy per viewer is the fan-out's hot path. Same bytes out, same
    errors; falls back to `session.protect` if pylibsrtp's internals are not what we expect."""
    try:
        from pylibsrtp import SRTP_MAX_TRAILER_LEN
        from pylibsrtp._binding import ffi, lib

        cdata, buffer, srtp = session._cdata, session._buffer, session._srtp[0]
    except (ImportError, AttributeError):
        return session.protect
    length = ffi.new("int *")
    protect = lib.srtp_protect
    ok = lib.srtp_err_status_ok
    limit = len(cdata) - SRTP_MAX_TRAILER_LEN

    def protect_rtp(data: bytes, _owner: pylibsrtp.Session = session) -> bytes:
        # (_owner: libsrtp's state is freed with the session, so the session must live on)
        n = len(data)
        if n > limit:
            raise ValueError("packet is too long")
        length[0] = n
        buffer[0:n] = data
        rc = protect(srtp, cdata, length)
        if rc != ok:
            raise pylibsrtp.Error(f"srtp_protect failed ({rc})")
        return buffer[0 : length[0]]

    return protect_rtp


def _quiet_rtcp_loop(endpoint, mangled: str) -> None:
    """No RTCP timer for an aiortc sender or receiver whose packets we handle ourselves.

    aiortc runs one RTCP loop per m-line and direction, waking every 0.5-1.5 s: at 20 viewers
    that is 40 wake-ups a second whose sender reports we discard (ours come from DownTrack) and
    whose receiver reports describe nothing (aiortc's receivers see no packets; ours send RR and
    REMB). The replacement only keeps the started/exited events that stop() waits on.
    """
    if getattr(endpoint, "_sfu_quiet_rtcp", False):
        return
    endpoint._sfu_quiet_rtcp = True
    started = getattr(endpoint, f"{mangled}__rtcp_started")
    exited = getattr(endpoint, f"{mangled}__rtcp_exited")

    async def run_rtcp() -> None:
        started.set()
        try:
            await asyncio.get_running_loop().create_future()  # until stop() cancels it
        finally:
            exited.set()

    endpoint._run_rtcp = run_rtcp


def _no_start_after_close(ice_transport) -> None:
    """Make starting a closed ICE transport a no-op instead of an InvalidStateError.

    aiortc's connect task starts the ICE and DTLS transports of each m-line in turn (with
    BUNDLE, the same ones again). A connection closed while the first m-line's DTLS is still
    under way (a client that joins and leaves at once) made the next start raise
    InvalidStateError('RTCIceTransport is closed') in that task, which nobody awaits: asyncio
    logged "Task exception was never retrieved".
    """
    original = ice_transport.start

    async def start(remote_parameters) -> None:
        if ice_transport.state == "closed":
            return
        await original(remote_parameters)

    ice_transport.start = start


class GuardedStunProtocol(StunProtocol):
    """aioice's socket protocol, minus its one unguarded path: a STUN message with a malformed
    attribute (e.g. a 2-byte PRIORITY) makes aioice's parser raise something other than the
    ValueError it catches, and the event loop logs a traceback per datagram, unauthenticated.
    Such datagrams are dropped and counted. Media (first byte >= 4, RFC 7983) goes straight to
    the connection, without aioice's attempt to parse every datagram as STUN first (an
    exception raised and caught per packet)."""

    def __init__(self, connection, drops: DropCounters) -> None:
        super().__init__(connection)
        self.drops = drops

    def datagram_received(self, data: bytes | str, addr: tuple) -> None:
        if not data:
            return
        if data[0] < 4:  # STUN
            try:
                StunProtocol.datagram_received(self, data, addr)
            except Exception as exc:
                self.drops.malformed_stun += 1
                logger.debug("malformed STUN from %s dropped: %r", addr, exc)
            return
        # media: straight on, without aioice's attempt to parse it as STUN
        self.receiver.data_received(data, self.local_candidate.component)


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
                lambda: GuardedStunProtocol(connection, network.drops), local_addr=(address, port)
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
