"""The Redis cluster backend: registry, directory and bus over one RedisLink."""

from __future__ import annotations

from collections.abc import Callable

from redis.exceptions import RedisError

from .redis_bus import RedisBus
from .redis_directory import RedisDirectory
from .redis_keys import RedisKeys
from .redis_link import UNREACHABLE, RedisLink
from .redis_registry import RedisRegistry


class RedisCluster:
    def __init__(
        self, url: str, *, node_ttl_s: float = 5.0, key_prefix: str = "sfu", timeout_s: float = 2.0
    ) -> None:
        self.link = RedisLink(url, timeout_s)
        self.keys = RedisKeys(key_prefix)
        self.registry = RedisRegistry(self.link, self.keys, node_ttl_s)
        self.directory = RedisDirectory(self.link, self.keys)
        self.bus = RedisBus(self.link, self.keys)

    @property
    def available(self) -> bool:
        return self.link.available

    @property
    def description(self) -> str:
        return f"Redis at {self.link.description}"

    def on_recovered(self, callback: Callable[[], None]) -> None:
        self.link.on_recovered(callback)

    async def start(self) -> None:
        """Start the message reader. An unreachable Redis is logged, not raised: the node
        serves its own rooms and catches up when Redis comes."""
        try:
            await self.link.client.ping()
        except UNREACHABLE as exc:
            self.link.failed(exc)
        except RedisError as exc:  # e.g. a wrong password: still logged, never fatal
            self.link.failed(exc)
        await self.bus.start()

    async def close(self) -> None:
        await self.bus.close()
        await self.link.close()
