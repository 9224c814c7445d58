"""The load-test orchestrator: worker processes, a live progress line, the final report.

Publishers join first (one worker process), then viewers (spread over `--processes` worker
processes, joining one at a time per process). Everything is bounded: joins get
`--join-window` seconds, the measurement `--duration` seconds, and the whole run a hard
deadline after which workers are killed. Tokens are minted here from --api-key/--api-secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .report import build_report, print_table

GRACE_S = 30.0  # after the planned end: encode, close, report


class Worker:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.progress: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.result: dict[str, Any] | None = None
        self.stderr_tail: list[str] = []
        self.reader = asyncio.ensure_future(self._read())
        self.errors = asyncio.ensure_future(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr_tail = [*self.stderr_tail[-9:], line.decode(errors="replace").rstrip()]

    def failure(self) -> str:
        """Why this worker gave no result (its last stderr lines)."""
        tail = " | ".join(line for line in self.stderr_tail if line.strip())[-300:]
        return f"{self.name} worker gave no result (exit {self.proc.returncode}): {tail}"

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            event = message.get("event")
            if event == "progress":
                self.progress = message
            elif event == "ready":
                self.progress.update(message)
                self.ready.set()
            elif event == "result":
                self.result = message
        self.ready.set()


async def spawn(name: str, settings: dict[str, Any]) -> Worker:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfu.loadtest.worker",
        json.dumps(settings),
        stdin=asyncio.subprocess.PIPE,  # publishers stop when it closes
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Worker(name, proc)


def progress_line(start: float, publishers: Worker, viewers: list[Worker], total: int) -> str:
    joined = sum(w.progress.get("joined", 0) for w in viewers)
    failed = sum(w.progress.get("failed", 0) for w in viewers)
    media = sum(w.progress.get("media", 0) for w in viewers)
    octets = sum(w.progress.get("octets", 0) for w in viewers)
    published = publishers.progress.get("published", "…")
    return (
        f"[{time.monotonic() - start:5.1f}s] publishers {published}  viewers joined "
        f"{joined}/{total} (failed {failed}, receiving video {media})  "
        f"received {octets * 8 / 1e6:.1f} Mbit"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = {
        "url": args.url.rstrip("/"),
        "api_key": args.api_key,
        "api_secret": args.api_secret,
        "room": args.room,
        "bind": args.bind or [],
        "ttl_s": int(args.duration + args.join_window + 600),
        "join_timeout_s": args.join_timeout,
        "join_window_s": args.join_window,
        "duration_s": args.duration,
        "batch": args.batch,
    }
    width, height = (int(v) for v in args.video_size.split("x"))
    started = time.monotonic()
    hard_deadline = started + args.join_window + args.duration + GRACE_S + 30
    tty = sys.stderr.isatty()
    run_id = os.urandom(3).hex()
    publishers = await spawn(
        "publishers",
        base
        | {
            "role": "publishers",
            "identities": [f"lt-{run_id}-pub{i}" for i in range(args.publishers)],
            "video_bitrate": args.video_bitrate,
            "simulcast": args.simulcast,
            "video_size": [width, height],
            "clip_s": 4.0,
        },
    )
    workers = [publishers]
    names = [f"lt-{run_id}-view{i}" for i in range(args.viewers)]
    viewers: list[Worker] = []
    try:
        await asyncio.wait_for(publishers.ready.wait(), args.join_window + 30)
        n = max(1, min(args.processes, len(names)))
        for k in range(n if names else 0):
            worker = await spawn(
                f"viewers{k}", base | {"role": "viewers", "identities": names[k::n]}
            )
            viewers.append(worker)
        workers += viewers
        last_print = 0.0
        while any(w.result is None and w.proc.returncode is None for w in viewers):
            if time.monotonic() > hard_deadline:
                break
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if tty or now - last_print >= args.progress_every:
                line = progress_line(started, publishers, viewers, len(names))
                print(
                    ("\r" + line) if tty else line,
                    end="" if tty else "\n",
                    file=sys.stderr,
                    flush=True,
                )
                last_print = now
        if tty:
            print(file=sys.stderr)
    finally:
        for worker in workers:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
        for worker in workers:
            with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
                await asyncio.wait_for(worker.proc.wait(), 5)
            if worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await worker.proc.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(worker.reader, worker.errors), 5)
    report = build_report(
        args, publishers.result, [w.result for w in viewers], time.monotonic() - started
    )
    report["errors"] += [w.failure() for w in workers if w.result is None]
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the node's base URL, e.g. https://sfu.example.com")
    p.add_argument("--api-key", required=True, help="one of the node's [auth] API keys")
    p.add_argument(
        "--api-secret", required=True, help="its secret: the tester mints the clients' tokens"
    )
    p.add_argument("--room", default="loadtest", help="room to load (default: loadtest)")
    p.add_argument("--publishers", type=int, default=1, help="synthetic hosts (VP8 + Opus)")
    p.add_argument("--viewers", type=int, default=10, help="packet-counting subscribers")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of measurement")
    p.add_argument("--video-bitrate", type=int, default=800_000, help="publisher video bit/s")
    p.add_argument("--video-size", default="640x360", help="publisher video WxH")
    p.add_argument(
        "--simulcast",
        action="store_true",
        help="publish three VP8 layers (1/4, 1/2 and full --video-size; SSRC simulcast)",
    )
    p.add_argument("--processes", type=int, default=4, help="viewer worker processes")
    p.add_argument("--join-window", type=float, default=30.0, help="seconds allowed for joins")
    p.add_argument("--join-timeout", type=float, default=15.0, help="seconds per join")
    p.add_argument("--bind", action="append", help="local address for media (repeatable)")
    p.add_argument("--progress-every", type=float, default=2.0, help="(non-TTY) seconds")
    p.add_argument(
        "--batch",
        action="store_true",
        help="run the workers under SCHED_BATCH (when the node runs on this machine too)",
    )
    p.add_argument("--json", help="write the report as JSON to this path")


def main(args: argparse.Namespace) -> int:
    if args.publishers < 1 or args.viewers < 1 or args.duration <= 0:
        print("loadtest: need --publishers >= 1, --viewers >= 1, --duration > 0", file=sys.stderr)
        return 2
    size = args.video_size.split("x")
    if len(size) != 2 or not all(v.isdigit() and 16 <= int(v) <= 4096 for v in size):
        print("loadtest: --video-size must be WxH, e.g. 1280x720", file=sys.stderr)
        return 2
    if args.processes < 1 or args.video_bitrate < 50_000:
        print("loadtest: need --processes >= 1 and --video-bitrate >= 50000", file=sys.stderr)
        return 2
    if args.publishers > 50 or args.viewers > 2000 or args.duration > 3600:
        print("loadtest: at most 50 publishers, 2000 viewers, 3600 s", file=sys.stderr)
        return 2
    report = asyncio.run(run(args))
    print_table(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["summary"]["errors"] == 0 else 1
