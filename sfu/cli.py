"""Command line: `python -m sfu serve` runs a node, `python -m sfu token` mints a token,
`python -m sfu nodes` lists the cluster's live nodes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp.abc import AbstractAccessLogger

from .auth import Grants, mint_token
from .config import Config, ConfigError


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


class _AccessLogger(AbstractAccessLogger):
    """Access log without query strings: WebSocket joins may carry a token there."""

    def log(self, request, response, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.3fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app

    config = Config.load(args.config)
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    loop_name = _install_uvloop()
    logging.getLogger(__name__).info("event loop: %s", loop_name)
    app = create_app(config)
    web.run_app(
        app,
        host=config.server.host,
        port=config.server.port,
        print=lambda _: logging.getLogger("sfu").info(
            "listening on http://%s:%d", config.server.host, config.server.port
        ),
        shutdown_timeout=5.0,
        access_log_class=_AccessLogger,
    )
    return 0


def token(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    grants = Grants(
        publish=args.publish, subscribe=args.subscribe, admin=args.admin, agent=args.agent
    )
    if not any((grants.publish, grants.subscribe, grants.admin, grants.agent)):
        grants = Grants(publish=True, subscribe=True)
        print("no grant given: granting publish and subscribe", file=sys.stderr)
    value = mint_token(
        config.auth,
        identity=args.identity,
        room=args.room,
        grants=grants,
        ttl_s=args.ttl,
        name=args.name or "",
    )
    print(value)
    return 0


def nodes(args: argparse.Namespace) -> int:
    from .cluster.cli import list_nodes

    return list_nodes(Config.load(args.config), as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sfu", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run one SFU node")
    p_serve.add_argument("--config", help="TOML settings file (defaults built in)")
    p_serve.add_argument("--host", help="HTTP bind address (overrides the config)")
    p_serve.add_argument("--port", type=int, help="HTTP port (overrides the config)")
    p_serve.set_defaults(func=serve)

    p_token = sub.add_parser("token", help="print an access token (last line: the token)")
    p_token.add_argument("--room", required=True, help="room name, or '*' for any room")
    p_token.add_argument("--identity", required=True)
    p_token.add_argument("--name", help="display name")
    p_token.add_argument("--publish", action="store_true")
    p_token.add_argument("--subscribe", action="store_true")
    p_token.add_argument("--admin", action="store_true")
    p_token.add_argument("--agent", action="store_true")
    p_token.add_argument("--ttl", type=int, help="lifetime in seconds")
    p_token.add_argument("--config", help="TOML settings file (for the API key and secret)")
    p_token.set_defaults(func=token)

    p_nodes = sub.add_parser("nodes", help="list the cluster's live nodes and their load")
    p_nodes.add_argument("--config", help="TOML settings file (for [cluster] redis_url)")
    p_nodes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_nodes.set_defaults(func=nodes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
