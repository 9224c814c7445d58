"""Plumbing the benchmark scripts share: ports, progress lines, tables, JSON, child processes
and what /proc says about them.

Each benchmark is a script (`python benchmarks/NAME.py`) and a module (`benchmarks.NAME`, for
the tests); both import this one as `benchmarks.common` once the repository root is on
sys.path. Nothing here measures anything by itself: it keeps the scripts about their figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# -- small helpers ---------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the child that gets it binds it moments later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Log:
    """Progress lines on stderr, `[tag] message`; `quiet` silences them (--json-only)."""

    def __init__(self, tag: str, quiet: bool = False) -> None:
        self.tag = tag
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.tag}] {message}", file=sys.stderr, flush=True)


def quantile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0 <= q <= 1) of `values`; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """The q-th percentile (0..100), interpolated between neighbours and rounded to 0.1;
    None and NaN are left out, None when nothing is left."""
    ordered = sorted(v for v in values if v is not None and not math.isnan(v))
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (pos - low), 1)


def mark(ok: bool | None) -> str:
    """A table's `met` column."""
    return "n/a" if ok is None else ("yes" if ok else "NO")


def format_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "", indent: str = ""
) -> str:
    """Rows under a header, each column as wide as its widest cell. `align` holds one of
    `<` or `>` per column; by default the first column is left-aligned and the others right."""
    cells = [[str(h) for h in header]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    align = align or "<" + ">" * (len(header) - 1)
    lines = []
    for row in cells:
        text = "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths, strict=True))
        lines.append(indent + text.rstrip())
    return "\n".join(lines)


def metric_table(rows: Iterable[tuple[str, Any, str, str]]) -> str:
    """The `metric / value / target / met` table most benchmarks print."""
    return format_table(("metric", "value", "target", "met"), rows, "<>><")


def write_json(path: str | Path, value: Any, indent: int = 2) -> Path:
    """Write a result file (making its folder), UTF-8, newline-terminated."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def print_log_tail(path: Path, chars: int = 3000, name: str | None = None) -> None:
    """The end of a child's log on stderr, after a failure."""
    if path.exists():
        tail = path.read_text(errors="replace")[-chars:]
        if tail.strip():
            print(f"--- {name or path.name} (tail) ---\n{tail}", file=sys.stderr)


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, so the `finally`s that stop children run."""

    def on_signal(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)


def interpreter() -> str:
    """The interpreter as a reader would type it (.venv/bin/python inside the repository)."""
    path = Path(sys.executable)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this run was started, to put in the JSON."""
    return " ".join([interpreter(), *(sys.argv if argv is None else argv)])


def token(auth: Any, identity: str, room: str, ttl_s: int | None = None, **grants: bool) -> str:
    """A token for `identity` in `room`, signed with `auth` (a Config's AuthSettings)."""
    from sfu.auth import Grants, mint_token

    kwargs = {} if ttl_s is None else {"ttl_s": ttl_s}
    return mint_token(auth, identity=identity, room=room, grants=Grants(**grants), **kwargs)


async def until(predicate: Callable[[], bool], timeout: float, period: float = 0.1) -> bool:
    """Poll `predicate` every `period` s until it holds (True) or `timeout` s pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(period)
    return predicate()


# -- /proc ---------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE / (1 << 20)


def proc_fds(pid: int) -> int:
    """Open file descriptors of a process (sockets included)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_fd_targets(pid: int) -> dict[int, str]:
    """What each open descriptor of a process points at (`socket:[inode]`, a path, ...)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return out


TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


def proc_sockets(pid: int) -> dict[str, str]:
    """socket inode -> "tcp 127.0.0.1:port STATE" / "udp port" / "unix", for a process's
    network namespace (IPv4 addresses; IPv6 and others by protocol only)."""
    out: dict[str, str] = {}
    for proto in ("tcp", "tcp6", "udp", "udp6", "unix"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{proto}") as f:
            next(f)
            for line in f:
                parts = line.split()
                if proto == "unix":
                    if len(parts) > 6:
                        out[parts[6]] = "unix"
                    continue
                if len(parts) <= 9:
                    continue
                port = int(parts[1].rsplit(":", 1)[1], 16)
                if proto.startswith("tcp"):
                    state = TCP_STATES.get(parts[3], parts[3])
                    remote = int(parts[2].rsplit(":", 1)[1], 16)
                    out[parts[9]] = f"{proto} :{port}->:{remote} {state}"
                else:
                    out[parts[9]] = f"{proto} :{port}"
    return out


def proc_udp_ports(pid: int) -> list[int]:
    """The UDP ports (IPv4) a process has bound: its sockets' inodes matched in /proc/net/udp."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    with open(f"/proc/{pid}/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def context_switches(pid: int) -> int:
    """Voluntary context switches of every thread of a process: how often it went to sleep."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# -- child processes -------------------------------------------------------------------------------


class Child:
    """A child process in its own session (so its whole group can be signalled), its output
    in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, append: bool = False) -> None:
        self._log = open(self.log_path, "ab" if append else "wb")  # noqa: SIM115 (stop() closes)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM the group, wait `grace_s`, then SIGKILL it; the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # also any grandchild left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode


class SfuProcess(Child):
    """`python -m sfu serve` on a free port, its log captured; `wait_ready` polls /healthz.

    `python_args` go before `-m sfu` (e.g. cProfile), `config` is a TOML file or None for the
    defaults, `cwd` the source tree it runs from."""

    def __init__(
        self,
        log_path: Path,
        config: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_level: str | None = None,
        python_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        level = log_level or os.environ.get("SFU_BENCH_LOG_LEVEL", "WARNING")
        argv = [sys.executable, *python_args, "-m", "sfu", "--log-level", level, "serve"]
        if config is not None:
            argv += ["--config", str(config)]
        argv += ["--host", host, "--port", str(self.port)]
        super().__init__(argv, log_path, env, cwd)

    async def wait_ready(self, timeout: float) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"the SFU exited with {self.proc.returncode}")
                with contextlib.suppress(OSError, aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise TimeoutError("the SFU did not start in time")
