"""The node's link to Redis: one client, and whether Redis is reachable right now.

Every Redis call goes through `RedisLink.run`, which turns a lost connection or a timeout into
ClusterUnavailable (a clear, typed error for the caller) and logs the outage once, when it
starts, and once when Redis answers again; then the recovery callbacks run (the node
re-registers and re-synchronises its directory entries).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ClusterError, ClusterUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Failures that mean "Redis is not there" (as opposed to a bad command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


def redact(url: str) -> str:
    """The URL without its password, for logs and the CLI."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLink:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.description = redact(url)
        self.timeout_s = timeout_s
        options = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            # one quick retry: the first command on a pooled connection that Redis dropped
            # fails, and the retry reconnects; more would only delay the error
            "retry": Retry(NoBackoff(), 1),
        }
        self.client: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True, **options)
        # Pub/sub reads bytes and decodes them itself: a stray non-UTF-8 message on a channel
        # must be dropped, not break the reader.
        self.raw_client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
        self.available = True  # until a call fails
        self.outages = 0
        self.last_error = ""
        self._recovered: list[Callable[[], None]] = []

    def on_recovered(self, callback: Callable[[], None]) -> None:
        self._recovered.append(callback)

    async def run(self, what: str, call: Awaitable[T]) -> T:
        """Await one Redis call; `what` names it in the error."""
        try:
            result = await call
        except UNREACHABLE as exc:
            self.failed(exc)
            raise ClusterUnavailable(
                f"cluster state unavailable: {what} failed, Redis at {self.description} "
                f"unreachable ({exc or type(exc).__name__})"
            ) from exc
        except RedisError as exc:
            raise ClusterError(f"{what}: Redis refused it: {exc}") from exc
        self.succeeded()
        return result

    def failed(self, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__
        if not self.available:
            return
        self.available = False
        self.outages += 1
        logger.error(
            "cluster: Redis at %s unreachable (%s); rooms on this node keep working, "
            "cluster calls fail until it returns",
            self.description,
            self.last_error,
        )

    def succeeded(self) -> None:
        if self.available:
            return
        self.available = True
        logger.warning("cluster: Redis at %s reachable again; catching up", self.description)
        for callback in self._recovered:
            try:
                callback()
            except Exception:
                logger.exception("cluster: recovery callback failed")

    async def close(self) -> None:
        await self.client.aclose()
        await self.raw_client.aclose()
