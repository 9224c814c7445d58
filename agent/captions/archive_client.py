"""Posts final captions to the SFU's caption archive (sfu/api/captions.py).

`POST {url}/api/rooms/{room}/captions` with the captioner's own token (it must carry the `agent`
grant; admin tokens work too), body `{session, started_at, entries: [...]}`. Entries are keyed by
(track, seq), so a retried post never doubles a caption. Posting runs in the background and
never holds up the live captions; a node without the archive (404) or a token without the grant
(401/403) is reported once and the captions go on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

MAX_QUEUED = 2000
BATCH = 20


class ArchivePoster:
    def __init__(self, url: str, room: str, token: str, session: str, started_at: float) -> None:
        self.endpoint = f"{url.rstrip('/')}/api/rooms/{room}/captions"
        self.token = token
        self.session_id = session
        self.started_at = started_at
        self.posted = 0
        self.failed = False  # the archive refused us for good (no route, no grant)
        self._queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._emptied = asyncio.Event()  # set after each post attempt (close() waits on it)
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._task = asyncio.ensure_future(self._run())

    def add(self, entry: dict[str, Any]) -> None:
        if self.failed:
            return
        if len(self._queue) >= MAX_QUEUED:
            del self._queue[0]  # the archive has been away for long: keep the newest
        self._queue.append(entry)
        self._wake.set()

    async def close(self, timeout: float = 5.0) -> None:
        """Post what is still queued (for at most `timeout` seconds), then stop."""
        if self._task is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(self._drain(), timeout)
            except TimeoutError:
                logger.warning("captions: %d entries not archived", len(self._queue))
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._http is not None:
            await self._http.close()

    async def _drain(self) -> None:
        while self._queue and not self.failed:
            self._emptied.clear()
            await self._emptied.wait()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            size = BATCH
            while self._queue and not self.failed:
                batch = self._queue[:size]
                try:
                    status = await self._post(batch)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    logger.info("captions: archive unreachable (%s); retrying", exc)
                    status = 0
                if status == 413 and len(batch) > 1:
                    size = max(1, len(batch) // 2)  # over the node's message size limit
                    continue
                if status in (200, 201, 204) or status == 413:  # (413 alone: too big to keep)
                    del self._queue[: len(batch)]
                    self.posted += len(batch) if status != 413 else 0
                    delay = 0.5
                elif not self.failed:
                    self._emptied.set()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                self._emptied.set()
            self._emptied.set()

    async def _post(self, batch: list[dict[str, Any]]) -> int:
        """The HTTP status (a refusal for good also sets `failed`)."""
        assert self._http is not None
        body = {"session": self.session_id, "started_at": self.started_at, "entries": batch}
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self._http.post(self.endpoint, json=body, headers=headers) as response:
            if response.status in (200, 201, 204, 413):
                return response.status
            text = (await response.text())[:200]
            if response.status in (400, 401, 403, 404, 405):
                logger.warning(
                    "captions: the archive refused the captions (HTTP %d: %s); not archiving",
                    response.status,
                    text,
                )
                self.failed = True
                self._queue.clear()
            else:
                logger.info("captions: archive answered HTTP %d; retrying", response.status)
            return response.status
