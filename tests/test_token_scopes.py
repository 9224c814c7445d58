"""The token model against a real node: every kind of token × every HTTP surface × its own room
("shop") and another room ("vip").

Model (sfu/auth.py): `room` "*" or empty = node-wide, acting in every room only with `admin`
or `agent`; a room token acts in its own room only. A room admin sees and steers its own room;
agent workers need a node-wide agent token; grants are JSON booleans (anything else is 401).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest

from sfu import Config
from sfu.agents import AGENTS_KEY
from sfu.auth import Grants, mint_token, verify_token
from sfu.config import DEV_API_KEY

from .conftest import RunningNode, start_node

OWN, OTHER = "shop", "vip"
WORKER_PATH = "/api/agent-workers/ws"


@pytest.fixture
async def node(tmp_path, monkeypatch) -> AsyncIterator[RunningNode]:
    monkeypatch.setenv("SFU_CAPTIONS_DB", str(tmp_path / "captions.sqlite3"))
    running = await start_node(Config())
    try:
        yield running
    finally:
        await running.runner.cleanup()


def _raw_token(node: RunningNode, room: str, grants: dict) -> str:
    """A token signed with the node's secret whose grants may be anything (even strings)."""
    now = int(time.time())
    claims = {
        "iss": DEV_API_KEY,
        "sub": "mallory",
        "room": room,
        "grants": grants,
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, node.config.auth.api_keys[DEV_API_KEY], algorithm="HS256")


def _tokens(node: RunningNode) -> dict[str, str | None]:
    def mint(room: str, **grants: bool) -> str:
        return mint_token(node.config.auth, identity="t", room=room, grants=Grants(**grants))

    return {
        "node_admin": mint("*", admin=True),
        "node_admin_no_room": mint("", admin=True),
        "room_admin": mint(OWN, admin=True),
        "node_agent": mint("*", agent=True),
        "room_agent": mint(OWN, subscribe=True, agent=True),  # what a captioner gets
        "host": mint(OWN, publish=True, subscribe=True),
        "node_wide_host": mint("*", publish=True, subscribe=True),
        "string_false_admin": _raw_token(node, "*", {"admin": "false"}),
        "string_true_agent": _raw_token(node, "*", {"agent": "true"}),
        "numeric_publish": _raw_token(node, OWN, {"publish": 1, "subscribe": 1}),
        "none": None,
    }


# endpoint -> (method, path); WHIP/WHEP get a text/plain body: past the token check that is 415
ENDPOINTS: dict[str, tuple[str, str]] = {
    "rooms": ("GET", "/api/rooms"),
    "stats": ("GET", "/api/stats"),
    "agents_list": ("GET", "/api/agents"),
    "agent_own": ("POST", f"/api/rooms/{OWN}/agents"),
    "agent_other": ("POST", f"/api/rooms/{OTHER}/agents"),
    "captions_read_own": ("GET", f"/api/rooms/{OWN}/captions.json"),
    "captions_read_other": ("GET", f"/api/rooms/{OTHER}/captions.json"),
    "captions_post_own": ("POST", f"/api/rooms/{OWN}/captions"),
    "captions_post_other": ("POST", f"/api/rooms/{OTHER}/captions"),
    "whip_own": ("POST", f"/whip/{OWN}"),
    "whip_other": ("POST", f"/whip/{OTHER}"),
    "whep_own": ("POST", f"/whep/{OWN}"),
    "whep_other": ("POST", f"/whep/{OTHER}"),
    "worker": ("WS", WORKER_PATH),
    "job_delete_own": ("DELETE", "/api/agents/{own_job}"),
    "job_delete_other": ("DELETE", "/api/agents/{other_job}"),
}

ALL_401 = dict.fromkeys(ENDPOINTS, 401)
ADMIN_ALL_ROOMS = {
    **dict.fromkeys(ENDPOINTS, 403),
    "rooms": 200,
    "stats": 200,
    "agents_list": 200,
    "agent_own": 201,
    "agent_other": 201,
    "captions_read_own": 200,
    "captions_read_other": 200,
    "captions_post_own": 201,
    "captions_post_other": 201,
    "job_delete_own": 200,
    "job_delete_other": 200,
}
EXPECTED: dict[str, dict[str, int]] = {
    "node_admin": ADMIN_ALL_ROOMS,
    "node_admin_no_room": ADMIN_ALL_ROOMS,
    "room_admin": {
        **ADMIN_ALL_ROOMS,
        "agent_other": 403,
        "captions_read_other": 403,
        "captions_post_other": 403,
        "job_delete_other": 404,  # another room's job is invisible
    },
    "node_agent": {
        **dict.fromkeys(ENDPOINTS, 403),
        "captions_post_own": 201,
        "captions_post_other": 201,
        "worker": 101,
    },
    "room_agent": {
        **dict.fromkeys(ENDPOINTS, 403),
        "captions_post_own": 201,
        "whep_own": 415,  # subscribe in its own room
    },
    "host": {**dict.fromkeys(ENDPOINTS, 403), "whip_own": 415, "whep_own": 415},
    "node_wide_host": dict.fromkeys(ENDPOINTS, 403),  # node-wide acts only as admin or agent
    "string_false_admin": ALL_401,
    "string_true_agent": ALL_401,
    "numeric_publish": ALL_401,
    "none": ALL_401,
}


def _caption_body(session: str) -> dict:
    now = time.time()
    entry = {
        "track": "TR_a",
        "seq": 0,
        "speaker": "host",
        "start": now,
        "end": now + 1,
        "lang": "en",
        "text": "hello",
        "translations": {},
    }
    return {"session": session, "started_at": now, "entries": [entry]}


async def _call(
    http: aiohttp.ClientSession, node: RunningNode, endpoint: str, token: str | None, jobs: dict
) -> tuple[int, dict | None]:
    method, path = ENDPOINTS[endpoint]
    url = node.url + path.format(**jobs)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method == "WS":
        try:
            ws = await http.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, None
        await ws.close()
        return 101, None
    kwargs: dict = {"headers": headers}
    if endpoint.startswith(("whip", "whep")):
        kwargs["data"] = "v=0\r\n"
        headers["Content-Type"] = "text/plain"
    elif endpoint.startswith("captions_post"):
        kwargs["json"] = _caption_body(f"matrix-{time.monotonic_ns()}")
    elif endpoint.startswith("agent_"):
        kwargs["json"] = {"kind": "agent"}
    async with http.request(method, url, **kwargs) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, {"text": await response.text()}  # WHIP/WHEP: a plain reason


async def _populate(http: aiohttp.ClientSession, node: RunningNode) -> tuple[list, dict]:
    """A participant in each room (sockets kept open), a caption and an agent job per room."""
    sockets = []
    for room in (OWN, OTHER):
        ws = await http.ws_connect(f"{node.url}/rtc")
        await ws.send_json({"type": "join", "token": node.token(f"buyer-{room}", room=room)})
        assert (await ws.receive_json(timeout=10))["type"] == "joined"
        sockets.append(ws)
    admin = {"Authorization": f"Bearer {node.token('ops', room='*', admin=True)}"}
    jobs = {}
    for room, key in ((OWN, "own_job"), (OTHER, "other_job")):
        async with http.post(
            f"{node.url}/api/rooms/{room}/captions", json=_caption_body("setup"), headers=admin
        ) as response:
            assert response.status == 201, await response.text()
        async with http.post(
            f"{node.url}/api/rooms/{room}/agents", json={"kind": "agent"}, headers=admin
        ) as response:
            assert response.status == 201, await response.text()
            jobs[key] = (await response.json())["job_id"]
    return sockets, jobs


@pytest.mark.parametrize("kind", list(EXPECTED))
async def test_token_scope_matrix(node, kind: str):
    token = _tokens(node)[kind]
    async with aiohttp.ClientSession() as http:
        sockets, jobs = await _populate(http, node)
        try:
            got, bodies = {}, {}
            for endpoint in ENDPOINTS:  # deletes last: the listings see the setup's jobs
                got[endpoint], bodies[endpoint] = await _call(http, node, endpoint, token, jobs)
            assert got == EXPECTED[kind]
            for endpoint, status in got.items():
                if status in (401, 403) and endpoint != "worker":
                    error = "unauthorized" if status == 401 else "forbidden"
                    # WHIP/WHEP answer a plain-text reason; the rest JSON {error, message}
                    if endpoint.startswith(("whip", "whep")):
                        assert bodies[endpoint]["text"].strip(), endpoint
                    else:
                        assert bodies[endpoint]["error"] == error, (endpoint, bodies[endpoint])
                        assert bodies[endpoint]["message"], endpoint
            if kind.startswith(("string", "numeric")):
                assert "must be true or false" in bodies["rooms"]["message"]

            # what each admin sees
            if got["rooms"] == 200:
                names = [r["name"] for r in bodies["rooms"]["rooms"]]
                stats_names = [r["name"] for r in bodies["stats"]["rooms"]]
                jobs_rooms = {j["room"] for j in bodies["agents_list"]["jobs"]}
                if kind == "room_admin":
                    assert names == [OWN] and stats_names == [OWN]
                    assert "joins" not in bodies["stats"]
                    assert jobs_rooms == {OWN}
                    assert bodies["agents_list"]["workers"] == []
                else:
                    assert sorted(names) == sorted(stats_names) == sorted([OWN, OTHER])
                    assert "joins" in bodies["stats"]
                    assert jobs_rooms == {OWN, OTHER}
            # a refused delete leaves the job running; an accepted one ends it
            dispatcher = node.app[AGENTS_KEY]
            for key, endpoint in (("own_job", "job_delete_own"), ("other_job", "job_delete_other")):
                assert dispatcher.jobs[jobs[key]].active == (got[endpoint] != 200), endpoint
        finally:
            for ws in sockets:
                await ws.close()


async def test_only_a_node_wide_agent_token_registers_a_worker_and_job_tokens_stay_per_room(node):
    """A worker gets tokens for any room, so a room's agent token must not make one; the job
    tokens it gets are for the job's room, with publish/subscribe only."""
    async with aiohttp.ClientSession() as http:
        sockets, jobs = await _populate(http, node)
        try:
            for token in (
                node.token("captioner", room=OWN, subscribe=True, agent=True),
                node.token("ops", room=OWN, admin=True),
                node.token("ops", room="*", admin=True),
            ):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(
                        node.url + WORKER_PATH, headers={"Authorization": f"Bearer {token}"}
                    )
                assert refused.value.status == 403
            # ?access_token= works as well as the header (same check)
            room_agent = node.token("captioner", room=OWN, agent=True)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{node.url}{WORKER_PATH}?access_token={room_agent}")
            assert refused.value.status == 403
            async with http.get(
                node.url + WORKER_PATH, headers={"Authorization": f"Bearer {room_agent}"}
            ) as response:
                assert response.status == 403
                assert "node-wide" in (await response.json())["message"]

            worker_token = node.token("worker-1", room="*", agent=True)
            ws = await http.ws_connect(f"{node.url}{WORKER_PATH}?access_token={worker_token}")
            await ws.send_json({"type": "register", "kinds": ["agent"], "capacity": 4})
            assert (await ws.receive_json(timeout=5))["type"] == "registered"
            assigned = {}
            while len(assigned) < 2:
                message = await ws.receive_json(timeout=5)
                if message["type"] == "assign":
                    assigned[message["job"]["job_id"]] = message["job"]
            assert set(assigned) == {jobs["own_job"], jobs["other_job"]}
            for job in assigned.values():
                access = verify_token(node.config.auth, job["token"])
                assert access.room == job["room"] and not access.node_wide
                assert access.grants == Grants(publish=True, subscribe=True)
                assert not access.allows_room(OTHER if job["room"] == OWN else OWN)
            await ws.close()
        finally:
            for socket in sockets:
                await socket.close()


@pytest.mark.parametrize(
    "grants", [{"subscribe": "false"}, {"subscribe": "true"}, {"subscribe": 1}]
)
async def test_websocket_join_with_non_boolean_grants_is_unauthorized(node, grants: dict):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{node.url}/rtc") as ws:
            await ws.send_json({"type": "join", "token": _raw_token(node, OWN, grants)})
            reply = await ws.receive_json(timeout=10)
            assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
            assert "must be true or false" in reply["message"]
            closing = await ws.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401
    assert node.node.rooms.rooms == {}
