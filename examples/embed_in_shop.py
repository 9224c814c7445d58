"""Embed the SFU in a shop's own aiohttp service, under /live/.

The shop keeps its routes; the SFU is one sub-application beside them. The shop's backend
shares the SFU's API secret and mints tokens for its customers itself (here: a viewer token
at /live-token/{room}), so browsers never see the secret.

    python examples/embed_in_shop.py [--config configs/local.toml] [--port 8000]

Then:
    curl http://127.0.0.1:8000/                     # the shop
    curl http://127.0.0.1:8000/live/healthz         # the SFU
    curl http://127.0.0.1:8000/live-token/demo      # a subscribe-only token for room "demo"
    WebSocket ws://127.0.0.1:8000/live/rtc, WHIP/WHEP POST http://127.0.0.1:8000/live/whip/demo

Stopping the service (Ctrl-C) shuts the SFU down with it: every peer connection is closed.
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

import sfu
from sfu.auth import Grants, mint_token

SFU_APP: web.AppKey[web.Application] = web.AppKey("sfu_app", web.Application)
SFU_CONFIG: web.AppKey[sfu.Config] = web.AppKey("sfu_config", sfu.Config)


async def index(request: web.Request) -> web.Response:
    return web.Response(text="Welcome to the shop. Live selling is at /live/.\n")


async def live_token(request: web.Request) -> web.Response:
    """A viewer token for a room; a real shop would check the customer's session first."""
    config = request.app[SFU_CONFIG]
    token = mint_token(
        config.auth,
        identity=request.query.get("identity", "guest"),
        room=request.match_info["room"],
        grants=Grants(subscribe=True),
        ttl_s=3600,
    )
    return web.json_response({"token": token, "url": str(request.url.with_path("/live"))})


def create_shop_app(config: sfu.Config | None = None) -> web.Application:
    """The shop's application with the SFU mounted at /live/."""
    config = config or sfu.Config()
    shop = web.Application()
    shop.router.add_get("/", index)
    shop.router.add_get("/live-token/{room}", live_token)
    sfu_app = sfu.create_app(config)
    shop.add_subapp("/live/", sfu_app)  # its startup and shutdown run with the shop's
    shop[SFU_APP] = sfu_app
    shop[SFU_CONFIG] = config
    return shop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="SFU settings file (TOML); built-in defaults if absent")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    config = sfu.Config.load(args.config)
    web.run_app(create_shop_app(config), host=args.host, port=args.port, shutdown_timeout=5.0)


if __name__ == "__main__":
    main()
