"""Webhook delivery: one bounded queue and one sender task per room, retries with backoff.

`notify()` is synchronous and never waits: it serialises the event, appends it to its room's
queue (dropping it, counted and logged, when the queue is full) and makes sure the room has a
sender task. The task delivers the room's events one at a time, in order, to every URL; a
failed delivery (connection error, timeout, non-2xx answer) is retried with exponential
backoff until `retry_for_s` has passed, then given up with a log line. A slow or dead receiver
therefore delays only that room's later events, never signalling or media.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..config import AuthSettings, WebhookSettings
from ..metrics.histogram import Histogram
from .signing import sign_webhook

logger = logging.getLogger(__name__)

FIRST_RETRY_S = 0.25
MAX_RETRY_S = 10.0
MAX_CONCURRENT_POSTS = 32  # across rooms: a burst of rooms must not open thousands of sockets
CLOSE_GRACE_S = 2.0  # at shutdown, time left for the last events (room_finished) to go out
USER_AGENT = "crossborder-sfu-webhooks/1"


@dataclass
class WebhookStats:
    """Counters the metrics collector reads."""

    events: dict[str, int] = field(default_factory=dict)  # queued, per event name
    delivered: int = 0  # (event, url) deliveries answered 2xx
    failed: int = 0  # (event, url) deliveries given up after retry_for_s
    dropped: int = 0  # events not queued: their room's queue was full
    attempts: int = 0  # POSTs made
    errors: int = 0  # POSTs that failed (then retried or given up)
    delivery_seconds: Histogram = field(default_factory=Histogram)  # queued -> 2xx


class WebhookNotifier:
    """Signs and delivers events to the configured URLs; see the module docstring."""

    def __init__(
        self, settings: WebhookSettings, auth: AuthSettings, *, node_id: str, region: str
    ) -> None:
        self.settings = settings
        self.urls = list(settings.urls)
        self.api_key = settings.api_key or next(iter(auth.api_keys))
        self._secret = auth.api_keys[self.api_key]
        self.node_id = node_id
        self.region = region
        self.stats = WebhookStats()
        self._queues: dict[str, deque[tuple[bytes, str, float]]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._session: aiohttp.ClientSession | None = None
        self._posts = asyncio.Semaphore(MAX_CONCURRENT_POSTS)
        self._seq = 0
        self.closed = False

    # -- producing ---------------------------------------------------------------------------

    def notify(self, event: str, room: str, data: dict[str, Any]) -> bool:
        """Queue `event` for `room`'s sender; False if it was dropped (queue full or closed)."""
        if self.closed or not self.urls:
            return False
        queue = self._queues.setdefault(room, deque())
        if len(queue) >= self.settings.queue_size:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
                logger.warning(
                    "webhooks: queue of room %r full (%d events); dropped %s (%d dropped so far)",
                    room,
                    len(queue),
                    event,
                    self.stats.dropped,
                )
            return False
        self._seq += 1
        body = {
            "id": "EV_" + uuid.uuid4().hex[:16],
            "event": event,
            "seq": self._seq,
            "created_at": round(time.time(), 3),
            "node_id": self.node_id,
            "region": self.region,
            **data,
        }
        queue.append((json.dumps(body, default=str).encode(), event, time.monotonic()))
        self.stats.events[event] = self.stats.events.get(event, 0) + 1
        if room not in self._tasks:
            self._tasks[room] = asyncio.ensure_future(self._drain(room))
        return True

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    # -- delivering --------------------------------------------------------------------------

    async def _drain(self, room: str) -> None:
        queue = self._queues[room]
        try:
            while queue:
                body, event, queued_at = queue[0]
                try:
                    await asyncio.gather(
                        *(self._deliver(url, body, event, queued_at) for url in self.urls)
                    )
                except Exception:  # a bug here must not stall the room's later events
                    logger.exception("webhooks: delivering %s of room %r failed", event, room)
                queue.popleft()
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.pop(room, None)
            if not queue:
                self._queues.pop(room, None)

    async def _deliver(self, url: str, body: bytes, event: str, queued_at: float) -> bool:
        deadline = time.monotonic() + self.settings.retry_for_s
        delay = FIRST_RETRY_S
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        while True:
            headers = {
                "Authorization": "Bearer " + sign_webhook(body, self.api_key, self._secret),
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            }
            self.stats.attempts += 1
            try:
                async with self._posts:
                    async with self._http().post(
                        url, data=body, headers=headers, timeout=timeout
                    ) as response:
                        status = response.status
                        await response.read()
                if 200 <= status < 300:
                    self.stats.delivered += 1
                    self.stats.delivery_seconds.observe(time.monotonic() - queued_at)
                    return True
                error = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.stats.errors += 1
            if time.monotonic() + delay > deadline or self.closed:
                self.stats.failed += 1
                logger.warning(
                    "webhooks: gave up on %s to %s after %.0f s: %s",
                    event,
                    url,
                    self.settings.retry_for_s,
                    error,
                )
                return False
            logger.info(
                "webhooks: %s to %s failed (%s); retrying in %.2f s", event, url, error, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event is delivered or given up (True), at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        while self._tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.wait(list(self._tasks.values()), timeout=left)
        return True

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Give the last events (room_finished at shutdown) a moment, then stop."""
        await self.flush(grace_s)
        self.closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
