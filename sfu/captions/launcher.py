"""Who captions a room when the demo host page's switch is turned on: a "captions" job for
the agent workers when one of them takes that kind (sfu/agents/), else a
`python -m agent.captions` process beside the demo server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from typing import Any, Protocol

from aiohttp import web

from ..agents.dispatcher import AGENTS_KEY
from ..auth import Grants, mint_token
from ..node import SfuNode

logger = logging.getLogger(__name__)


class CaptionsLauncher(Protocol):
    """Starts and stops the captioner of a room (the demo switch)."""

    async def start(self, room: str) -> dict[str, Any]: ...

    async def stop(self, room: str) -> dict[str, Any]: ...


CAPTIONS_KIND = "captions"


class DemoLauncher:
    """A "captions" job when a registered worker takes the kind, else a local subprocess."""

    def __init__(self, app: web.Application, node: SfuNode) -> None:
        self.app = app
        self.local = SubprocessLauncher(node)

    def _dispatcher(self):
        return self.app.get(AGENTS_KEY)

    async def start(self, room: str) -> dict[str, Any]:
        dispatcher = self._dispatcher()
        if dispatcher is not None and any(
            w.registered and not w.gone and CAPTIONS_KIND in w.kinds
            for w in dispatcher.workers.values()
        ):
            running = dispatcher.active_jobs(room, CAPTIONS_KIND)
            job = running[0] if running else dispatcher.create_job(room, CAPTIONS_KIND, "demo")
            return {"via": "worker", "job_id": job.id, "started": not running}
        return {"via": "subprocess", **await self.local.start(room)}

    async def stop(self, room: str) -> dict[str, Any]:
        stopped = False
        dispatcher = self._dispatcher()
        if dispatcher is not None:
            for job in dispatcher.active_jobs(room, CAPTIONS_KIND):
                dispatcher.end_job(job, "captions switched off")
                stopped = True
        local = await self.local.stop(room)
        return {"stopped": stopped or local["stopped"]}

    async def close(self) -> None:
        await self.local.close()


class SubprocessLauncher:
    """Demo launcher: one `python -m agent.captions` process per room, on this machine, at
    most `max_rooms` at once (each holds a Whisper model: ~300 MB)."""

    def __init__(self, node: SfuNode, idle_exit_s: float = 120.0, max_rooms: int = 3) -> None:
        self.node = node
        self.idle_exit_s = idle_exit_s
        self.max_rooms = max_rooms
        self.processes: dict[str, tuple[asyncio.subprocess.Process, str]] = {}

    def _base_url(self) -> str:
        server = self.node.config.server
        host = server.host if server.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{server.port}"

    async def start(self, room: str) -> dict[str, Any]:
        running = self.processes.get(room)
        if running is not None and running[0].returncode is None:
            return {"identity": running[1], "started": False}
        alive = [r for r, (p, _) in self.processes.items() if p.returncode is None]
        if len(alive) >= self.max_rooms:
            raise RuntimeError(f"{len(alive)} rooms already have demo captions")
        identity = f"captioner-{secrets.token_hex(4)}"
        token = mint_token(
            self.node.config.auth,
            identity=identity,
            room=room,
            grants=Grants(subscribe=True, agent=True),
            ttl_s=6 * 3600,
        )
        env = {**os.environ, "CAPTIONS_TOKEN": token}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.captions",
            "--url",
            self._base_url(),
            "--room",
            room,
            "--idle-exit-s",
            str(self.idle_exit_s),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        self.processes[room] = (process, identity)
        logger.info("captions: started a captioner for %s (pid %d)", room, process.pid)
        return {"identity": identity, "started": True}

    async def stop(self, room: str) -> dict[str, Any]:
        running = self.processes.pop(room, None)
        if running is None or running[0].returncode is not None:
            return {"stopped": False}
        process = running[0]
        process.terminate()  # the captioner leaves the room and flushes its archive posts
        try:
            await asyncio.wait_for(process.wait(), 8)
        except TimeoutError:
            process.kill()
            await process.wait()
        return {"stopped": True}

    async def close(self) -> None:
        for room in list(self.processes):
            with contextlib.suppress(Exception):
                await self.stop(room)
