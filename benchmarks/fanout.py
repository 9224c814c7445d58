#!/usr/bin/env python3
"""Fan-out benchmark: one publisher, N subscribers, the SFU alone in its own process.

    .venv/bin/python benchmarks/fanout.py --subscribers 20 --seconds 30 --json build/fanout.json
    .venv/bin/python benchmarks/fanout.py --quick --json build/fanout-quick.json

What runs (every role is its own process, so the SFU's CPU time is the SFU's alone):

* the SFU: `python -m sfu serve` on a free loopback port, default settings;
* one publisher (a `RoomClient`): VP8 at about 1 Mbps, 30 fps, 640x360 and Opus at 20 ms.
  Both are encoded once before the run and then replayed in a loop as `av.Packet`s, which
  aiortc's sender packetises without encoding, so the publisher costs little CPU;
* N subscribers (`RoomClient`s) spread over a few worker processes. They count packets in
  MediaPeer's RTP callback, right after SRTP, and never depacketise or decode anything.

Publisher and subscribers run under SCHED_BATCH (unless --normal-priority-clients): on one
machine each packet the SFU sends wakes a client process, which would otherwise preempt the
SFU in the middle of a fan-out; on a real deployment the clients are other machines.

Measured over a window that starts after every subscriber receives video and audio and a short
warm-up: SFU CPU time (utime+stime from /proc/<pid>/stat) per packet sent to subscribers,
publisher-send -> subscriber-receive delay per packet (all processes share CLOCK_MONOTONIC;
packets are matched by a checksum of their payload, which the SFU forwards untouched),
and loss from sequence-number gaps on each subscriber stream.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Log,
    SfuProcess,
    command_line,
    context_switches,
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
from benchmarks.common import token as mint  # noqa: E402

log = Log("fanout")

ROOM = "bench"
TARGET_CPU_US_PER_PACKET = 30.0
TARGET_DELAY_P99_MS = 20.0
TARGET_SUBSCRIBERS = 20
FPS = 30
VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms
VP8_DESCRIPTOR_MAX = 6  # bytes the SFU may rewrite at the start of a VP8 payload
KEY_BYTES = 32
WORKER_PROCESSES = 4

# Bounds of each phase (seconds); the whole run also has a hard deadline.
SFU_START_S = 15.0
PUBLISHER_READY_S = 25.0
SUBSCRIBERS_READY_S = 40.0
COLLECT_S = 20.0
# Above this much CPU used by processes outside the benchmark, the figures get a warning.
BUSY_MACHINE_PCT = 25.0


# -- shared helpers ------------------------------------------------------------------------------


def payload_key(data: bytes) -> int:
    """Payload length and CRC-32 of its last bytes: what survives the SFU's rewrites.

    Not the first bytes: for a subscriber whose stream was started on the cached keyframe the
    SFU continues VP8 picture ids in the payload descriptor (up to 6 bytes at the start, same
    length), and keys over them matched nothing (about half the packets of some runs).
    """
    n = len(data)
    if n < 12:
        return 0
    b0 = data[0]
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if offset + 4 > n:
            return 0
        offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
    size = n - offset
    if size <= 0:
        return 0
    start = max(offset + VP8_DESCRIPTOR_MAX, n - KEY_BYTES)
    if start >= n:
        start = offset
    return (size << 32) | zlib.crc32(data[start:n])


def write_pickle(path: str, value: Any) -> None:
    """A worker's measurements for the parent (written once, after the run)."""
    with open(path, "wb") as f:
        pickle.dump(value, f)


def emit(message: dict) -> None:
    """A worker's report to the parent: one JSON object per stdout line."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def token(identity: str, **grants: bool) -> str:
    """A token signed with the default (development) secret, which `sfu serve` also uses."""
    from sfu.config import Config

    room = "*" if grants.get("admin") else ROOM
    return mint(Config().auth, identity, room, ttl_s=3600, **grants)


async def wait_for_stop(deadline_s: float) -> None:
    """Return when the parent closes our stdin (or dies), or at the worker's own deadline."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(), max(0.1, deadline_s - time.monotonic()))


# -- pre-encoded media: shared with `python -m sfu loadtest` (sfu/loadtest/media.py) ------------

from sfu.loadtest.media import encode_audio, encode_video, looping_track  # noqa: E402

# -- publisher worker ----------------------------------------------------------------------------


def record_sent_rtp(pc, record: Callable[[bytes], None]) -> None:
    """Call `record` with every RTP packet `pc` sends, before SRTP (the publisher's send times)."""
    from sfu.media.rtp import is_rtcp

    hooked = set()
    for transceiver in pc.getTransceivers():
        transport = transceiver.sender.transport
        if transport is None or id(transport) in hooked:
            continue
        hooked.add(id(transport))
        original = transport._send_rtp

        async def send_rtp(data: bytes, original=original) -> None:
            if not is_rtcp(data):  # publisher packet out: before SRTP
                record(data)
            await original(data)

        transport._send_rtp = send_rtp


async def run_publisher(args: argparse.Namespace) -> None:
    from sfu.client import RoomClient
    from sfu.media.peer import NetworkSettings

    started = time.monotonic()
    video = encode_video(args.clip_seconds)
    audio = encode_audio(args.clip_seconds)
    video_bytes = sum(len(p) for p in video)
    emit(
        {
            "event": "encoded",
            "seconds": round(time.monotonic() - started, 2),
            "video_frames": len(video),
            "video_kbps": round(video_bytes * 8 / args.clip_seconds / 1000),
            "audio_packets": len(audio),
        }
    )
    client = await RoomClient.connect(
        args.url,
        token("publisher", publish=True),
        network=NetworkSettings(addresses=("127.0.0.1",)),
        auto_subscribe=False,
    )
    keys = array.array("q")
    times = array.array("d")

    def record(data: bytes) -> None:
        keys.append(payload_key(data))
        times.append(time.monotonic())

    await client.publish(
        [
            looping_track("video", video, FPS, VIDEO_CLOCK),
            looping_track("audio", audio, AUDIO_RATE / AUDIO_FRAME, AUDIO_RATE),
        ],
        sources=["camera", "microphone"],
    )
    record_sent_rtp(client.publisher.pc, record)
    emit({"event": "ready"})
    await wait_for_stop(args.deadline)
    write_pickle(args.out, {"keys": keys.tobytes(), "times": times.tobytes()})
    emit({"event": "done", "packets": len(keys)})
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 3)


# -- subscriber worker ---------------------------------------------------------------------------


class StreamLog:
    """Arrival time, sequence number and payload key of every packet of one SSRC."""

    __slots__ = ("times", "seqs", "keys", "octets")

    def __init__(self) -> None:
        self.times = array.array("d")
        self.seqs = array.array("H")
        self.keys = array.array("q")
        self.octets = 0


class PacketCounter:
    """The subscriber's RTP hook: counts instead of depacketising and decoding."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamLog] = {}

    def on_rtp(self, data: bytes, arrival_ms: int) -> None:
        now = time.monotonic()
        ssrc = int.from_bytes(data[8:12], "big")
        log = self.streams.get(ssrc)
        if log is None:
            log = self.streams[ssrc] = StreamLog()
        log.times.append(now)
        log.seqs.append((data[2] << 8) | data[3])
        log.keys.append(payload_key(data))
        log.octets += len(data)


def subscriber_client_class():
    from sfu.client import RoomClient
    from sfu.media.peer import MediaPeer

    class CountingClient(RoomClient):
        """A RoomClient whose subscriber connection hands raw RTP to a PacketCounter."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.counter = PacketCounter()

        async def _answer(self, message: dict) -> None:
            if self.subscriber is None:
                # A MediaPeer with on_rtp hands it every decrypted RTP packet (it hooks the
                # transports before they start): aiortc's receivers and decoders see none.
                self.subscriber = MediaPeer(
                    self.network, on_rtp=self.counter.on_rtp, label=f"bench:{self.identity}"
                )
                self.subscriber.pc.on("track", self._on_track)
            await super()._answer(message)

        def ssrc_kinds(self) -> dict[int, str]:
            from sfu.media.sdp import parse_offer

            peer = self.subscriber
            if peer is None or peer.pc.remoteDescription is None:
                return {}
            kinds = {}
            for m in parse_offer(peer.pc.remoteDescription.sdp):
                for ssrc in m.ssrcs:
                    kinds[ssrc] = m.kind
            return kinds

        def has_media(self) -> bool:
            kinds = self.ssrc_kinds()
            seen = {kinds.get(s) for s, log in self.counter.streams.items() if log.times}
            return {"audio", "video"} <= seen

    return CountingClient


async def run_subscribers(args: argparse.Namespace) -> None:
    from sfu.media.peer import NetworkSettings

    cls = subscriber_client_class()
    network = NetworkSettings(addresses=("127.0.0.1",))
    identities = args.identities.split(",")

    async def join(identity: str):
        return await cls.connect(
            args.url, token(identity, subscribe=True), network=network, timeout=20
        )

    clients = []
    for identity in identities:  # one at a time: a burst of DTLS handshakes starves the SFU
        clients.append(await join(identity))
    await report_viewers(clients, args.deadline, args.out)


async def report_viewers(clients: list, deadline_s: float, out: str) -> None:
    """Joined viewers (ours or Janus's): tell the orchestrator how many get media until it says
    stop, then write what each received (per SSRC arrival logs) to `out` and close them."""
    emit({"event": "joined", "count": len(clients)})
    stop = asyncio.ensure_future(wait_for_stop(deadline_s))
    ready: set[int] = set()
    emit({"event": "ready", "count": 0})
    while not stop.done():
        if len(ready) < len(clients):
            before = len(ready)
            ready.update(i for i, c in enumerate(clients) if i not in ready and c.has_media())
            if len(ready) != before:
                emit({"event": "ready", "count": len(ready)})
        await asyncio.wait([stop], timeout=0.25)
    result = []
    for client in clients:
        kinds = client.ssrc_kinds()
        streams = {
            ssrc: {
                "kind": kinds.get(ssrc, "?"),
                "times": log.times.tobytes(),
                "seqs": log.seqs.tobytes(),
                "keys": log.keys.tobytes(),
                "octets": log.octets,
            }
            for ssrc, log in client.counter.streams.items()
        }
        result.append({"identity": client.identity, "streams": streams})
    write_pickle(out, result)
    emit({"event": "done"})
    for client in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 2)


def worker_main(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.worker_batch:
        # On one machine every packet the SFU sends wakes a client process; a normal-priority
        # client would preempt the SFU in the middle of a fan-out (on a real deployment the
        # clients are other machines). SCHED_BATCH clients wait for the SFU's time slice.
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    install_uvloop()
    run = run_publisher if args.worker == "publisher" else run_subscribers
    asyncio.run(run(args))
    return 0


# -- the orchestrating process -------------------------------------------------------------------


_CHILD_PIDS: list[int] = []
_CHILDREN: list[asyncio.subprocess.Process] = []


async def spawn(*command: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """A child in its own session (so its whole process group can be signalled)."""
    proc = await asyncio.create_subprocess_exec(*command, start_new_session=True, **kwargs)
    _CHILDREN.append(proc)
    _CHILD_PIDS.append(proc.pid)
    return proc


async def stop_children(grace_s: float) -> None:
    """SIGTERM every child's process group, wait for them, SIGKILL whatever is left."""
    for proc in _CHILDREN:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
    waits = [proc.wait() for proc in _CHILDREN]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), grace_s)
    for proc in _CHILDREN:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # also any grandchild left in the group
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 2)
    _CHILDREN.clear()
    _CHILD_PIDS.clear()


def kill_children(grace_s: float = 2.0) -> None:
    """Last resort outside the event loop: SIGTERM, then SIGKILL, every child's group."""
    pids = list(_CHILD_PIDS)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    _CHILD_PIDS.clear()


@dataclass
class Worker:
    name: str
    proc: asyncio.subprocess.Process
    out: Path
    events: list[dict] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task | None = None

    def last(self, event: str) -> dict | None:
        for message in reversed(self.events):
            if message.get("event") == event:
                return message
        return None

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self.changed.set()
        self.changed.set()

    async def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {what} within {timeout:.0f} s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))


def py_spy() -> str:
    """py-spy next to this interpreter (pip install py-spy), else the one on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


async def sfu_sent(session, url: str, admin: str) -> tuple[int, int, int]:
    """(packets sent to subscribers, packets received from publishers, downtracks)."""
    async with session.get(
        f"{url}/api/stats", headers={"Authorization": f"Bearer {admin}"}
    ) as response:
        response.raise_for_status()
        stats = await response.json()
    sent = received = downtracks = 0
    for room in stats["rooms"]:
        for p in room["participants"]:
            for dt in p.get("downtracks", []):
                sent += dt["packets_sent"]
                downtracks += 1
            for prod in p.get("producers", []):
                received += prod["packets"]
    return sent, received, downtracks


async def start_worker(name: str, argv: list[str], out: Path, log, script: Path = SCRIPT) -> Worker:
    """Run `script` (this one by default; capacity.py passes its own) as a worker process."""
    proc = await spawn(
        sys.executable,
        str(script),
        *argv,
        "--out",
        str(out),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    worker = Worker(name, proc, out)
    worker.reader = asyncio.ensure_future(worker.read())
    return worker


async def wait_all_receiving(
    workers: list[Worker], groups: list[list[int]], budget_s: float, what: str
) -> float:
    """Until each subscriber worker says all its viewers receive media (`budget_s` for all of
    them together); the seconds it took."""
    started = time.monotonic()
    for worker, group in zip(workers, groups, strict=True):

        def all_ready(w: Worker = worker, n: int = len(group)) -> bool:
            last = w.last("ready")
            return last is not None and last["count"] >= n

        left = budget_s - (time.monotonic() - started)
        await worker.wait(all_ready, max(1.0, left), what)
    return time.monotonic() - started


async def stop_worker(worker: Worker) -> None:
    if worker.proc.stdin is not None and not worker.proc.stdin.is_closing():
        worker.proc.stdin.close()
    await worker.wait(lambda: worker.last("done") is not None, COLLECT_S, "results")


def analyse(publisher_out: Path, subscriber_outs: list[Path], t0: float, t1: float) -> dict:
    """Loss and forward delay of every packet subscribers received inside [t0, t1]."""
    sends: dict[int, list[float]] = {}
    with open(publisher_out, "rb") as f:
        pub = pickle.load(f)
    keys, times = array.array("q"), array.array("d")
    keys.frombytes(pub["keys"])
    times.frombytes(pub["times"])
    for k, t in zip(keys, times, strict=True):
        sends.setdefault(k, []).append(t)
    delays: dict[str, list[float]] = {"video": [], "audio": []}
    received = expected = unmatched = 0
    per_subscriber = []
    for path in subscriber_outs:
        with open(path, "rb") as f:
            clients = pickle.load(f)
        for client in clients:
            sub_received = sub_expected = 0
            for stream in client["streams"].values():
                t_arr, seqs, pkeys = array.array("d"), array.array("H"), array.array("q")
                t_arr.frombytes(stream["times"])
                seqs.frombytes(stream["seqs"])
                pkeys.frombytes(stream["keys"])
                kind = stream["kind"]
                seen: set[int] = set()
                ext = last = None
                for t, seq, key in zip(t_arr, seqs, pkeys, strict=True):
                    ext = seq if ext is None else ext + ((seq - last + 0x8000) & 0xFFFF) - 0x8000
                    last = seq
                    if not t0 <= t <= t1:
                        continue
                    seen.add(ext)
                    sent_at = sends.get(key)
                    if sent_at is None:
                        unmatched += 1
                        continue
                    i = bisect.bisect_right(sent_at, t)
                    if i == 0 or t - sent_at[i - 1] > 2.0:
                        unmatched += 1
                        continue
                    delays.setdefault(kind, []).append(t - sent_at[i - 1])
                if seen:
                    sub_received += len(seen)
                    sub_expected += max(seen) - min(seen) + 1
            received += sub_received
            expected += sub_expected
            per_subscriber.append((client["identity"], sub_received, sub_expected))
    all_delays = sorted(d for values in delays.values() for d in values)
    result: dict[str, Any] = {
        "received": received,
        "expected": expected,
        "unmatched": unmatched,
        "publisher_packets": sum(1 for t in times if t0 <= t <= t1),
        "delay_all": all_delays,
        "per_subscriber": per_subscriber,
    }
    for kind, values in delays.items():
        values.sort()
        result[f"delay_{kind}"] = values
    return result


async def orchestrate(args: argparse.Namespace, workdir: Path, worker_log) -> dict:
    import aiohttp

    profile = ["-m", "cProfile", "-o", args.cprofile_sfu] if args.cprofile_sfu else []
    sfu = SfuProcess(workdir / "sfu.log", log_level="WARNING", python_args=profile)
    url = sfu.url
    try:
        sfu.start()
        _CHILD_PIDS.append(sfu.pid)  # (for kill_children, the last resort)
        await sfu.wait_ready(SFU_START_S)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            log(f"SFU pid {sfu.pid} on {url}")

            hard_deadline = time.monotonic() + args.deadline
            common = ["--url", url, "--deadline", str(hard_deadline)]
            if args.batch_clients:
                common.append("--batch-clients")
            publisher = await start_worker(
                "publisher",
                ["--worker", "publisher", "--clip-seconds", str(args.clip_seconds), *common],
                workdir / "publisher.pickle",
                worker_log,
            )
            await publisher.wait(lambda: publisher.last("ready"), PUBLISHER_READY_S, "publish")
            encoded = publisher.last("encoded") or {}
            log(f"publisher ready: {encoded}")

            n_workers = min(args.workers, args.subscribers)
            groups = [list(range(i, args.subscribers, n_workers)) for i in range(n_workers)]
            subs = []
            for i, group in enumerate(groups):
                identities = ",".join(f"viewer{j:03d}" for j in group)
                subs.append(
                    await start_worker(
                        f"subscribers-{i}",
                        ["--worker", "subscribers", "--identities", identities, *common],
                        workdir / f"subscribers-{i}.pickle",
                        worker_log,
                    )
                )
            join_s = await wait_all_receiving(
                subs, groups, SUBSCRIBERS_READY_S, "video and audio at every subscriber"
            )
            log(f"{args.subscribers} subscribers receive media after {join_s:.1f} s")
            await asyncio.sleep(args.warmup)

            admin = token("bench-admin", admin=True)
            sfu_pid = sfu.pid
            all_pids = [sfu_pid, publisher.proc.pid, *(w.proc.pid for w in subs)]
            sent0, recv0, downtracks = await sfu_sent(session, url, admin)
            cpu0 = {pid: proc_cpu_s(pid) for pid in all_pids}
            switches0 = context_switches(sfu_pid)
            busy0 = machine_busy()
            t0 = time.monotonic()
            profiler = None
            if args.profile_sfu:
                profiler = await asyncio.create_subprocess_exec(
                    py_spy(), "record", "--nonblocking", "-p", str(sfu_pid), "-d",
                    str(int(args.seconds)), "-o", args.profile_sfu, "-f", "speedscope",
                    stdout=worker_log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            await asyncio.sleep(args.seconds)
            t1 = time.monotonic()
            cpu1 = {pid: proc_cpu_s(pid) for pid in all_pids}
            switches1 = context_switches(sfu_pid)
            busy1 = machine_busy()
            sent1, recv1, _ = await sfu_sent(session, url, admin)
            if profiler is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(profiler.wait(), 15)

        await asyncio.gather(*(stop_worker(w) for w in [publisher, *subs]))
        log("collected; analysing")
        found = analyse(publisher.out, [w.out for w in subs], t0, t1)
    finally:
        # (a SIGTERMed SFU under cProfile needs time to shut down and write its stats)
        grace_s = 15.0 if args.cprofile_sfu else 3.0
        await asyncio.gather(stop_children(grace_s), asyncio.to_thread(sfu.stop, grace_s))

    window = t1 - t0
    sfu_user = cpu1[sfu_pid][0] - cpu0[sfu_pid][0]
    sfu_sys = cpu1[sfu_pid][1] - cpu0[sfu_pid][1]
    sfu_cpu = sfu_user + sfu_sys
    sfu_packets = sent1 - sent0
    client_cpu = sum(sum(cpu1[p]) - sum(cpu0[p]) for p in all_pids if p != sfu_pid)
    delays = found["delay_all"]
    loss = 100.0 * (1 - found["received"] / found["expected"]) if found["expected"] else 100.0
    result = {
        "subscribers": args.subscribers,
        "seconds": round(window, 2),
        "packets_forwarded": found["received"],
        "sfu_packets_sent": sfu_packets,
        "sfu_packets_received": recv1 - recv0,
        "publisher_packets_sent": found["publisher_packets"],
        "cpu_us_per_packet": round(sfu_cpu * 1e6 / sfu_packets, 2) if sfu_packets else None,
        "forward_delay_ms_p50": _ms(quantile(delays, 0.5)),
        "forward_delay_ms_p99": _ms(quantile(delays, 0.99)),
        "forward_delay_ms_max": _ms(delays[-1]) if delays else None,
        "forward_delay_video_ms_p99": _ms(quantile(found["delay_video"], 0.99)),
        "forward_delay_audio_ms_p99": _ms(quantile(found["delay_audio"], 0.99)),
        "delay_samples": len(delays),
        "delay_unmatched": found["unmatched"],
        "loss_pct": round(loss, 4),
        "sfu_cpu_s": round(sfu_cpu, 3),
        "sfu_user_s": round(sfu_user, 3),
        "sfu_system_s": round(sfu_sys, 3),
        "sfu_cpu_pct": round(100 * sfu_cpu / window, 2),
        "packets_per_s": round(sfu_packets / window, 1),
        "sfu_wakeups_per_s": round((switches1 - switches0) / window, 1),
        "clients_cpu_pct": round(100 * client_cpu / window, 2),
        "machine_cpu_pct": round(
            100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * (os.cpu_count() or 1), 1
        ),
        "other_cpu_pct": 0.0,  # filled below: load on the machine that is not this benchmark
        "downtracks": downtracks,
        "join_s": round(join_s, 2),
        "publisher_video_kbps": encoded.get("video_kbps"),
        "machine": {
            k: v for k, v in machine().items() if k in ("cpus", "cpu_model", "python", "kernel")
        },
        "command": command_line(),
    }
    result["other_cpu_pct"] = round(
        max(0.0, result["machine_cpu_pct"] - result["sfu_cpu_pct"] - result["clients_cpu_pct"]), 1
    )
    result["clients_sched_batch"] = args.batch_clients
    result["targets"] = {
        "subscribers": TARGET_SUBSCRIBERS,
        "cpu_us_per_packet": TARGET_CPU_US_PER_PACKET,
        "forward_delay_ms_p99": TARGET_DELAY_P99_MS,
        "met": bool(
            result["cpu_us_per_packet"] is not None
            and result["cpu_us_per_packet"] <= TARGET_CPU_US_PER_PACKET
            and result["forward_delay_ms_p99"] is not None
            and result["forward_delay_ms_p99"] <= TARGET_DELAY_P99_MS
        ),
    }
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def print_table(result: dict) -> None:
    def ok(value, target) -> str:
        return mark(None if value is None else value <= target)

    rows = [
        ("subscribers", result["subscribers"], "", ""),
        ("window (s)", result["seconds"], "", ""),
        ("publisher packets sent", result["publisher_packets_sent"], "", ""),
        ("packets forwarded (subscribers)", result["packets_forwarded"], "", ""),
        ("packets sent (SFU stats)", result["sfu_packets_sent"], "", ""),
        ("packets/s out of the SFU", result["packets_per_s"], "", ""),
        ("SFU wake-ups/s (voluntary context switches)", result["sfu_wakeups_per_s"], "", ""),
        ("SFU CPU (% of one core)", result["sfu_cpu_pct"], "", ""),
        ("  user / system (s)", f"{result['sfu_user_s']}/{result['sfu_system_s']}", "", ""),
        (
            "SFU CPU per packet (us)",
            result["cpu_us_per_packet"],
            f"<= {TARGET_CPU_US_PER_PACKET:g}",
            ok(result["cpu_us_per_packet"], TARGET_CPU_US_PER_PACKET),
        ),
        ("forward delay p50 (ms)", result["forward_delay_ms_p50"], "", ""),
        (
            "forward delay p99 (ms)",
            result["forward_delay_ms_p99"],
            f"<= {TARGET_DELAY_P99_MS:g}",
            ok(result["forward_delay_ms_p99"], TARGET_DELAY_P99_MS),
        ),
        ("forward delay max (ms)", result["forward_delay_ms_max"], "", ""),
        ("loss (%)", result["loss_pct"], "", ""),
        ("client processes CPU (% of one core)", result["clients_cpu_pct"], "", ""),
        ("machine CPU (% of one core)", result["machine_cpu_pct"], "", ""),
        ("  of which not this benchmark", result["other_cpu_pct"], "", ""),
    ]
    print(metric_table(rows))
    print(f"targets met: {mark(result['targets']['met'])}", end="")
    if result["subscribers"] != TARGET_SUBSCRIBERS:
        print(f" (the targets are set for {TARGET_SUBSCRIBERS} subscribers)", end="")
    print()
    if result["other_cpu_pct"] > BUSY_MACHINE_PCT:
        print(
            f"warning: other processes used {result['other_cpu_pct']}% of a core during the "
            "window; the delay figures say more about that load than about the SFU"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, help="default 20 (10 with --quick)")
    parser.add_argument("--seconds", type=float, help="measured window; default 30 (10 --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run (< 60 s in all)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--warmup", type=float, help="seconds between 'all receive' and t0")
    parser.add_argument("--workers", type=int, default=WORKER_PROCESSES, help="subscriber procs")
    parser.add_argument("--profile-sfu", help="py-spy speedscope profile of the SFU to this file")
    parser.add_argument(
        "--normal-priority-clients",
        dest="batch_clients",
        action="store_false",
        help="run publisher and subscribers as normal processes, not SCHED_BATCH",
    )
    parser.add_argument(
        "--batch-clients", dest="worker_batch", action="store_true", help=argparse.SUPPRESS
    )
    parser.add_argument("--cprofile-sfu", help="run the SFU under cProfile, stats to this file")
    parser.add_argument("--json-only", action="store_true", help="no progress lines on stderr")
    # internal: worker processes
    hidden = argparse.SUPPRESS
    parser.add_argument("--worker", choices=["publisher", "subscribers"], help=hidden)
    parser.add_argument("--url", help=hidden)
    parser.add_argument("--identities", help=hidden)
    parser.add_argument("--out", help=hidden)
    parser.add_argument("--deadline", type=float, help=hidden)
    parser.add_argument("--clip-seconds", type=float, help=hidden)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    args.subscribers = args.subscribers or (10 if args.quick else 20)
    args.seconds = args.seconds or (10.0 if args.quick else 30.0)
    if args.subscribers < 1 or args.seconds <= 0:
        parser.error("--subscribers and --seconds must be positive")
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    args.clip_seconds = 6.0 if args.quick else 10.0
    # everything after the measurement window: generous, but never unbounded
    args.deadline = 55.0 if args.quick else args.seconds + 120.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)

    sigterm_as_interrupt()
    log.quiet = args.json_only
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="fanout-") as tmp,
            open(Path(tmp) / "workers.log", "wb") as worker_log,
        ):
            run = orchestrate(args, Path(tmp), worker_log)
            try:
                result = asyncio.run(asyncio.wait_for(run, args.deadline))
            except Exception:  # (not on Ctrl-C)
                for name in ("sfu.log", "workers.log"):
                    print_log_tail(Path(tmp) / name)
                raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (TimeoutError, RuntimeError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        kill_children(grace_s=1.0)
    result["wall_s"] = round(time.monotonic() - started, 1)
    print_table(result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
