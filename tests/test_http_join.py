"""The HTTP join (`POST /rtc/join`, docs/protocol.md "Fast join") over plain aiohttp: a join
answered with `joined` plus a session id, the answer by `POST /rtc/answer`, the WebSocket
`/rtc?session=ID` attaching later and receiving what happened meanwhile, and every way it can
go wrong (bad token, wrong room, limits, a session never attached, attached twice, unknown,
replaced, left)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from sfu import Config
from sfu.api.http_join import HTTP_JOINS_KEY
from sfu.client import RoomClient
from sfu.media.peer import MediaPeer

from .conftest import LOOPBACK, start_node
from .media_sources import ColorVideoTrack, mean_rgb


async def post(http: aiohttp.ClientSession, url: str, body, **kwargs) -> tuple[int, dict | None]:
    async with http.post(url, json=body, **kwargs) as r:
        data = await r.json() if r.content_type == "application/json" else None
        return r.status, data


async def http_join(http, node, body: dict) -> tuple[int, dict | None]:
    return await post(http, f"{node.url}/rtc/join", body)


async def receive_until(ws, predicate, timeout: float = 10) -> list[dict]:
    """Messages up to and including the first one `predicate` accepts."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        message = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
        seen.append(message)
        if predicate(message):
            return seen


async def wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def in_room(node, identity: str, room: str = "shop") -> bool:
    r = node.node.rooms.rooms.get(room)
    return r is not None and identity in r.participants


async def test_http_join_media_before_the_socket_and_queued_events_after(sfu_node):
    pub = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    peer = MediaPeer(LOOPBACK, label="http-viewer")
    other = None
    try:
        await pub.publish([ColorVideoTrack((200, 30, 30))], sources=["camera"])
        frames: asyncio.Queue = asyncio.Queue()

        def on_track(track) -> None:
            async def pull() -> None:
                frames.put_nowait(await track.recv())

            if track.kind == "video":
                asyncio.ensure_future(pull())

        peer.pc.on("track", on_track)
        async with aiohttp.ClientSession() as http:
            token = sfu_node.token("viewer", publish=False, subscribe=True)
            status, joined = await http_join(
                http, sfu_node, {"token": token, "name": "Ann", "metadata": {"a": 1}}
            )
            assert status == 200, joined
            assert joined["type"] == "joined" and joined["room"] == "shop"
            assert joined["participant"]["name"] == "Ann"
            assert joined["participant"]["metadata"] == {"a": 1}
            assert [p["identity"] for p in joined["participants"]] == ["host"]
            # the offer for the live track is inside (inline offers are the default here)
            assert set(joined["offer"]["tracks"].values()) == {t["id"] for t in joined["tracks"]}
            session = joined["session"]
            assert len(session) >= 32 and joined["attach_within_s"] == 10
            assert in_room(sfu_node, "viewer")

            # the answer over HTTP: media flows with no WebSocket at all
            answer = await peer.answer(joined["offer"]["sdp"])
            status, _ = await post(
                http, f"{sfu_node.url}/rtc/answer", {"session": session, "sdp": answer}
            )
            assert status == 204
            frame = await asyncio.wait_for(frames.get(), 10)
            assert mean_rgb(frame)[0] > 120  # the publisher's red picture

            # meanwhile: someone joins and sends everyone a data message
            other = await RoomClient.connect(
                sfu_node.url, sfu_node.token("other"), network=LOOPBACK
            )
            await other.send({"type": "data", "topic": "chat", "payload": {"text": "hi"}})
            await wait_for(
                lambda: not sfu_node.node.rooms.rooms["shop"].participants["viewer"].events.empty()
            )

            # the socket attaches: `attached` first, then what happened, in order
            async with http.ws_connect(f"{sfu_node.url}/rtc?session={session}") as ws:
                messages = await receive_until(ws, lambda m: m["type"] == "data")
                assert messages[0]["type"] == "attached"
                assert messages[0]["request_id"] == "attach"
                assert messages[0]["participant"] == joined["participant"]["sid"]
                kinds = [m["type"] for m in messages]
                assert kinds.index("participant_joined") < kinds.index("data"), kinds
                assert messages[-1]["payload"] == {"text": "hi"}
                assert messages[-1]["from"] == "other"
                # and it is an ordinary signalling socket from now on
                await ws.send_json({"type": "ping", "ts": 3, "request_id": 9})
                pong = await receive_until(ws, lambda m: m["type"] == "pong")
                assert pong[-1] == {"type": "pong", "ts": 3, "request_id": 9}
                stats = sfu_node.node.stats()
                entry = next(
                    p
                    for room in stats["rooms"]
                    for p in room["participants"]
                    if p["identity"] == "viewer"
                )
                join = entry["join"]
                assert join["http_join"] is True and join["inline_offer"] is True
                ms = join["ms"]
                assert ms["joined"] <= ms["answer"] <= ms["attached"], ms
                assert ms["subscriber_dtls"] < ms["attached"], ms  # media did not wait for it
            # the socket closed: the participant left, as with any signalling socket
            await wait_for(lambda: not in_room(sfu_node, "viewer"))
            assert session not in sfu_node.app[HTTP_JOINS_KEY].sessions
            # the session ended with it
            async with http.ws_connect(f"{sfu_node.url}/rtc?session={session}") as ws:
                error = await ws.receive_json(timeout=5)
                assert (error["code"], error["request_id"]) == ("not_found", "attach")
                await ws.receive(timeout=5)
                assert ws.close_code == 4404
    finally:
        await peer.close()
        if other is not None:
            await other.leave()
        await pub.leave()


async def test_http_join_refusals(sfu_node):
    async with aiohttp.ClientSession() as http:
        # no token, a forged one, an expired one: 401 with the protocol's error object
        for body in ({}, {"token": "nope"}, {"token": sfu_node.token("x", ttl_s=-10)}):
            status, error = await http_join(http, sfu_node, body)
            assert status == 401, (body, error)
            assert error["type"] == "error" and error["code"] == "unauthorized"
        # a token for another room
        status, error = await http_join(
            http, sfu_node, {"token": sfu_node.token("x", room="a"), "room": "b"}
        )
        assert (status, error["code"]) == (403, "forbidden")
        # not JSON, not an object, a bad room name
        async with http.post(f"{sfu_node.url}/rtc/join", data="{nope") as r:
            assert r.status == 400 and (await r.json())["code"] == "bad_request"
        status, error = await post(http, f"{sfu_node.url}/rtc/join", [1, 2])
        assert (status, error["code"]) == (400, "bad_request")
        status, error = await http_join(http, sfu_node, {"token": sfu_node.token("x"), "room": 5})
        assert (status, error["code"]) == (400, "bad_request")
        # the token may come in the Authorization header instead
        headers = {"Authorization": f"Bearer {sfu_node.token('bearer')}"}
        status, joined = await post(http, f"{sfu_node.url}/rtc/join", {}, headers=headers)
        assert status == 200 and joined["participant"]["identity"] == "bearer"
        # nothing was left behind by the refused joins
        assert set(sfu_node.node.rooms.rooms) == {"shop"}
        assert list(sfu_node.node.rooms.rooms["shop"].participants) == ["bearer"]
        assert len(sfu_node.app[HTTP_JOINS_KEY].sessions) == 1
        # an unknown session: for the answer, for leaving, and for attaching
        for path in ("answer", "leave"):
            status, error = await post(
                http, f"{sfu_node.url}/rtc/{path}", {"session": "nope", "sdp": "v=0"}
            )
            assert (status, error["code"]) == (404, "not_found"), path
        async with http.ws_connect(f"{sfu_node.url}/rtc?session=nope") as ws:
            error = await ws.receive_json(timeout=5)
            assert (error["code"], error["request_id"]) == ("not_found", "attach")
            await ws.receive(timeout=5)
            assert ws.close_code == 4404
        # an answer nobody asked for (no tracks live, so no offer is waiting)
        status, error = await post(
            http, f"{sfu_node.url}/rtc/answer", {"session": joined["session"], "sdp": "v=0"}
        )
        assert (status, error["code"]) == (400, "bad_sdp")


async def test_http_join_cors(sfu_node):
    async with aiohttp.ClientSession() as http:
        headers = {
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        for path in ("join", "answer", "leave"):
            async with http.options(f"{sfu_node.url}/rtc/{path}", headers=headers) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert "POST" in r.headers["Access-Control-Allow-Methods"]
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        # what the browser SDK sends: text/plain, so no preflight is needed at all
        body = json.dumps({"token": sfu_node.token("cors")})
        async with http.post(
            f"{sfu_node.url}/rtc/join",
            data=body,
            headers={"Origin": "https://shop.example", "Content-Type": "text/plain"},
        ) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == "*"
        status, error = await http_join(http, sfu_node, {"token": "nope"})
        assert status == 401  # (errors carry the header too, so the page can read them)


async def test_session_never_attached_is_removed():
    node = await start_node()
    node.app[HTTP_JOINS_KEY].attach_timeout_s = 0.5
    watcher = None
    try:
        watcher = await RoomClient.connect(node.url, node.token("watcher"), network=LOOPBACK)
        async with aiohttp.ClientSession() as http:
            status, joined = await http_join(http, node, {"token": node.token("ghost")})
            assert status == 200 and joined["attach_within_s"] == 0.5
            assert in_room(node, "ghost")
            left = await watcher.wait_for(
                "participant_left", lambda m: m["identity"] == "ghost", timeout=5
            )
            assert left
            assert not in_room(node, "ghost")
            assert node.app[HTTP_JOINS_KEY].sessions == {}
            async with http.ws_connect(f"{node.url}/rtc?session={joined['session']}") as ws:
                messages = await receive_until(ws, lambda m: m.get("request_id") == "attach")
                # an expired session is forgotten: unknown
                assert [m["code"] for m in messages] == ["not_found"], messages
                await ws.receive(timeout=5)
                assert ws.close_code == 4404
    finally:
        if watcher is not None:
            await watcher.leave()
        await node.runner.cleanup()


async def test_attach_twice_is_refused_and_the_first_socket_stays(sfu_node):
    async with aiohttp.ClientSession() as http:
        status, joined = await http_join(http, sfu_node, {"token": sfu_node.token("twice")})
        assert status == 200
        url = f"{sfu_node.url}/rtc?session={joined['session']}"
        async with http.ws_connect(url) as first:
            attached = await first.receive_json(timeout=5)
            assert attached["type"] == "attached"
            async with http.ws_connect(url) as second:
                error = await second.receive_json(timeout=5)
                assert (error["code"], error["request_id"]) == ("already_attached", "attach")
                await second.receive(timeout=5)
                assert second.close_code == 4409
            await first.send_json({"type": "ping", "request_id": 1})
            assert (await receive_until(first, lambda m: m["type"] == "pong"))[-1]["type"]
            assert in_room(sfu_node, "twice")
            # leaving over the socket works as always
            await first.send_json({"type": "leave", "request_id": 2})
            await receive_until(first, lambda m: m["type"] == "left")
        await wait_for(lambda: not in_room(sfu_node, "twice"))


async def test_http_join_replaces_the_same_identity(sfu_node):
    # (a bystander keeps the room: replacing the only participant of a room is room.py's
    # business, the same for both join paths)
    bystander = await RoomClient.connect(sfu_node.url, sfu_node.token("by"), network=LOOPBACK)
    old = await RoomClient.connect(sfu_node.url, sfu_node.token("same"), network=LOOPBACK)
    try:
        async with aiohttp.ClientSession() as http:
            # an HTTP join while the identity is joined over a WebSocket replaces that one
            status, first = await http_join(http, sfu_node, {"token": sfu_node.token("same")})
            assert status == 200
            replaced = await old.wait_for("error", lambda m: m["code"] == "replaced", timeout=5)
            assert replaced
            # a second HTTP join replaces the first, not yet attached: its socket is told why
            status, second = await http_join(http, sfu_node, {"token": sfu_node.token("same")})
            assert status == 200
            participants = sfu_node.node.rooms.rooms["shop"].participants
            assert participants["same"].sid == second["participant"]["sid"]
            async with http.ws_connect(f"{sfu_node.url}/rtc?session={first['session']}") as ws:
                messages = await receive_until(ws, lambda m: m.get("request_id") == "attach")
                assert [m.get("code") for m in messages] == ["replaced", "not_found"], messages
            async with http.ws_connect(f"{sfu_node.url}/rtc?session={second['session']}") as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "attached"
                await ws.close()
            await wait_for(lambda: not in_room(sfu_node, "same"))
    finally:
        await old.leave()
        await bystander.leave()


async def test_http_leave_before_attaching(sfu_node):
    async with aiohttp.ClientSession() as http:
        status, joined = await http_join(http, sfu_node, {"token": sfu_node.token("brief")})
        assert status == 200 and in_room(sfu_node, "brief")
        status, _ = await post(http, f"{sfu_node.url}/rtc/leave", {"session": joined["session"]})
        assert status == 204
        assert not in_room(sfu_node, "brief")
        assert sfu_node.app[HTTP_JOINS_KEY].sessions == {}
        async with http.ws_connect(f"{sfu_node.url}/rtc?session={joined['session']}") as ws:
            error = await ws.receive_json(timeout=5)
            assert error["code"] == "not_found"


@pytest.mark.parametrize(
    ("limit", "code"), [("max_participants_per_room", "room_full"), ("max_rooms", "node_full")]
)
async def test_http_join_limits(limit, code):
    config = Config()
    setattr(config.limits, limit, 1)
    node = await start_node(config)
    try:
        async with aiohttp.ClientSession() as http:
            status, _ = await http_join(http, node, {"token": node.token("one", room="r1")})
            assert status == 200
            status, error = await http_join(http, node, {"token": node.token("two", room="r1")})
            if code == "node_full":
                assert status == 200  # (same room: no new room needed)
                status, error = await http_join(
                    http, node, {"token": node.token("three", room="r2")}
                )
            assert (status, error["code"]) == (503, code)
            assert len(node.app[HTTP_JOINS_KEY].sessions) == (1 if code == "room_full" else 2)
            assert set(node.node.rooms.rooms) == {"r1"}
    finally:
        await node.runner.cleanup()


async def test_http_join_with_publish(sfu_node):
    watcher = await RoomClient.connect(sfu_node.url, sfu_node.token("watcher"), network=LOOPBACK)
    peer = MediaPeer(LOOPBACK, label="http-caller")
    try:
        peer.pc.addTransceiver(ColorVideoTrack((30, 200, 30)), direction="sendonly")
        offer = await peer.offer()
        mid = peer.pc.getTransceivers()[0].mid
        async with aiohttp.ClientSession() as http:
            status, joined = await http_join(
                http,
                sfu_node,
                {
                    "token": sfu_node.token("caller"),
                    "publish": {"sdp": offer, "tracks": [{"mid": mid, "source": "camera"}]},
                },
            )
            assert status == 200, joined
            [track] = joined["publish_answer"]["tracks"]
            assert track["mid"] == mid and track["source"] == "camera"
            await peer.accept_answer(joined["publish_answer"]["sdp"])
            remote = await watcher.next_track(kind="video", publisher="caller", timeout=10)
            frame = await asyncio.wait_for(remote.track.recv(), 10)
            assert mean_rgb(frame)[1] > 120
            # without the publish grant: joined all the same, the publish part refused
            status, joined = await http_join(
                http,
                sfu_node,
                {
                    "token": sfu_node.token("viewer", publish=False, subscribe=True),
                    "publish": {"sdp": offer},
                },
            )
            assert status == 200 and joined["publish_error"]["code"] == "forbidden"
            await post(http, f"{sfu_node.url}/rtc/leave", {"session": joined["session"]})
    finally:
        await peer.close()
        await watcher.leave()
