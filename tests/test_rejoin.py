"""A rejoin with the same identity replaces the old participant (what a client resuming after
a failure does): one participant in /api/rooms, others see one leave and one join, the old
connection is told `replaced` and closed (it can act no more as that identity) and does not
fight back even with `reconnect` on; its publication goes with it."""

from __future__ import annotations

import asyncio

import aiohttp

from sfu.auth import Grants, mint_token
from sfu.client import Reconnect, RoomClient
from tests.conftest import LOOPBACK
from tests.media_sources import ColorVideoTrack


async def api_rooms(node) -> dict:
    token = mint_token(node.config.auth, identity="ops", room="*", grants=Grants(admin=True))
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{node.url}/api/rooms", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200
            return await response.json()


async def test_same_identity_rejoin_replaces_the_old_participant(sfu_node):
    bob = await RoomClient.connect(sfu_node.url, sfu_node.token("bob"), network=LOOPBACK)
    old = await RoomClient.connect(
        sfu_node.url,
        sfu_node.token("ann"),
        network=LOOPBACK,
        publish=[ColorVideoTrack((0, 0, 200))],
        reconnect=Reconnect(),  # must not come back: another connection of ann took over
    )
    new = None
    try:
        old_track = old.published[0]["id"]
        await bob.wait_for("track_published", lambda m: m["track"]["id"] == old_track)
        seen_before = len(bob._history)

        new = await RoomClient.connect(sfu_node.url, sfu_node.token("ann"), network=LOOPBACK)
        error = await old.wait_for("error", lambda m: m["code"] == "replaced", timeout=5)
        assert error["message"]
        await asyncio.wait_for(old.wait_closed(), 5)  # its socket was closed by the node

        # one ann in the room, the new connection
        [room] = (await api_rooms(sfu_node))["rooms"]
        ann = [p for p in room["participants"] if p["identity"] == "ann"]
        assert [p["sid"] for p in ann] == [new._history[0]["participant"]["sid"]]
        # bob saw the old publication go, then ann leave once and join once
        await bob.wait_for("participant_joined", lambda m: m["participant"]["identity"] == "ann")
        events = [
            (m["type"], m.get("identity") or m.get("track_id") or m["participant"]["identity"])
            for m in bob._history[seen_before:]
            if m["type"] in ("participant_left", "participant_joined", "track_unpublished")
        ]
        assert events == [
            ("track_unpublished", old_track),
            ("participant_left", "ann"),
            ("participant_joined", "ann"),
        ]
        assert list(bob.participants) == ["ann"]

        # the old connection can no longer speak for ann, and it did not try to come back
        try:
            await old.send_data({"text": "ghost"}, topic="chat")
        except Exception:
            pass
        await new.send_data({"text": "real"}, topic="chat")
        data = await bob.wait_for("data", timeout=5)
        assert data["payload"] == {"text": "real"}
        await asyncio.sleep(1.0)
        assert not [m for m in old._history if m["type"] in ("reconnecting", "resumed")]
        [room] = (await api_rooms(sfu_node))["rooms"]
        assert sorted(p["identity"] for p in room["participants"]) == ["ann", "bob"]
    finally:
        await old.close()
        if new is not None:
            await new.leave()
        await bob.leave()


async def test_leaving_with_reconnect_on_is_no_failure(sfu_node):
    """leave(): the socket the node then closes must not start a resume."""
    client = await RoomClient.connect(
        sfu_node.url, sfu_node.token("ann"), network=LOOPBACK, reconnect=Reconnect()
    )
    await client.leave()
    await asyncio.wait_for(client.wait_closed(), 5)
    await asyncio.sleep(1.0)
    assert not [m for m in client._history if m["type"] in ("reconnecting", "resumed")]
    assert "shop" not in sfu_node.node.rooms.rooms
