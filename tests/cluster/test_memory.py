"""What only the in-process implementation has to get right: it lives as long as the node, so
rooms that come and go must not leave anything behind."""

from __future__ import annotations

import asyncio

from sfu.cluster import ClusterMessage, MemoryCluster, MessageKind


async def test_rooms_that_come_and_go_leave_no_channels_or_counters():
    cluster = MemoryCluster()
    got: list[ClusterMessage] = []
    for n in range(100):
        room = f"room-{n}"
        await cluster.bus.subscribe_room(room, got.append)
        await cluster.bus.publish(ClusterMessage(MessageKind.DATA, "me", room=room))
        await cluster.bus.unsubscribe_room(room)
    await cluster.bus.publish(ClusterMessage(MessageKind.DATA, "me", room="nobody-listens"))
    await asyncio.sleep(0)
    assert len(got) == 100 and {m.seq for m in got} == {1}
    assert cluster.hub.subscribers == {} and cluster.hub.seq == {}
    await cluster.close()


async def test_close_unsubscribes_this_client_only():
    first = MemoryCluster()
    second = first.sibling()
    got: list[ClusterMessage] = []
    await first.bus.subscribe_room("show", lambda m: None)
    await second.bus.subscribe_room("show", got.append)
    await first.close()
    await first.bus.publish(ClusterMessage(MessageKind.DATA, "me", room="show"))
    await asyncio.sleep(0)
    assert [m.seq for m in got] == [1]
