#!/usr/bin/env python3
"""Join-time benchmark: how long a browser takes from connect() to the first decoded frame.

    .venv/bin/python benchmarks/join_time.py --joins 20 --json build/join.json
    .venv/bin/python benchmarks/join_time.py --joins 20 --rtt-ms 250 --json build/join-250.json
    .venv/bin/python benchmarks/join_time.py --quick --json build/join-quick.json
    .venv/bin/python benchmarks/join_time.py --joins 20 --join-path ws --json build/join-ws.json

What runs:

* the SFU: `python -m sfu serve --config configs/demo.toml --port P` in its own process;
* a publisher (a `RoomClient` in this process) live in room `bench`: synthetic 640x360 VP8
  at 30 fps, encoded by aiortc (so it answers keyframe requests like a browser would) and an
  Opus tone;
* headless Chromium (Debian's, through Playwright). For each join a fresh page is loaded from
  the node (its index page) and loads the SDK from the node, as the demo pages and a shop page
  importing `/sdk/sfu-client.js` from the node do, then calls `connect(url, token)` and waits
  for the first frame of the host's video in a <video> element (requestVideoFrameCallback).
  So the browser holds an idle HTTP keep-alive connection to the node when connect() starts,
  which the SDK's HTTP join (`--join-path http`, the SDK's default) uses; `--join-path ws`
  makes the SDK join over the WebSocket instead (`httpJoin: false`). One warm-up join is run
  first and reported on its own (`first_join_ms`): it includes starting the browser's WebRTC
  machinery.
* the 1-to-1 page (`/demo/consult.html`), both sides in Chromium with the fake camera: the
  assistant joins and publishes, then the buyer joins (camera and microphone published inside
  `join`). Reported: the buyer's connect() -> first frame of the assistant, and on the
  assistant's side the buyer's track announcement -> its first frame.

The phase breakdown of each viewer join comes from the SFU's join metrics (`/api/stats`, admin
token), lined up with the page's clock (both are this machine's wall clock):

    websocket    connect() -> the join reaches the SFU (`--join-path ws`: TCP + the WebSocket
                 upgrade carrying it; `http`: the POST on the page's keep-alive connection)
    signalling   join received -> the subscriber's answer received (`joined` with the offer
                 inside, the browser's answer)
    ice          answer -> ICE usable (the SFU uses the pair the browser's first check came on)
    dtls         ICE -> the SFU has SRTP keys (it is the DTLS client and takes them once its
                 last flight is out: false start; docs/protocol.md, "Fast join")
    first_packet DTLS keys -> first video packet forwarded (the cached keyframe)
    first_frame  first video packet forwarded -> the page presents the first frame

`--rtt-ms MS` puts the viewer behind the weak-link lab (benchmarks/netlab.py, needs root): the
browser runs in the lab's client network namespace, the SFU listens on the lab's server
address, and every packet between them, WebSocket (TCP) and media (UDP) alike, is held for
MS/2 in each direction by the lab's delay stage. The publisher stays local to the SFU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.browser import BrowserMissing, chromium_path, chromium_version, launch  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Log,
    SfuProcess,
    format_table,
    percentile,
    print_log_tail,
    sigterm_as_interrupt,
    write_json,
)

ROOM = "bench"
DEMO_CONFIG = ROOT / "configs" / "demo.toml"
TARGETS_LOOPBACK = {"join_ms_p50": 300.0, "join_ms_p95": 800.0}
TARGETS_RTT = {"join_ms_p50": 1000.0}
JOIN_TIMEOUT_S = 20.0
SFU_START_S = 15.0
FPS = 30

# connect() -> first frame, in a fresh page; everything measured with the page's clock
VIEWER_JS = """
async ({sdkUrl, url, token, options, timeoutMs}) => {
  const { connect } = await import(sdkUrl);
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  document.body.appendChild(video);
  const t0 = performance.now();
  const room = await connect(url, token, { name: "bench viewer", ...options });
  window.__room = room;
  const joinedAt = performance.now();
  const joinPath = room.joinPath || "websocket"; // (older SDKs: always the WebSocket)
  const frameAt = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no video frame in time")), timeoutMs);
    const attach = (remote) => {
      if (remote.kind !== "video" || video.srcObject) return;
      video.srcObject = remote.stream;
      video.requestVideoFrameCallback(() => {
        clearTimeout(timer);
        resolve(performance.now());
      });
    };
    for (const remote of room.remoteTracks.values()) attach(remote);
    room.on("trackSubscribed", attach);
  });
  // after the measurement: how the subscriber connection was set up (DTLS role, version)
  let transport = null;
  try {
    for (const s of (await room.subscriberPc.getStats()).values()) {
      if (s.type === "transport") {
        transport = { dtlsRole: s.dtlsRole, tlsVersion: s.tlsVersion, iceRole: s.iceRole };
      }
    }
  } catch (err) {}
  return {
    epoch0: performance.timeOrigin + t0,
    frameEpoch: performance.timeOrigin + frameAt,
    joinMs: frameAt - t0,
    connectMs: joinedAt - t0,
    joinPath,
    timings: room.timings,
    identity: room.localParticipant.identity,
    width: video.videoWidth,
    transport,
  };
}
"""


# On the assistant's page, before the buyer joins: when its first frame of the buyer shows (wall
# clock), to compare with the buyer's connect() (same browser, same clock).
WATCH_BUYER_JS = """
() => {
  window.__buyerFrameEpoch = null;
  demo.room.on("trackSubscribed", (remote) => {
    if (remote.kind !== "video" || window.__buyerVideo) return;
    const video = document.createElement("video");
    window.__buyerVideo = video;
    video.muted = true;
    video.autoplay = true;
    video.style.width = "4px";
    video.srcObject = remote.stream;
    document.body.appendChild(video);
    video.requestVideoFrameCallback(() => {
      window.__buyerFrameEpoch = performance.timeOrigin + performance.now();
    });
  });
}
"""


log = Log("join_time")


# -- the publisher's media (synthetic, encoded live by aiortc) -------------------------------------


def make_tracks(width: int = 640, height: int = 360):
    import av
    import numpy as np
    from aiortc import MediaStreamTrack

    class MovingBars(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self._n = 0
            self._start: float | None = None
            ramp = np.linspace(40, 200, width, dtype=np.float32)
            self._base = np.repeat(ramp[None, :], height, axis=0).astype(np.uint8)

        async def recv(self):
            if self._start is None:
                self._start = time.monotonic()
            delay = self._start + self._n / FPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            y = self._base.copy()
            x = (self._n * 6) % (width - 40)
            y[:, x : x + 40] = 235
            u = np.full((height // 2, width // 2), 90 + (self._n % 60), np.uint8)
            v = np.full((height // 2, width // 2), 160, np.uint8)
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane, data in zip(frame.planes, (y, u, v), strict=True):
                plane.update(np.ascontiguousarray(data))
            frame.pts = self._n * (90000 // FPS)
            frame.time_base = fractions.Fraction(1, 90000)
            self._n += 1
            return frame

    class Tone(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._samples = 0
            self._start: float | None = None

        async def recv(self):
            n = 960
            if self._start is None:
                self._start = time.monotonic()
            delay = self._start + self._samples / 48000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = (np.arange(n) + self._samples) / 48000
            wave = (6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(wave, format="s16", layout="mono")
            frame.sample_rate = 48000
            frame.pts = self._samples
            frame.time_base = fractions.Fraction(1, 48000)
            self._samples += n
            return frame

    return MovingBars(), Tone()


# -- measuring -------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.lab = None
        self.sfu: SfuProcess | None = None
        self.publisher = None
        self.auth = None
        self.admin_token = ""

    # set-up -----------------------------------------------------------------------------------

    def _config(self) -> tuple[Path, str]:
        """The demo config; behind the lab, media bound to the lab's server address."""
        demo = (
            Path(self.args.sfu_root) / "configs" / "demo.toml"
            if self.args.sfu_root
            else DEMO_CONFIG
        )
        if self.lab is None:
            return demo, "127.0.0.1"
        host = self.lab.server_ip
        text = demo.read_text()
        text, n = re.subn(r"(?m)^bind_addresses = .*$", f'bind_addresses = ["{host}"]', text)
        assert n == 1, "configs/demo.toml has no bind_addresses line"
        path = self.workdir / "sfu-lab.toml"
        path.write_text(text)
        return path, host

    def _start_lab(self) -> str:
        """The viewer side of the link in the lab; returns Chromium's wrapper script."""
        from benchmarks.netlab import LinkParams, NetLab, Profile

        half = self.args.rtt_ms / 2
        profile = Profile(
            f"rtt-{self.args.rtt_ms:g}",
            f"RTT {self.args.rtt_ms:g} ms ({half:g} ms each way), no loss, no rate limit",
            ((0.0, LinkParams(down_delay_ms=half, up_delay_ms=half)),),
        )
        self.lab = NetLab(profile)
        self.lab.start()
        return self.lab.wrapper_script(
            "client", chromium_path(), str(self.workdir / "chromium-in-lab")
        )

    async def _start_publisher(self) -> None:
        from sfu.auth import Grants, mint_token
        from sfu.client import RoomClient
        from sfu.media.peer import NetworkSettings

        token = mint_token(self.auth, identity="bench-host", room=ROOM, grants=Grants(publish=True))
        network = NetworkSettings(addresses=(self.sfu.host,))
        self.publisher = await RoomClient.connect(
            self.sfu.url, token, name="Bench host", network=network, auto_subscribe=False
        )
        video, audio = make_tracks()
        await self.publisher.publish([video, audio], sources=["camera", "microphone"])
        # live: the SFU has received video
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            stats = await self.stats()
            producers = [
                prod
                for room in stats["rooms"]
                for p in room["participants"]
                for prod in p.get("producers", [])
            ]
            if any(p["kind"] == "video" and p["packets"] > 30 for p in producers):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the publisher's video did not reach the SFU")

    async def stats(self) -> dict:
        import aiohttp

        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.sfu.url}/api/stats", headers=headers) as r:
                r.raise_for_status()
                return await r.json()

    async def server_join(self, identity: str) -> tuple[dict | None, dict | None]:
        """(the participant's join record, its stats entry) while it is still connected."""
        stats = await self.stats()
        for room in stats["rooms"]:
            for p in room["participants"]:
                if p["identity"] == identity:
                    return p.get("join"), p
        for entry in stats["joins"]["recent"]:
            if entry["identity"] == identity:
                return entry, None
        return None, None

    # one viewer join --------------------------------------------------------------------------

    def sdk_options(self) -> dict:
        if self.args.legacy_join:  # how the SDK joined before the fast join
            return {
                "httpJoin": False,
                "urlJoin": False,
                "inlineOffer": False,
                "waitForIceGathering": True,
            }
        return {
            "inlineOffer": not self.args.separate_offer,
            "httpJoin": self.args.join_path == "http",
        }

    async def viewer_join(self, context, index: int) -> dict:
        from sfu.auth import Grants, mint_token

        identity = f"viewer-{index}"
        token = mint_token(self.auth, identity=identity, room=ROOM, grants=Grants(subscribe=True))
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            # A page from the node (the demo index, as a viewer opens a demo page): the browser
            # then holds a keep-alive connection to the node, as real viewer pages do.
            await page.goto(f"{self.sfu.url}/")
            offset_ms = await clock_offset_ms(page)
            result = await page.evaluate(
                VIEWER_JS,
                {
                    "sdkUrl": f"{self.sfu.url}/sdk/sfu-client.js",
                    "url": self.sfu.url,
                    "token": token,
                    "options": self.sdk_options(),
                    "timeoutMs": int(JOIN_TIMEOUT_S * 1000),
                },
            )
            join, entry = await self.server_join(identity)
            await page.evaluate("window.__room && window.__room.disconnect()")
        finally:
            await page.close()
        if errors:
            raise RuntimeError(f"page errors: {errors}")
        # the page's wall clock, moved onto the server's (this process's) wall clock
        result["epoch0"] -= offset_ms
        result["frameEpoch"] -= offset_ms
        result["clockOffsetMs"] = offset_ms
        return breakdown(result, join, entry)

    # one 1-to-1 call --------------------------------------------------------------------------

    async def _pin_join_path(self, page) -> None:
        """The demo page calls connect() with the SDK's defaults: for `--join-path ws` its
        HTTP join is refused inside the browser (no request leaves it), so the SDK falls back
        to the WebSocket join at once, as it does where the HTTP join is not possible."""
        if self.args.join_path == "ws" or self.args.legacy_join:
            await page.route("**/rtc/join", lambda route: route.abort())

    async def consult_call(self, context, index: int) -> dict:
        room = f"bench-consult-{index}-{os.getpid()}"
        base = f"{self.sfu.url}/demo/consult.html?room={room}"
        assistant = await context.new_page()
        buyer = None
        try:
            await self._pin_join_path(assistant)
            await assistant.goto(f"{base}&role=assistant")
            await assistant.click("#as-assistant")
            await wait_page(assistant, "demo.room && demo.room.localTracks.size >= 2")
            await assistant.evaluate(WATCH_BUYER_JS)
            buyer = await context.new_page()
            await self._pin_join_path(buyer)
            await buyer.goto(base)
            await buyer.click("#as-buyer")
            for page in (buyer, assistant):
                await wait_page(page, "demo.joinMs !== undefined")
            info = {}
            for name, page in (("buyer", buyer), ("assistant", assistant)):
                info[name] = await page.evaluate(
                    "({joinMs: demo.joinMs, kind: demo.joinKind, timings: demo.room.timings,"
                    " identity: demo.room.localParticipant.identity, errors: demo.errors,"
                    " joinPath: demo.room.joinPath || 'websocket'})"
                )
                if info[name]["errors"]:
                    raise RuntimeError(f"{name} page: {info[name]['errors']}")
            await assistant.wait_for_function(
                "window.__buyerFrameEpoch !== null", timeout=JOIN_TIMEOUT_S * 1000
            )
            buyer_connect = await buyer.evaluate("performance.timeOrigin + demo.room._t0")
            buyer_frame = await assistant.evaluate("window.__buyerFrameEpoch")
            join, _ = await self.server_join(info["buyer"]["identity"])
            for page in (buyer, assistant):
                await page.evaluate("demo.room && demo.room.disconnect()")
        finally:
            for page in (buyer, assistant):
                if page is not None:
                    await page.close()
        return {
            "room": room,
            "buyer_join_ms": round(info["buyer"]["joinMs"], 1),
            "buyer_join_kind": info["buyer"]["kind"],
            "assistant_remote_live_ms": round(info["assistant"]["joinMs"], 1),
            "assistant_sees_buyer_ms": round(buyer_frame - buyer_connect, 1),
            "assistant_kind": info["assistant"]["kind"],
            "buyer_timings": rounded(info["buyer"]["timings"]),
            "join_paths": {name: info[name]["joinPath"] for name in info},
            "buyer_server_ms": (join or {}).get("ms", {}),
        }

    # the run ----------------------------------------------------------------------------------

    async def run(self) -> dict:
        from sfu.auth import Grants, mint_token
        from sfu.config import Config

        args = self.args
        executable = None
        if args.rtt_ms:
            log(f"building the weak-link lab: RTT {args.rtt_ms:g} ms between viewer and SFU")
            executable = await asyncio.to_thread(self._start_lab)
        config_path, host = self._config()
        self.auth = Config.load(config_path).auth
        self.admin_token = mint_token(
            self.auth, identity="bench-admin", room="*", grants=Grants(admin=True)
        )
        self.sfu = SfuProcess(
            self.workdir / "sfu.log", config_path, host, cwd=Path(args.sfu_root or ROOT)
        )
        self.sfu.start()
        await self.sfu.wait_ready(SFU_START_S)
        log(f"SFU at {self.sfu.url}; starting the publisher")
        await self._start_publisher()
        log("publisher live; launching Chromium")
        viewers: list[dict] = []
        calls: list[dict] = []
        first: dict | None = None
        extra = []
        if self.lab is not None:
            # the pages come from the lab's address over plain http: let getUserMedia work there
            extra.append(f"--unsafely-treat-insecure-origin-as-secure={self.sfu.url}")
        async with launch(executable, extra, loopback=self.lab is None) as context:
            first = await asyncio.wait_for(self.viewer_join(context, 0), JOIN_TIMEOUT_S + 10)
            log(f"warm-up join: {first['join_ms']:.0f} ms")
            for i in range(1, args.joins + 1):
                result = await asyncio.wait_for(self.viewer_join(context, i), JOIN_TIMEOUT_S + 10)
                viewers.append(result)
                log(
                    f"join {i}/{args.joins}: {result['join_ms']:.0f} ms "
                    f"(first packet at {result['server_ms'].get('first_video_packet')} ms "
                    "after the join message)"
                )
                await asyncio.sleep(args.pause)
            for j in range(args.calls):
                call = await asyncio.wait_for(self.consult_call(context, j), 2 * JOIN_TIMEOUT_S)
                calls.append(call)
                log(
                    f"1-to-1 call {j + 1}/{args.calls}: buyer {call['buyer_join_ms']:.0f} ms, "
                    f"assistant {call['assistant_remote_live_ms']:.0f} ms"
                )
        node_joins = (await self.stats()).get("joins", {})
        return summarise(args, viewers, calls, first, node_joins)

    async def close(self) -> None:
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publisher.leave(), 5)
        if self.sfu is not None:
            self.sfu.stop()
        if self.lab is not None:
            await asyncio.to_thread(self.lab.close)


async def clock_offset_ms(page) -> float:
    """How far the page's wall clock (timeOrigin + now) is ahead of time.time(), in ms.

    Both read this machine's clock, but Chromium's timeOrigin is sampled coarsely; the
    sample with the shortest round trip bounds the error to half of it (~1 ms).
    """
    best: tuple[float, float] | None = None
    for _ in range(5):
        before = time.time()
        page_ms = await page.evaluate("performance.timeOrigin + performance.now()")
        after = time.time()
        sample = (after - before, page_ms - (before + after) / 2 * 1000)
        if best is None or sample[0] < best[0]:
            best = sample
    return best[1]


async def wait_page(page, condition: str) -> None:
    """Wait for a demo page's condition; fail at once with the page's own error, if any."""
    await page.wait_for_function(
        f"demo.errors.length > 0 || ({condition})", timeout=JOIN_TIMEOUT_S * 1000
    )
    errors = await page.evaluate("demo.errors")
    if errors:
        raise RuntimeError(f"{page.url}: {errors}")


def rounded(timings: dict | None) -> dict:
    return {k: round(v, 1) for k, v in (timings or {}).items() if isinstance(v, int | float)}


def breakdown(result: dict, join: dict | None, entry: dict | None) -> dict:
    """One join's figures: the page's, the server's, and the phases lined up between them."""
    out: dict[str, Any] = {
        "identity": result["identity"],
        "join_ms": round(result["joinMs"], 1),
        "connect_resolved_ms": round(result["connectMs"], 1),
        "join_path": result.get("joinPath"),
        "client_ms": rounded(result["timings"]),
        "video_width": result["width"],
        "browser_transport": result.get("transport"),
        "clock_offset_ms": round(result.get("clockOffsetMs", 0.0), 1),
        "server_ms": {},
    }
    if join is None:
        return out
    ms = join["ms"]
    out["server_ms"] = ms
    at_ms = join["at"] * 1000  # the join message's arrival, wall clock
    phases: dict[str, float | None] = {"websocket_ms": at_ms - result["epoch0"]}

    def span(a: str, b: str) -> float | None:
        return ms[b] - ms[a] if a in ms and b in ms else None

    phases["signalling_ms"] = ms.get("answer")
    phases["server_joined_ms"] = ms.get("joined")
    phases["ice_ms"] = span("answer", "subscriber_ice")
    phases["dtls_ms"] = span("subscriber_ice", "subscriber_dtls")
    phases["first_packet_ms"] = span("subscriber_dtls", "first_video_packet")
    if "first_video_packet" in ms:
        phases["first_frame_ms"] = result["frameEpoch"] - (at_ms + ms["first_video_packet"])
    out["phases"] = {k: (round(v, 1) if v is not None else None) for k, v in phases.items()}
    if entry is not None:
        video = [d for d in entry.get("downtracks", []) if d["kind"] == "video"]
        out["keyframes_from_cache"] = sum(d.get("keyframes_from_cache", 0) for d in video)
    return out


def summarise(
    args: argparse.Namespace,
    viewers: list[dict],
    calls: list[dict],
    first: dict | None,
    node_joins: dict,
) -> dict:
    joins = [v["join_ms"] for v in viewers]
    result: dict[str, Any] = {
        "benchmark": "join_time",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "link": f"netlab RTT {args.rtt_ms:g} ms" if args.rtt_ms else "loopback",
        "rtt_ms": args.rtt_ms or 0,
        "sdk_options": Bench(args, Path(".")).sdk_options(),
        "join_path": args.join_path,
        "sfu_root": args.sfu_root or str(ROOT),
        "joins": len(joins),
        "join_ms_p50": percentile(joins, 50),
        "join_ms_p95": percentile(joins, 95),
        "join_ms_min": min(joins) if joins else None,
        "join_ms_max": max(joins) if joins else None,
        "join_ms_mean": round(statistics.fmean(joins), 1) if joins else None,
        "first_join_ms": first["join_ms"] if first else None,
    }
    for phase in (
        "websocket_ms",
        "signalling_ms",
        "server_joined_ms",
        "ice_ms",
        "dtls_ms",
        "first_packet_ms",
        "first_frame_ms",
    ):
        values = [v.get("phases", {}).get(phase) for v in viewers]
        result[f"{phase}_p50"] = percentile(values, 50)
        result[f"{phase}_p95"] = percentile(values, 95)
    client_steps = sorted({k for v in viewers for k in v["client_ms"]})
    result["client_ms_p50"] = {
        step: percentile([v["client_ms"].get(step) for v in viewers], 50) for step in client_steps
    }
    paths = [v.get("join_path") for v in viewers]
    result["join_paths"] = {p: paths.count(p) for p in sorted(set(paths), key=str)}
    roles = [(v.get("browser_transport") or {}).get("dtlsRole") for v in viewers]
    result["browser_dtls_roles"] = {r: roles.count(r) for r in sorted(set(roles), key=str)}
    result["keyframe_from_cache_share"] = (
        round(sum(1 for v in viewers if v.get("keyframes_from_cache")) / len(viewers), 2)
        if viewers
        else None
    )
    if calls:
        buyer = [c["buyer_join_ms"] for c in calls]
        assistant = [c["assistant_remote_live_ms"] for c in calls]
        sees = [c["assistant_sees_buyer_ms"] for c in calls]
        both = [max(c["buyer_join_ms"], c["assistant_sees_buyer_ms"]) for c in calls]
        result["consult"] = {
            "calls": len(calls),
            "join_ms_p50": percentile(buyer, 50),
            "join_ms_p95": percentile(buyer, 95),
            "remote_live_ms_p50": percentile(assistant, 50),
            "remote_live_ms_p95": percentile(assistant, 95),
            "assistant_sees_buyer_ms_p50": percentile(sees, 50),
            "assistant_sees_buyer_ms_p95": percentile(sees, 95),
            "both_see_each_other_ms_p50": percentile(both, 50),
            "both_see_each_other_ms_p95": percentile(both, 95),
            "per_call": calls,
        }
    targets = TARGETS_RTT if args.rtt_ms else TARGETS_LOOPBACK
    result["targets"] = targets
    result["meets_targets"] = bool(joins) and all(
        result[k] is not None and result[k] <= limit for k, limit in targets.items()
    )
    result["server_join_p50_ms"] = node_joins.get("p50_ms", {})
    result["environment"] = {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "chromium": chromium_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
    }
    result["per_join"] = viewers
    return result


def print_table(result: dict) -> None:
    paths = ", ".join(f"{p} {n}" for p, n in result.get("join_paths", {}).items())
    print(
        f"join time ({result['link']}, {result['joins']} joins, fresh page each; "
        f"join path asked {result['join_path']}, used: {paths})"
    )
    rows = [
        ("connect() -> first frame", "join_ms"),
        ("  the join request reaches the SFU", "websocket_ms"),
        ("  signalling (join -> answer)", "signalling_ms"),
        ("    of which joined+offer built", "server_joined_ms"),
        ("  ICE (answer -> usable)", "ice_ms"),
        ("  DTLS (-> SFU has SRTP keys)", "dtls_ms"),
        ("  first packet (DTLS -> keyframe)", "first_packet_ms"),
        ("  first frame (packet -> shown)", "first_frame_ms"),
    ]
    cells = [
        (label, fmt(result.get(f"{key}_p50")), fmt(result.get(f"{key}_p95"))) for label, key in rows
    ]
    print(format_table(("", "p50", "p95"), cells, indent="  "))
    roles = ", ".join(f"{role} {n}" for role, n in result.get("browser_dtls_roles", {}).items())
    print(f"  browser's DTLS role: {roles or '-'}")
    if "consult" in result:
        c = result["consult"]
        print(f"1-to-1 page ({c['calls']} calls)")
        rows = [
            ("buyer: connect() -> first frame", "join_ms"),
            ("assistant: buyer live -> frame", "remote_live_ms"),
            ("assistant: buyer's connect() -> frame", "assistant_sees_buyer_ms"),
            ("both see each other", "both_see_each_other_ms"),
        ]
        cells = [(label, fmt(c[f"{key}_p50"]), fmt(c[f"{key}_p95"])) for label, key in rows]
        print(format_table(("", "p50", "p95"), cells, indent="  "))
    targets = ", ".join(f"{k} <= {v:g}" for k, v in result["targets"].items())
    verdict = "met" if result["meets_targets"] else "NOT met"
    print(f"targets ({targets}): {verdict}; first (warm-up) join {fmt(result['first_join_ms'])} ms")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# -- command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, help="measured viewer joins (default 20, quick 5)")
    parser.add_argument("--calls", type=int, help="1-to-1 calls (default 5, quick 1)")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="viewer<->SFU round trip")
    parser.add_argument("--quick", action="store_true", help="a short run (< 60 s)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between joins")
    parser.add_argument(
        "--separate-offer",
        action="store_true",
        help="the SDK asks for the first offer as its own message instead of inside `joined`",
    )
    parser.add_argument(
        "--join-path",
        choices=("http", "ws"),
        default="http",
        help="http: the SDK's HTTP join on the page's keep-alive connection (its default); "
        "ws: the join in the WebSocket upgrade (httpJoin: false)",
    )
    parser.add_argument(
        "--legacy-join",
        action="store_true",
        help="the SDK joins the old way: a join message, the offer apart, ICE gathering awaited",
    )
    parser.add_argument(
        "--sfu-root", help="run the SFU (and its SDK and pages) from this source tree instead"
    )
    parser.add_argument("--deadline", type=float, help="seconds for the whole run")
    args = parser.parse_args(argv)
    args.joins = args.joins if args.joins is not None else (5 if args.quick else 20)
    args.calls = args.calls if args.calls is not None else (1 if args.quick else 5)
    if args.joins < 1 or args.calls < 0 or args.rtt_ms < 0:
        parser.error("--joins must be positive, --calls and --rtt-ms not negative")
    if args.deadline is None:
        per_join = 2.0 + args.rtt_ms / 100
        args.deadline = 55.0 if args.quick else 60.0 + (args.joins + 4 * args.calls) * per_join
    return args


async def _run(args: argparse.Namespace, workdir: Path) -> dict:
    bench = Bench(args, workdir)
    try:
        return await asyncio.wait_for(bench.run(), args.deadline)
    finally:
        await bench.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    sigterm_as_interrupt()
    with tempfile.TemporaryDirectory(prefix="join-time-") as tmp:
        try:
            result = asyncio.run(_run(args, Path(tmp)))
        except BrowserMissing as exc:
            print(f"join_time: {exc}", file=sys.stderr)
            return 2
        except BaseException as exc:
            print_log_tail(Path(tmp) / "sfu.log")
            if isinstance(exc, KeyboardInterrupt):
                return 130
            raise
    print_table(result)
    if args.json:
        log(f"wrote {write_json(args.json, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
