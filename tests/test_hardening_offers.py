"""Issue 12, items 2, 3 and 7 (the WHIP/WHEP side), against a real node on loopback:

* one subscribe token cannot fill a room with WHEP sessions (limits.max_whep_sessions_per_identity);
* an offer with too many m-lines or rids is refused (400) before anything is allocated, on
  WHIP, WHEP, the WebSocket `publish` and the HTTP join, and a session's resources are freed
  after DELETE;
* an offer without a=fingerprint is a 400, not a 201 and a traceback;
* resource ids (capabilities) are not logged whole; a session is deleted only at its own path.
"""

from __future__ import annotations

import asyncio
import gc
import json
import weakref

import aiohttp
import pytest

from sfu import Config

from .conftest import LOOPBACK, RunningNode, start_node
from .hardening_rig import SDP, Observer, captured_logs
from .media_sources import ColorVideoTrack, ToneAudioTrack
from .test_faults import settle_to, task_count, udp_sockets


@pytest.fixture
async def node(request) -> RunningNode:
    config = Config()
    for key, value in getattr(request, "param", {}).items():
        setattr(config.limits, key, value)
    node = await start_node(config)
    try:
        yield node
    finally:
        await node.runner.cleanup()


async def make_offer(send: int = 1, recv: int = 0, audio: bool = False) -> str:
    """A real aiortc offer: `send` sendonly video m-lines, `recv` recvonly ones (+ audio)."""
    from sfu.media.peer import MediaPeer

    peer = MediaPeer(LOOPBACK, label="offer")
    for _ in range(send):
        peer.pc.addTransceiver(ColorVideoTrack((1, 2, 3)), direction="sendonly")
    if audio:
        peer.pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
    for _ in range(recv):
        peer.pc.addTransceiver("video", direction="recvonly")
    try:
        return await peer.offer()
    finally:
        await peer.close()


def with_rids(offer: str, count: int) -> str:
    """The offer's first m-section made a rid simulcast with `count` layers (as Chromium
    writes it: a=rid lines and a=simulcast:send at the section's end, no a=ssrc lines)."""
    rids = [f"r{i}" for i in range(count)]
    sections = offer.split("\r\nm=")
    first = [line for line in sections[1].split("\r\n") if line and not line.startswith("a=ssrc")]
    first += [f"a=rid:{rid} send" for rid in rids]
    first.append("a=simulcast:send " + ";".join(rids))
    sections[1] = "\r\n".join(first)
    return "\r\nm=".join(sections).rstrip("\r\n") + "\r\n"


def without_fingerprint(offer: str) -> str:
    return "".join(line for line in offer.splitlines(True) if not line.startswith("a=fingerp"))


async def post(http, url: str, offer: str, token: str) -> tuple[int, str, dict]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SDP}
    async with http.post(url, data=offer.encode(), headers=headers) as response:
        return response.status, await response.text(), dict(response.headers)


# -- item 2: WHEP sessions per token identity --------------------------------------------------


@pytest.mark.slow
async def test_one_viewer_token_cannot_fill_a_room_with_whep_sessions(node):
    limit = node.config.limits.max_whep_sessions_per_identity
    assert limit == Config().limits.max_whep_sessions_per_identity == 4
    observer = Observer(node)
    try:
        await observer.start()
        before = await observer.rate(2.0)
        offer = await make_offer(send=0, recv=1)
        url = f"{node.url}/whep/shop"
        token = node.token("tv", subscribe=True, publish=False)
        async with aiohttp.ClientSession() as http:
            # 30 at once (the answers overlap: those being answered count too) ...
            results = await asyncio.gather(*(post(http, url, offer, token) for _ in range(30)))
            during = await observer.rate(2.0)
            statuses = sorted(status for status, _, _ in results)
            assert statuses == [201] * limit + [429] * (30 - limit), statuses
            refused = next(text for status, text, _ in results if status == 429)
            assert "too many WHEP sessions" in refused and "'tv'" in refused
            room = node.node.rooms.rooms["shop"]
            players = [p for p in room.participants.values() if p.token_identity == "tv"]
            assert len(players) == limit
            # ... and then one at a time
            status, _, headers = await post(http, url, offer, token)
            assert status == 429 and headers["Retry-After"]
            # another viewer still gets in
            status, _, _ = await post(http, url, offer, node.token("other", subscribe=True))
            assert status == 201
            # a DELETE frees a place for the same token
            location = next(h["Location"] for s, _, h in results if s == 201)
            async with http.delete(node.url + location) as response:
                assert response.status == 200
            status, _, _ = await post(http, url, offer, token)
            assert status == 201
        assert during >= 0.8 * before, (before, during)
    finally:
        await observer.close()


# -- item 3: m-lines and rids per offer ---------------------------------------------------------


async def test_too_many_rids_or_m_lines_are_refused_before_anything_is_allocated(node):
    limits = node.config.limits
    assert (limits.max_rids_per_media, limits.max_media_per_offer) == (4, 16)
    baseline_tasks, baseline_udp = task_count(), udp_sockets()
    many_rids = with_rids(await make_offer(send=1), 5)
    many_rids_sim = (await make_offer(send=1)).replace(
        "a=mid:0\r\n", "a=mid:0\r\na=ssrc-group:SIM 1 2 3 4 5\r\n", 1
    )
    many_send = await make_offer(send=17)
    many_recv = await make_offer(send=0, recv=17)
    async with aiohttp.ClientSession() as http:
        for kind, offer, reason in [
            ("whip", many_rids, "too many rids: at most 4 per m-line"),
            ("whip", many_rids_sim, "too many simulcast SSRCs: at most 4 per m-line"),
            ("whip", many_send, "too many m-lines: at most 16 per offer"),
            ("whep", many_recv, "too many m-lines: at most 16 per offer"),
        ]:
            status, text, _ = await post(http, f"{node.url}/{kind}/shop", offer, node.token("a"))
            assert (status, text.strip()) == (400, reason), (kind, status, text)
        # the HTTP join's publish offer
        body = {"token": node.token("b"), "publish": {"sdp": many_rids}}
        async with http.post(f"{node.url}/rtc/join", data=json.dumps(body)) as response:
            joined = await response.json()
            assert response.status == 200, joined
            assert joined["publish_error"]["code"] == "bad_sdp"
            assert "too many rids" in joined["publish_error"]["message"]
            async with http.post(
                f"{node.url}/rtc/leave", data=json.dumps({"session": joined["session"]})
            ) as left:
                assert left.status == 204
        # the WebSocket publish
        ws = await http.ws_connect(node.url.replace("http", "ws", 1) + "/rtc")
        await ws.send_json({"type": "join", "token": node.token("c")})
        assert (await ws.receive_json(timeout=5))["type"] == "joined"
        for offer, reason in [(many_rids, "too many rids"), (many_send, "too many m-lines")]:
            await ws.send_json({"type": "publish", "sdp": offer})
            error = await ws.receive_json(timeout=5)
            assert error["code"] == "bad_sdp" and reason in error["message"], error
        assert node.node.rooms.rooms["shop"].participants["c"].publisher is None
        await ws.close()
    assert node.node.http_sessions == {}
    await settle_to(baseline_tasks, baseline_udp)


async def test_a_deleted_whip_session_with_simulcast_is_freed(node):
    """The largest offer the limits allow (4 rids on each of 4 m-lines), started and deleted
    five times: nothing of any session stays reachable, no task or UDP socket is left."""
    offer = with_rids(await make_offer(send=1), 4)
    four = await make_offer(send=4)
    baseline_tasks, baseline_udp = task_count(), udp_sockets()
    refs: list[weakref.ref] = []
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            for sdp in (offer, four):
                status, text, headers = await post(
                    http, f"{node.url}/whip/shop", sdp, node.token(f"pub{i}")
                )
                assert status == 201, text
                resource = headers["Location"].rsplit("/", 1)[1]
                participant = node.node.http_sessions[resource]
                refs.append(weakref.ref(participant))
                refs += [weakref.ref(p) for p in participant.published()]
                refs.append(weakref.ref(participant.publisher))
                del participant
                async with http.delete(node.url + headers["Location"]) as response:
                    assert response.status == 200
    assert node.node.http_sessions == {} and node.node.rooms.rooms == {}
    await settle_to(baseline_tasks, baseline_udp)
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.1)
    alive = [ref() for ref in refs if ref() is not None]
    assert alive == [], alive


# -- item 7: fingerprints, logged ids, DELETE paths ---------------------------------------------


async def test_offer_without_fingerprint_is_a_400(node):
    whip = without_fingerprint(await make_offer(send=1))
    whep = without_fingerprint(await make_offer(send=0, recv=1))
    assert "a=fingerprint" not in whip + whep
    with captured_logs() as logs:
        async with aiohttp.ClientSession() as http:
            for kind, offer in (("whip", whip), ("whep", whep)):
                status, text, _ = await post(
                    http, f"{node.url}/{kind}/shop", offer, node.token("a")
                )
                assert status == 400 and "a=fingerprint" in text, (kind, status, text)
            ws = await http.ws_connect(node.url.replace("http", "ws", 1) + "/rtc")
            await ws.send_json({"type": "join", "token": node.token("c")})
            assert (await ws.receive_json(timeout=5))["type"] == "joined"
            await ws.send_json({"type": "publish", "sdp": whip})
            error = await ws.receive_json(timeout=5)
            assert error["code"] == "bad_sdp" and "a=fingerprint" in error["message"]
            await ws.close()
        await asyncio.sleep(0.5)  # (a task failing later would log by now)
        gc.collect()  # ("Task exception was never retrieved" is logged on collection)
        await asyncio.sleep(0.1)
    assert node.node.http_sessions == {}
    assert logs.errors() == []


async def test_resource_ids_are_not_logged_and_delete_only_at_their_own_path(node):
    whip_offer, whep_offer = await make_offer(send=1), await make_offer(send=0, recv=1)
    with captured_logs() as logs:
        async with aiohttp.ClientSession() as http:
            token = node.token("cam")
            status, _, whip = await post(http, f"{node.url}/whip/shop", whip_offer, token)
            assert status == 201
            status, _, whep = await post(http, f"{node.url}/whep/shop", whep_offer, token)
            assert status == 201
            whip_id = whip["Location"].rsplit("/", 1)[1]
            whep_id = whep["Location"].rsplit("/", 1)[1]
            # each under the other's path: not found, and still there
            for path in (f"/whep/shop/{whip_id}", f"/whip/shop/{whep_id}"):
                async with http.delete(node.url + path) as response:
                    assert response.status == 404, path
            assert set(node.node.http_sessions) == {whip_id, whep_id}
            for location in (whip["Location"], whep["Location"]):
                async with http.delete(node.url + location) as response:
                    assert response.status == 200
    assert node.node.http_sessions == {}
    text = "\n".join(r.getMessage() for r in logs.records)
    assert "whip session " + whip_id[:6] in text  # a prefix, to match logs with clients
    assert whip_id not in text and whep_id not in text
