"""GET /metrics: on the main HTTP port, or on a separate listener (`[metrics] port`).

Each application has its own CollectorRegistry (several nodes run in one test process, and a
shop's own service may have its own metrics): the node's collector plus the process collector
(CPU, memory, file descriptors). Token: `require_token = "auto"` asks for an admin token
(node-wide, Authorization: Bearer) on the main port, where the internet may reach it, and none on a
separate metrics port, which should be reachable from the scraper's network only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest

from ..agents import AGENTS_KEY
from ..auth import AUTH_KEY, require_grant
from ..webhooks.events import WEBHOOKS_KEY
from .collector import SfuCollector, retire_participant, retire_producer
from .observers import EventMetrics
from .totals import Totals

if TYPE_CHECKING:
    from ..media.producer import Producer
    from ..node import SfuNode
    from ..room import Room
    from ..rooms.participant import Participant

logger = logging.getLogger(__name__)

LAG_INTERVAL_S = 0.5
# the classic text format: every Prometheus version reads it (our names are all plain ASCII)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeMetrics:
    """The registry and the state behind it, for one node."""

    def __init__(self, node: SfuNode, app: web.Application) -> None:
        self.node = node
        self.settings = node.config.metrics
        self.totals = Totals()
        self.events = EventMetrics()
        self.registry = CollectorRegistry(auto_describe=False)
        dispatcher = app.get(AGENTS_KEY)
        self.collector = SfuCollector(
            node,
            self.totals,
            self.events,
            dispatcher=dispatcher,
            webhooks=app.get(WEBHOOKS_KEY),
        )
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        node.rooms.observers.append(self._on_room_event)
        node.rooms.data_observers.append(self.events.on_data)
        if dispatcher is not None:
            dispatcher.job_listeners.append(self.events.on_job_event)
        self._lag_task: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None

    def _on_room_event(
        self, event: str, room: Room, participant: Participant | None, producer: Producer | None
    ) -> None:
        # last readings of what goes away, so the node's totals never go down
        if event == "participant_left" and participant is not None:
            retire_participant(self.totals, participant)
        elif event == "track_unpublished" and producer is not None:
            retire_producer(self.totals, producer)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def token_required(self, separate_port: bool) -> bool:
        mode = self.settings.require_token
        return mode == "always" or (mode == "auto" and not separate_port)

    async def handle(self, request: web.Request, separate_port: bool = False) -> web.Response:
        if self.token_required(separate_port):
            # the whole node's figures: a node-wide admin token, not a room admin's
            require_grant(request, "admin", node_wide=True)
        body = self.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._lag_task = asyncio.ensure_future(self._measure_lag())
        if self.settings.port:
            server = self.node.config.server
            host = self.settings.host or server.host
            app = web.Application()
            app[AUTH_KEY] = self.node.config.auth

            async def metrics(request: web.Request) -> web.Response:
                return await self.handle(request, separate_port=True)

            app.router.add_get("/metrics", metrics)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, host, self.settings.port).start()
            logger.info("metrics on http://%s:%d/metrics", host, self.settings.port)

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
        if self._runner is not None:
            await self._runner.cleanup()

    async def _measure_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_INTERVAL_S)
            self.events.loop_lag.observe(max(0.0, loop.time() - start - LAG_INTERVAL_S))


METRICS_KEY: web.AppKey[NodeMetrics] = web.AppKey("metrics", NodeMetrics)


def add_metrics(app: web.Application, node: SfuNode) -> NodeMetrics | None:
    """GET /metrics for `node` (call after the agent and webhook routes exist)."""
    if not node.config.metrics.enabled:
        return None
    metrics = NodeMetrics(node, app)
    app[METRICS_KEY] = metrics
    if not node.config.metrics.port:
        app.router.add_get("/metrics", metrics.handle)

    async def start(app: web.Application) -> None:
        await metrics.start()

    async def stop(app: web.Application) -> None:
        await metrics.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return metrics
