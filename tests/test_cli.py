"""The command line: `token` prints a JWT that a node run by `serve` (no config) accepts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from sfu.auth import verify_token
from sfu.config import DEV_API_KEY, AuthSettings, Config

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
if not PYTHON.exists():
    PYTHON = Path(sys.executable)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), "-m", "sfu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def mint(*args: str) -> str:
    result = run_cli("token", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


class Daemon:
    """`python -m sfu serve` as a child process, its log in a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "serve.log"
        self._log = open(self.log_path, "w")  # closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [str(PYTHON), "-m", "sfu", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    async def wait_healthy(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited early:\n{self.log()}")
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return await response.json()
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"/healthz never answered 200:\n{self.log()}")

    def stop(self) -> int:
        """SIGINT (graceful shutdown), then SIGKILL if it lingers; returns the exit status."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    return self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            return self.proc.returncode
        finally:
            self._log.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    node = Daemon(tmp_path)
    try:
        yield node
    finally:
        node.stop()


def test_token_prints_a_jwt_on_its_last_line():
    result = run_cli("token", "--room", "R", "--identity", "I", "--publish", "--ttl", "120")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.count(".") == 2 and " " not in token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == DEV_API_KEY
    assert claims["sub"] == "I" and claims["room"] == "R"
    assert claims["grants"] == {"publish": True, "subscribe": False, "admin": False, "agent": False}
    assert 110 <= claims["exp"] - time.time() <= 130
    # signed with the built-in development secret: the default node accepts it
    access = verify_token(Config().auth, token)
    assert access.identity == "I" and access.grants.publish and not access.grants.subscribe


def test_token_without_grants_gets_publish_and_subscribe():
    result = run_cli("token", "--room", "R", "--identity", "I")
    assert result.returncode == 0
    assert "no grant given" in result.stderr
    access = verify_token(Config().auth, result.stdout.strip().splitlines()[-1])
    assert access.grants.publish and access.grants.subscribe and not access.grants.admin


@pytest.mark.parametrize(
    ("args", "room"),
    [(["--admin"], "*"), (["--agent"], "*"), (["--admin", "--room", "shop"], "shop")],
)
def test_admin_and_agent_tokens_are_node_wide_unless_a_room_is_named(args: list, room: str):
    result = run_cli("token", "--identity", "ops", *args)
    assert result.returncode == 0, result.stderr
    access = verify_token(Config().auth, result.stdout.strip().splitlines()[-1])
    assert access.room == room and access.node_wide == (room == "*")
    assert ("node-wide" in result.stderr) == (room == "*")


@pytest.mark.parametrize("args", [["--subscribe"], ["--publish", "--room", "*"], []])
def test_media_tokens_need_a_room(args: list):
    """A publish/subscribe token without a room, or node-wide, would allow no room at all."""
    result = run_cli("token", "--identity", "viewer", *args)
    assert result.returncode == 2
    assert "room" in result.stderr and result.stdout == ""


def test_token_with_a_config_uses_its_key():
    token = mint("--room", "R", "--identity", "I", "--config", "configs/eu-west.toml")
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == "cluster"
    assert verify_token(Config.load(ROOT / "configs" / "eu-west.toml").auth, token)
    with pytest.raises(Exception, match="unknown API key"):
        verify_token(AuthSettings(), token)


async def test_serve_accepts_a_token_from_the_cli(daemon: Daemon):
    health = await daemon.wait_healthy()
    assert health["status"] == "ok" and health["region"] == "local"
    log = daemon.log()
    assert "USING THE BUILT-IN DEVELOPMENT API KEY AND SECRET" in log
    assert f"listening on http://127.0.0.1:{daemon.port}" in log

    token = mint("--room", "R", "--identity", "I", "--publish", "--subscribe")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    admin = mint("--room", "*", "--identity", "ops", "--admin")
    ws_url = f"ws://127.0.0.1:{daemon.port}/rtc"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{ws_url}?access_token={token}") as ws:
            await ws.send_json({"type": "join", "request_id": 1})
            joined = await ws.receive_json(timeout=10)
            assert joined["type"] == "joined", joined
            assert joined["room"] == "R" and joined["participant"]["identity"] == "I"
            assert joined["grants"] == {"publish": True, "subscribe": True}
            # the node sees the participant (admin token from the CLI too)
            headers = {"Authorization": f"Bearer {admin}"}
            async with session.get(f"{daemon.url}/api/rooms", headers=headers) as response:
                assert response.status == 200
                rooms = (await response.json())["rooms"]
            assert [p["identity"] for p in rooms[0]["participants"]] == ["I"]
            await ws.send_json({"type": "leave", "request_id": 2})
            assert (await ws.receive_json(timeout=10))["type"] == "left"
        async with session.ws_connect(ws_url) as ws:
            await ws.send_json({"type": "join", "token": forged, "request_id": 1})
            refused = await ws.receive_json(timeout=10)
            assert refused["code"] == "unauthorized", refused
    assert daemon.stop() == 0
    assert re.search(r"node local-\w+ closed", daemon.log())  # graceful shutdown ran
