#!/usr/bin/env python3
"""Soak benchmark: does a node that serves churn for minutes give its memory and sockets back?

    .venv/bin/python benchmarks/soak.py --minutes 10 --json build/soak.json
    .venv/bin/python benchmarks/soak.py --quick --json build/soak-quick.json   # 1 minute

A node (`python -m sfu serve`, generated config, log captured) runs with a publisher of
pre-encoded media and an observer viewer that stays (benchmarks/livenode.py). Then, for
`--minutes`, at the same time and each in a bounded loop:

* viewers join, receive media for a moment and leave gracefully (a `leave` message);
* viewers in a process of their own join, receive media and vanish: the process is killed,
  nothing is said (a closed tab, a phone gone);
* a chatter sends a data message to the room four times a second;
* WHEP players (aiortc, loopback) start a session, receive media and DELETE it; WHIP
  publishers (pre-encoded audio, another room) do the same.

After a warm-up (one round of each) and once the room is back to its stage, the node's RSS and
open file descriptors are read (`rss_mb_start`, `fds_start`); after the churn, once the room is
back to its stage again, read again (`rss_mb_end`, `fds_end`). `errors`: ERROR records and
tracebacks in the node's log over the whole run; `observer_min_pkts_per_s`: the observer's
lowest one-second packet rate during the churn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Log,
    command_line,
    machine,
    mark,
    metric_table,
    token,
    until,
    write_json,
)
from benchmarks.livenode import (  # noqa: E402
    OBSERVER,
    PUBLISHER,
    ROOM,
    LiveNode,
    auth,
    loopback,
    result_of,
    run_bench,
    spawn_viewers,
)

log = Log("soak")
CHATTER = "soak-chatter"
WHIP_ROOM = "soak-whip"
STAGE = {PUBLISHER, OBSERVER, CHATTER}
RSS_FACTOR, RSS_SLACK_MB = 1.2, 20.0
CHAT_PERIOD_S = 0.25
QUIET_TIMEOUT_S = 30.0
SETTLE_S = 3.0


@dataclass
class Tally:
    """What the churn did, for the JSON."""

    joins: int = 0  # viewer joins that got media (graceful + vanishing)
    graceful_leaves: int = 0
    vanished: int = 0
    join_failures: int = 0
    whep_sessions: int = 0
    whep_with_media: int = 0
    whip_sessions: int = 0
    whip_connected: int = 0
    session_failures: int = 0
    data_messages: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, what: str, exc: BaseException) -> None:
        if len(self.problems) < 20:
            self.problems.append(f"{what}: {type(exc).__name__}: {exc}"[:200])


class Soak:
    def __init__(self, node: LiveNode, args: argparse.Namespace) -> None:
        self.node = node
        self.args = args
        self.auth = auth()
        self.tally = Tally()
        self.ids = itertools.count(1)
        self.stop = asyncio.Event()
        self.rng = random.Random(3)
        self.audio: list[bytes] = []

    def token(self, identity: str, room: str = ROOM, **grants: bool) -> str:
        return token(self.auth, identity, room, **grants)

    # -- one round of each activity ------------------------------------------------------------

    async def graceful_viewer(self) -> None:
        from benchmarks.fanout import subscriber_client_class

        identity = f"soak-viewer-{next(self.ids)}"
        client = await subscriber_client_class().connect(
            self.node.url, self.token(identity, subscribe=True), network=loopback(), timeout=15
        )
        try:
            if not await until(client.has_media, 10):
                raise TimeoutError(f"{identity} got no media")
            self.tally.joins += 1
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            await asyncio.wait_for(client.leave(), 5)
        self.tally.graceful_leaves += 1

    async def vanishing_viewers(self, count: int = 2) -> None:
        n = next(self.ids)
        identities = [f"soak-vanish-{n}-{i}" for i in range(count)]
        child, out = await spawn_viewers(self.node, identities, str(n))
        try:
            if not await until(lambda: out.exists() or not child.alive, 30, 0.2):
                raise TimeoutError("vanishing viewers did not report")
            report = result_of(out)
            if not report or not report.get("ready"):
                raise RuntimeError(f"vanishing viewers got no media ({report})")
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            self.tally.joins += count
        finally:
            await asyncio.to_thread(child.stop, 0.0)  # SIGKILL: no leave, no DTLS close
        self.tally.vanished += count

    async def _http_session(self, kind: str, room: str, bearer: str, peer: Any) -> bool:
        """Offer, POST, answer, wait for the connection, hold a moment, DELETE; connected?"""
        import aiohttp

        offer = await peer.offer()
        url = f"{self.node.url}/{kind}/{room}"
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {bearer}"}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(url, data=offer, headers=headers) as r:
                answer = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"POST /{kind}: {r.status} {answer[:80]!r}")
                location = r.headers["Location"]
            try:
                await peer.accept_answer(answer)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(peer.connected.wait(), 10)
                await asyncio.sleep(self.rng.uniform(1.0, 2.0))
                return peer.connected.is_set()
            finally:
                auth_header = {"Authorization": f"Bearer {bearer}"}
                async with http.delete(f"{self.node.url}{location}", headers=auth_header) as r:
                    if r.status != 200:
                        raise RuntimeError(f"DELETE {kind} session: {r.status}")

    async def whep_player(self) -> None:
        from sfu.media.peer import MediaPeer

        packets = 0

        def on_rtp(data: bytes, arrival_ms: int) -> None:
            nonlocal packets
            packets += 1

        peer = MediaPeer(loopback(), on_rtp=on_rtp, label="soak-whep")
        try:
            for kind in ("video", "audio"):
                peer.pc.addTransceiver(kind, direction="recvonly")
            bearer = self.token(f"soak-whep-{next(self.ids)}", subscribe=True)
            await self._http_session("whep", ROOM, bearer, peer)
            self.tally.whep_sessions += 1
            self.tally.whep_with_media += packets > 0
        finally:
            await peer.close()

    async def whip_publisher(self) -> None:
        from benchmarks.fanout import AUDIO_FRAME, AUDIO_RATE, encode_audio, looping_track
        from sfu.media.peer import MediaPeer

        if not self.audio:
            self.audio = await asyncio.to_thread(encode_audio, 2.0)
        peer = MediaPeer(loopback(), label="soak-whip")
        try:
            track = looping_track("audio", self.audio, AUDIO_RATE / AUDIO_FRAME, AUDIO_RATE)
            peer.pc.addTransceiver(track, direction="sendonly")
            bearer = self.token(f"soak-whip-{next(self.ids)}", WHIP_ROOM, publish=True)
            connected = await self._http_session("whip", WHIP_ROOM, bearer, peer)
            self.tally.whip_sessions += 1
            self.tally.whip_connected += connected
        finally:
            await peer.close()

    # -- loops -------------------------------------------------------------------------------------

    async def loop(self, name: str, step, pause_s: float, failures: str) -> None:
        """Run `step` until told to stop; each round bounded in time, failures counted."""
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(step(), 45)
            except Exception as exc:
                setattr(self.tally, failures, getattr(self.tally, failures) + 1)
                self.tally.note(name, exc)
                await asyncio.sleep(1.0)  # a failing node: do not spin
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), pause_s)

    async def chatter(self, client) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                await client.send_data({"n": n, "text": f"message {n} from the chatter"}, "chat")
                self.tally.data_messages += 1
            except Exception as exc:
                self.tally.note("chatter", exc)
                return
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), CHAT_PERIOD_S)

    async def quiet(self) -> bool:
        """Wait until only the stage is left in the room and the WHIP room is empty."""

        async def check() -> bool:
            here = await self.node.participants()
            there = await self.node.participants(WHIP_ROOM)
            return here is not None and set(here) <= STAGE and there == []

        deadline = time.monotonic() + QUIET_TIMEOUT_S
        while time.monotonic() < deadline:
            if await check():
                await asyncio.sleep(SETTLE_S)
                return True
            await asyncio.sleep(0.5)
        return False

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> dict:
        from sfu.client import RoomClient

        node = self.node
        await node.start()
        log(f"node pid {node.pid} at {node.url}; stage live")
        chat = await RoomClient.connect(
            node.url, self.token(CHATTER, subscribe=True), network=loopback(),
            auto_subscribe=False,
        )  # fmt: skip
        chatting = asyncio.ensure_future(self.chatter(chat))
        try:
            log("warm-up: one round of each activity")
            t_warm = time.monotonic()
            steps = (self.graceful_viewer, self.vanishing_viewers, self.whep_player,
                     self.whip_publisher)  # fmt: skip
            for step in steps:
                try:
                    await asyncio.wait_for(step(), 45)
                except Exception as exc:
                    self.tally.note(f"warm-up {step.__name__}", exc)
            quiet_start = await self.quiet()
            rss0, fds0, targets0 = node.rss_mb(), node.fds(), node.fd_targets()
            warmup_s = time.monotonic() - t_warm
            log(f"warmed up in {warmup_s:.0f} s: RSS {rss0:.1f} MB, {fds0} fds; churning")
            t0 = time.monotonic()
            loops = [
                self.loop("graceful viewer", self.graceful_viewer, 0.3, "join_failures"),
                self.loop("vanishing viewers", self.vanishing_viewers, 1.5, "join_failures"),
                self.loop("WHEP", self.whep_player, 0.5, "session_failures"),
                self.loop("WHIP", self.whip_publisher, 0.5, "session_failures"),
            ]
            tasks = [asyncio.ensure_future(c) for c in loops]
            progress = t0
            silent = 0  # health checks in a row without an answer
            while time.monotonic() - t0 < self.args.seconds:
                await asyncio.sleep(1.0)
                if not node.alive:
                    self.tally.problems.append("the node exited during the churn")
                    break
                silent = 0 if await node.healthz_ms(5.0) is not None else silent + 1
                if silent >= 3:
                    self.tally.problems.append("the node stopped answering /healthz")
                    break
                if time.monotonic() - progress >= 30:
                    progress = time.monotonic()
                    log(
                        f"{progress - t0:.0f} s: {self.tally.joins} joins, RSS "
                        f"{node.rss_mb():.1f} MB, {node.fds()} fds"
                    )
            t1 = time.monotonic()
            self.stop.set()
            _, pending = await asyncio.wait(tasks, timeout=60)
            for task in pending:
                task.cancel()
            log("churn over; waiting for the room to empty")
            quiet_end = await self.quiet() if node.alive else False
            alive = node.alive
            state = "ok" if alive and await node.healthz_ms(5.0) is not None else "hung"
            state = state if alive else "died"
            rss1 = node.rss_mb() if alive else None
            fds1 = node.fds() if alive else None
            targets1 = node.fd_targets() if alive else {}
            left = await node.participants() if alive else None
        finally:
            self.stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(chat.leave(), 5)
            chatting.cancel()
            await asyncio.to_thread(node.stop)
        problems = node.log_problems()
        return {
            "minutes": round((t1 - t0) / 60, 2),
            "warmup_s": round(warmup_s, 1),
            "rss_mb_start": round(rss0, 1),
            "rss_mb_end": None if rss1 is None else round(rss1, 1),
            "fds_start": fds0,
            "fds_end": fds1,
            "fds_new_at_end": new_fds(targets0, targets1),
            "errors": problems.errors,
            "tracebacks": problems.tracebacks,
            "error_samples": problems.samples,
            "joins": self.tally.joins,
            "observer_min_pkts_per_s": node.observer_min_rate(t0, t1),
            "observer_pkts_per_s": round(node.observer_rate(t0, t1) or 0.0, 1),
            "node_alive_at_end": alive,
            "node": state,
            "quiet_before_start": quiet_start,
            "quiet_at_end": quiet_end,
            "participants_left": left,
            "churn": {k: v for k, v in vars(self.tally).items() if k != "problems"},
            "client_problems": self.tally.problems,
        }


def new_fds(before: dict[int, str], after: dict[int, str]) -> dict[str, int]:
    """Descriptors open at the end that were not at the start, by what they point at
    (a socket's protocol, ports and state; pipes and anonymous inodes by kind; paths)."""
    kinds: dict[str, int] = {}
    for fd, target in after.items():
        if before.get(fd) != target:
            kind = target.split(":[", 1)[0] if ":[" in target else target
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def check_targets(result: dict) -> dict:
    rss0, rss1 = result["rss_mb_start"], result["rss_mb_end"]
    rss_limit = round(RSS_FACTOR * rss0 + RSS_SLACK_MB, 1)
    met = {
        "rss": rss1 is not None and rss1 <= rss_limit,
        "fds": result["fds_end"] is not None and result["fds_end"] <= result["fds_start"],
        "errors": result["errors"] == 0,
        "node": result.get("node", "ok") == "ok",
    }
    return {"rss_mb_end_max": rss_limit, "fds_end_max": result["fds_start"], "errors": 0,
            "met_each": met, "met": all(met.values())}  # fmt: skip


def print_table(result: dict) -> None:
    t = result["targets"]
    churn = result["churn"]
    rows = [
        ("churn (minutes)", result["minutes"], "", ""),
        ("node at the end", result["node"], "ok", mark(result["node"] == "ok")),
        ("viewer joins (graceful + vanishing)",
         f"{result['joins']} ({churn['graceful_leaves']} + {churn['vanished']})", "", ""),
        ("join failures", churn["join_failures"], "", ""),
        ("WHEP sessions (with media)", f"{churn['whep_sessions']} ({churn['whep_with_media']})",
         "", ""),
        ("WHIP sessions (connected)", f"{churn['whip_sessions']} ({churn['whip_connected']})",
         "", ""),
        ("WHIP/WHEP failures", churn["session_failures"], "", ""),
        ("data messages", churn["data_messages"], "", ""),
        ("node RSS start (MB)", result["rss_mb_start"], "", ""),
        ("node RSS end (MB)", result["rss_mb_end"], f"<= {t['rss_mb_end_max']:g}",
         mark(t["met_each"]["rss"])),
        ("node fds start", result["fds_start"], "", ""),
        ("node fds end", result["fds_end"], f"<= {t['fds_end_max']}", mark(t["met_each"]["fds"])),
        ("errors in the node's log", result["errors"], "0", mark(t["met_each"]["errors"])),
        ("  of which tracebacks", result["tracebacks"], "", ""),
        ("observer pkt/s, mean", result["observer_pkts_per_s"], "", ""),
        ("observer pkt/s, lowest second", result["observer_min_pkts_per_s"], "", ""),
    ]  # fmt: skip
    print(metric_table(rows))
    for line in result["error_samples"][:5]:
        print(f"  log: {line[:160]}")
    for line in result["client_problems"][:5]:
        print(f"  client: {line}")
    if result["fds_new_at_end"]:
        print(f"  descriptors new at the end: {result['fds_new_at_end']}")
    if not result["quiet_at_end"]:
        print(f"  the room did not empty in {QUIET_TIMEOUT_S:g} s: {result['participants_left']}")
    print(f"targets met: {mark(t['met'])}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="churn time (default 10)")
    parser.add_argument("--quick", action="store_true", help="1 minute of churn")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    args.seconds = args.minutes * 60
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    budget = args.seconds + 300  # start, warm-up, the loops' last rounds, the room emptying
    result = run_bench("soak-", lambda node: Soak(node, args).run(), budget, log)
    if result is None:
        return 130
    result["targets"] = check_targets(result)
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["command"] = command_line()
    result["machine"] = machine()
    print_table(result)
    if args.json:
        log(f"wrote {write_json(args.json, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
