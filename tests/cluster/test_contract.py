"""The cluster contract, run against both implementations (in-process and a real Redis):
registry heartbeats and expiry, directory records, atomic room creation, messages in order."""

from __future__ import annotations

import asyncio
import time

import pytest

from sfu.cluster import (
    ClusterMessage,
    MessageKind,
    NodeInfo,
    NodeLoad,
    NodeSnapshot,
    ParticipantRecord,
    RoomNotFound,
    TrackRecord,
)
from sfu.cluster.records import ParticipantLeft, TrackRemoved

from .conftest import TEST_TTL_S


def node(node_id: str, region: str = "sa-east", **load: int | float) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        region=region,
        public_url=f"https://{node_id}.example.com",
        started_at=1_700_000_000.0,
        load=NodeLoad(**load),
    )


def member(
    room: str, identity: str, node_id: str, sid: str = "", joined_at: float = 0.0
) -> ParticipantRecord:
    return ParticipantRecord(
        room=room,
        identity=identity,
        sid=sid or f"PA_{identity}",
        node_id=node_id,
        name=identity,
        joined_at=joined_at,
    )


def track(room: str, track_id: str, node_id: str, publisher: str = "host") -> TrackRecord:
    return TrackRecord(
        room=room,
        track_id=track_id,
        publisher=publisher,
        node_id=node_id,
        kind="video",
        source="camera",
        simulcast=True,
    )


async def until(predicate, timeout_s: float = 5.0):
    """Poll an async predicate until it holds (bounded); returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


# -- node registry --------------------------------------------------------------------------------


async def test_heartbeat_registers_a_node_with_its_load(backend):
    await backend.registry.heartbeat(node("sa-1", participants=3, tracks=2, bitrate_bps=1500))
    [seen] = await backend.registry.live_nodes()
    assert seen.node_id == "sa-1"
    assert seen.public_url == "https://sa-1.example.com"
    assert seen.load == NodeLoad(participants=3, tracks=2, bitrate_bps=1500)
    assert abs(seen.heartbeat_at - time.time()) < 60  # stamped by the registry
    assert await backend.registry.get_node("sa-1") == seen
    assert await backend.registry.get_node("nobody") is None


async def test_a_second_heartbeat_replaces_the_load(backend):
    await backend.registry.heartbeat(node("sa-1", participants=3))
    await backend.registry.heartbeat(node("sa-1", participants=7, cpu_pct=42.5))
    [seen] = await backend.registry.live_nodes()
    assert seen.load.participants == 7
    assert seen.load.cpu_pct == 42.5


async def test_live_nodes_are_sorted_by_region_then_id(backend):
    for node_id, region in [("sa-2", "sa-east"), ("eu-1", "eu-west"), ("sa-1", "sa-east")]:
        await backend.registry.heartbeat(node(node_id, region))
    listed = [(n.region, n.node_id) for n in await backend.registry.live_nodes()]
    assert listed == [("eu-west", "eu-1"), ("sa-east", "sa-1"), ("sa-east", "sa-2")]


async def test_deregister_removes_the_node_at_once(backend):
    await backend.registry.heartbeat(node("sa-1"))
    await backend.registry.heartbeat(node("sa-2"))
    await backend.registry.deregister("sa-1")
    assert [n.node_id for n in await backend.registry.live_nodes()] == ["sa-2"]
    assert await backend.registry.expired_nodes() == []  # left cleanly: nothing to prune


async def test_a_node_without_heartbeats_expires_and_can_come_back(backend):
    registry = backend.registry
    await registry.heartbeat(node("sa-1"))
    await registry.heartbeat(node("sa-2"))

    async def sa1_gone() -> bool:
        await registry.heartbeat(node("sa-2"))  # sa-2 keeps beating
        return [n.node_id for n in await registry.live_nodes()] == ["sa-2"]

    assert await until(sa1_gone, timeout_s=TEST_TTL_S * 10)
    assert await registry.get_node("sa-1") is None
    assert await registry.expired_nodes() == ["sa-1"]

    await registry.heartbeat(node("sa-1"))  # it returns before anyone forgot it
    assert await registry.expired_nodes() == []
    await registry.forget("sa-1")  # live again: forget() leaves it alone
    assert {n.node_id for n in await registry.live_nodes()} == {"sa-1", "sa-2"}


async def test_heartbeat_says_whether_the_node_was_live_before(backend):
    """A node learns from its own heartbeat that others took it for gone (a stalled loop), so
    it can write its directory entries again."""
    registry = backend.registry
    assert await registry.heartbeat(node("sa-1")) is False  # first registration
    assert await registry.heartbeat(node("sa-1")) is True

    async def sa1_gone() -> bool:
        return await registry.get_node("sa-1") is None

    assert await until(sa1_gone, timeout_s=TEST_TTL_S * 10)
    assert await registry.heartbeat(node("sa-1")) is False  # back after it was taken for gone
    assert await registry.heartbeat(node("sa-1")) is True


async def test_forget_drops_an_expired_node(backend):
    registry = backend.registry
    await registry.heartbeat(node("sa-1"))

    async def expired() -> list[str]:
        return await registry.expired_nodes()

    assert await until(expired, timeout_s=TEST_TTL_S * 10) == ["sa-1"]
    await registry.forget("sa-1")
    assert await registry.expired_nodes() == []
    assert await registry.live_nodes() == []


# -- room directory -------------------------------------------------------------------------------


async def test_create_room_once_then_find_it(backend):
    directory = backend.directory
    room, created = await directory.create_room("show", "sa-1", {"title": "Watches"})
    assert created
    assert (room.name, room.created_by, room.metadata) == ("show", "sa-1", {"title": "Watches"})
    assert abs(room.created_at - time.time()) < 60
    again, created_again = await directory.create_room("show", "eu-1", {"title": "other"})
    assert not created_again
    assert again == room  # the first creator's record, metadata included
    assert await directory.get_room("show") == room
    assert await directory.get_room("absent") is None
    assert await directory.list_rooms() == ["show"]


async def test_room_metadata_is_replaced_and_a_missing_room_is_an_error(backend):
    directory = backend.directory
    await directory.create_room("show", "sa-1", {"title": "Watches"})
    updated = await directory.set_room_metadata("show", {"pinned": "SKU-1", "n": 2})
    assert updated.metadata == {"pinned": "SKU-1", "n": 2}
    assert (await directory.get_room("show")).metadata == {"pinned": "SKU-1", "n": 2}
    with pytest.raises(RoomNotFound):
        await directory.set_room_metadata("absent", {})
    assert await directory.list_rooms() == ["show"]  # no room made by the failed call


async def test_participants_and_tracks_name_their_node(backend):
    directory = backend.directory
    room = await directory.add_participant(member("show", "host", "sa-1"))
    assert room.created_by == "sa-1"  # the first join created the room
    await directory.add_participant(member("show", "buyer", "eu-1"))
    await directory.add_track(track("show", "TR_b", "sa-1"))
    await directory.add_track(track("show", "TR_a", "sa-1"))
    assert await directory.participants("show") == [
        member("show", "buyer", "eu-1"),
        member("show", "host", "sa-1"),
    ]
    assert [t.track_id for t in await directory.tracks("show")] == ["TR_a", "TR_b"]
    assert (await directory.tracks("show"))[0] == track("show", "TR_a", "sa-1")
    assert await directory.participants("absent") == []


async def test_a_rejoin_replaces_the_identity_and_the_old_leave_is_ignored(backend):
    directory = backend.directory
    await directory.add_participant(member("show", "buyer", "sa-1", "PA_old", 1000.25))
    await directory.add_participant(member("show", "buyer", "eu-1", "PA_new", 1002.5))
    # the old connection's leave arrives late: it must not remove the new one
    assert not await directory.remove_participant("show", "buyer", "PA_old")
    assert await directory.participants("show") == [
        member("show", "buyer", "eu-1", "PA_new", 1002.5)
    ]
    assert await directory.remove_participant("show", "buyer", "PA_new")
    assert await directory.list_rooms() == []


async def test_a_late_write_of_the_older_connection_never_replaces_the_newer(backend):
    """Two nodes write one identity: the node it left may write after the node it joined
    (its queue was slower). The directory keeps the later join, whatever the write order."""
    directory = backend.directory
    new = member("show", "buyer", "eu-1", "PA_b", 1_765_000_002.123456)
    old = member("show", "buyer", "sa-1", "PA_a", 1_765_000_001.654321)
    await directory.add_participant(new)
    await directory.add_participant(old)
    await directory.apply([old])
    await directory.sync_node(NodeSnapshot("sa-1", participants=[old]))
    assert await directory.participants("show") == [new]
    assert not await directory.remove_participant("show", "buyer", "PA_a")
    # same join time (to the microsecond): the larger sid stays, on every node alike
    twin = member("show", "buyer", "sa-1", "PA_c", new.joined_at)
    await directory.add_participant(twin)
    assert await directory.participants("show") == [twin]
    await directory.add_participant(new)
    assert await directory.participants("show") == [twin]
    assert await directory.prune_node("sa-1") == ["show"]
    assert await directory.list_rooms() == []


async def test_a_room_goes_when_its_last_participant_and_track_go(backend):
    directory = backend.directory
    await directory.add_participant(member("show", "host", "sa-1"))
    await directory.add_track(track("show", "TR_1", "sa-1"))
    assert await directory.remove_participant("show", "host", "PA_host")
    assert await directory.list_rooms() == ["show"]  # a track is still listed
    assert await directory.remove_track("show", "TR_1")
    assert await directory.list_rooms() == []
    assert await directory.get_room("show") is None
    assert not await directory.remove_track("show", "TR_1")
    assert not await directory.remove_participant("show", "host", "PA_host")


async def test_concurrent_room_creation_makes_exactly_one_room(store):
    clients = [await store.open() for _ in range(4)]
    attempts = [
        clients[i % len(clients)].directory.create_room("sale", f"node-{i}", {"by": i})
        for i in range(24)
    ]
    results = await asyncio.gather(*attempts)
    creators = [room for room, created in results if created]
    assert len(creators) == 1
    assert all(room == creators[0] for room, _ in results)  # everyone got the winner's
    assert creators[0].metadata == {"by": int(creators[0].created_by.removeprefix("node-"))}


async def test_concurrent_first_joins_share_one_room(store):
    clients = [await store.open() for _ in range(3)]
    joins = [
        clients[i % 3].directory.add_participant(member("sale", f"p{i}", f"node-{i % 3}"))
        for i in range(12)
    ]
    rooms = await asyncio.gather(*joins)
    assert all(room == rooms[0] for room in rooms)
    assert len(await clients[0].directory.participants("sale")) == 12


async def test_a_batch_of_changes_applies_in_its_order(backend):
    directory = backend.directory
    await directory.apply(
        [
            member("show", "host", "sa-1"),
            track("show", "TR_1", "sa-1"),
            member("show", "brief", "sa-1"),
            ParticipantLeft("show", "brief", "PA_brief"),  # joined and left in one batch
            ParticipantLeft("show", "late", "PA_late"),  # left before it joined: no effect...
            member("show", "late", "sa-1"),  # ...so it is in
            TrackRemoved("show", "TR_1"),
            track("show", "TR_2", "sa-1"),
            member("gone", "solo", "sa-1"),
            ParticipantLeft("gone", "solo", "PA_solo"),  # its room goes with it
        ]
    )
    assert [p.identity for p in await directory.participants("show")] == ["host", "late"]
    assert [t.track_id for t in await directory.tracks("show")] == ["TR_2"]
    assert await directory.list_rooms() == ["show"]
    await directory.apply([])  # nothing to do is fine
    assert await directory.list_rooms() == ["show"]


async def test_prune_node_removes_only_that_nodes_entries(backend):
    directory = backend.directory
    await directory.add_participant(member("a", "host", "sa-1"))
    await directory.add_track(track("a", "TR_1", "sa-1"))
    await directory.add_participant(member("a", "viewer", "eu-1"))
    await directory.add_participant(member("b", "solo", "sa-1"))
    await directory.add_participant(member("c", "other", "eu-1"))
    assert await directory.prune_node("sa-1") == ["a", "b"]
    assert await directory.participants("a") == [member("a", "viewer", "eu-1")]
    assert await directory.tracks("a") == []
    assert await directory.list_rooms() == ["a", "c"]  # b had only sa-1's participant
    assert await directory.prune_node("sa-1") == []


async def test_sync_node_makes_the_directory_match_the_snapshot(backend):
    directory = backend.directory
    created, _ = await directory.create_room("a", "sa-1")
    await directory.add_participant(member("a", "gone", "sa-1"))
    await directory.add_participant(member("a", "stays", "sa-1"))
    await directory.add_participant(member("a", "elsewhere", "eu-1"))
    await directory.add_track(track("a", "TR_gone", "sa-1"))
    await directory.add_participant(member("old", "x", "sa-1"))
    snapshot = NodeSnapshot(
        "sa-1",
        participants=[member("a", "stays", "sa-1"), member("new", "y", "sa-1")],
        tracks=[track("new", "TR_new", "sa-1", publisher="y")],
    )
    await directory.sync_node(snapshot)
    assert [p.identity for p in await directory.participants("a")] == ["elsewhere", "stays"]
    assert await directory.tracks("a") == []
    assert await directory.tracks("new") == [track("new", "TR_new", "sa-1", publisher="y")]
    assert await directory.list_rooms() == ["a", "new"]
    assert (await directory.get_room("a")).created_at == created.created_at  # room kept
    await directory.sync_node(NodeSnapshot("sa-1"))  # the node now holds nothing
    assert await directory.list_rooms() == ["a"]
    assert [p.identity for p in await directory.participants("a")] == ["elsewhere"]


# -- messages -------------------------------------------------------------------------------------


class Inbox:
    """A message handler that keeps what it got, and lets a test wait for a count."""

    def __init__(self) -> None:
        self.messages: list[ClusterMessage] = []
        self._arrived = asyncio.Event()

    def __call__(self, message: ClusterMessage) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[ClusterMessage]:
        """The messages once `count` arrived, or whatever came within the time."""
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        return self.messages


def data(origin: str, room: str, n: int) -> ClusterMessage:
    return ClusterMessage(MessageKind.DATA, origin, room=room, body={"n": n, "text": f"m{n}"})


async def test_room_messages_arrive_in_order_with_their_numbers(backend):
    inbox = Inbox()
    await backend.bus.subscribe_room("show", inbox)
    seqs = [await backend.bus.publish(data("sa-1", "show", n)) for n in range(50)]
    assert seqs == list(range(1, 51))
    received = await inbox.wait_for(50)
    assert [m.body["n"] for m in received] == list(range(50))
    assert [m.seq for m in received] == seqs
    assert received[0] == data("sa-1", "show", 0).with_seq(1)


async def test_every_node_sees_one_order_when_several_publish(store):
    a, b, c = [await store.open() for _ in range(3)]
    inbox_a, inbox_c = Inbox(), Inbox()
    await a.bus.subscribe_room("show", inbox_a)
    await c.bus.subscribe_room("show", inbox_c)
    sends = []
    for n in range(30):  # a and b publish at the same time
        sends.append(a.bus.publish(data("a", "show", n)))
        sends.append(b.bus.publish(data("b", "show", n)))
    await asyncio.gather(*sends)
    got_a = await inbox_a.wait_for(60)
    got_c = await inbox_c.wait_for(60)
    assert len(got_a) == len(got_c) == 60
    assert [m.seq for m in got_a] == list(range(1, 61))
    assert got_a == got_c  # the same messages, numbered and ordered alike
    for origin in ("a", "b"):  # each sender's own order is kept
        assert [m.body["n"] for m in got_a if m.origin == origin] == list(range(30))


async def test_rooms_are_separate_and_unsubscribe_stops_delivery(backend):
    show, other = Inbox(), Inbox()
    await backend.bus.subscribe_room("show", show)
    await backend.bus.subscribe_room("other", other)
    await backend.bus.publish(data("sa-1", "show", 1))
    await backend.bus.publish(data("sa-1", "other", 2))
    assert [m.body["n"] for m in await show.wait_for(1)] == [1]
    assert [m.body["n"] for m in await other.wait_for(1)] == [2]
    await backend.bus.unsubscribe_room("show")
    await backend.bus.publish(data("sa-1", "show", 3))
    await backend.bus.publish(data("sa-1", "other", 4))  # a marker: "show" would come first
    await other.wait_for(2)
    assert [m.body["n"] for m in other.messages] == [2, 4]
    assert [m.body["n"] for m in show.messages] == [1]


async def test_a_message_for_one_node_reaches_that_node_only(store):
    sa, eu = await store.open(), await store.open()
    sa_inbox, eu_inbox = Inbox(), Inbox()
    await sa.bus.subscribe_node("sa-1", sa_inbox)
    await eu.bus.subscribe_node("eu-1", eu_inbox)
    request = ClusterMessage(
        MessageKind.KEYFRAME_REQUEST,
        "eu-1",
        room="show",
        target="sa-1",
        body={"track_id": "TR_1", "layer": 2},
    )
    assert await eu.bus.publish(request) == 1
    answer = ClusterMessage(
        MessageKind.QUALITY_REQUEST, "sa-1", room="show", target="eu-1", body={"max_layer": 1}
    )
    assert await sa.bus.publish(answer) == 1
    [got] = await sa_inbox.wait_for(1)
    assert got == request.with_seq(1)
    [back] = await eu_inbox.wait_for(1)
    assert back.kind == MessageKind.QUALITY_REQUEST and back.body == {"max_layer": 1}
    assert len(sa_inbox.messages) == 1
