"""Bad input and faults: junk on the signalling socket, peers that never connect, publishers
that vanish, and the configurable limits. The node must answer with an error (or a clean
close), keep serving everyone else, and leave no participant, task or socket behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aiohttp
import pytest

from sfu import Config
from sfu.client import RoomClient
from sfu.media.peer import MediaPeer

from .conftest import LOOPBACK, RunningNode, start_node
from .media_sources import ColorVideoTrack, ToneAudioTrack

# -- helpers ------------------------------------------------------------------------------------


class RawSocket:
    """A bare signalling socket: send anything, read the replies and events one by one."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session = session
        self.ws = ws
        self.seen: list[dict] = []

    @classmethod
    async def open(cls, node: RunningNode) -> RawSocket:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(node.url.replace("http://", "ws://") + "/rtc")
        return cls(session, ws)

    async def send(self, message: Any) -> None:
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        elif isinstance(message, str):
            await self.ws.send_str(message)
        else:
            await self.ws.send_str(json.dumps(message))

    async def next(self, type_: str, timeout: float = 5.0, **match: Any) -> dict:
        """The next message of this type (and these fields); other messages are kept in seen."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {type_} message {match} within {timeout} s: {self.seen}")
            raw = await self.ws.receive(timeout=left)
            if raw.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket closed ({raw.type}, {self.ws.close_code})")
            message = raw.json()
            self.seen.append(message)
            if message.get("type") == type_ and all(message.get(k) == v for k, v in match.items()):
                return message

    async def error(self, message: Any, code: str) -> dict:
        await self.send(message)
        error = await self.next("error")
        assert error["code"] == code, (message, error)
        assert isinstance(error["message"], str) and error["message"]
        return error

    async def join(self, token: str, **extra: Any) -> dict:
        await self.send({"type": "join", "token": token, **extra})
        return await self.next("joined")

    async def ping(self) -> None:
        await self.send({"type": "ping", "ts": 1})
        await self.next("pong")

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def udp_sockets() -> int:
    """UDP sockets this process holds open (from /proc, no psutil)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                inodes.update(line.split()[9] for line in f)
        except FileNotFoundError:
            pass
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


def task_count() -> int:
    return len(asyncio.all_tasks())


async def settle_to(baseline_tasks: int, baseline_udp: int, grace_s: float = 6.0) -> None:
    """Wait until tasks and UDP sockets are back to their baselines, or fail saying which."""
    deadline = time.monotonic() + grace_s
    while True:
        tasks, udp = task_count(), udp_sockets()
        if tasks <= baseline_tasks and udp <= baseline_udp:
            return
        if time.monotonic() > deadline:
            names = sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks())
            raise AssertionError(
                f"leak: tasks {tasks} (baseline {baseline_tasks}), "
                f"UDP sockets {udp} (baseline {baseline_udp}); tasks now: {names}"
            )
        await asyncio.sleep(0.1)


async def silent_offer(kinds: tuple[str, ...] = ("video",)) -> str:
    """An offer from a peer that is closed right after: nobody will ever answer ICE checks."""
    peer = MediaPeer(LOOPBACK, label="ghost")
    for kind in kinds:
        track = ColorVideoTrack((1, 2, 3)) if kind == "video" else ToneAudioTrack()
        peer.pc.addTransceiver(track, direction="sendonly")
    sdp = await peer.offer()
    await peer.close()
    return sdp


async def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def limited_config(**limits: Any) -> Config:
    config = Config()
    for key, value in limits.items():
        setattr(config.limits, key, value)
    return config


@pytest.fixture
async def limited_node(request) -> RunningNode:
    node = await start_node(limited_config(**request.param))
    try:
        yield node
    finally:
        await node.runner.cleanup()


# -- malformed and unknown messages -------------------------------------------------------------


async def test_malformed_messages_get_errors_and_server_keeps_serving(sfu_node):
    a = await RawSocket.open(sfu_node)
    b = await RawSocket.open(sfu_node)
    try:
        # before join
        await a.error("this is not json", "bad_request")
        await a.error("[1, 2, 3]", "bad_request")
        await a.error('"a string"', "bad_request")
        await a.error("null", "bad_request")
        await a.error("{", "bad_request")
        await a.error("[" * 20000, "bad_request")  # nesting deeper than the JSON parser goes
        await a.error({"type": "teleport"}, "unknown_type")
        await a.error({"no_type": True}, "unknown_type")
        await a.error({"type": 5}, "unknown_type")
        await a.error({"type": ["join"]}, "unknown_type")
        await a.error({"type": "publish", "sdp": "v=0"}, "not_joined")
        await a.error({"type": "subscribe", "track_ids": ["x"]}, "not_joined")
        await a.error({"type": "leave"}, "not_joined")
        await a.error(b"\x00\x01binary", "bad_request")
        error = await a.error({"type": "nope", "request_id": "r1"}, "unknown_type")
        assert error["request_id"] == "r1"
        await a.send({"type": "ping", "request_id": 7})
        assert (await a.next("pong"))["request_id"] == 7
        await a.error({"type": "join", "token": sfu_node.token("a"), "room": 5}, "bad_request")
        await a.error(
            {"type": "join", "token": sfu_node.token("a"), "room": "r" * 500}, "bad_request"
        )

        joined = await a.join(sfu_node.token("a"), name=5, metadata="not a dict")
        assert joined["participant"]["identity"] == "a"

        # after join: missing fields, wrong types, unknown ids
        await a.error({"type": "join", "token": sfu_node.token("a")}, "already_joined")
        await a.error({"type": "publish"}, "bad_request")
        await a.error({"type": "publish", "sdp": 123}, "bad_request")
        await a.error({"type": "publish", "sdp": ""}, "bad_request")
        await a.error({"type": "publish", "sdp": "v=0", "tracks": "x"}, "bad_request")
        await a.error({"type": "publish", "sdp": "v=0", "tracks": [1]}, "bad_request")
        await a.error({"type": "publish", "sdp": "v=0", "tracks": [{"kind": "x"}]}, "bad_request")
        await a.error({"type": "publish", "sdp": "garbage"}, "bad_sdp")
        await a.error({"type": "publish", "sdp": "v=0\r\nm=video 9 RTP/AVP 96\r\n"}, "bad_sdp")
        await a.error({"type": "subscribe"}, "bad_request")
        await a.error({"type": "subscribe", "track_ids": "TR_1"}, "bad_request")
        await a.error({"type": "subscribe", "track_ids": [1, 2]}, "bad_request")
        await a.error({"type": "subscribe", "track_ids": []}, "bad_request")
        await a.error({"type": "subscribe", "track_ids": ["TR_nope"]}, "not_found")
        await a.error({"type": "unsubscribe", "track_ids": None}, "bad_request")
        await a.error({"type": "unpublish"}, "bad_request")
        await a.error({"type": "unpublish", "track_id": {"x": 1}}, "bad_request")
        await a.error({"type": "unpublish", "track_id": "TR_nope"}, "not_found")
        await a.error({"type": "answer"}, "bad_request")
        await a.error({"type": "answer", "sdp": "v=0"}, "bad_sdp")  # no offer is pending
        await a.error({"type": "data"}, "bad_request")
        await a.error({"type": "data", "payload": 1, "topic": 5}, "bad_request")
        await a.error({"type": "data", "payload": 1, "topic": "t" * 65}, "bad_request")
        await a.error({"type": "data", "payload": 1, "to": "b"}, "bad_request")
        await a.error({"type": "data", "payload": 1, "to": [1]}, "bad_request")
        await a.error("not json after join", "bad_request")
        await a.error(b"\xff", "bad_request")
        await a.error({"type": "whatever"}, "unknown_type")

        # the same socket still works, and so does everybody else
        await a.ping()
        await b.join(sfu_node.token("b"))
        await a.next("participant_joined")
        await b.send({"type": "data", "payload": {"n": 1}, "topic": "t"})
        data = await a.next("data")
        assert data["from"] == "b" and data["payload"] == {"n": 1}
        room = sfu_node.node.rooms.rooms["shop"]
        assert set(room.participants) == {"a", "b"}
        # a bad publish left no half-made publisher connection behind
        assert room.participants["a"].publisher is None
        async with aiohttp.ClientSession() as http:
            async with http.get(sfu_node.url + "/healthz") as response:
                assert response.status == 200
    finally:
        await a.close()
        await b.close()


async def test_message_larger_than_default_limit_closes_cleanly(sfu_node):
    assert Config().limits.max_message_bytes == 64 * 1024
    big = await RawSocket.open(sfu_node)
    other = await RawSocket.open(sfu_node)
    try:
        await other.join(sfu_node.token("other"))
        await big.join(sfu_node.token("big"))
        await big.send({"type": "data", "payload": "x" * (100 * 1024)})
        closed = await big.ws.receive(timeout=5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert big.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        # the oversized client is gone from the room; the other one still served
        left = await other.next("participant_left")
        assert left["identity"] == "big"
        await other.ping()
        assert set(sfu_node.node.rooms.rooms["shop"].participants) == {"other"}
    finally:
        await big.close()
        await other.close()


@pytest.mark.parametrize("limited_node", [{"max_message_bytes": 2048}], indirect=True)
async def test_max_message_bytes_is_configurable(limited_node):
    ws = await RawSocket.open(limited_node)
    try:
        await ws.join(limited_node.token("a"))
        await ws.send({"type": "ping", "ts": "x" * 1500})  # under the limit: fine
        assert (await ws.next("pong"))["ts"] == "x" * 1500
        await ws.send({"type": "ping", "ts": "x" * 3000})
        await ws.ws.receive(timeout=5)
        assert ws.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    finally:
        await ws.close()
    again = await RawSocket.open(limited_node)  # the node still serves
    try:
        await again.join(limited_node.token("a"))
        await again.ping()
    finally:
        await again.close()


# -- limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("limited_node", [{"max_participants_per_room": 2}], indirect=True)
async def test_max_participants_per_room(limited_node):
    assert Config().limits.max_participants_per_room == 200
    sockets = [await RawSocket.open(limited_node) for _ in range(3)]
    try:
        await sockets[0].join(limited_node.token("p0"))
        await sockets[1].join(limited_node.token("p1"))
        await sockets[2].error({"type": "join", "token": limited_node.token("p2")}, "room_full")
        # another room is not affected
        await sockets[2].join(limited_node.token("p2", room="other"))
        assert set(limited_node.node.rooms.rooms["shop"].participants) == {"p0", "p1"}
        # a free place can be taken again
        await sockets[1].send({"type": "leave"})
        await sockets[0].next("participant_left", identity="p1")
        late = await RawSocket.open(limited_node)
        sockets.append(late)
        await late.join(limited_node.token("p3"))
        assert set(limited_node.node.rooms.rooms["shop"].participants) == {"p0", "p3"}
    finally:
        for ws in sockets:
            await ws.close()


@pytest.mark.parametrize("limited_node", [{"max_tracks_per_participant": 1}], indirect=True)
async def test_max_tracks_per_participant(limited_node):
    assert Config().limits.max_tracks_per_participant == 4
    ws = await RawSocket.open(limited_node)
    try:
        await ws.join(limited_node.token("pub"))
        two = await silent_offer(("video", "audio"))
        error = await ws.error({"type": "publish", "sdp": two}, "bad_sdp")
        assert "too many tracks" in error["message"]
        room = limited_node.node.rooms.rooms["shop"]
        assert room.producers == {}
        one = await silent_offer(("video",))
        await ws.send({"type": "publish", "sdp": one})
        answer = await ws.next("publish_answer")
        assert len(answer["tracks"]) == 1
        assert len(room.producers) == 1
    finally:
        await ws.close()


# -- peers that never connect -------------------------------------------------------------------


async def test_connect_timeout_defaults_to_30_s():
    assert Config().limits.connect_timeout_s == 30.0
    assert Config.from_dict({"limits": {"connect_timeout_s": 2}}).limits.connect_timeout_s == 2.0


@pytest.mark.slow
@pytest.mark.parametrize("limited_node", [{"connect_timeout_s": 2.0}], indirect=True)
async def test_publisher_that_never_connects_is_dropped(limited_node):
    observer = await RawSocket.open(limited_node)
    ghost = await RawSocket.open(limited_node)
    try:
        await observer.join(limited_node.token("observer", subscribe=False, publish=False))
        baseline_tasks, baseline_udp = task_count(), udp_sockets()
        await ghost.join(limited_node.token("ghost"))
        offer = await silent_offer(("video", "audio"))
        await ghost.send({"type": "publish", "sdp": offer})
        answer = await ghost.next("publish_answer")
        answered_at = time.monotonic()
        track_ids = {t["id"] for t in answer["tracks"]}
        assert len(track_ids) == 2
        for _ in track_ids:
            await observer.next("track_published")
        room = limited_node.node.rooms.rooms["shop"]
        assert "ghost" in room.participants

        # no ICE/DTLS ever: dropped once connect_timeout_s has passed
        dropped = await ghost.next("error", timeout=6, code="dropped")
        assert "not connected" in dropped["message"]
        left = await observer.next("participant_left", timeout=6, identity="ghost")
        assert left
        elapsed = time.monotonic() - answered_at
        assert elapsed < 2.0 + 3.0, elapsed
        gone = {m["track_id"] for m in observer.seen if m.get("type") == "track_unpublished"}
        assert gone == track_ids
        assert "ghost" not in room.participants
        assert room.producers == {}
        # its socket is closed by the server, and nothing of it stays behind
        await ghost.ws.receive(timeout=3)
        assert ghost.ws.closed
        await ghost.session.close()
        await settle_to(baseline_tasks, baseline_udp)
        await observer.ping()
    finally:
        await observer.close()
        await ghost.close()


@pytest.mark.slow
@pytest.mark.parametrize("limited_node", [{"connect_timeout_s": 2.0}], indirect=True)
async def test_bad_publish_does_not_get_a_participant_dropped(limited_node):
    """A rejected offer must not leave a never-connecting connection that later drops us."""
    ws = await RawSocket.open(limited_node)
    try:
        await ws.join(limited_node.token("careless"))
        await ws.error({"type": "publish", "sdp": "v=0\r\nthis is no sdp\r\n"}, "bad_sdp")
        await asyncio.sleep(2.0 + 1.0)
        assert "careless" in limited_node.node.rooms.rooms["shop"].participants
        await ws.ping()
    finally:
        await ws.close()


@pytest.mark.slow
@pytest.mark.parametrize("limited_node", [{"connect_timeout_s": 2.0}], indirect=True)
async def test_subscriber_that_never_answers_is_dropped(limited_node):
    publisher = await RoomClient.connect(
        limited_node.url, limited_node.token("cam"), network=LOOPBACK
    )
    mute = await RawSocket.open(limited_node)
    try:
        await publisher.publish([ColorVideoTrack((10, 20, 30))])
        await mute.join(limited_node.token("mute"))
        offer = await mute.next("offer")  # ...which it never answers
        assert offer["sdp"].startswith("v=0")
        await mute.next("error", timeout=6, code="dropped")
        left = await publisher.wait_for(
            "participant_left", lambda m: m["identity"] == "mute", timeout=3
        )
        assert left
        room = limited_node.node.rooms.rooms["shop"]
        assert set(room.participants) == {"cam"}
        [producer] = room.producers.values()
        assert producer.forwarders == ()
    finally:
        await mute.close()
        await publisher.leave()


# -- a publisher that vanishes ------------------------------------------------------------------


async def vanish(client: RoomClient) -> None:
    """Gone without a word: media connections closed, the TCP connection cut, no 'leave'."""
    client._offer_task.cancel()
    for peer in (client.publisher, client.subscriber):
        if peer is not None:
            await peer.close()
    client._ws._writer.transport.abort()
    client._reader.cancel()
    client.closed = True
    await client._session.close()


@pytest.mark.slow
async def test_vanished_publisher_is_unpublished_for_everyone_without_leaks(sfu_node):
    viewer = await RoomClient.connect(sfu_node.url, sfu_node.token("viewer"), network=LOOPBACK)
    watcher = await RawSocket.open(sfu_node)
    room = None
    try:
        await watcher.join(sfu_node.token("watcher", subscribe=False, publish=False))
        baseline = None
        for round_ in range(2):
            # the first round also creates the viewer's m-lines, which later rounds reuse
            identity = f"vanisher{round_}"
            vanisher = await RoomClient.connect(
                sfu_node.url, sfu_node.token(identity), network=LOOPBACK
            )
            published = await vanisher.publish([ColorVideoTrack((90, 90, 200)), ToneAudioTrack()])
            track_ids = {t["id"] for t in published}
            await viewer.next_track(kind="video", publisher=identity, timeout=15)
            room = sfu_node.node.rooms.rooms["shop"]
            producers = [room.producers[t] for t in track_ids]
            # media flows through the SFU to the viewer on both tracks
            await wait_until(
                lambda producers=producers: all(
                    len(p.forwarders) == 1 and p.forwarders[0].downtrack.packets_sent > 0
                    for p in producers
                ),
                timeout=10,
            )

            await vanish(vanisher)

            for who in (viewer, watcher):
                if who is viewer:
                    left = await viewer.wait_for(
                        "participant_left", lambda m, i=identity: m["identity"] == i, timeout=5
                    )
                    unpublished = {
                        m["track_id"] for m in viewer._history if m["type"] == "track_unpublished"
                    }
                else:
                    left = await watcher.next("participant_left", identity=identity)
                    unpublished = {
                        m["track_id"] for m in watcher.seen if m["type"] == "track_unpublished"
                    }
                assert left and track_ids <= unpublished
            assert identity not in room.participants
            assert not set(room.producers) & track_ids
            assert all(p.closed and p.forwarders == () for p in producers)
            # the viewer's m-lines are freed (renegotiated inactive), not left bound
            subscriber = room.participants["viewer"].subscriber
            await asyncio.sleep(0.5)
            assert all(dt.forwarder is None for dt in subscriber.downtracks)
            if baseline is None:
                await asyncio.sleep(1.0)
                baseline = (task_count(), udp_sockets())
            else:
                await settle_to(*baseline)
        assert len(room.participants["viewer"].subscriber.downtracks) == 2  # reused, not grown
        await watcher.ping()
    finally:
        await watcher.close()
        await viewer.leave()


async def test_rejoining_alone_keeps_the_room_that_later_joiners_enter(sfu_node):
    """The same identity joining again while it is the room's only participant replaces the
    old connection; the room must stay registered, or later joiners get a fresh room and the
    two never see each other."""
    first = await RoomClient.connect(sfu_node.url, sfu_node.token("alice"), network=LOOPBACK)
    second = await RoomClient.connect(sfu_node.url, sfu_node.token("alice"), network=LOOPBACK)
    bob = await RoomClient.connect(sfu_node.url, sfu_node.token("bob"), network=LOOPBACK)
    try:
        room = sfu_node.node.rooms.rooms["shop"]
        assert set(room.participants) == {"alice", "bob"}
        assert "alice" in bob.participants
    finally:
        for client in (bob, second, first):
            await client.close()
