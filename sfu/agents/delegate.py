"""Asking another node for a room's agent job (`[agents] dispatch_url`).

With `serve --workers N` the agent workers connect to worker 0 only (the front sends their
socket there), so a buyer who joins an auto room on another worker would wait for an agent
nobody gives. That worker asks worker 0 instead: `POST /api/rooms/{room}/agents` with
`"unless_active": true`, under a short-lived node-wide admin token signed with the shared API
key. Worker 0 answers with the room's job, new or existing; the agent joins through the front
and the room spans the workers as any room does.

A room is asked for at most once per REASK_S while answers come back (a show's viewers all
join the same room), the request is bounded in time and tries, and a failure is logged, never
raised into the join.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp

from ..auth import Grants, mint_token

if TYPE_CHECKING:
    from ..config import AuthSettings

logger = logging.getLogger(__name__)

REASK_S = 10.0  # a room asked for within this is not asked for again
TRIES = 3
REQUEST_TIMEOUT_S = 5.0
TOKEN_TTL_S = 60


class JobRequester:
    """Asks the dispatching node (`url`) for rooms' agent jobs; one request per room at a time."""

    def __init__(self, url: str, auth: AuthSettings, node_id: str) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.node_id = node_id
        self._asked: dict[str, float] = {}  # room -> when its job was last confirmed
        self._pending: dict[str, asyncio.Task] = {}
        self.requests = 0
        self.failures = 0

    def request(self, room: str, kind: str) -> None:
        """From a synchronous room event: ask for the room's job unless asked just now."""
        now = time.monotonic()
        if room in self._pending or now - self._asked.get(room, -REASK_S) < REASK_S:
            return
        if len(self._asked) > 10_000:  # rooms come and go: forget the old confirmations
            self._asked = {r: t for r, t in self._asked.items() if now - t < REASK_S}
        task = asyncio.ensure_future(self._ask(room, kind))
        self._pending[room] = task
        task.add_done_callback(lambda _t: self._pending.pop(room, None))

    async def _ask(self, room: str, kind: str) -> None:
        token = mint_token(
            self.auth,
            identity=f"dispatch-{self.node_id}",
            room="*",  # node-wide (auth.NODE_WIDE_ROOMS)
            grants=Grants(admin=True),
            ttl_s=TOKEN_TTL_S,
        )
        url = f"{self.url}/api/rooms/{room}/agents"
        body = {"kind": kind, "unless_active": True}
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        self.requests += 1
        delay = 0.5
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, TRIES + 1):
                try:
                    async with session.post(url, json=body, headers=headers) as reply:
                        if reply.status in (200, 201):
                            self._asked[room] = time.monotonic()
                            return
                        problem = f"HTTP {reply.status}: {(await reply.text())[:200]}"
                        if reply.status < 500:
                            break  # refused: trying again will not help
                except (aiohttp.ClientError, TimeoutError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if attempt < TRIES:
                    await asyncio.sleep(delay)
                    delay *= 2
        self.failures += 1
        logger.warning("agent job for room %s: %s did not give one (%s)", room, self.url, problem)

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        if self._pending:
            await asyncio.wait(list(self._pending.values()), timeout=1.0)
