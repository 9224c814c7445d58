"""`serve --workers N`: bind the front on the public port, start the workers behind it, and
on SIGTERM/SIGINT let each worker drain (a second signal cuts the drains short)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from aiohttp import web

from ..config import Config
from .front import Backend, Front
from .plan import front_url, plan_workers
from .supervisor import Supervisor

logger = logging.getLogger("sfu.workers")
STOP_MARGIN_S = 10.0  # beyond the workers' own drain_timeout_s


def private_ports(count: int) -> list[int]:
    """Free loopback ports for the workers' HTTP (chosen once: a restarted worker keeps it)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_argv(
    config_path: str | None, log_level: str | None, log_format: str | None
) -> list[str]:
    argv = []
    if log_level:
        argv += ["--log-level", log_level]
    if log_format:
        argv += ["--log-format", log_format]
    argv += ["serve", "--workers", "1"]
    if config_path:
        argv += ["--config", config_path]
    return argv


async def run_workers(config: Config, argv: list[str]) -> None:
    count = config.server.workers
    specs = plan_workers(config, count, private_ports(count))
    backends = [Backend(s.index, s.url, s.node_id) for s in specs]
    front = Front(backends, max_body=config.limits.max_message_bytes)
    runner = web.AppRunner(front.app(), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    supervisor = Supervisor(specs, backends, argv)
    try:
        await web.TCPSite(runner, config.server.host, config.server.port).start()
        logger.info(
            "front on http://%s:%d (%s) for %d workers: %s",
            config.server.host,
            config.server.port,
            front_url(config),
            count,
            ", ".join(f"{s.node_id} on {s.url}" for s in specs),
        )
        supervisor.start()
        loop = asyncio.get_running_loop()
        signals: asyncio.Queue[int] = asyncio.Queue()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
        first = await signals.get()
        front.draining = True
        limit = config.server.drain_timeout_s + STOP_MARGIN_S
        logger.info("%s: stopping the workers (each drains; at most %g s)", first.name, limit)
        supervisor.signal_all(signal.SIGTERM)
        ending = asyncio.ensure_future(supervisor.wait(limit))
        again = asyncio.ensure_future(signals.get())
        await asyncio.wait({ending, again}, return_when=asyncio.FIRST_COMPLETED)
        if not ending.done():
            logger.info("%s again: workers stop without draining", again.result().name)
            supervisor.signal_all(signal.SIGINT)  # (their second signal: no drain)
            await ending
        again.cancel()
    finally:
        if not supervisor.stopping:
            supervisor.signal_all(signal.SIGTERM)
            await supervisor.wait(STOP_MARGIN_S)
        await runner.cleanup()
