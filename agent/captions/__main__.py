"""Run one captioner by hand (or from the demo server's captions switch):

    python -m agent.captions --url http://127.0.0.1:8080 --room live-demo --dev-token
    CAPTIONS_TOKEN=... python -m agent.captions --url ... --room ... [--config configs/agent.toml]

The token (CAPTIONS_TOKEN, never on the command line where `ps` shows it) needs the `subscribe`
and `agent` grants for the room; `--dev-token` mints one with the built-in development key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from ..config import load_config
from .job import run_captions_job


def _dev_token(room: str) -> str:
    from sfu.auth import Grants, mint_token
    from sfu.config import AuthSettings

    return mint_token(
        AuthSettings(),
        identity=f"captioner-{secrets.token_hex(4)}",
        room=room,
        grants=Grants(subscribe=True, agent=True),
        ttl_s=12 * 3600,
    )


async def _main(args: argparse.Namespace) -> int:
    token = os.environ.get("CAPTIONS_TOKEN") or (_dev_token(args.room) if args.dev_token else "")
    if not token:
        print("set CAPTIONS_TOKEN or pass --dev-token", file=sys.stderr)
        return 2
    config = load_config(args.config)
    if args.idle_exit_s is not None:
        config.captions.idle_exit_s = args.idle_exit_s
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    stats: dict = {}
    await run_captions_job(args.url, token, args.room, config, stop=stop, stats=stats)
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats))  # noqa: ASYNC240 - the job is over
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.captions", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the SFU's http base")
    parser.add_argument("--room", required=True)
    parser.add_argument("--config", help="agent TOML (default configs/agent.toml)")
    parser.add_argument("--dev-token", action="store_true", help="mint a token with the dev key")
    parser.add_argument("--idle-exit-s", type=float, help="leave after this long with no host")
    parser.add_argument("--stats-json", help="write counters here on exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
