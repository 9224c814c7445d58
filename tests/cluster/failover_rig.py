"""Nodes as real `python -m sfu serve` processes sharing a real redis-server, for the failure
tests: killed (SIGKILL), drained (SIGTERM), their registry records and rooms read back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from sfu.auth import Grants, mint_token
from sfu.config import Config
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
if not PYTHON.exists():
    PYTHON = Path(sys.executable)

AUTH = Config().auth  # every node runs with the built-in development key: tokens work on all


def token(identity: str, room: str = "shop", **grants: bool) -> str:
    grants = grants or {"publish": True, "subscribe": True}
    return mint_token(AUTH, identity=identity, room=room, grants=Grants(**grants))


def admin_headers() -> dict[str, str]:
    value = mint_token(AUTH, identity="ops", room="*", grants=Grants(admin=True))
    return {"Authorization": f"Bearer {value}"}


class NodeProcess:
    """One node: its config file, its process, its log."""

    def __init__(
        self,
        workdir: Path,
        node_id: str,
        redis_url: str,
        prefix: str,
        *,
        udp_ports: tuple[int, int],
        drain_timeout_s: float = 10.0,
        region: str = "test",
        demo_tokens: bool = False,
    ) -> None:
        self.node_id = node_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"{node_id}.toml"
        self.config_path.write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.port}
region = "{region}"
node_id = "{node_id}"
drain_timeout_s = {drain_timeout_s}
demo_tokens = {"true" if demo_tokens else "false"}

[cluster]
redis_url = "{redis_url}"
key_prefix = "{prefix}"
heartbeat_s = 0.2
node_ttl_s = 1.0
redis_timeout_s = 1.0

[media]
bind_addresses = ["127.0.0.1"]
udp_port_min = {udp_ports[0]}
udp_port_max = {udp_ports[1]}
"""
        )
        self.log_path = workdir / f"{node_id}.log"
        self._log = open(self.log_path, "w")  # closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [str(PYTHON), "-m", "sfu", "serve", "--config", str(self.config_path)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.node_id} exited early:\n{self.log()}")
                try:
                    async with http.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.node_id}: /healthz never answered 200:\n{self.log()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                self.proc.send_signal(signal.SIGINT)  # (the second one skips the drain)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            self._log.close()

    async def rooms(self, scope: str = "local") -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{self.url}/api/rooms?scope={scope}", headers=admin_headers()
            ) as response:
                assert response.status == 200, await response.text()
                return await response.json()

    async def identities(self, room: str = "shop") -> list[str]:
        """Identities in `room` on this node, one entry per participant (duplicates show)."""
        for entry in (await self.rooms())["rooms"]:
            if entry["name"] == room:
                return sorted(p["identity"] for p in entry["participants"])
        return []


async def eventually(check, timeout_s: float = 15.0, interval_s: float = 0.1):
    """Poll an async check until it returns something truthy (bounded); returns it."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except (AssertionError, aiohttp.ClientError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"not reached within {timeout_s} s (last: {last!r})")
