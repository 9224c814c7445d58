"""Command line: `python -m sfu serve` runs a node, `python -m sfu token` mints a token,
`python -m sfu check-config FILE` validates a settings file, `python -m sfu nodes` lists
the cluster's live nodes, `python -m sfu loadtest` loads a node with synthetic publishers
and viewers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aiohttp.abc import AbstractAccessLogger

from .auth import NODE_WIDE_ROOMS, Grants, mint_token
from .config import Config, ConfigError
from .logs import configure_logging, set_static_fields
from .workers.plan import SUPERVISOR_AGENT


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
        if (  # the `serve --workers` supervisor's health checks (every 2 s): not worth a line
            response.status == 200
            and request.path == "/healthz"
            and request.headers.get("User-Agent") == SUPERVISOR_AGENT
        ):
            return
        self.logger.info(
            '%s "%s %s" %d %.3fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


def serve(args: argparse.Namespace) -> int:

    from .api.keys import NODE_KEY
    from .app import create_app

    config = Config.load(args.config or os.environ.get("SFU_CONFIG"), env=os.environ)
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    if args.workers is not None:
        config.server.workers = args.workers
        config.validate()  # (N > 1 needs [cluster] redis_url: a ConfigError, exit 2)
    configure_logging(
        args.log_format or config.logging.format,
        args.log_level or config.logging.level,
        region=config.server.region,
    )
    if config.server.workers > 1:
        return _serve_workers(args, config)
    loop_name = _install_uvloop()
    logging.getLogger(__name__).info("event loop: %s", loop_name)
    app = create_app(config)
    set_static_fields(node_id=app[NODE_KEY].node_id)
    asyncio.run(_run(app, config))
    return 0


def _serve_workers(args: argparse.Namespace, config: Config) -> int:
    """`serve --workers N`: a front on the public port and N worker nodes (sfu/workers/)."""
    from .workers.run import run_workers, worker_argv

    argv = worker_argv(args.config or os.environ.get("SFU_CONFIG"), args.log_level, args.log_format)
    set_static_fields(node_id=f"{config.server.node_id or config.server.region}-front")
    asyncio.run(run_workers(config, argv))
    return 0


async def _run(app, config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then drain (refuse joins, tell clients to move, wait at
    most `[server] drain_timeout_s`) and shut down. A second signal cuts the drain short."""
    import signal

    from aiohttp import web

    from .api.keys import NODE_KEY

    logger = logging.getLogger("sfu")
    runner = web.AppRunner(app, access_log_class=_AccessLogger, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.server.host, config.server.port).start()
        logger.info("listening on http://%s:%d", config.server.host, config.server.port)
        loop = asyncio.get_running_loop()
        signals: asyncio.Queue[str] = asyncio.Queue()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signals.put_nowait, sig.name)
        name = await signals.get()
        logger.info("%s: draining (at most %g s)", name, config.server.drain_timeout_s)
        drain = asyncio.ensure_future(app[NODE_KEY].drain())
        again = asyncio.ensure_future(signals.get())
        await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            logger.info("%s again: shutting down without waiting", again.result())
            drain.cancel()
        again.cancel()
    finally:
        await runner.cleanup()


def token(args: argparse.Namespace) -> int:
    """Mint a token; the scope rules (sfu/auth.py) decide which room/grant mixes make sense."""
    config = Config.load(args.config or os.environ.get("SFU_CONFIG"), env=os.environ)
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


def check_config(args: argparse.Namespace) -> int:
    """Load FILE as `serve` would (environment overrides included unless --no-env); say what
    is wrong (exit 2) or what the node would run with (exit 0; warnings exit 1 with --strict)."""
    try:
        config = Config.load(args.file, env=None if args.no_env else os.environ)
    except ConfigError as exc:
        message = str(exc)
        prefix = "" if message.startswith(str(args.file)) else f"{args.file}: "
        print(f"configuration error: {prefix}{message}", file=sys.stderr)
        return 2
    warnings = config_warnings(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    s, m = config.server, config.metrics
    metrics = "off" if not m.enabled else f"/metrics on port {m.port or s.port}"
    print(
        f"{args.file}: ok (node {s.node_id or '<generated>'}, region {s.region}, "
        f"http {s.host}:{s.port}, {len(config.auth.api_keys)} API key(s), {metrics}, "
        f"{len(config.webhooks.urls)} webhook URL(s), logs {config.logging.format})"
    )
    return 1 if warnings and args.strict else 0


def config_warnings(config: Config) -> list[str]:
    """Settings that load but should not reach production."""
    warnings = []
    if config.uses_dev_credentials:
        warnings.append("auth.api_keys holds the built-in development key: anyone can mint tokens")
    for key, secret in config.auth.api_keys.items():
        if secret.startswith("CHANGE-ME"):
            warnings.append(f"auth.api_keys.{key} is still the example placeholder secret")
    if config.server.demo_tokens:
        warnings.append("server.demo_tokens is on: anyone can get a token (demo use only)")
    m = config.metrics
    if m.enabled and m.require_token == "never" and not m.port:
        warnings.append("metrics.require_token = never on the main HTTP port: /metrics is public")
    for url in config.webhooks.urls:
        if url.startswith("http://") and not url.startswith(("http://127.", "http://localhost")):
            warnings.append(f"webhooks.urls: {url} is plain HTTP (events travel unencrypted)")
    return warnings


def nodes(args: argparse.Namespace) -> int:
    from .cluster.cli import list_nodes

    config = Config.load(args.config or os.environ.get("SFU_CONFIG"), env=os.environ)
    return list_nodes(config, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sfu", description=__doc__)
    parser.add_argument("--log-level", help="debug, info, warning, error ([logging] level)")
    parser.add_argument(
        "--log-format", choices=("text", "json"), help="log lines as text or JSON ([logging])"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run one SFU node")
    p_serve.add_argument("--config", help="TOML settings file (default: $SFU_CONFIG, or built in)")
    p_serve.add_argument("--host", help="HTTP bind address (overrides the config)")
    p_serve.add_argument("--port", type=int, help="HTTP port (overrides the config)")
    p_serve.add_argument(
        "--workers",
        type=int,
        help="node processes behind this one HTTP port ([server] workers; default 1; "
        "more than 1 needs [cluster] redis_url)",
    )
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

    p_check = sub.add_parser("check-config", help="validate a settings file and say what is wrong")
    p_check.add_argument("file", help="TOML settings file")
    p_check.add_argument("--no-env", action="store_true", help="ignore SFU_* environment overrides")
    p_check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p_check.set_defaults(func=check_config)

    p_nodes = sub.add_parser("nodes", help="list the cluster's live nodes and their load")
    p_nodes.add_argument("--config", help="TOML settings file (for [cluster] redis_url)")
    p_nodes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_nodes.set_defaults(func=nodes)
    p_load = sub.add_parser(
        "loadtest", help="synthetic publishers and counting viewers against a node"
    )
    from .loadtest.runner import add_arguments as add_loadtest_arguments

    add_loadtest_arguments(p_load)
    p_load.set_defaults(func=loadtest)
    return parser


def loadtest(args: argparse.Namespace) -> int:
    """Publishers replaying pre-encoded media and packet-counting viewers (sfu/loadtest/)."""
    from .loadtest.runner import main as run_loadtest

    return run_loadtest(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format or "text", args.log_level or "info")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
