"""The aiohttp application: the whole server as one embeddable object.

The routes live in sfu/api/ (each a thin adapter over its wire format); every join, WHIP and
WHEP request goes down the one join path, sfu/rooms/joins.py.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .api import captions, whip
from .api.agents import add_agent_routes
from .api.http_join import add_http_join_routes
from .api.keys import NODE_KEY
from .api.websocket import websocket_handler
from .auth import AUTH_KEY, require_grant
from .cluster.relay_routes import add_relay_routes
from .cluster.views import rooms_response
from .config import Config
from .demo import add_demo_routes
from .metrics.routes import add_metrics
from .node import SfuNode
from .recording.routes import add_recording
from .webhooks.events import add_webhooks

logger = logging.getLogger(__name__)


def create_app(config: Config | None = None) -> web.Application:
    """Build the SFU as an aiohttp application.

    Run it with `web.run_app(app)` or mount it in your own service with
    `parent.add_subapp("/sfu/", create_app(config))`. Shutting the application down closes
    every peer connection.
    """
    config = config or Config()
    config.validate()
    node = SfuNode(config)
    app = web.Application(client_max_size=config.limits.max_message_bytes)
    app[NODE_KEY] = node
    app[AUTH_KEY] = config.auth
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/rtc", websocket_handler)
    add_http_join_routes(app)  # POST /rtc/join (the fast join), /rtc/answer, /rtc/leave
    app.router.add_get("/api/rooms", list_rooms)
    app.router.add_get("/api/stats", node_stats)
    whip.add_routes(app)
    add_relay_routes(app, node.relay_origin)  # /internal/relay: other nodes of the cluster
    add_demo_routes(app, node)
    add_agent_routes(app, node)
    captions.add_routes(app, node)
    add_webhooks(app, node)  # [webhooks] urls: signed events to the shop's backend
    add_recording(app, node)  # [recording]: shows to WebM + WebVTT, replay links
    add_metrics(app, node)  # GET /metrics ([metrics]); after the agents and webhooks
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_startup(app: web.Application) -> None:
    node = app[NODE_KEY]
    if node.config.uses_dev_credentials:
        logger.warning(
            "\n" + "!" * 78 + "\n"
            "!!  USING THE BUILT-IN DEVELOPMENT API KEY AND SECRET. Anyone can mint tokens.\n"
            "!!  Set [auth] api_keys in a config file before exposing this node.\n" + "!" * 78
        )
    if node.config.server.demo_tokens:
        logger.warning("demo token endpoint is ON: anyone can get a token; demo use only")
    await node.cluster.start()
    node.remote_rooms.start()
    node.fallbacks.start()
    logger.info("SFU node %s (region %s) ready", node.node_id, node.config.server.region)


async def _on_shutdown(app: web.Application) -> None:
    await app[NODE_KEY].close()


async def healthz(request: web.Request) -> web.Response:
    """200 `ok`; 503 `draining` once the node drains, so a load balancer stops sending joins."""
    node = request.app[NODE_KEY]
    return web.json_response(
        {
            "status": "draining" if node.draining else "ok",
            "node_id": node.node_id,
            "region": node.config.server.region,
        },
        status=503 if node.draining else 200,
    )


async def list_rooms(request: web.Request) -> web.Response:
    """Rooms and participants: all of them for a node-wide admin, its own for a room admin;
    each participant and track names its node; `?scope=cluster`: from the cluster's room
    directory, every node's (docs/cluster.md)."""
    access = require_grant(request, "admin")
    only = None if access.node_wide else access.room
    return await rooms_response(request.app[NODE_KEY], request.query.get("scope", "local"), only)


async def node_stats(request: web.Request) -> web.Response:
    """Per-participant statistics; a room admin gets its room's only (and no node-wide join
    summary or cluster status)."""
    access = require_grant(request, "admin")
    stats = request.app[NODE_KEY].stats()
    if not access.node_wide:
        stats["rooms"] = [r for r in stats["rooms"] if r["name"] == access.room]
        stats.pop("joins", None)
        stats.pop("cluster", None)
    return web.json_response(stats)
