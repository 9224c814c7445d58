#!/usr/bin/env python3
"""A live node for the robustness benchmarks (soak.py, attack.py).

`LiveNode` runs `python -m sfu serve` with a generated config (its log captured and read back
for tracebacks and ERROR records) and a *stage* worker process beside it: a publisher of
pre-encoded media (as benchmarks/fanout.py does) and an observer viewer that counts the packets
it receives and writes the running count to a file twice a second. The benchmark then asks
what the observer's packet rate was between two instants, and what the node process costs
(CPU, RSS, file descriptors) from /proc.

The worker side runs as this script: `livenode.py stage ...` (publisher + observer) and
`livenode.py viewers ...` (viewers that join, get media and wait to be killed: the soak's
viewers that vanish without leaving).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Child,
    Log,
    SfuProcess,
    print_log_tail,
    proc_cpu_s,
    proc_fd_targets,
    proc_fds,
    proc_rss_mb,
    proc_sockets,
    proc_udp_ports,
    sigterm_as_interrupt,
    token,
    until,
)

SCRIPT = Path(__file__).resolve()
ROOM = "live"
PUBLISHER = "stage-publisher"
OBSERVER = "stage-observer"
SAMPLE_S = 0.5
NODE_START_S = 20.0
STAGE_READY_S = 40.0
CLIP_S = 4.0  # pre-encoded media, looped

_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) ")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def auth():
    """The settings tokens are signed with: the node runs with the built-in (development) key."""
    from sfu.config import Config

    return Config().auth


def loopback():
    from sfu.media.peer import NetworkSettings

    return NetworkSettings(addresses=("127.0.0.1",))


@dataclass
class LogProblems:
    """What a stretch of the node's log says went wrong."""

    errors: int = 0  # ERROR/CRITICAL records, plus tracebacks printed outside any record
    tracebacks: int = 0  # "Traceback (most recent call last)" headers (chained ones once)
    samples: list[str] = field(default_factory=list)  # the first few distinct lines


def scan_log(text: str, keep: int = 8) -> LogProblems:
    """Count error records and tracebacks in the node's log (format of `python -m sfu`)."""
    found = LogProblems()
    level = ""
    chained = False
    for line in text.splitlines():
        record = _RECORD.match(line)
        if record:
            level = record.group(1)
            if level in ("ERROR", "CRITICAL"):
                found.errors += 1
                if len(found.samples) < keep and line[24:] not in found.samples:
                    found.samples.append(line[24:][:300])
            continue
        if line.startswith(_CHAINED):
            chained = True
        elif line.startswith("Traceback (most recent call last)"):
            if not chained:
                found.tracebacks += 1
                if level not in ("ERROR", "CRITICAL"):
                    found.errors += 1  # a traceback without an error record (stderr, warnings)
                    level = "ERROR"
            chained = False
        elif line and not line.startswith(" "):
            # the exception line ends a traceback; a bare line after it is not a record
            if level not in ("ERROR", "CRITICAL") and line.startswith(("Exception", "Task ")):
                found.errors += 1
                level = "ERROR"
    return found


class LiveNode:
    """The node under test and its stage (publisher + observer), restartable."""

    def __init__(self, workdir: Path, log: Log, extra_toml: str = "") -> None:
        self.workdir = workdir
        self.log = log
        self.extra_toml = extra_toml
        self.log_path = workdir / "node.log"
        self.stage_log = workdir / "stage.log"
        self.rates_path = workdir / "stage-rates.jsonl"
        self.sfu: SfuProcess | None = None
        self.stage: Child | None = None
        self.starts = 0
        self.admin = token(auth(), "bench-admin", "*", admin=True)

    # -- processes --------------------------------------------------------------------------------

    async def start(self, stage: bool = True) -> None:
        """Start the node (and the stage); raise if either is not ready in time."""
        config = self.workdir / "node.toml"
        sfu = SfuProcess(self.log_path, config, log_level="WARNING")
        config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {sfu.port}\n'
            '[media]\nbind_addresses = ["127.0.0.1"]\n' + self.extra_toml
        )
        sfu.start(append=self.starts > 0)
        self.sfu = sfu
        self.starts += 1
        await sfu.wait_ready(NODE_START_S)
        if stage:
            await self.start_stage()

    async def start_stage(self) -> None:
        self.stop_stage()
        self.rates_path.write_text("")
        argv = [sys.executable, str(SCRIPT), "stage", "--url", self.url, "--room", ROOM]
        argv += ["--out", str(self.rates_path)]
        self.stage = Child(argv, self.stage_log)
        self.stage.start(append=True)

        def ready() -> bool:
            if self.stage is None or not self.stage.alive:
                raise RuntimeError(f"the stage worker exited; see {self.stage_log}")
            samples = self.samples()
            return bool(samples and samples[-1]["ready"] and samples[-1]["packets"] > 100)

        if not await until(ready, STAGE_READY_S, 0.25):
            raise TimeoutError("the stage's observer got no media in time")

    def stop_stage(self) -> None:
        if self.stage is not None:
            self.stage.stop(grace_s=3.0)
            self.stage = None

    def stop(self) -> None:
        self.stop_stage()
        if self.sfu is not None:
            self.sfu.stop(grace_s=3.0)
            self.sfu = None

    async def restart(self) -> None:
        self.log("restarting the node and its stage")
        await asyncio.to_thread(self.stop)
        await self.start()

    @property
    def url(self) -> str:
        assert self.sfu is not None
        return self.sfu.url

    @property
    def pid(self) -> int:
        assert self.sfu is not None
        return self.sfu.pid

    @property
    def alive(self) -> bool:
        return self.sfu is not None and self.sfu.alive

    # -- what the node costs -------------------------------------------------------------------

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(self.pid))

    def rss_mb(self) -> float:
        return proc_rss_mb(self.pid)

    def fds(self) -> int:
        return proc_fds(self.pid)

    def fd_targets(self) -> dict[int, str]:
        """Each open descriptor's target; sockets as `socket tcp :port->:port STATE` etc."""
        sockets = proc_sockets(self.pid)
        out = {}
        for fd, target in proc_fd_targets(self.pid).items():
            if target.startswith("socket:["):
                target = f"socket {sockets.get(target[8:-1], '?')}"
            out[fd] = target
        return out

    def udp_ports(self) -> list[int]:
        return proc_udp_ports(self.pid)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_problems(self, since: int = 0) -> LogProblems:
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return scan_log(f.read().decode(errors="replace"))

    async def healthz_ms(self, timeout: float = 5.0) -> float | None:
        """How long /healthz takes to answer (None: no answer within `timeout`)."""
        import aiohttp

        t0 = time.monotonic()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                http.get(f"{self.url}/healthz") as r,
            ):
                if r.status != 200:
                    return None
        except (TimeoutError, OSError, aiohttp.ClientError):
            return None
        return round((time.monotonic() - t0) * 1000, 1)

    async def participants(self, room: str = ROOM, timeout: float = 5.0) -> list[str] | None:
        """Identities in `room` per /api/stats (None when the node does not answer)."""
        import aiohttp

        headers = {"Authorization": f"Bearer {self.admin}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                http.get(f"{self.url}/api/stats", headers=headers) as r,
            ):
                stats = await r.json()
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError):
            return None
        for entry in stats.get("rooms", []):
            if entry.get("name") == room:
                return [p["identity"] for p in entry.get("participants", [])]
        return []

    # -- the observer ------------------------------------------------------------------------------

    def samples(self) -> list[dict]:
        """The observer's running packet count: {"t": monotonic, "packets": n, "ready": bool}."""
        out = []
        with contextlib.suppress(OSError), open(self.rates_path) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def observer_rate(self, t0: float, t1: float) -> float | None:
        return rate_between(self.samples(), t0, t1)

    def observer_min_rate(self, t0: float, t1: float, bucket_s: float = 1.0) -> float | None:
        return min_rate(self.samples(), t0, t1, bucket_s)


def run_bench(
    prefix: str, body: Callable[[LiveNode], Awaitable[dict]], budget_s: float, log: Log
) -> dict | None:
    """Run `body(node)` with a LiveNode in a temporary folder, bounded by `budget_s`.

    Ctrl-C and SIGTERM stop it cleanly (None); a failure prints the tails of the node's and
    the stage's logs and raises. The node and its stage are stopped either way."""
    sigterm_as_interrupt()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        node = LiveNode(Path(tmp), log)
        try:
            return asyncio.run(asyncio.wait_for(body(node), budget_s))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return None
        except Exception:
            print_log_tail(node.log_path)
            print_log_tail(node.stage_log)
            raise
        finally:
            node.stop()


def _count_at(samples: list[dict], t: float) -> tuple[float, int] | None:
    """The last sample at or before `t`."""
    best = None
    for s in samples:
        if s["t"] <= t:
            best = (s["t"], s["packets"])
        else:
            break
    return best


def rate_between(samples: list[dict], t0: float, t1: float) -> float | None:
    """Packets per second the observer counted between the samples nearest t0 and t1.

    A stage that stopped writing samples (its process starved or gone) counts as receiving
    nothing past its last sample."""
    a = _count_at(samples, t0)
    b = _count_at(samples, t1)
    if a is None or b is None or t1 <= t0:
        return None
    stalled = b[0] < t1 - 2 * SAMPLE_S
    span = (t1 - a[0]) if stalled else (b[0] - a[0])
    return (b[1] - a[1]) / span if span > 0 else 0.0


def min_rate(samples: list[dict], t0: float, t1: float, bucket_s: float = 1.0) -> float | None:
    """The lowest rate over consecutive `bucket_s` windows in [t0, t1]."""
    rates = []
    t = t0
    while t + bucket_s <= t1 + 1e-9:
        r = rate_between(samples, t, t + bucket_s)
        if r is not None:
            rates.append(r)
        t += bucket_s
    return round(min(rates), 1) if rates else None


# -- worker processes -----------------------------------------------------------------------------


async def run_stage(args: argparse.Namespace) -> None:
    """Publisher of pre-encoded media and an observer viewer counting what it receives."""
    from benchmarks.fanout import (
        AUDIO_FRAME,
        AUDIO_RATE,
        FPS,
        VIDEO_CLOCK,
        encode_audio,
        encode_video,
        looping_track,
        subscriber_client_class,
    )
    from sfu.client import RoomClient

    video, audio = encode_video(CLIP_S), encode_audio(CLIP_S)
    a = auth()
    publisher = await RoomClient.connect(
        args.url,
        token(a, PUBLISHER, args.room, publish=True),
        network=loopback(),
        auto_subscribe=False,
        publish=[
            looping_track("video", video, FPS, VIDEO_CLOCK),
            looping_track("audio", audio, AUDIO_RATE / AUDIO_FRAME, AUDIO_RATE),
        ],
        sources=["camera", "microphone"],
        timeout=20,
    )
    observer = await subscriber_client_class().connect(
        args.url, token(a, OBSERVER, args.room, subscribe=True), network=loopback(), timeout=20
    )
    while not (publisher.closed and observer.closed):
        packets = sum(len(s.seqs) for s in observer.counter.streams.values())
        sample = {"t": time.monotonic(), "packets": packets, "ready": observer.has_media()}
        append_line(args.out, json.dumps(sample))
        await asyncio.sleep(SAMPLE_S)


async def run_viewers(args: argparse.Namespace) -> None:
    """Viewers that join, tell the parent (a line in --out) once they all get media, and wait
    to be killed: vanishing without a word, as a phone that loses its network does."""
    from benchmarks.fanout import subscriber_client_class

    cls = subscriber_client_class()
    a = auth()
    viewers = []
    for identity in args.identities.split(","):
        viewers.append(
            await cls.connect(
                args.url, token(a, identity, args.room, subscribe=True), network=loopback()
            )
        )
    ready = await until(lambda: all(v.has_media() for v in viewers), 20)
    append_line(args.out, json.dumps({"ready": ready, "count": len(viewers)}))
    await asyncio.sleep(600)  # (the parent kills this process long before)


def append_line(path: str, line: str) -> None:
    """One line onto a small file the parent reads (a few lines a second: no need for a thread)."""
    with open(path, "a") as f:
        f.write(line + "\n")


def worker_main(argv: list[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(description="a worker process of the live-node benchmarks")
    parser.add_argument("role", choices=("stage", "viewers"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default=ROOM)
    parser.add_argument("--out", required=True)
    parser.add_argument("--identities", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.ERROR)
    asyncio.run(run_stage(args) if args.role == "stage" else run_viewers(args))
    return 0


async def spawn_viewers(node: LiveNode, identities: list[str], tag: str) -> tuple[Child, Path]:
    """Start a `viewers` worker; returns it and the file it writes once they get media."""
    out = node.workdir / f"viewers-{tag}.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, str(SCRIPT), "viewers", "--url", node.url, "--room", ROOM]
    argv += ["--out", str(out), "--identities", ",".join(identities)]
    child = Child(argv, node.workdir / "viewers.log")
    child.start(append=True)
    return child, out


def result_of(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


if __name__ == "__main__":
    sys.exit(worker_main())
