"""The one join path (sfu/rooms/joins.py): every surface's join opens its room through
JoinService.open_room (the room directory's call site), and a refusal there reaches each
client in its surface's own format, leaving nothing behind on the node.
"""

from __future__ import annotations

import aiohttp
import pytest

from sfu.rooms.joins import JoinError

from . import test_whip_whep
from .test_whip_whep import SDP

offers = test_whip_whep.offers  # the fixture: a real WHIP and a real WHEP offer


async def _join_everywhere(node, offers: dict) -> dict[str, tuple[int, object]]:
    """A join on each surface: WebSocket, HTTP join, WHIP, WHEP. Returns what each answered."""
    answers: dict[str, tuple[int, object]] = {}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{node.url}/rtc") as ws:
            await ws.send_json({"type": "join", "token": node.token("ws"), "request_id": 1})
            answers["websocket"] = (0, await ws.receive_json(timeout=10))
        body = {"token": node.token("http"), "inline_offer": False}
        async with http.post(f"{node.url}/rtc/join", json=body) as r:
            answers["http_join"] = (r.status, await r.json())
            if r.status == 200:
                leave = {"session": answers["http_join"][1]["session"]}
                async with http.post(f"{node.url}/rtc/leave", json=leave) as left:
                    assert left.status == 204
        for kind in ("whip", "whep"):
            headers = {"Content-Type": SDP, "Authorization": f"Bearer {node.token(kind)}"}
            url = f"{node.url}/{kind}/shop"
            async with http.post(url, data=offers[kind].encode(), headers=headers) as r:
                answers[kind] = (r.status, await r.text())
                location = r.headers.get("Location")
            if location:
                async with http.delete(f"{node.url}{location}") as deleted:
                    assert deleted.status == 200
    return answers


async def test_every_surface_opens_its_room_through_the_join_service(sfu_node, offers):
    service = sfu_node.node.join_service
    opened: list[tuple[str, set[str]]] = []
    open_room = service.open_room

    def recording_open_room(name: str):
        room = open_room(name)
        opened.append((name, set(room.participants)))
        return room

    service.open_room = recording_open_room
    answers = await _join_everywhere(sfu_node, offers)
    assert answers["websocket"][1]["type"] == "joined", answers
    assert answers["http_join"][0] == 200 and answers["http_join"][1]["type"] == "joined"
    assert answers["whip"][0] == 201 and answers["whep"][0] == 201, answers
    # once per join, in order, each before its participant was in the room
    assert [name for name, _ in opened] == ["shop"] * 4
    assert "ws" not in opened[0][1] and "http" not in opened[1][1] and "whip" not in opened[2][1]


async def test_a_refusal_at_open_room_is_answered_in_each_surfaces_format(sfu_node, offers):
    """What a room directory would do when this node must not serve the room."""
    service = sfu_node.node.join_service

    def refuse(name: str):
        raise JoinError("node_full", f"room {name!r} is served elsewhere")

    service.open_room = refuse
    answers = await _join_everywhere(sfu_node, offers)
    message = "room 'shop' is served elsewhere"
    assert answers["websocket"][1] == {
        "type": "error",
        "code": "node_full",
        "message": message,
        "request_id": 1,
    }
    assert answers["http_join"] == (503, {"type": "error", "code": "node_full", "message": message})
    for kind in ("whip", "whep"):
        assert answers[kind] == (503, message + "\n"), (kind, answers[kind])
    node = sfu_node.node
    assert node.rooms.rooms == {} and node.http_sessions == {}
    assert service.whep_sessions("whep") == 0  # the WHEP slot was given back


@pytest.mark.parametrize("code", ["room_full", "forbidden"])
async def test_join_errors_keep_their_codes_on_the_socket(sfu_node, code):
    """A JoinError raised anywhere down the path is an `error` with its code, not `internal`."""
    service = sfu_node.node.join_service

    async def refuse(*args, **kwargs):
        raise JoinError(code, "refused by the test")

    service.join = refuse
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{sfu_node.url}/rtc") as ws:
            await ws.send_json({"type": "join", "token": sfu_node.token("a"), "request_id": 7})
            reply = await ws.receive_json(timeout=10)
    assert reply == {
        "type": "error",
        "code": code,
        "message": "refused by the test",
        "request_id": 7,
    }
