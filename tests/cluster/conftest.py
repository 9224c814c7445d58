"""A real redis-server for the cluster tests: started on a free loopback port in a temporary
directory (never a shared instance), no persistence, stopped afterwards. Missing
redis-server fails the test loudly (Debian package `redis-server`; `make test` installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sfu.cluster.memory import MemoryCluster
from sfu.cluster.redis_cluster import RedisCluster
from tests.conftest import free_port

TEST_TTL_S = 0.6  # node TTL in the contract tests: short, so expiry is quick to observe


class RedisServer:
    """One redis-server process that a test may stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: the cluster tests need Debian's redis-server "
                "(apt-get install redis-server, or `make system-packages`)"
            )
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
            + ["--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                self.process = None
                pytest.fail(f"redis-server exited at start: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the session; tests keep apart by their own key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, for tests that stop and restart it."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def unique_prefix() -> str:
    return "test-" + uuid.uuid4().hex[:10]


class Store:
    """One shared cluster state and the clients opened on it (each one as a node would)."""

    def __init__(self, kind: str, redis_url: str = "") -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.prefix = unique_prefix()
        self.clients: list[MemoryCluster | RedisCluster] = []

    async def open(self, node_ttl_s: float = TEST_TTL_S) -> MemoryCluster | RedisCluster:
        client: MemoryCluster | RedisCluster
        if self.kind == "memory":
            first = self.clients[0] if self.clients else None
            client = (
                first.sibling() if isinstance(first, MemoryCluster) else MemoryCluster(node_ttl_s)
            )
        else:
            client = RedisCluster(self.redis_url, node_ttl_s=node_ttl_s, key_prefix=self.prefix)
        await client.start()
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each implementation in turn, for the contract tests."""
    if request.param == "memory":
        shared = Store("memory")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        shared = Store("redis", server.url)
    try:
        yield shared
    finally:
        await shared.close()


@pytest.fixture
async def backend(store: Store) -> MemoryCluster | RedisCluster:
    return await store.open()
