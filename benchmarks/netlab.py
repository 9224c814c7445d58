"""Weak-link lab: network namespaces that reproduce slow, lossy, far links on one machine.

This kernel has no netem, so the impairments are built from what it has:

    server side                 router namespace                       client namespace
    (root ns or its own)   +-----------------------------------+
    <run>s 10.231.N.1 ----- <run>ra .2   [tun <run>t]   <run>rb .5 ----- <run>c 10.231.N.6
                           |  tbf (uplink)   delay relay   tbf (downlink)
                           |  nft loss       (user space)  nft loss
                           +-----------------------------------+

- rate: `tc qdisc ... tbf` on the router's egress toward each side, with a queue of `queue_ms`;
- loss: nftables `numgen random mod 10000 < N drop` in the router's forward chain;
- delay and jitter: policy routing sends every forwarded packet through a TUN device whose
  reader (a small relay process in the router namespace, started from this file) holds each
  packet for its direction's delay and writes it back; the kernel then forwards it on. The
  delay "wanders" within +/- jitter along straight segments whose slope is at most 1, so
  jitter never reorders packets (and a packet is never released before the one ahead of it).

Everything is named with a unique run id (`nl` + 6 hex digits; namespaces are
`netlab-<id>-<pid>-srv|rtr|cli`) and torn down on `close()`, at interpreter exit, on SIGTERM
in the CLI, and by `cleanup_stale()` for labs whose process died. Traffic stays inside the
lab: the client namespace only has a route to the server-side /30 and 10.231.x.x is never
routed anywhere else. Needs root (CAP_NET_ADMIN); without it `NetLab.start()` raises LabError.

Profiles are named, documented data (`PROFILES`); a profile is a schedule of `LinkParams`
phases that `NetLab.start_schedule()` applies over time. Usage from code:

    with NetLab("cross-border") as lab:
        lab.start_schedule()
        sock = lab.socket("client")   # a UDP socket inside the client namespace
        ... lab.server_ip, lab.client_ip, lab.exec_prefix("client") + ["chromium", ...]

CLI: `python benchmarks/netlab.py --profile NAME --selftest` builds the lab, measures each
distinct phase of the profile with UDP and prints expected vs measured; `--list` shows the
profiles; `--hold SECONDS` keeps a lab up with its schedule running.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import fcntl
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# ---------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class LinkParams:
    """One phase of a link. Rates in kbit/s at the IP+Ethernet level; None = unlimited.

    Delay is one-way, per direction (RTT = down_delay_ms + up_delay_ms). Jitter: the delay
    of that direction wanders within +/- jitter (order kept). Loss in percent, random.
    """

    down_kbps: float | None = None
    up_kbps: float | None = None
    down_delay_ms: float = 0.0
    up_delay_ms: float = 0.0
    down_jitter_ms: float = 0.0
    up_jitter_ms: float = 0.0
    down_loss_pct: float = 0.0
    up_loss_pct: float = 0.0
    queue_ms: float = 200.0  # bottleneck buffer (tbf latency)

    @property
    def rtt_ms(self) -> float:
        return self.down_delay_ms + self.up_delay_ms


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    phases: tuple[tuple[float, LinkParams], ...]  # (start time in s, params), first at 0
    duration_s: float = 60.0  # a run long enough to see the whole schedule

    def params_at(self, t: float) -> LinkParams:
        current = self.phases[0][1]
        for start, params in self.phases:
            if t >= start:
                current = params
        return current

    def capacity_timeline(self) -> list[tuple[float, float | None]]:
        """(start time, downlink kbps) per phase, for plots and adapt-time measurements."""
        return [(start, p.down_kbps) for start, p in self.phases]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "clean",
            "No impairment: the lab's plumbing only (veth, tun relay), for baselines.",
            ((0.0, LinkParams()),),
            30.0,
        ),
        Profile(
            "cross-border",
            "A far viewer abroad: RTT 250 ms (125 ms each way), 2 % random loss both ways, "
            "1.5 Mbit/s downlink with a 200 ms buffer, uplink unlimited.",
            (
                (
                    0.0,
                    LinkParams(
                        down_kbps=1500,
                        down_delay_ms=125,
                        up_delay_ms=125,
                        down_loss_pct=2,
                        up_loss_pct=2,
                    ),
                ),
            ),
            60.0,
        ),
        Profile(
            "mobile-3g",
            "A 3G phone: RTT 300 ms (150 ms each way) with the downlink delay wandering "
            "+/- 50 ms, 3 % random loss both ways, 1 Mbit/s each way.",
            (
                (
                    0.0,
                    LinkParams(
                        down_kbps=1000,
                        up_kbps=1000,
                        down_delay_ms=150,
                        up_delay_ms=150,
                        down_jitter_ms=50,
                        down_loss_pct=3,
                        up_loss_pct=3,
                    ),
                ),
            ),
            60.0,
        ),
        Profile(
            "drop-recover",
            "3 Mbit/s downlink (RTT 50 ms), falling to 300 kbit/s at t = 10 s for 20 s, then "
            "back to 3 Mbit/s: how fast a viewer adapts down and back up.",
            (
                (0.0, LinkParams(down_kbps=3000, down_delay_ms=25, up_delay_ms=25)),
                (10.0, LinkParams(down_kbps=300, down_delay_ms=25, up_delay_ms=25)),
                (30.0, LinkParams(down_kbps=3000, down_delay_ms=25, up_delay_ms=25)),
            ),
            50.0,
        ),
    )
}


def get_profile(profile: Profile | str) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}") from None


# ---------------------------------------------------------------------- the lab


class LabError(RuntimeError):
    """The lab could not be built (not root, a tool missing, a command failed)."""


_NS_RE = re.compile(r"^netlab-(nl[0-9a-f]{6})-(\d+)-(srv|rtr|cli)$")
_open_labs: set[NetLab] = set()
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _run(cmd: Sequence[str], check: bool = True, input_text: str | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input_text)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def require_root() -> None:
    """Raise LabError unless this process can build namespaces (root, ip/tc/nft present)."""
    if os.geteuid() != 0:
        raise LabError(
            "the weak-link lab needs root (network namespaces, tc, nftables); "
            "run the netns tests and benchmarks as root, e.g. with sudo"
        )
    missing = [tool for tool in ("ip", "tc", "nft") if shutil.which(tool) is None]
    if missing:
        raise LabError(f"the weak-link lab needs {', '.join(missing)} (iproute2, nftables)")
    if not os.path.exists("/dev/net/tun"):
        raise LabError("the weak-link lab needs /dev/net/tun for its delay relay")


def cleanup_stale() -> list[str]:
    """Delete lab namespaces left by processes that no longer exist; returns their names."""
    removed = []
    for line in _run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NS_RE.match(name)
        if m and not _pid_alive(int(m.group(2))):
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped is a zombie: it will never clean up
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def in_netns(ns: str | None, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread that joined network namespace `ns` (None: this one).

    Sockets keep the namespace they were created in, so this is how the lab hands out
    sockets inside its namespaces to code running anywhere in this process.
    """
    if ns is None:
        return fn()
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            with open(f"/run/netns/{ns}", "rb") as f:
                if _libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=worker, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class NetLab:
    """Server side <-> router <-> client namespace, impaired as `profile` says."""

    def __init__(
        self,
        profile: Profile | str = "clean",
        *,
        server_netns: bool = False,
        run_id: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.profile = get_profile(profile)
        self.run_id = run_id or f"nl{os.urandom(3).hex()}"
        if not re.fullmatch(r"nl[0-9a-f]{6}", self.run_id):
            raise ValueError("run_id must be 'nl' followed by 6 hex digits")
        prefix = f"netlab-{self.run_id}-{os.getpid()}"
        self.server_ns: str | None = f"{prefix}-srv" if server_netns else None
        self.router_ns = f"{prefix}-rtr"
        self.client_ns = f"{prefix}-cli"
        rid = self.run_id
        self.if_server, self.if_router_a = f"{rid}s", f"{rid}ra"
        self.if_router_b, self.if_client, self.if_tun = f"{rid}rb", f"{rid}c", f"{rid}t"
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.subnet = 0
        self.server_ip = self.client_ip = ""
        self.params: LinkParams | None = None
        self._relay: subprocess.Popen[str] | None = None
        self._schedule_thread: threading.Thread | None = None
        self._schedule_stop = threading.Event()
        self._t0: float | None = None
        self._lock = threading.Lock()
        self._started = False
        self.log: list[tuple[float, LinkParams]] = []  # (monotonic time, params) applied

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> NetLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NetLab:
        """Build namespaces, links, relay and the profile's first phase."""
        require_root()
        cleanup_stale()
        self._started = True
        _open_labs.add(self)
        try:
            self._build()
            self.apply(self.profile.phases[0][1])
        except BaseException:
            self.close()
            raise
        return self

    def _pick_subnet(self) -> int:
        used = _run(["ip", "-o", "-4", "addr", "show"], check=False)
        used += _run(["ip", "-4", "route", "show", "table", "all"], check=False)
        taken = {int(m) for m in re.findall(r"10\.231\.(\d+)\.", used)}
        free = [n for n in range(256) if n not in taken]
        if not free:
            raise LabError("no free 10.231.N.0/24 subnet for the lab")
        return random.choice(free)

    def _build(self) -> None:
        n = self.subnet = self._pick_subnet()
        self.server_ip, router_a = f"10.231.{n}.1", f"10.231.{n}.2"
        router_b, self.client_ip = f"10.231.{n}.5", f"10.231.{n}.6"
        server_net, client_net = f"10.231.{n}.0/30", f"10.231.{n}.4/30"
        r, c = self.router_ns, self.client_ns
        for ns in (self.server_ns, r, c):
            if ns is not None:
                _run(["ip", "netns", "add", ns])
                self._sh(ns, "ip link set lo up")
                self._sh(ns, "sysctl -q -w net.ipv6.conf.all.disable_ipv6=1")
        _run(
            ["ip", "link", "add", self.if_server, "type", "veth", "peer", "name", self.if_router_a]
        )
        _run(["ip", "link", "set", self.if_router_a, "netns", r])
        if self.server_ns is not None:
            _run(["ip", "link", "set", self.if_server, "netns", self.server_ns])
        _run(
            ["ip", "link", "add", self.if_client, "type", "veth", "peer", "name", self.if_router_b]
        )
        _run(["ip", "link", "set", self.if_router_b, "netns", r])
        _run(["ip", "link", "set", self.if_client, "netns", c])
        s = self.server_ns
        self._sh(s, f"sysctl -q -w net.ipv6.conf.{self.if_server}.disable_ipv6=1")
        self._sh(s, f"ip addr add {self.server_ip}/30 dev {self.if_server}")
        self._sh(s, f"ip link set {self.if_server} up")
        self._sh(c, f"ip addr add {self.client_ip}/30 dev {self.if_client}")
        self._sh(c, f"ip link set {self.if_client} up")
        self._sh(r, f"ip addr add {router_a}/30 dev {self.if_router_a}")
        self._sh(r, f"ip addr add {router_b}/30 dev {self.if_router_b}")
        self._sh(r, f"ip link set {self.if_router_a} up")
        self._sh(r, f"ip link set {self.if_router_b} up")
        self._sh(r, "sysctl -q -w net.ipv4.ip_forward=1")
        for conf in ("all", "default"):
            self._sh(r, f"sysctl -q -w net.ipv4.conf.{conf}.rp_filter=0")
        # the delay stage: everything forwarded goes through the tun device once
        self._sh(r, f"ip tuntap add dev {self.if_tun} mode tun")
        self._sh(r, f"sysctl -q -w net.ipv4.conf.{self.if_tun}.rp_filter=0")
        self._sh(r, f"ip link set {self.if_tun} up")
        self._sh(r, f"ip route add {server_net} dev {self.if_tun} table 100")
        self._sh(r, f"ip route add {client_net} dev {self.if_tun} table 100")
        self._sh(r, f"ip rule add iif {self.if_tun} lookup main pref 100")
        self._sh(r, "ip rule add lookup 100 pref 200")
        # only routes to each other: nothing in the lab can reach anything outside it
        self._sh(s, f"ip route add {client_net} via {router_a}")
        self._sh(c, f"ip route add {server_net} via {router_b}")
        self._start_relay(client_net)

    def _start_relay(self, client_net: str) -> None:
        cmd = [
            "ip",
            "netns",
            "exec",
            self.router_ns,
            sys.executable,
            os.path.abspath(__file__),
            "relay",
            "--tun",
            self.if_tun,
            "--client-net",
            client_net,
            "--seed",
            str(self.seed),
        ]
        self._relay = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        assert self._relay.stdout is not None
        ready, _, _ = select.select([self._relay.stdout], [], [], 10.0)
        line = self._relay.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self._relay.kill()
            err = self._relay.stderr.read() if self._relay.stderr else ""
            raise LabError(f"delay relay did not start: {line.strip()} {err.strip()}")

    def close(self) -> None:
        """Tear everything down; safe to call twice and after a failed start."""
        if not self._started:
            return
        self._started = False
        self._schedule_stop.set()
        if (
            self._schedule_thread is not None
            and self._schedule_thread is not threading.current_thread()
        ):
            self._schedule_thread.join(timeout=5)
        relay = self._relay
        self._relay = None
        if relay is not None:
            try:
                if relay.stdin:
                    relay.stdin.close()
                relay.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                relay.kill()
                relay.wait(timeout=3)
            for pipe in (relay.stdout, relay.stderr):
                if pipe:
                    pipe.close()
        for ns in (self.client_ns, self.router_ns, self.server_ns):
            if ns is not None:
                _run(["ip", "netns", "del", ns], check=False)
        if self.server_ns is None:  # normally gone with its peer; make sure
            _run(["ip", "link", "del", self.if_server], check=False)
        _open_labs.discard(self)

    def leftovers(self) -> list[str]:
        """Namespaces or root-namespace links of this lab that still exist (should be [])."""
        return lab_leftovers(self.run_id)

    # ------------------------------------------------------------------ impairments

    def apply(self, params: LinkParams) -> None:
        """Switch the link to `params` now (rate, loss, delay, jitter)."""
        with self._lock:
            r = self.router_ns
            for dev, kbps in (
                (self.if_router_b, params.down_kbps),
                (self.if_router_a, params.up_kbps),
            ):
                if kbps is None:
                    self._sh(r, f"tc qdisc del dev {dev} root", check=False)
                else:
                    rate_bps = kbps * 1000
                    burst = max(2 * 1514, int(rate_bps / 8 * 0.005))
                    self._sh(
                        r,
                        f"tc qdisc replace dev {dev} root tbf rate {int(rate_bps)}bit "
                        f"burst {burst} latency {int(params.queue_ms)}ms",
                    )
            rules = [f"flush table inet {self.run_id}"]
            for dev, pct in (
                (self.if_router_b, params.down_loss_pct),
                (self.if_router_a, params.up_loss_pct),
            ):
                if pct > 0:
                    rules.append(
                        f'add rule inet {self.run_id} impair iifname "{self.if_tun}" '
                        f'oifname "{dev}" numgen random mod 10000 < {round(pct * 100)} drop'
                    )
            script = (
                f"table inet {self.run_id} {{\n chain impair {{\n"
                "  type filter hook forward priority 0; policy accept;\n }\n}\n"
                + "\n".join(rules)
                + "\n"
            )
            _run(["ip", "netns", "exec", r, "nft", "-f", "-"], input_text=script)
            relay = self._relay
            if relay is None or relay.stdin is None or relay.poll() is not None:
                raise LabError("delay relay is not running")
            control = {
                "down": [params.down_delay_ms, params.down_jitter_ms],
                "up": [params.up_delay_ms, params.up_jitter_ms],
            }
            relay.stdin.write(json.dumps(control) + "\n")
            relay.stdin.flush()
            self.params = params
            self.log.append((time.monotonic(), params))

    def start_schedule(self) -> float:
        """Apply the profile's phases over time from now (t = 0); returns the start time."""
        self._t0 = t0 = time.monotonic()
        self.apply(self.profile.phases[0][1])
        self._schedule_stop.clear()

        def runner() -> None:
            for start, params in self.profile.phases[1:]:
                if self._schedule_stop.wait(max(0.0, t0 + start - time.monotonic())):
                    return
                try:
                    self.apply(params)
                except LabError:
                    if not self._schedule_stop.is_set():
                        raise
                    return

        self._schedule_thread = threading.Thread(target=runner, name="netlab-schedule", daemon=True)
        self._schedule_thread.start()
        return t0

    def elapsed(self) -> float:
        """Seconds since start_schedule() (0 before it)."""
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    # ------------------------------------------------------------------ access

    def namespace(self, side: str) -> str | None:
        if side == "client":
            return self.client_ns
        if side == "server":
            return self.server_ns
        if side == "router":
            return self.router_ns
        raise ValueError(f"unknown side {side!r}")

    def exec_prefix(self, side: str) -> list[str]:
        """Prefix a command with this to run it on `side` (e.g. a browser in the client ns)."""
        ns = self.namespace(side)
        return [] if ns is None else ["ip", "netns", "exec", ns]

    def socket(
        self, side: str, kind: int = socket.SOCK_DGRAM, bind_port: int | None = 0
    ) -> socket.socket:
        """A socket created inside `side`'s namespace, bound to that side's lab address."""
        address = self.client_ip if side == "client" else self.server_ip

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, kind)
            if bind_port is not None:
                sock.bind((address, bind_port))
            return sock

        return in_netns(self.namespace(side), make)

    def wrapper_script(self, side: str, program: str, path: str) -> str:
        """Write an executable script that runs `program` on `side` (for tools that take one
        executable path, e.g. Playwright's `executable_path` for a browser behind the link)."""
        prefix = " ".join(self.exec_prefix(side))
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nexec {prefix} {program} "$@"\n')
        os.chmod(path, 0o755)
        return path

    def _sh(self, ns: str | None, command: str, check: bool = True) -> str:
        prefix = [] if ns is None else ["ip", "netns", "exec", ns]
        return _run(prefix + command.split(), check=check)


def lab_leftovers(run_id: str) -> list[str]:
    """Namespaces or root-namespace links named after `run_id` that still exist."""
    names = _run(["ip", "netns", "list"], check=False) + _run(["ip", "-o", "link"], check=False)
    return sorted(set(re.findall(rf"[\w.-]*{run_id}[\w.-]*", names)))


def _die_with_parent() -> None:
    """In the relay child: get SIGTERM if the lab's process dies (PR_SET_PDEATHSIG)."""
    _libc.prctl(1, signal.SIGTERM)


@atexit.register
def _close_all() -> None:
    for lab in list(_open_labs):
        lab.close()


# ---------------------------------------------------------------------- the delay relay


class _Wander:
    """Delay that moves linearly between random points in [base - j, base + j].

    Segments last 2 j (at least 20 ms), so the delay changes by at most 1 ms per ms: a packet
    sent after another never overtakes it.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.base = 0.0
        self.jitter = 0.0
        self._a = self._b = 0.0  # offsets at segment start and end (s)
        self._t_a = self._t_b = 0.0

    def set(self, base_ms: float, jitter_ms: float) -> None:
        self.base = base_ms / 1000
        self.jitter = jitter_ms / 1000
        self._a = self._b = 0.0
        self._t_a = self._t_b = 0.0

    def delay(self, now: float) -> float:
        j = self.jitter
        if j <= 0:
            return self.base
        if now >= self._t_b:
            period = max(2 * j, 0.02)
            self._a = self._b if now - self._t_b < period else self.rng.uniform(-j, j)
            self._t_a = now
            self._t_b = now + period
            self._b = self.rng.uniform(-j, j)
        frac = (now - self._t_a) / (self._t_b - self._t_a)
        return max(0.0, self.base + self._a + (self._b - self._a) * frac)


def relay_main(tun: str, client_net: str, seed: int) -> int:
    """Hold each packet read from the tun device for its direction's delay, then write it back."""
    tunsetiff = 0x400454CA
    iff_tun, iff_no_pi = 0x0001, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, tunsetiff, struct.pack("16sH", tun.encode(), iff_tun | iff_no_pi))
    net, bits = client_net.split("/")
    client_prefix = struct.unpack("!I", socket.inet_aton(net))[0]
    mask = (0xFFFFFFFF << (32 - int(bits))) & 0xFFFFFFFF
    rng = random.Random(seed)
    wander = {"down": _Wander(rng), "up": _Wander(rng)}
    queues: dict[str, deque[tuple[float, bytes]]] = {"down": deque(), "up": deque()}
    last_release = {"down": 0.0, "up": 0.0}
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = b""
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else 1.0
        readable, _, _ = select.select([fd, stdin], [], [], timeout)
        if stdin in readable:
            try:
                chunk: bytes | None = os.read(stdin, 65536)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                return 0  # the lab closed our stdin (or died): stop
            pending += chunk or b""
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    control = json.loads(line)
                    for direction in ("down", "up"):
                        wander[direction].set(*control[direction])
        if fd in readable:
            now = time.monotonic()
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(packet) >= 20 and packet[0] >> 4 == 4:
                    dst = struct.unpack_from("!I", packet, 16)[0]
                    direction = "down" if dst & mask == client_prefix else "up"
                else:
                    direction = "up"
                release = max(now + wander[direction].delay(now), last_release[direction])
                last_release[direction] = release
                queues[direction].append((release, packet))
        now = time.monotonic()
        for q in queues.values():
            while q and q[0][0] <= now:
                _, packet = q.popleft()
                try:
                    os.write(fd, packet)
                except OSError:
                    pass  # a malformed packet: drop it


# ---------------------------------------------------------------------- measuring a lab


@dataclass
class UdpProbeStats:
    """What a paced UDP stream through the lab saw (rates at the IP level, 28-byte headers)."""

    direction: str
    sent: int
    received: int
    send_kbps: float
    recv_kbps: float
    delays_ms: list[float] = field(default_factory=list)
    reordered: int = 0

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    def delay_pct(self, q: float) -> float:
        xs = sorted(self.delays_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]

    def summary(self) -> dict[str, float | int | str]:
        return {
            "direction": self.direction,
            "sent": self.sent,
            "received": self.received,
            "loss_pct": round(self.loss_pct, 2),
            "send_kbps": round(self.send_kbps, 1),
            "recv_kbps": round(self.recv_kbps, 1),
            "delay_p5_ms": round(self.delay_pct(5), 1),
            "delay_p50_ms": round(self.delay_pct(50), 1),
            "delay_p95_ms": round(self.delay_pct(95), 1),
            "reordered": self.reordered,
        }


def udp_probe(
    lab: NetLab, direction: str, kbps: float, payload: int, seconds: float
) -> UdpProbeStats:
    """Send a paced UDP stream server->client ("down") or client->server ("up") and measure.

    Both ends live in this process (in their namespaces), so one-way delays use one clock.
    """
    src_side, dst_side = ("server", "client") if direction == "down" else ("client", "server")
    tx = lab.socket(src_side)
    rx = lab.socket(dst_side)
    rx.settimeout(0.2)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    dest = rx.getsockname()
    wire = payload + 28
    interval = wire * 8 / (kbps * 1000)
    arrivals: list[tuple[int, float, float]] = []
    stop = threading.Event()

    def receive() -> None:
        quiet_since: float | None = None
        while True:
            try:
                data = rx.recv(65536)
            except TimeoutError:
                if stop.is_set():
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 0.5:
                        return
                continue
            now = time.monotonic()
            seq, sent_at = struct.unpack_from("!Id", data)
            arrivals.append((seq, sent_at, now))
            quiet_since = None

    receiver = threading.Thread(target=receive, name="netlab-rx")
    receiver.start()
    sent = 0
    start = time.monotonic()
    filler = bytes(max(0, payload - 12))
    try:
        while True:
            due = start + sent * interval
            now = time.monotonic()
            if due - start >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            tx.sendto(struct.pack("!Id", sent, time.monotonic()) + filler, dest)
            sent += 1
        send_elapsed = max(time.monotonic() - start, 1e-6)
    finally:
        stop.set()
        receiver.join()
        tx.close()
        rx.close()
    send_kbps = sent * wire * 8 / 1000 / send_elapsed
    stats = UdpProbeStats(direction, sent, len(arrivals), send_kbps, 0.0)
    if len(arrivals) >= 2:
        span = arrivals[-1][2] - arrivals[0][2]
        if span > 0:
            stats.recv_kbps = (len(arrivals) - 1) * wire * 8 / 1000 / span
    stats.delays_ms = [(recv - sent_at) * 1000 for _, sent_at, recv in arrivals]
    highest = -1
    for seq, _, _ in arrivals:
        if seq < highest:
            stats.reordered += 1
        highest = max(highest, seq)
    return stats


def measure_phase(lab: NetLab, params: LinkParams, seconds: float = 2.0) -> dict[str, Any]:
    """Measure delay/loss (down and up, light load) and rate (down, 2x overload) now."""
    out: dict[str, Any] = {}
    light_down = min(800.0, 0.4 * params.down_kbps) if params.down_kbps else 800.0
    light_up = min(400.0, 0.4 * params.up_kbps) if params.up_kbps else 400.0
    out["down"] = udp_probe(lab, "down", light_down, 200, seconds)
    out["up"] = udp_probe(lab, "up", light_up, 200, seconds / 2)
    if params.down_kbps:
        out["rate"] = udp_probe(lab, "down", 2 * params.down_kbps, 1200, seconds)
    return out


def check_phase(params: LinkParams, measured: dict[str, Any]) -> list[str]:
    """Differences between `params` and a `measure_phase()` result beyond lab tolerances."""
    problems = []
    down: UdpProbeStats = measured["down"]
    up: UdpProbeStats = measured["up"]
    for stats, delay, jitter, loss in (
        (down, params.down_delay_ms, params.down_jitter_ms, params.down_loss_pct),
        (up, params.up_delay_ms, params.up_jitter_ms, params.up_loss_pct),
    ):
        name = stats.direction
        median = stats.delay_pct(50)
        if not delay - 2 - jitter / 2 <= median <= delay + 5 + jitter / 2:
            problems.append(f"{name}: median delay {median:.1f} ms, expected {delay:.0f} ms")
        p5, p95 = stats.delay_pct(5), stats.delay_pct(95)
        if p5 < delay - jitter - 2 or p95 > delay + jitter + 10:
            problems.append(
                f"{name}: delay p5..p95 {p5:.1f}..{p95:.1f} ms outside {delay:.0f} +/- {jitter:.0f}"
            )
        if jitter >= 10 and p95 - p5 < jitter / 2:
            problems.append(f"{name}: delay spread {p95 - p5:.1f} ms, expected ~ +/- {jitter:.0f}")
        # binomial tolerance: 3.5 sigma plus half a point
        n = max(stats.sent, 1)
        sigma = 100 * ((loss / 100) * (1 - loss / 100) / n) ** 0.5
        if abs(stats.loss_pct - loss) > 3.5 * sigma + 0.5:
            problems.append(f"{name}: loss {stats.loss_pct:.2f} %, expected {loss:.1f} %")
        if stats.reordered:
            problems.append(f"{name}: {stats.reordered} packets reordered")
    rate = measured.get("rate")
    if rate is not None and params.down_kbps:
        # tbf counts Ethernet headers too: the IP-level rate is 1228/1242 of the link rate
        expected = params.down_kbps * 1228 / 1242
        if not 0.9 * expected <= rate.recv_kbps <= 1.08 * expected:
            problems.append(f"rate: {rate.recv_kbps:.0f} kbit/s, expected {expected:.0f}")
    return problems


def selftest(profile: Profile, seconds: float = 2.0, server_netns: bool = True) -> bool:
    """Build a lab for `profile`, measure each distinct phase, print a report; True if OK."""
    distinct: list[LinkParams] = []
    for _, params in profile.phases:
        if params not in distinct:
            distinct.append(params)
    ok = True
    with NetLab(profile, server_netns=server_netns) as lab:
        print(f"lab {lab.run_id}: server {lab.server_ip} <-> client {lab.client_ip}")
        for params in distinct:
            lab.apply(params)
            time.sleep(0.2)
            measured = measure_phase(lab, params, seconds)
            problems = check_phase(params, measured)
            ok = ok and not problems
            report = {
                "expected": asdict(params),
                "measured": {k: v.summary() for k, v in measured.items()},
                "problems": problems,
            }
            print(json.dumps(report, indent=2))
    remaining = lab.leftovers()
    if remaining:
        print(f"left behind: {remaining}")
        ok = False
    print("selftest", "OK" if ok else "FAILED")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    relay = sub.add_parser("relay", help="(internal) the delay relay, run inside the router ns")
    relay.add_argument("--tun", required=True)
    relay.add_argument("--client-net", required=True)
    relay.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="clean", choices=sorted(PROFILES))
    parser.add_argument(
        "--selftest", action="store_true", help="measure the lab against the profile"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measurement time per probe")
    parser.add_argument("--hold", type=float, default=0.0, help="keep a lab up this many seconds")
    parser.add_argument("--list", action="store_true", help="list the profiles")
    args = parser.parse_args(argv)
    if args.command == "relay":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return relay_main(args.tun, args.client_net, args.seed)
    if args.list:
        for profile in PROFILES.values():
            print(f"{profile.name}: {profile.description}")
            for start, params in profile.phases:
                print(f"  t={start:>5.1f}s {asdict(params)}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    profile = get_profile(args.profile)
    try:
        if args.selftest:
            return 0 if selftest(profile, args.seconds) else 1
        if args.hold > 0:
            with NetLab(profile) as lab:
                lab.start_schedule()
                print(
                    json.dumps(
                        {
                            "run_id": lab.run_id,
                            "server_ip": lab.server_ip,
                            "client_ip": lab.client_ip,
                            "client_ns": lab.client_ns,
                        }
                    ),
                    flush=True,
                )
                time.sleep(args.hold)
            return 0
    except LabError as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
