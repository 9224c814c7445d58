#!/usr/bin/env python3
"""Scale benchmark: the fan-out harness against one node process and against
`serve --workers 2` (two nodes of one cluster behind one port), on this machine.

    .venv/bin/python benchmarks/scale.py --json build/scale.json
    .venv/bin/python benchmarks/scale.py --quick --json build/scale-quick.json

For each setup, one publisher and subscribers (benchmarks/fanout.py's worker processes:
pre-encoded VP8 + Opus replayed, subscribers that count packets and decode nothing) join
through the one HTTP port: S subscribers for 1 worker, 2 x S for 2 workers (each worker then
carries what the single one did: "N workers serve N times the viewers"); `--same-subscribers`
gives both setups S. With 2 workers the front spreads the subscribers over both nodes and the
one that does not hold the publisher receives its tracks over a relay, as in a real cluster.
Measured over a window after every subscriber receives media: the CPU time of every process
of the SFU (the node; or the front and both workers), and the packets subscribers received.
`subscribers_per_core` = subscribers / (SFU CPU seconds / window seconds): how many such
viewers one core carries. Target: 2 workers >= 0.8 x 1 worker per core (near-linear).

A worker's cost per delivered packet falls as its fan-out grows (the receive side of each
packet is paid once per process, the send side once per subscriber), so with the same S split
over two workers each has half the fan-out and a second receive (the relay): that comparison
(`--same-subscribers`) says what spreading a small audience costs, not how the machine scales.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import fanout  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Log,
    SfuProcess,
    command_line,
    free_port,
    machine,
    machine_busy,
    mark,
    metric_table,
    print_log_tail,
    proc_cpu_s,
    quantile,
    sigterm_as_interrupt,
    write_json,
)

log = Log("scale")
TARGET_RATIO = 0.8  # per-core capacity of 2 workers relative to 1
SFU_START_S = 30.0
SFU_STOP_S = 15.0  # (the workers drain before the front exits)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def tree(pid: int) -> list[int]:
    """`pid` and its children (the front and its workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [pid, *(int(p) for p in path.read_text().split())]
    except OSError:
        return [pid]


def sfu_env(workers: int, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    if workers > 1:
        env["SFU_WORKERS"] = str(workers)
        env["SFU_REDIS_URL"] = redis_url
    return env


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(workdir), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"redis://127.0.0.1:{port}/0"


async def measure(
    args: argparse.Namespace,
    workdir: Path,
    worker_log,
    workers: int,
    redis_url: str,
    subscribers: int,
) -> dict:
    """One fan-out run with `subscribers` against `workers` node processes behind one port."""
    import aiohttp

    sfu = SfuProcess(workdir / f"sfu-{workers}.log", env=sfu_env(workers, redis_url))
    url = sfu.url
    stats_urls = [url] if workers == 1 else [f"{url}/_worker/{i}" for i in range(workers)]
    try:
        sfu.start()
        await sfu.wait_ready(SFU_START_S)  # (the front answers 200 once every worker does)
        pids = tree(sfu.pid)
        if len(pids) != workers + (workers > 1):
            raise RuntimeError(f"expected the front and {workers} workers, found {pids}")
        await asyncio.sleep(1.0)
        idle0 = {pid: proc_cpu_s(pid) for pid in pids}
        await asyncio.sleep(args.idle_seconds)  # no clients yet: the fixed cost of each process
        idle = {pid: sum(proc_cpu_s(pid)) - sum(idle0[pid]) for pid in pids}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            log(f"{workers} worker(s): SFU pid {sfu.pid} on {url}")
            hard_deadline = time.monotonic() + args.deadline
            common = ["--url", url, "--deadline", str(hard_deadline), "--batch-clients"]
            publisher = await fanout.start_worker(
                "publisher",
                ["--worker", "publisher", "--clip-seconds", str(args.clip_seconds), *common],
                workdir / f"publisher-{workers}.pickle",
                worker_log,
            )
            await publisher.wait(
                lambda: publisher.last("ready"), fanout.PUBLISHER_READY_S, "publish"
            )
            n_procs = min(args.client_procs, subscribers)
            groups = [list(range(i, subscribers, n_procs)) for i in range(n_procs)]
            subs = []
            for i, group in enumerate(groups):
                identities = ",".join(f"viewer{j:03d}" for j in group)
                subs.append(
                    await fanout.start_worker(
                        f"subscribers-{i}",
                        ["--worker", "subscribers", "--identities", identities, *common],
                        workdir / f"subscribers-{workers}-{i}.pickle",
                        worker_log,
                    )
                )
            join_s = await fanout.wait_all_receiving(
                subs, groups, fanout.SUBSCRIBERS_READY_S, "video and audio at every subscriber"
            )
            log(f"{subscribers} subscribers receive media after {join_s:.1f} s")
            await asyncio.sleep(args.warmup)

            admin = fanout.token("bench-admin", admin=True)
            if tree(sfu.pid) != pids:
                raise RuntimeError("a worker of the SFU was started again during the run")
            per_worker0 = [await fanout.sfu_sent(session, u, admin) for u in stats_urls]
            cpu0 = {pid: proc_cpu_s(pid) for pid in pids}
            busy0 = machine_busy()
            t0 = time.monotonic()
            await asyncio.sleep(args.seconds)
            t1 = time.monotonic()
            cpu1 = {pid: proc_cpu_s(pid) for pid in pids}
            busy1 = machine_busy()
            per_worker1 = [await fanout.sfu_sent(session, u, admin) for u in stats_urls]
        await asyncio.gather(*(fanout.stop_worker(w) for w in [publisher, *subs]))
        found = fanout.analyse(publisher.out, [w.out for w in subs], t0, t1)
    finally:
        await fanout.stop_children(3.0)
        await asyncio.to_thread(sfu.stop, SFU_STOP_S)

    window = t1 - t0
    cpu = {pid: sum(cpu1[pid]) - sum(cpu0[pid]) for pid in pids}
    sfu_cpu = sum(cpu.values())
    delivered = found["received"]
    loss = 100.0 * (1 - delivered / found["expected"]) if found["expected"] else 100.0
    sent = [b[0] - a[0] for a, b in zip(per_worker0, per_worker1, strict=True)]
    machine_pct = 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * (os.cpu_count() or 1)
    return {
        "workers": workers,
        "subscribers": subscribers,
        "downtracks_per_worker": [a[2] for a in per_worker1],  # (a subscriber has two)
        "seconds": round(window, 2),
        "packets_delivered": delivered,
        "packets_sent_per_worker": sent,
        "loss_pct": round(loss, 4),
        "sfu_cpu_s": round(sfu_cpu, 3),
        "sfu_cpu_pct": round(100 * sfu_cpu / window, 2),
        "cpu_pct_per_process": [round(100 * cpu[p] / window, 2) for p in pids],
        "idle_cpu_pct_per_process": [round(100 * idle[p] / args.idle_seconds, 2) for p in pids],
        "cpu_us_per_delivered_packet": round(sfu_cpu * 1e6 / delivered, 2) if delivered else None,
        "subscribers_per_core": round(subscribers * window / sfu_cpu, 1) if sfu_cpu else None,
        "forward_delay_ms_p99": _ms(quantile(found["delay_all"], 0.99)),
        "machine_cpu_pct": round(machine_pct, 1),
        "join_s": round(join_s, 2),
    }


async def orchestrate(args: argparse.Namespace, workdir: Path, worker_log) -> dict:
    redis, redis_url = start_redis(workdir)
    try:
        runs = []
        for workers in (1, 2):
            count = args.subscribers * (1 if args.same_subscribers else workers)
            runs.append(await measure(args, workdir, worker_log, workers, redis_url, count))
    finally:
        redis.terminate()
        await asyncio.to_thread(redis.wait, 10)
    one, two = (r["subscribers_per_core"] for r in runs)
    ratio = round(two / one, 3) if one and two else None
    return {
        "subscribers_per_core_1_worker": one,
        "subscribers_per_core_2_workers": two,
        "per_core_ratio_2_to_1": ratio,
        "target_ratio": TARGET_RATIO,
        "same_subscribers": args.same_subscribers,
        "met": ratio is not None and ratio >= TARGET_RATIO,
        "runs": runs,
        "machine": {
            k: v for k, v in machine().items() if k in ("cpus", "cpu_model", "python", "kernel")
        },
        "command": command_line(),
    }


def print_table(result: dict) -> None:
    one, two = result["runs"]
    rows = [
        ("subscribers, 1 / 2 workers", f"{one['subscribers']} / {two['subscribers']}", "", ""),
        ("downtracks on each worker (2 workers)", two["downtracks_per_worker"], "", ""),
        ("SFU CPU, 1 worker (% of a core)", one["sfu_cpu_pct"], "", ""),
        ("SFU CPU, 2 workers: front + workers (%)", two["cpu_pct_per_process"], "", ""),
        ("  idle before the clients, 1 worker (%)", one["idle_cpu_pct_per_process"], "", ""),
        ("  idle before the clients, 2 workers (%)", two["idle_cpu_pct_per_process"], "", ""),
        ("CPU per delivered packet, 1 worker (us)", one["cpu_us_per_delivered_packet"], "", ""),
        ("CPU per delivered packet, 2 workers (us)", two["cpu_us_per_delivered_packet"], "", ""),
        ("loss 1 / 2 workers (%)", f"{one['loss_pct']} / {two['loss_pct']}", "", ""),
        ("subscribers per core, 1 worker", result["subscribers_per_core_1_worker"], "", ""),
        ("subscribers per core, 2 workers", result["subscribers_per_core_2_workers"], "", ""),
        (
            "2 workers / 1 worker, per core",
            result["per_core_ratio_2_to_1"],
            f">= {TARGET_RATIO}",
            mark(result["met"]),
        ),
    ]
    print(metric_table(rows))
    busy = max(one["machine_cpu_pct"], two["machine_cpu_pct"])
    print(f"machine CPU during the windows: {one['machine_cpu_pct']}% / {two['machine_cpu_pct']}%")
    if busy > 100 * (os.cpu_count() or 1) * 0.9:
        print("warning: the machine was nearly saturated; the figures are load-bound")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--subscribers", type=int, help="with 1 worker (2 workers: twice); default 20 (10 --quick)"
    )
    parser.add_argument(
        "--same-subscribers",
        action="store_true",
        help="give 2 workers the same subscribers as 1 (not twice as many)",
    )
    parser.add_argument("--seconds", type=float, help="measured window; default 20 (8 --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run (about 1 min in all)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--client-procs", type=int, default=fanout.WORKER_PROCESSES)
    args = parser.parse_args(argv)
    args.subscribers = args.subscribers or (10 if args.quick else 20)
    args.seconds = args.seconds or (8.0 if args.quick else 20.0)
    if args.subscribers < 2 or args.seconds <= 0:
        parser.error("--subscribers must be at least 2 and --seconds positive")
    args.warmup = 1.0 if args.quick else 3.0
    args.idle_seconds = 2.0 if args.quick else 5.0
    args.clip_seconds = 6.0 if args.quick else 10.0
    args.deadline = args.seconds + (50.0 if args.quick else 120.0)  # one run, after its start
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_interrupt()
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="scale-") as tmp,
            open(Path(tmp) / "workers.log", "wb") as worker_log,
        ):
            try:
                result = asyncio.run(
                    asyncio.wait_for(orchestrate(args, Path(tmp), worker_log), 2 * args.deadline)
                )
            except Exception:
                for name in ("sfu-1.log", "sfu-2.log", "workers.log"):
                    if (Path(tmp) / name).exists():
                        print_log_tail(Path(tmp) / name)
                raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (TimeoutError, RuntimeError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        fanout.kill_children(grace_s=1.0)
    result["wall_s"] = round(time.monotonic() - started, 1)
    print_table(result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
