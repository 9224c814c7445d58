"""Webhooks: signed events received by real aiohttp receivers on loopback, retries after a
receiver error, order per room, bounded queues, and the verification helper."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web

from sfu import Config
from sfu.agents import AGENTS_KEY
from sfu.client import RoomClient
from sfu.config import AuthSettings, WebhookSettings
from sfu.webhooks import WebhookVerificationError, sign_webhook, verify_webhook
from sfu.webhooks.events import WEBHOOKS_KEY
from sfu.webhooks.sender import WebhookNotifier

from .conftest import LOOPBACK, free_port, start_node
from .media_sources import ColorVideoTrack, ToneAudioTrack

ROOT = Path(__file__).resolve().parent.parent
KEY = "shop"
SECRET = "webhook-test-secret-0123456789abcdefghijkl"


def load_example():
    spec = importlib.util.spec_from_file_location(
        "webhook_receiver", ROOT / "examples" / "webhook_receiver.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Receiver:
    """A shop backend on loopback: verifies each POST with the helper, records what it got.

    `fail_first` requests are answered 500; `delay` (seconds, or a callable) holds each
    answer; `fail_rate` answers that share of requests 500 (seeded).
    """

    def __init__(self, fail_first: int = 0, fail_rate: float = 0.0, delay=None) -> None:
        self.requests: list[tuple[bytes, str]] = []
        self.events: list[dict] = []  # verified and answered 200, in arrival order
        self.rejected: list[str] = []
        self.fail_first = fail_first
        self.fail_rate = fail_rate
        self.random = random.Random(7)
        self.delay = delay
        self.gate: asyncio.Event | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        authorization = request.headers.get("Authorization", "")
        self.requests.append((body, authorization))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay is not None:
            await asyncio.sleep(self.delay() if callable(self.delay) else self.delay)
        if len(self.requests) <= self.fail_first or self.random.random() < self.fail_rate:
            return web.Response(status=500, text="backend hiccup")
        try:
            event = verify_webhook(body, authorization, KEY, SECRET)
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return web.Response(status=401)
        self.events.append(event)
        return web.json_response({"ok": True})

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self.runner is not None:
            await self.runner.cleanup()

    def names(self, room: str | None = None) -> list[str]:
        return [e["event"] for e in self.events if room is None or e["room"]["name"] == room]


def hook_config(*urls: str, **settings) -> Config:
    config = Config()
    config.auth.api_keys = {KEY: SECRET}
    config.webhooks.urls = list(urls)
    for name, value in settings.items():
        setattr(config.webhooks, name, value)
    return config


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


# -- a real session ------------------------------------------------------------------------------


async def test_session_events_reach_the_example_receiver_signed_and_in_order():
    example = load_example()
    received: list[dict] = []
    raw: list[tuple[bytes, str]] = []

    async def handle(event: dict) -> None:
        received.append(event)

    app = example.create_receiver(KEY, SECRET, handle)

    @web.middleware
    async def keep_raw(request: web.Request, handler):
        raw.append((await request.read(), request.headers.get("Authorization", "")))
        return await handler(request)

    app.middlewares.append(keep_raw)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    node = await start_node(hook_config(f"http://127.0.0.1:{port}/hooks/sfu"))
    try:
        host = await RoomClient.connect(node.url, node.token("host"), network=LOOPBACK)
        await host.publish([ColorVideoTrack((10, 200, 10)), ToneAudioTrack(330.0)])
        viewer = await RoomClient.connect(node.url, node.token("viewer"), network=LOOPBACK)
        await viewer.next_track(kind="video", timeout=15)
        await host.leave()
        await viewer.leave()
        await wait_for(lambda: any(e["event"] == "room_finished" for e in received))
    finally:
        await node.runner.cleanup()
        await runner.cleanup()

    names = [e["event"] for e in received]
    assert names == [
        "room_started",
        "participant_joined",
        "track_published",
        "track_published",
        "participant_joined",
        "track_unpublished",
        "track_unpublished",
        "participant_left",
        "participant_left",
        "room_finished",
    ], names
    who = [e["participant"]["identity"] for e in received if "participant" in e]
    assert who == ["host", "host", "host", "viewer", "host", "host", "host", "viewer"]
    tracks = {e["track"]["kind"] for e in received if e["event"] == "track_published"}
    assert tracks == {"audio", "video"}
    assert all(e["track"]["publisher"] == "host" for e in received if "track" in e)
    # one room session, one node; ids unique; seq increasing (the order they were made in)
    assert len({e["room"]["sid"] for e in received}) == 1
    assert {e["room"]["name"] for e in received} == {"shop"}
    assert {e["node_id"] for e in received} == {node.node.node_id}
    assert len({e["id"] for e in received}) == len(received)
    seqs = [e["seq"] for e in received]
    assert seqs == sorted(seqs)
    assert received[-1]["room"]["num_participants"] == 0

    # the signature: a short-lived HS256 JWT by our key, holding the body's SHA-256
    body, authorization = raw[0]
    assert authorization.startswith("Bearer ")
    claims = jwt.decode(authorization[7:], SECRET, algorithms=["HS256"])
    assert claims["iss"] == KEY and 0 < claims["exp"] - claims["iat"] <= 600
    assert verify_webhook(body, authorization, KEY, SECRET)["event"] == "room_started"
    # a tampered body (a replayed signature on other content) is refused by the helper
    forged = body.replace(b'"room_started"', b'"room_finished"')
    assert forged != body
    with pytest.raises(WebhookVerificationError, match="body does not match"):
        verify_webhook(forged, authorization, KEY, SECRET)


async def test_receiver_error_is_retried_and_later_events_wait(receiver: Receiver):
    receiver.fail_first = 1  # the first POST is answered 500, every later one 200
    node = await start_node(hook_config(receiver.url))
    try:
        client = await RoomClient.connect(node.url, node.token("buyer"), network=LOOPBACK)
        await client.leave()
        await wait_for(lambda: "room_finished" in receiver.names())
        stats = node.app[WEBHOOKS_KEY].stats
    finally:
        await node.runner.cleanup()
    # room_started was sent twice (same id, fresh signature), and only then the rest
    first, second = (json.loads(body) for body, _ in receiver.requests[:2])
    assert first["event"] == second["event"] == "room_started"
    assert first["id"] == second["id"]
    assert receiver.requests[0][1] != "" and receiver.requests[1][1] != ""
    assert receiver.names() == [
        "room_started",
        "participant_joined",
        "participant_left",
        "room_finished",
    ]
    assert receiver.rejected == []
    assert stats.attempts == 5 and stats.errors == 1
    assert stats.delivered == 4 and stats.failed == 0


async def test_order_is_kept_per_room_through_slow_and_failing_answers():
    receiver = await Receiver(fail_rate=0.3, delay=lambda: random.random() * 0.02).start()
    notifier = WebhookNotifier(
        WebhookSettings(urls=[receiver.url], retry_for_s=30.0),
        AuthSettings(api_keys={KEY: SECRET}),
        node_id="n1",
        region="test",
    )
    try:
        rooms = ["a", "b", "c"]
        for i in range(20):
            for room in rooms:
                assert notifier.notify("participant_joined", room, {"room": {"name": room}, "i": i})
        assert await notifier.flush(30)
    finally:
        await notifier.close()
        await receiver.stop()
    assert len(receiver.requests) > 60  # failures were retried
    for room in rooms:
        got = [e["i"] for e in receiver.events if e["room"]["name"] == room]
        assert got == list(range(20)), (room, got)
    assert notifier.stats.delivered == 60 and notifier.stats.failed == 0
    assert notifier.stats.delivery_seconds.count == 60


async def test_a_full_room_queue_drops_new_events_with_a_count_and_a_log_line(
    receiver: Receiver, caplog
):
    receiver.gate = asyncio.Event()  # the backend hangs until released
    notifier = WebhookNotifier(
        WebhookSettings(urls=[receiver.url], queue_size=3),
        AuthSettings(api_keys={KEY: SECRET}),
        node_id="n1",
        region="test",
    )
    try:
        with caplog.at_level(logging.WARNING, logger="sfu.webhooks"):
            accepted = [notifier.notify("track_published", "busy", {"i": i}) for i in range(10)]
        assert accepted == [True] * 3 + [False] * 7  # notify() returned at once each time
        assert notifier.stats.dropped == 7
        assert any("queue of room 'busy' full" in r.getMessage() for r in caplog.records)
        # another room is not held up by the busy one's queue
        assert notifier.notify("room_started", "quiet", {"room": {"name": "quiet"}})
        await wait_for(lambda: len(receiver.requests) == 2)  # one in flight per room
        receiver.gate.set()
        assert await notifier.flush(10)
    finally:
        await notifier.close()
    assert [e.get("i") for e in receiver.events if e["event"] == "track_published"] == [0, 1, 2]


async def test_delivery_gives_up_after_retry_for_s(caplog):
    receiver = await Receiver(fail_first=10**6).start()  # always 500
    notifier = WebhookNotifier(
        WebhookSettings(urls=[receiver.url], retry_for_s=0.8),
        AuthSettings(api_keys={KEY: SECRET}),
        node_id="n1",
        region="test",
    )
    try:
        with caplog.at_level(logging.WARNING, logger="sfu.webhooks"):
            notifier.notify("room_started", "r", {})
            notifier.notify("room_finished", "r", {})
            assert await notifier.flush(10)
    finally:
        await notifier.close()
        await receiver.stop()
    assert notifier.stats.failed == 2 and notifier.stats.delivered == 0
    assert 2 * 2 <= len(receiver.requests) <= 2 * 5  # retried with backoff, then given up
    assert sum("gave up on" in r.getMessage() for r in caplog.records) == 2


async def test_unreachable_url_does_not_slow_joins(receiver: Receiver):
    """A URL nobody listens on fails every attempt; the other URL still gets every event,
    and joins go on."""
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    node = await start_node(hook_config(dead, receiver.url, retry_for_s=1.0))
    try:
        for name in ("a", "b", "c"):
            client = await RoomClient.connect(node.url, node.token(name), network=LOOPBACK)
            await client.leave()
        await wait_for(lambda: receiver.names().count("room_finished") == 3)
    finally:
        await node.runner.cleanup()
    assert receiver.names().count("participant_joined") == 3


async def test_agent_job_events_and_metrics(receiver: Receiver):
    node = await start_node(hook_config(receiver.url))
    admin = {"Authorization": "Bearer " + node.token("ops", room="*", admin=True)}
    try:
        async with aiohttp.ClientSession() as http:
            worker_token = node.token("worker-1", room="*", agent=True)
            ws = await http.ws_connect(
                f"{node.url}/api/agent-workers/ws?access_token={worker_token}"
            )
            await ws.send_json({"type": "register", "kinds": ["agent"], "capacity": 1})
            assert (await ws.receive_json(timeout=5))["type"] == "registered"
            async with http.post(f"{node.url}/api/rooms/shop/agents", headers=admin) as r:
                assert r.status == 201
                job_id = (await r.json())["job_id"]
            assign = await ws.receive_json(timeout=5)
            assert assign["type"] == "assign" and assign["job"]["job_id"] == job_id
            await ws.send_json({"type": "job_started", "job_id": job_id})
            await wait_for(lambda: "agent_job_started" in receiver.names())
            await ws.send_json({"type": "job_done", "job_id": job_id, "reason": "bye"})
            await wait_for(lambda: "agent_job_ended" in receiver.names())
            async with http.get(f"{node.url}/metrics", headers=admin) as r:
                metrics = await r.text()
            await ws.close()
    finally:
        await node.runner.cleanup()
    started, ended = (e for e in receiver.events if e["event"].startswith("agent_job"))
    assert started["job"]["job_id"] == ended["job"]["job_id"] == job_id
    assert started["job"]["state"] == "running" and started["room"]["name"] == "shop"
    assert ended["job"]["state"] == "ended" and ended["job"]["reason"] == "bye"
    assert "token" not in json.dumps(ended)  # the job's access token is never sent out
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    region = 'region="local"'
    assert lines[f'sfu_agent_jobs_started_total{{node_id="{node.node.node_id}",{region}}}'] == 1
    ended_key = (
        f'sfu_agent_jobs_ended_total{{node_id="{node.node.node_id}",{region},state="ended"}}'
    )
    assert lines[ended_key] == 1
    assert node.app[AGENTS_KEY].jobs_started == 1


# -- the helper ---------------------------------------------------------------------------------


def test_verify_webhook_accepts_only_an_intact_body_signed_by_the_key():
    body = json.dumps({"id": "EV_1", "event": "room_started"}).encode()
    token = sign_webhook(body, KEY, SECRET)
    assert verify_webhook(body, f"Bearer {token}", KEY, SECRET)["event"] == "room_started"
    assert verify_webhook(body, token, KEY, SECRET)["id"] == "EV_1"  # bare JWT too
    bad = [
        (body + b" ", f"Bearer {token}", KEY, SECRET, "body does not match"),
        (body, f"Bearer {token}", KEY, SECRET[:-1] + "x", "bad signature"),
        (body, f"Bearer {token}", "other-key", SECRET, "another API key"),
        (body, "", KEY, SECRET, "missing Authorization"),
        (body, "Bearer ", KEY, SECRET, "missing Authorization"),
        (body, "Bearer not.a.jwt", KEY, SECRET, "bad signature"),
        (body, sign_webhook(body, KEY, SECRET, now=time.time() - 3600), KEY, SECRET, "expired"),
        (body, sign_webhook(body, KEY, SECRET, ttl_s=86400), KEY, SECRET, "lives too long"),
        (b"[1]", sign_webhook(b"[1]", KEY, SECRET), KEY, SECRET, "not a JSON object"),
        (b"\xff", sign_webhook(b"\xff", KEY, SECRET), KEY, SECRET, "not JSON"),
    ]
    for data, authorization, key, secret, reason in bad:
        with pytest.raises(WebhookVerificationError, match=reason):
            verify_webhook(data, authorization, key, secret)
    # a token without the body digest (e.g. an access token) is not a webhook signature
    access = jwt.encode(
        {"iss": KEY, "iat": int(time.time()), "exp": int(time.time()) + 60}, SECRET, "HS256"
    )
    with pytest.raises(WebhookVerificationError, match="bad signature"):
        verify_webhook(body, access, KEY, SECRET)
    # "none" algorithm tokens are refused
    unsigned = jwt.encode({"iss": KEY, "sha256": "x"}, None, algorithm="none")
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, unsigned, KEY, SECRET)
