"""Shared fixtures: an SFU node on loopback, tokens, and loopback-only client networks."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from sfu import Config, create_app
from sfu.api.keys import NODE_KEY
from sfu.auth import Grants, mint_token
from sfu.media.peer import NetworkSettings

LOOPBACK = NetworkSettings(addresses=("127.0.0.1",))

logging.getLogger("aioice").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningNode:
    url: str
    config: Config
    app: web.Application
    runner: web.AppRunner

    @property
    def node(self):
        return self.app[NODE_KEY]

    def token(
        self, identity: str, room: str = "shop", ttl_s: int | None = None, **grants: bool
    ) -> str:
        if not grants:
            grants = {"publish": True, "subscribe": True}
        return mint_token(
            self.config.auth, identity=identity, room=room, grants=Grants(**grants), ttl_s=ttl_s
        )


async def start_node(config: Config | None = None) -> RunningNode:
    config = config or Config()
    config.server.port = free_port()
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", config.server.port)
    await site.start()
    return RunningNode(f"http://127.0.0.1:{config.server.port}", config, app, runner)


@pytest.fixture
async def sfu_node() -> AsyncIterator[RunningNode]:
    node = await start_node()
    try:
        yield node
    finally:
        await node.runner.cleanup()
