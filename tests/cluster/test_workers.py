"""`python -m sfu serve --workers N`: N node processes of one cluster behind one HTTP port.

The plan (ids, ports) and the front's tags are checked alone; then `serve --workers 2` runs as a
real process tree on a real redis-server with real aiortc peers: viewers through the one port
land on both workers and all see the host (relayed between the workers), WHIP/WHEP and HTTP-join
follow-ups reach the worker that holds the session, a killed worker is started again, SIGTERM
stops everything in bounded time, and `--workers 2` without Redis is refused (exit 2).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.client import Reconnect, RoomClient
from sfu.cluster.records import NodeInfo
from sfu.config import Config, ConfigError
from sfu.workers.front import MAX_TAG, session_followup, tag, untag
from sfu.workers.plan import plan_workers
from tests.conftest import LOOPBACK, free_port
from tests.media_sources import ColorVideoTrack, ToneAudioTrack, mean_rgb
from tests.serve_process import wait_healthy
from tests.test_whip_whep import WhepPlayer, WhipPublisher, assert_colour

from .conftest import RedisServer, unique_prefix
from .failover_rig import PYTHON, ROOT, admin_headers, eventually, token

RED = (220, 40, 40)

# -- the plan and the tags, alone ---------------------------------------------------------------


def test_plan_gives_each_worker_its_id_port_udp_slice_and_urls():
    config = Config()
    config.server.region, config.server.node_id, config.server.port = "eu-west", "eu-1", 8080
    config.media.udp_port_min, config.media.udp_port_max = 40000, 40999
    specs = plan_workers(config, 3, [5001, 5002, 5003])
    assert [s.node_id for s in specs] == ["eu-1-w0", "eu-1-w1", "eu-1-w2"]
    assert [(s.udp_port_min, s.udp_port_max) for s in specs] == [
        (40000, 40332),
        (40333, 40665),
        (40666, 40999),
    ]
    assert {s.public_url for s in specs} == {"http://127.0.0.1:8080"}
    assert [s.internal_url for s in specs] == [
        f"http://127.0.0.1:8080/_worker/{i}" for i in range(3)
    ]
    env = specs[1].env()
    assert env["SFU_PORT"] == "5002" and env["SFU_HOST"] == "127.0.0.1"
    assert env["SFU_WORKERS"] == "1"  # (a worker never starts workers of its own)
    # the env is what a worker loads: a valid config that is worker 1
    worker = Config.load(None, env={**env, "SFU_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert worker.server.node_id == "eu-1-w1" and worker.server.port == 5002
    assert worker.cluster.internal_url.endswith("/_worker/1")
    assert (worker.media.udp_port_min, worker.media.udp_port_max) == (40333, 40665)
    # the agent workers connect to worker 0: the others ask it for their rooms' agent jobs
    assert "SFU_AGENTS_DISPATCH_URL" not in specs[0].env()
    assert worker.agents.dispatch_url == specs[0].url == "http://127.0.0.1:5001"
    assert specs[2].env()["SFU_AGENTS_DISPATCH_URL"] == specs[0].url


def test_plan_single_udp_port_and_limits():
    config = Config()
    config.cluster.public_url = "https://sfu.example.com/"
    config.media.udp_port = 3478
    config.metrics.port = 9100
    specs = plan_workers(config, 2, [1, 2])
    assert [s.udp_port for s in specs] == [3478, 3479]
    assert [s.metrics_port for s in specs] == [9100, 9101]
    assert specs[0].internal_url == "https://sfu.example.com/_worker/0"
    assert specs[0].node_id.startswith("local-") and specs[0].node_id.endswith("-w0")
    small = Config()
    small.media.udp_port_min = small.media.udp_port_max = 40000
    with pytest.raises(ConfigError, match="too small"):
        plan_workers(small, 2, [1, 2])
    anywhere = Config()
    anywhere.server.port = 0  # (the workers' URLs need the front's port)
    with pytest.raises(ConfigError, match="fixed server.port"):
        plan_workers(anywhere, 2, [1, 2])
    high = Config()
    high.media.udp_port = 65535
    with pytest.raises(ConfigError, match="65535"):
        plan_workers(high, 2, [1, 2])


def test_workers_setting_is_validated():
    with pytest.raises(ConfigError, match="needs cluster.redis_url"):
        Config.from_dict({"server": {"workers": 2}})
    with pytest.raises(ConfigError, match="server.workers"):
        Config.from_dict({"server": {"workers": 0}, "cluster": {"redis_url": "redis://x"}})
    with pytest.raises(ConfigError, match="internal_url"):
        Config.from_dict({"cluster": {"internal_url": "10.0.0.5:8080"}})
    ok = Config.from_dict({"server": {"workers": 4}, "cluster": {"redis_url": "redis://x:1"}})
    assert ok.server.workers == 4


@given(st.integers(0, 7), st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=64))
def test_tags_round_trip(index: int, value: str):
    assert untag(tag(index, value), 8) == (index, value)
    assert untag(tag(index, value), index) is None  # no such worker


@given(st.one_of(st.text(max_size=300), st.integers(), st.none(), st.binary(max_size=20)))
def test_untag_takes_any_input_and_names_only_real_workers(value: object):
    found = untag(value, 3)
    if found is not None:
        assert isinstance(value, str) and len(value) <= MAX_TAG
        assert 0 <= found[0] < 3 and value == f"{found[0]}.{found[1]}"


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_session_followup_takes_any_body(body: bytes):
    found = session_followup(body, 2)
    if not isinstance(found, str):
        index, forwarded = found
        assert index in (0, 1)
        assert json.loads(forwarded)["session"] == json.loads(body)["session"].partition(".")[2]


def test_session_followup_untags_and_refuses():
    body = json.dumps({"session": "1.abc", "sdp": "v=0"}).encode()
    assert session_followup(body, 2) == (1, json.dumps({"session": "abc", "sdp": "v=0"}).encode())
    assert session_followup(body, 1) == "no_session"
    assert session_followup(b'{"session": "abc"}', 2) == "no_session"
    assert session_followup(b"[" * 100_000, 2) == "bad_request"  # (too deep for the parser)
    assert session_followup(b"[]", 2) == "bad_request"


# -- real processes -----------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_workers_without_redis_exits_2():
    done = subprocess.run(
        [str(PYTHON), "-m", "sfu", "serve", "--workers", "2", "--port", str(free_port())],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "needs cluster.redis_url" in done.stderr


class Workers:
    """`python -m sfu serve --workers N` as a child process, its log in a file."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        count: int = 2,
        udp_base: int = 48000,
        drain_timeout_s: float = 3.0,
        extra_toml: str = "",
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "workers.toml"
        self.config_path.write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.port}
region = "test"
node_id = "box"
drain_timeout_s = {drain_timeout_s}

[cluster]
redis_url = "{redis_url}"
key_prefix = "{unique_prefix()}"
heartbeat_s = 0.2
node_ttl_s = 2.0
redis_timeout_s = 1.0

[media]
bind_addresses = ["127.0.0.1"]
udp_port_min = {udp_base}
udp_port_max = {udp_base + 999}
{extra_toml}
"""
        )
        self.log_path = workdir / "workers.log"
        self._log = open(self.log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [str(PYTHON), "-m", "sfu", "serve", "--workers", str(count)]
            + ["--config", str(self.config_path)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    async def health(self) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/healthz") as response:
                return response.status, await response.json()

    async def get(self, path: str) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}{path}", headers=admin_headers()) as response:
                assert response.status == 200, await response.text()
                return await response.json()

    async def identities(self, worker: int) -> list[str]:
        rooms = (await self.get(f"/_worker/{worker}/api/rooms"))["rooms"]
        return sorted(p["identity"] for r in rooms for p in r["participants"])

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                self.proc.send_signal(signal.SIGINT)  # (the second one skips the drains)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            self._log.close()


@pytest.fixture
async def workers(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Workers]:
    box = Workers(tmp_path, redis_server.url)
    try:
        await wait_healthy(box.proc, box.url, box.log, "serve --workers 2", 60)
        yield box
    finally:
        box.stop()


@pytest.mark.redis
@pytest.mark.slow
async def test_viewers_through_one_port_land_on_both_workers_and_all_see_the_host(
    workers: Workers,
):
    clients: list[RoomClient] = []
    try:
        host = await RoomClient.connect(workers.url, token("host"), network=LOOPBACK)
        clients.append(host)
        await host.publish([ColorVideoTrack(RED), ToneAudioTrack(440)], ["camera", "microphone"])
        viewers = []
        for i in range(4):
            viewer = await RoomClient.connect(workers.url, token(f"viewer-{i}"), network=LOOPBACK)
            clients.append(viewer)
            viewers.append(viewer)
        # the front spreads the sessions: both workers serve viewers
        served = {v.node["node_id"] for v in viewers}
        assert served == {"box-w0", "box-w1"}, served
        for viewer in viewers:  # and each one sees the host's red picture
            remote = await viewer.next_track(kind="video", timeout=30)
            frame = await asyncio.wait_for(remote.track.recv(), 30)
            r, g, _ = mean_rgb(frame)
            assert r > 150 and g < 100, (viewer.identity, viewer.node, mean_rgb(frame))
        # the cluster view (from worker 0 through the front) holds every participant, each
        # on the worker that serves it
        cluster = await workers.get("/api/rooms?scope=cluster")
        (room,) = [r for r in cluster["rooms"] if r["name"] == "shop"]
        where = {p["identity"]: p["node_id"] for p in room["participants"]}
        assert where == {c.identity: c.node["node_id"] for c in clients}, where
        status, health = await workers.health()
        assert status == 200 and [w["ready"] for w in health["workers"]] == [True, True]
    finally:
        for client in clients:
            await client.close()


@pytest.mark.redis
@pytest.mark.slow
async def test_whip_whep_and_http_join_follow_ups_reach_the_worker_of_the_session(
    workers: Workers,
):
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        publisher = WhipPublisher(RED, 440)
        player = WhepPlayer()
        try:
            await publisher.start(http, f"{workers.url}/whip/shop", token("obs"))
            await player.start(http, f"{workers.url}/whep/shop", token("tv", subscribe=True))
            # tagged resources: /whip/shop/<worker>.<id>
            located = []
            for location, kind in ((publisher.location, "whip"), (player.location, "whep")):
                prefix = f"/{kind}/shop/"
                assert location.startswith(prefix), location
                worker, _, resource = location[len(prefix) :].partition(".")
                assert worker in ("0", "1") and resource, location
                located.append(int(worker))
            # one session each, on different workers (fewest sessions first)
            assert sorted(located) == [0, 1]
            assert "obs" in await workers.identities(located[0])
            assert any(i.startswith("tv#whep") for i in await workers.identities(located[1]))
            await assert_colour(await player.track("video", 30), RED)  # across the workers
            for location in (player.location, publisher.location):
                async with http.delete(f"{workers.url}{location}", headers=headers) as response:
                    assert response.status == 200, await response.text()
                async with http.delete(f"{workers.url}{location}") as response:
                    assert response.status == 404  # gone from the worker that had it
            assert await workers.identities(located[0]) == []
            # a resource id without a worker tag is refused by the front itself
            async with http.delete(f"{workers.url}/whip/shop/abcdef") as response:
                assert response.status == 404
        finally:
            await player.close()
            await publisher.close()

        # HTTP join: the session id comes back tagged; /rtc/leave reaches its worker
        body = {"token": token("quick", subscribe=True), "inline_offer": False}
        async with http.post(f"{workers.url}/rtc/join", json=body) as response:
            assert response.status == 200, await response.text()
            joined = await response.json()
        worker, _, session = joined["session"].partition(".")
        assert worker in ("0", "1") and session
        assert await workers.identities(int(worker)) == ["quick"]
        leave = {"session": joined["session"]}
        async with http.post(f"{workers.url}/rtc/leave", json=leave) as response:
            assert response.status in (200, 204), await response.text()
        await eventually(lambda: _empty(workers, int(worker)), 10)
        async with http.post(f"{workers.url}/rtc/leave", json={"session": session}) as response:
            assert response.status == 404  # untagged: no worker named


async def _empty(workers: Workers, worker: int) -> bool:
    return await workers.identities(worker) == []


def _worker_pid(box: Workers, node_id: str) -> int:
    """The pid of the worker that runs node `node_id` (from its environment)."""
    for pid in box.children():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"SFU_NODE_ID={node_id}".encode() in environ:
            return pid
    raise AssertionError(f"no worker runs {node_id}: {box.children()}")


async def _red_picture(track, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        frame = await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic()))
        r, g, b = mean_rgb(frame)
        if r > 120 and g < 100 and b < 100:
            return


@pytest.mark.redis
@pytest.mark.slow
async def test_killed_worker_is_started_again_its_viewer_resumes_and_sigterm_stops_all(
    workers: Workers,
):
    before = workers.children()
    assert len(before) == 2, before
    # a join's fallbacks come from a list each worker refreshes in the background: wait until
    # worker 1's holds worker 0 (right after the start it may not yet)
    deadline = time.monotonic() + 10
    while not (await workers.get("/_worker/1/api/stats"))["cluster"]["fallbacks"]:
        assert time.monotonic() < deadline, "worker 1 never listed worker 0 as a fallback"
        await asyncio.sleep(0.1)
    host = await RoomClient.connect(
        workers.url, token("host"), network=LOOPBACK, publish=[ColorVideoTrack(RED)]
    )
    viewer = await RoomClient.connect(
        workers.url, token("viewer"), network=LOOPBACK, reconnect=Reconnect(dead_after_s=2.0)
    )
    try:
        assert (host.node["node_id"], viewer.node["node_id"]) == ("box-w0", "box-w1")
        assert viewer.fallbacks == [workers.url]  # the other worker: the same one URL
        await _red_picture((await viewer.next_track(kind="video", timeout=30)).track)

        victim = _worker_pid(workers, "box-w1")
        os.kill(victim, signal.SIGKILL)
        resumed = await viewer.wait_for("resumed", timeout=30)
        assert resumed["url"] == workers.url  # back through the front, on a live worker
        await _red_picture((await viewer.next_track(kind="video", timeout=30)).track)

        async def restarted():
            status, health = await workers.health()
            w = health["workers"]
            return (
                status == 200
                and [x["restarts"] for x in w] == [0, 1]
                and all(x["ready"] for x in w)
            )

        await eventually(restarted, 30)
        after = workers.children()
        assert len(after) == 2 and victim not in after and before[0] in after, (before, after)
        assert "exited with -9; starting it again" in workers.log()
        # the restarted worker serves again: a viewer pinned to it sees the host on worker 0
        late = await RoomClient.connect(f"{workers.url}/_worker/1", token("late"), network=LOOPBACK)
        try:
            assert late.node["node_id"] == "box-w1"
            await _red_picture((await late.next_track(kind="video", timeout=30)).track)
        finally:
            await late.close()
    finally:
        await viewer.close()
        await host.close()

    # SIGTERM: every worker drains (3 s at most) and exits, then the front
    started = time.monotonic()
    workers.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(workers.proc.wait, 30)
    took = time.monotonic() - started
    assert code == 0, workers.log()
    assert took < 3.0 + 10.0 + 5.0, took  # drain_timeout_s + the supervisor's margin
    assert all(_gone(pid) for pid in after), after
    assert workers.log().count("drained in") == 2


def _gone(pid: int) -> bool:
    """Exited (no such process, or a zombie the front has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.redis
@pytest.mark.slow
async def test_other_sockets_go_to_worker_0_and_worker_paths_to_their_worker(workers: Workers):
    async with aiohttp.ClientSession() as http:
        # the agent workers' socket (not /rtc) is a WebSocket to worker 0
        agent = token("agent-1", room="*", agent=True)
        async with http.ws_connect(
            f"{workers.url}/api/agent-workers/ws", headers={"Authorization": f"Bearer {agent}"}
        ) as ws:
            await ws.send_json({"type": "register", "kinds": ["agent"], "capacity": 1})
            reply = await asyncio.wait_for(ws.receive_json(), 10)
            assert reply["type"] == "registered", reply
        # a refused upgrade keeps the worker's status
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{workers.url}/api/agent-workers/ws")
        assert refused.value.status == 401
        async with http.get(f"{workers.url}/_worker/7/healthz") as response:
            assert response.status == 404  # no such worker
        for i in (0, 1):
            async with http.get(f"{workers.url}/_worker/{i}/healthz") as response:
                assert (await response.json())["node_id"] == f"box-w{i}"
    # /_worker/<i>/rtc: a signalling socket to that worker
    client = await RoomClient.connect(f"{workers.url}/_worker/1", token("pinned"), network=LOOPBACK)
    try:
        assert client.node["node_id"] == "box-w1"
        assert await workers.identities(1) == ["pinned"]
    finally:
        await client.close()


@pytest.mark.redis
@pytest.mark.slow
async def test_a_buyer_on_any_worker_gets_one_agent_from_worker_0(
    redis_server: RedisServer, tmp_path: Path
):
    """The agent workers connect to worker 0 (through the front); buyers of an auto room on
    worker 1 get the job worker 0 makes, and a room gets one job however many buyers join."""
    box = Workers(tmp_path, redis_server.url, extra_toml='[agents]\nauto_rooms = ["shop"]\n')
    clients: list[RoomClient] = []
    try:
        await wait_healthy(box.proc, box.url, box.log, "serve --workers 2", 60)
        async with aiohttp.ClientSession() as http:
            agent = token("agent-1", room="*", agent=True)
            async with http.ws_connect(
                f"{box.url}/api/agent-workers/ws", headers={"Authorization": f"Bearer {agent}"}
            ) as ws:
                await ws.send_json({"type": "register", "kinds": ["agent"], "capacity": 4})
                assert (await asyncio.wait_for(ws.receive_json(), 10))["type"] == "registered"

                async def heartbeats():
                    while True:
                        await ws.send_json({"type": "heartbeat", "jobs": []})
                        await asyncio.sleep(0.5)

                beating = asyncio.ensure_future(heartbeats())
                for name in ("b1", "b2"):  # buyers on worker 1 only
                    clients.append(
                        await RoomClient.connect(
                            f"{box.url}/_worker/1", token(name), network=LOOPBACK
                        )
                    )
                assert {c.node["node_id"] for c in clients} == {"box-w1"}
                assign = await asyncio.wait_for(ws.receive_json(), 15)
                while assign["type"] != "assign":  # (whatever else the node says first)
                    assign = await asyncio.wait_for(ws.receive_json(), 15)
                assert assign["job"]["room"] == "shop", assign
                clients.append(  # and one on worker 0
                    await RoomClient.connect(f"{box.url}/_worker/0", token("b3"), network=LOOPBACK)
                )
                with pytest.raises(TimeoutError):  # no second job for the same room
                    while True:
                        extra = await asyncio.wait_for(ws.receive_json(), 2.5)
                        assert extra["type"] != "assign", extra
                # worker 0's only buyer leaves; worker 1's two are still in the room: the job
                # goes on
                await clients.pop().close()
                with pytest.raises(TimeoutError):
                    while True:
                        extra = await asyncio.wait_for(ws.receive_json(), 2.5)
                        assert extra["type"] != "cancel", extra
                beating.cancel()
        jobs = (await box.get("/api/agents"))["jobs"]
        assert [j["room"] for j in jobs] == ["shop"], jobs
    finally:
        for client in clients:
            await client.close()
        box.stop()


def test_node_record_without_internal_url_reads_as_before():
    """A node without an internal URL writes the record older nodes read (no new field)."""
    plain = NodeInfo(node_id="a", region="r", public_url="http://a:1")
    assert "internal_url" not in plain.to_json()
    assert NodeInfo.loads(plain.dumps()) == plain
    worker = NodeInfo(
        node_id="a-w1", region="r", public_url="http://a:1", internal_url="http://a:1/_worker/1"
    )
    assert NodeInfo.loads(worker.dumps()) == worker


async def test_front_holds_more_sockets_than_a_default_connection_pool():
    """Each proxied socket holds a connection to its worker for its whole life: the 101st
    viewer's socket opens like the first (aiohttp's default pool stops at 100)."""
    from aiohttp import web

    from sfu.workers.front import Backend, Front
    from tests.conftest import start_node

    node = await start_node()  # a real node (no cluster needed for one worker)
    backend = Backend(0, node.url, "n", ready=True)
    front = Front([backend], max_body=node.config.limits.max_message_bytes)
    runner = web.AppRunner(front.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sockets = []
    try:
        # (the test's own client needs no pool limit either)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for _ in range(105):
                ws = await asyncio.wait_for(http.ws_connect(f"http://127.0.0.1:{port}/rtc"), 10)
                sockets.append(ws)
            assert backend.sessions == 105
            assert len(node.node.websockets) == 105  # each one reached the node
            for ws in sockets:
                await ws.close()
            await eventually(lambda: _drained(backend), 10)
    finally:
        await runner.cleanup()
        await node.runner.cleanup()


async def test_front_limits_bodies_as_the_node_does():
    from aiohttp import web

    from sfu.workers.front import Backend, Front
    from tests.conftest import start_node

    node = await start_node()
    limit = node.config.limits.max_message_bytes
    front = Front([Backend(0, node.url, "n", ready=True)], max_body=limit)
    runner = web.AppRunner(front.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            big = b"v=0\r\n" + b"a" * limit
            headers = {"Content-Type": "application/sdp", "Authorization": "Bearer x"}
            for path in ("/whip/shop", "/rtc/answer", "/rtc/join", "/api/rooms"):
                async with http.post(
                    f"http://127.0.0.1:{port}{path}", data=big, headers=headers
                ) as r:
                    assert r.status == 413, (path, r.status)
            async with http.post(
                f"http://127.0.0.1:{port}/rtc/answer", data=b"[" * 1000 + b"]" * 1000
            ) as r:
                assert r.status == 400
    finally:
        await runner.cleanup()
        await node.runner.cleanup()


async def _drained(backend) -> bool:
    return backend.sessions == 0


@pytest.mark.redis
@pytest.mark.slow
async def test_a_draining_worker_takes_no_new_sessions(redis_server: RedisServer, tmp_path: Path):
    box = Workers(tmp_path, redis_server.url, drain_timeout_s=10.0)
    stay = None
    try:
        await wait_healthy(box.proc, box.url, box.log, "serve --workers 2", 60)
        # a client that ignores `move` keeps worker 1 draining for its whole drain_timeout_s
        stay = await RoomClient.connect(f"{box.url}/_worker/1", token("stay"), network=LOOPBACK)
        os.kill(_worker_pid(box, "box-w1"), signal.SIGTERM)

        async def draining():
            status, health = await box.health()
            return status == 503 and [w["ready"] for w in health["workers"]] == [True, False]

        await eventually(draining, 8)
        for i in range(3):  # every new session goes to worker 0 meanwhile
            client = await RoomClient.connect(box.url, token(f"new-{i}"), network=LOOPBACK)
            try:
                assert client.node["node_id"] == "box-w0"
            finally:
                await client.close()

        async def back():
            status, health = await box.health()
            return status == 200 and [w["restarts"] for w in health["workers"]] == [0, 1]

        await eventually(back, 30)  # it drained, exited and was started again
    finally:
        if stay is not None:
            await stay.close()
        box.stop()
