"""Agent dispatch on the node (sfu/agents/): the admin call, the workers' socket, rooms that
ask for an agent, and jobs moving off a dead worker. The workers here are bare WebSockets
speaking the protocol, so no model is loaded."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from sfu import Config
from sfu.agents import AGENTS_KEY
from sfu.auth import verify_token
from sfu.client import RoomClient
from sfu.config import ConfigError

from .conftest import LOOPBACK, RunningNode, free_port, start_node

WORKER_PATH = "/api/agent-workers/ws"


@pytest.fixture
async def agent_node():
    config = Config()
    config.agents.auto_rooms = ["agent-demo"]
    config.agents.worker_timeout_s = 1.0
    node = await start_node(config)
    try:
        yield node
    finally:
        await node.runner.cleanup()


class FakeWorker:
    """A worker socket that records what the node sends."""

    def __init__(self, session: aiohttp.ClientSession, ws) -> None:
        self.session = session
        self.ws = ws
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.id = ""
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(
        cls, node: RunningNode, kinds=("agent",), capacity: int = 2, name: str = "w"
    ) -> FakeWorker:
        session = aiohttp.ClientSession()
        token = node.token(f"worker-{name}", room="*", agent=True)
        ws = await session.ws_connect(
            node.url + WORKER_PATH, headers={"Authorization": f"Bearer {token}"}
        )
        worker = cls(session, ws)
        await ws.send_json(
            {"type": "register", "kinds": list(kinds), "capacity": capacity, "name": name}
        )
        worker.id = (await worker.next("registered"))["worker_id"]
        assert worker.id.startswith("AW_")
        return worker

    async def _read(self) -> None:
        async for raw in self.ws:
            if raw.type == aiohttp.WSMsgType.TEXT:
                self.inbox.put_nowait(raw.json())

    async def next(self, kind: str, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), max(0.01, deadline - time.monotonic()))
            if msg["type"] == kind:
                return msg

    async def send(self, message: dict) -> None:
        await self.ws.send_json(message)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        self.reader.cancel()


async def _post(node: RunningNode, room: str, token: str | None, body=None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{node.url}/api/rooms/{room}/agents", headers=headers, json=body) as r:
            return r.status, await r.json()


async def test_admin_dispatch_answers_201_401_403(agent_node):
    status, body = await _post(agent_node, "shop", None)
    assert status == 401 and body["error"] == "unauthorized"
    status, body = await _post(agent_node, "shop", agent_node.token("buyer", room="shop"))
    assert status == 403 and body["error"] == "forbidden"
    admin = agent_node.token("ops", room="*", admin=True)
    status, body = await _post(agent_node, "shop", admin)
    assert status == 201
    job = agent_node.app[AGENTS_KEY].jobs[body["job_id"]]
    assert (job.room, job.kind, job.state, job.source) == ("shop", "agent", "pending", "admin")
    status, body = await _post(agent_node, "shop", admin, {"kind": "captions"})
    assert status == 201 and body["kind"] == "captions"
    status, body = await _post(agent_node, "shop", admin, {"kind": "Not A Kind!"})
    assert status == 400
    status, body = await _post(agent_node, "shop", admin, ["agent"])
    assert status == 400


async def test_worker_socket_needs_the_agent_grant(agent_node):
    async with aiohttp.ClientSession() as s:
        url = agent_node.url + WORKER_PATH
        with pytest.raises(aiohttp.WSServerHandshakeError) as missing:
            await s.ws_connect(url)
        assert missing.value.status == 401
        token = agent_node.token("viewer", room="shop", subscribe=True)
        with pytest.raises(aiohttp.WSServerHandshakeError) as wrong:
            await s.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
        assert wrong.value.status == 403
        token = agent_node.token("w", room="*", agent=True)
        ws = await s.ws_connect(f"{url}?access_token={token}")
        await ws.send_json({"type": "register", "kinds": [], "capacity": 1})
        error = await ws.receive_json(timeout=5)
        assert error["type"] == "error" and "kinds" in error["message"]
        await ws.close()


async def test_job_goes_to_a_worker_with_a_token_for_its_room(agent_node):
    worker = await FakeWorker.connect(agent_node)
    try:
        admin = agent_node.token("ops", room="*", admin=True)
        status, body = await _post(agent_node, "shop", admin)
        assert status == 201
        assign = (await worker.next("assign"))["job"]
        assert assign["job_id"] == body["job_id"] and assign["room"] == "shop"
        access = verify_token(agent_node.config.auth, assign["token"])
        assert access.identity == assign["identity"] == f"agent-{body['job_id']}"
        assert access.room == "shop" and access.grants.publish and access.grants.subscribe
        assert not access.grants.admin
        await worker.send({"type": "job_started", "job_id": body["job_id"]})
        dispatcher = agent_node.app[AGENTS_KEY]
        for _ in range(50):
            if dispatcher.jobs[body["job_id"]].state == "running":
                break
            await asyncio.sleep(0.02)
        assert dispatcher.jobs[body["job_id"]].state == "running"
        async with aiohttp.ClientSession() as s:
            headers = {"Authorization": f"Bearer {admin}"}
            async with s.get(agent_node.url + "/api/agents", headers=headers) as r:
                listing = await r.json()
        assert listing["workers"][0]["jobs"] == [body["job_id"]]
    finally:
        await worker.close()


async def test_jobs_go_only_to_workers_of_their_kind(agent_node):
    agents = await FakeWorker.connect(agent_node, kinds=("agent",), name="agents")
    captions = await FakeWorker.connect(agent_node, kinds=("captions",), name="captions")
    try:
        dispatcher = agent_node.app[AGENTS_KEY]
        job = dispatcher.create_job("live", "captions")
        assert (await captions.next("assign"))["job"]["job_id"] == job.id
        with pytest.raises(TimeoutError):
            await agents.next("assign", timeout=0.3)
    finally:
        await agents.close()
        await captions.close()


async def test_auto_room_gets_an_agent_when_a_buyer_joins_and_ends_it_when_empty(agent_node):
    worker = await FakeWorker.connect(agent_node)
    dispatcher = agent_node.app[AGENTS_KEY]
    buyers = []
    try:
        other = await RoomClient.connect(
            agent_node.url, agent_node.token("someone", room="elsewhere"), network=LOOPBACK
        )
        buyers.append(other)
        assert dispatcher.active_jobs() == []  # not an agent room
        for name in ("buyer-1", "buyer-2"):
            buyers.append(
                await RoomClient.connect(
                    agent_node.url, agent_node.token(name, room="agent-demo"), network=LOOPBACK
                )
            )
        assign = (await worker.next("assign"))["job"]
        assert assign["room"] == "agent-demo"
        jobs = dispatcher.active_jobs("agent-demo")
        assert len(jobs) == 1 and jobs[0].source == "auto"  # the second buyer made no second
        for client in buyers[1:]:
            await client.leave()
        cancel = await worker.next("cancel")
        assert cancel["job_id"] == assign["job_id"] and "empty" in cancel["reason"]
        assert dispatcher.jobs[assign["job_id"]].state == "ended"
    finally:
        for client in buyers:
            await client.close()
        await worker.close()


@pytest.mark.parametrize("how", ["socket closed", "heartbeats stopped"])
async def test_a_dead_workers_jobs_move_within_5_s(agent_node, how):
    first = await FakeWorker.connect(agent_node, name="first")
    first_beats = asyncio.ensure_future(_heartbeat(first))
    dispatcher = agent_node.app[AGENTS_KEY]
    job = dispatcher.create_job("shop")
    assert (await first.next("assign"))["job"]["job_id"] == job.id
    second = await FakeWorker.connect(agent_node, name="second")
    second_beats = asyncio.ensure_future(_heartbeat(second))
    try:
        await asyncio.sleep(1.5)  # past worker_timeout_s: heartbeats keep the job in place
        assert job.worker == first.id and job.moves == 0
        t0 = time.monotonic()
        first_beats.cancel()
        if how == "socket closed":
            await first.close()
        moved = await second.next("assign", timeout=5.0)
        elapsed = time.monotonic() - t0
        assert moved["job"]["job_id"] == job.id and moved["job"]["attempt"] == 2
        assert job.worker == second.id and job.moves == 1
        # a closed socket moves the job at once; silence after worker_timeout_s (1 s here)
        assert elapsed < (0.5 if how == "socket closed" else 2.0)
    finally:
        first_beats.cancel()
        second_beats.cancel()
        await first.close()
        await second.close()


async def _heartbeat(worker: FakeWorker) -> None:
    while True:
        await worker.send({"type": "heartbeat", "jobs": []})
        await asyncio.sleep(0.3)


async def test_a_failed_job_is_retried_then_given_up(agent_node):
    worker = await FakeWorker.connect(agent_node, capacity=1)
    dispatcher = agent_node.app[AGENTS_KEY]
    job = dispatcher.create_job("shop")
    try:
        for attempt in (1, 2, 3):
            assign = (await worker.next("assign"))["job"]
            assert assign["attempt"] == attempt
            await worker.send({"type": "job_failed", "job_id": job.id, "error": "boom"})
        for _ in range(50):
            if job.state == "failed":
                break
            await asyncio.sleep(0.02)
        assert job.state == "failed" and job.reason == "boom"
    finally:
        await worker.close()


async def test_a_node_with_a_dispatch_url_asks_that_node_for_its_auto_rooms_agent(agent_node):
    """serve --workers N: the agent workers connect to worker 0; a buyer who joins an auto
    room on another worker gets the agent worker 0 gives (one job, however many join)."""
    worker = await FakeWorker.connect(agent_node)
    dispatcher = agent_node.app[AGENTS_KEY]
    config = Config()
    config.agents.auto_rooms = ["agent-demo"]
    config.agents.dispatch_url = agent_node.url
    other = await start_node(config)
    buyers = []
    try:
        for name in ("buyer-1", "buyer-2", "buyer-3"):
            buyers.append(
                await RoomClient.connect(
                    other.url, other.token(name, room="agent-demo"), network=LOOPBACK
                )
            )
        assign = (await worker.next("assign"))["job"]
        assert assign["room"] == "agent-demo"
        assert len(dispatcher.active_jobs("agent-demo")) == 1
        requester = other.app[AGENTS_KEY].requester
        assert other.app[AGENTS_KEY].active_jobs() == []  # made on the dispatching node only
        pending = list(requester._pending.values())
        if pending:
            await asyncio.wait(pending, timeout=5)
        assert requester.requests == 1 and requester.failures == 0  # asked once for the show
        # asked again (another worker, or after REASK_S): the same job, not a second
        admin = agent_node.token("ops", room="*", admin=True)
        status, body = await _post(agent_node, "agent-demo", admin, {"unless_active": True})
        assert status == 200 and body["job_id"] == assign["job_id"]
        assert len(dispatcher.active_jobs("agent-demo")) == 1
        status, body = await _post(agent_node, "agent-demo", admin, {"unless_active": "yes"})
        assert status == 400 and "unless_active" in body["message"]
    finally:
        for client in buyers:
            await client.close()
        await worker.close()
        await other.runner.cleanup()


async def test_an_unreachable_dispatch_url_is_logged_and_the_join_still_works(caplog):
    config = Config()
    config.agents.auto_rooms = ["agent-demo"]
    config.agents.dispatch_url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    node = await start_node(config)
    try:
        client = await RoomClient.connect(
            node.url, node.token("buyer", room="agent-demo"), network=LOOPBACK
        )
        requester = node.app[AGENTS_KEY].requester
        if requester._pending:
            await asyncio.wait(list(requester._pending.values()), timeout=10)
        assert requester.failures == 1 and "did not give one" in caplog.text
        assert "buyer" in node.node.rooms.rooms["agent-demo"].participants
        await client.close()
    finally:
        await node.runner.cleanup()


def test_dispatch_url_must_be_an_http_url():
    config = Config()
    config.agents.dispatch_url = "worker-0"
    with pytest.raises(ConfigError, match="dispatch_url"):
        config.validate()
