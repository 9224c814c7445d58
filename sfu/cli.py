"""Command line: `python -m sfu serve` runs a node, `python -m sfu token` mints a token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp.abc import AbstractAccessLogger

from .auth import NODE_WIDE_ROOMS, Grants, mint_token
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
    """Mint a token; the scope rules (sfu/auth.py) decide which room/grant mixes make sense."""
    config = Config.load(args.config)
    grants = Grants(
        publish=args.publish, subscribe=args.subscribe, admin=args.admin, agent=args.agent
    )
    if not any((grants.publish, grants.subscribe, grants.admin, grants.agent)):
        grants = Grants(publish=True, subscribe=True)
        print("no grant given: granting publish and subscribe", file=sys.stderr)
    machine = grants.admin or grants.agent
    room = args.room
    if room is None:
        if not machine:
            print("--room is required for a publish/subscribe token", file=sys.stderr)
            return 2
        room = "*"  # admin/agent without a room: node-wide
    if room in NODE_WIDE_ROOMS and not machine:
        print(
            "a node-wide token (--room '*') acts only with --admin or --agent: "
            "name the room for a publish/subscribe token",
            file=sys.stderr,
        )
        return 2
    value = mint_token(
        config.auth,
        identity=args.identity,
        room=room,
        grants=grants,
        ttl_s=args.ttl,
        name=args.name or "",
    )
    scope = "every room (node-wide)" if room in NODE_WIDE_ROOMS else f"room {room!r}"
    granted = ", ".join(k for k, v in vars(grants).items() if v)
    print(f"token for {scope}: {granted}", file=sys.stderr)
    print(value)
    return 0


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
    p_token.add_argument(
        "--room",
        help="room name, or '*' for every room (node-wide: only with --admin or --agent; "
        "the default for those)",
    )
    p_token.add_argument("--identity", required=True)
    p_token.add_argument("--name", help="display name")
    p_token.add_argument("--publish", action="store_true")
    p_token.add_argument("--subscribe", action="store_true")
    p_token.add_argument("--admin", action="store_true")
    p_token.add_argument("--agent", action="store_true")
    p_token.add_argument("--ttl", type=int, help="lifetime in seconds")
    p_token.add_argument("--config", help="TOML settings file (for the API key and secret)")
    p_token.set_defaults(func=token)
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
