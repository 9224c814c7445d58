"""MediaPeer's candidate gathering: configured addresses, port range, announced IP."""

from __future__ import annotations

import re

from sfu.media.peer import MediaPeer, NetworkSettings, announce_ip

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
