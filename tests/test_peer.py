"""MediaPeer: candidate gathering (configured addresses, port range, announced IP) and fast
connect (ICE on the remote's first check, DTLS client offers, false start)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa

from sfu.media.peer import MediaPeer, NetworkSettings, announce_ip

from .conftest import LOOPBACK

CANDIDATE = re.compile(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host")


async def _offer_candidates(network: NetworkSettings) -> list[tuple[str, int]]:
    peer = MediaPeer(network)
    try:
        peer.pc.addTransceiver("audio", direction="sendonly")
        sdp = await peer.offer()
        return [(host, int(port)) for host, port in CANDIDATE.findall(sdp)]
    finally:
        await peer.close()


async def test_loopback_candidates_in_port_range():
    candidates = await _offer_candidates(
        NetworkSettings(addresses=("127.0.0.1",), port_min=45100, port_max=45110)
    )
    assert candidates, "no host candidate gathered"
    assert all(host == "127.0.0.1" and 45100 <= port <= 45110 for host, port in candidates)


async def test_all_interfaces_still_respect_port_range():
    candidates = await _offer_candidates(
        NetworkSettings(addresses=(), port_min=45200, port_max=45220)
    )
    assert candidates, "no host candidate gathered on any interface"
    assert all(45200 <= port <= 45220 for _, port in candidates), candidates
    assert all(host != "127.0.0.1" for host, _ in candidates)


async def test_announced_ip_replaces_host_addresses():
    candidates = await _offer_candidates(
        NetworkSettings(addresses=("127.0.0.1",), announced_ip="203.0.113.7")
    )
    assert candidates and all(host == "203.0.113.7" for host, _ in candidates)


def test_announce_ip_rewrites_connection_line():
    sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"
    out = announce_ip(sdp, "198.51.100.1")
    assert "c=IN IP4 198.51.100.1" in out
    assert "198.51.100.1 5000 typ host" in out
    assert "127.0.0.1" not in out


# -- fast connect: ICE on the remote's first check, DTLS client offers, false start ------------


def _rtp(seq: int) -> bytes:
    header = bytes([0x80, 96]) + seq.to_bytes(2, "big") + (1000).to_bytes(4, "big") + bytes(4)
    return header + b"x" * 50


def _setup(sdp: str) -> set[str]:
    return {line.split(":", 1)[1] for line in sdp.split("\r\n") if line.startswith("a=setup:")}


async def _connected_pair(fast: bool, before_answer=None, answerer_certificate=None):
    """An SFU-like offerer (sendonly video) and a peer answering it; packets the answerer got."""
    received: list[bytes] = []
    offerer = MediaPeer(
        LOOPBACK, on_rtp=lambda d, t: None, on_rtcp=lambda d: None, fast_connect=fast
    )
    answerer = MediaPeer(
        LOOPBACK,
        on_rtp=lambda d, t: received.append(d),
        on_rtcp=lambda d: None,
        fast_connect=fast,
    )
    if answerer_certificate is not None:
        answerer.pc._RTCPeerConnection__certificates = [answerer_certificate]
    offerer.pc.addTransceiver("video", direction="sendonly")
    offer = await offerer.offer()
    answer = await answerer.answer(offer)
    if before_answer is not None:
        before_answer(offerer)
    await offerer.accept_answer(answer)
    return offerer, answerer, offer, answer, received


async def _wait(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("fast", [True, False])
async def test_offerer_is_dtls_client_and_sends_before_the_handshake_ends(fast):
    offerer, answerer, offer, answer, received = await _connected_pair(fast)
    try:
        await asyncio.wait_for(offerer.connected.wait(), 5)
        # the first packet goes out the moment `connected` is set, as the SFU's keyframe does
        assert offerer.send_rtp(_rtp(1))
        srtp_at_keys = offerer._tx_srtp
        await asyncio.wait_for(answerer.connected.wait(), 5)
        await _wait(lambda: received)
        assert received[0][:4] == _rtp(1)[:4]
        if fast:
            assert _setup(offer) == {"active"} and _setup(answer) == {"passive"}
            assert (offerer.dtls_role, answerer.dtls_role) == ("client", "server")
            # keys at our Finished: before the server's Finished completed the handshake
            assert offerer.false_started
            await _wait(lambda: "dtls_done" in offerer.marks)
            assert offerer.marks["dtls_keys"] < offerer.marks["dtls_done"]
            assert offerer._tx_srtp is srtp_at_keys  # the same keys: the session was kept
            assert offerer._dtls._ssl.get_protocol_version_name() == "DTLSv1.2"
        else:
            assert _setup(offer) == {"actpass"} and _setup(answer) == {"active"}
            assert (offerer.dtls_role, answerer.dtls_role) == ("server", "client")
            assert not offerer.false_started and "ice_early" not in offerer.marks
        assert offerer.send_rtp(_rtp(2))
        await _wait(lambda: len(received) >= 2)
    finally:
        await offerer.close()
        await answerer.close()


def _rsa_certificate() -> RTCCertificate:
    """What GStreamer webrtcbin 1.22 signs DTLS with by default: RSA 2048."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RTCCertificate(key=key, cert=generate_certificate(key))


@pytest.mark.parametrize("certificate", ["rsa", "ecdsa"])
async def test_dtls_client_accepts_rsa_and_ecdsa_servers_with_early_keys(certificate):
    """aiortc alone offers only ECDHE-ECDSA suites, so an RSA server found no shared cipher."""
    offerer, answerer, _, _, received = await _connected_pair(
        True, answerer_certificate=_rsa_certificate() if certificate == "rsa" else None
    )
    try:
        await asyncio.wait_for(offerer.connected.wait(), 5)
        assert offerer.dtls_role == "client"
        expected = "ECDHE-RSA-AES128-GCM-SHA256" if certificate == "rsa" else "ECDHE-ECDSA-"
        assert offerer.dtls_cipher.startswith(expected), offerer.dtls_cipher
        assert offerer.false_started  # the early-keys path holds for both
        assert offerer.send_rtp(_rtp(1))
        await asyncio.wait_for(answerer.connected.wait(), 5)
        await _wait(lambda: received)
        await _wait(lambda: "dtls_done" in offerer.marks)
        assert offerer.marks["dtls_keys"] < offerer.marks["dtls_done"]
    finally:
        await offerer.close()
        await answerer.close()


async def test_ice_is_used_on_the_remote_check_before_our_own_check_answers():
    """Our own checks are held back 300 ms: the pair the answerer's check came on is used."""
    delay = 0.3

    def slow_own_checks(offerer: MediaPeer) -> None:
        connection = offerer._dtls.transport._connection
        original = connection.check_start

        async def check_start(pair):
            await asyncio.sleep(delay)
            await original(pair)

        connection.check_start = check_start

    offerer, answerer, _, _, received = await _connected_pair(True, slow_own_checks)
    started = time.monotonic()
    try:
        await asyncio.wait_for(offerer.connected.wait(), 5)
        await _wait(lambda: "ice_nominated" in offerer.marks)
        marks = offerer.marks
        assert "ice_early" in marks
        assert marks["ice_usable"] - started < delay / 2, marks
        assert marks["ice_nominated"] - started >= delay, marks
        # our ClientHello left before our own check was answered: DTLS needed no more than
        # the held-back check (the answerer's ICE waits for our check to reach it)
        assert marks["dtls_keys"] - marks["ice_nominated"] < delay, marks
        assert offerer.send_rtp(_rtp(1))
        await _wait(lambda: received)
    finally:
        await offerer.close()
        await answerer.close()


async def test_pair_used_early_is_given_up_when_our_checks_fail():
    def failing_own_checks(offerer: MediaPeer) -> None:
        connection = offerer._dtls.transport._connection

        async def check_start(pair):
            connection.check_state(pair, pair.State.FAILED)
            connection.check_complete(pair)

        connection.check_start = check_start

    offerer, answerer, _, _, _ = await _connected_pair(True, failing_own_checks)
    try:
        await _wait(lambda: offerer.pc.iceConnectionState == "failed", timeout=10)
        assert "ice_early" in offerer.marks  # it was used, then given up
        await _wait(lambda: offerer.connection_state in ("failed", "closed"), timeout=10)
        assert not offerer.send_rtp(_rtp(1)) or offerer._tx_srtp is None
    finally:
        await offerer.close()
        await answerer.close()
