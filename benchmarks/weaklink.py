#!/usr/bin/env python3
"""Weak-link benchmark (issue 3): simulcast, bandwidth estimation and layer switching behind
the weak-link lab, with Chromium on both ends.

    .venv/bin/python benchmarks/weaklink.py --quick --json build/weaklink-quick.json
    .venv/bin/python benchmarks/weaklink.py --profile drop-recover --json build/weaklink.json \\
        --plot benchmarks/weaklink-drop-recover.png
    .venv/bin/python benchmarks/weaklink.py --profile all --compare --json build/weaklink-all.json

Needs root (network namespaces, tc, nftables: benchmarks/netlab.py) and Debian's Chromium.

What runs, for each profile (and BWE mode):

* the weak-link lab (`NetLab`): the SFU's side of the link is this (root) namespace, the viewer
  sits in the lab's client namespace behind the profile's link (rate, delay, jitter, loss);
* the SFU: `python -m sfu serve` in its own process with a temporary config: HTTP and media on
  the lab's server address, `[rtc] bwe = true|false` (`--bwe`; off: every subscriber always
  gets the top layer, the baseline);
* the publisher: headless Chromium in this namespace, i.e. on a clean link to the SFU. It joins
  with the browser SDK (/sdk/sfu-client.js) and publishes camera + microphone with
  `simulcast: true` (rids q/h/f = 320x180, 640x360, 1280x720 at the SDK's caps of 150 k,
  500 k and 1.5 Mbit/s). The camera is Chromium's fake capture fed from a generated 1280x720
  30 fps Y4M clip (moving texture plus sensor-like noise, so that every layer uses its whole
  bitrate cap; Chromium's built-in fake camera is 320x240 and nearly static). The fake
  microphone sends Opus;
* the subscriber: headless Chromium inside the client namespace, the same SDK, auto-subscribe,
  the video shown in a <video> element;
* sampling every 250 ms on this process's clock: the subscriber's `getStats()` (inbound-rtp:
  framesDecoded, frameWidth/Height, freezeCount, totalFreezesDuration, bytesReceived,
  packetsLost; audio packetsLost/packetsReceived, concealedSamples/totalSamplesReceived) and
  the SFU's `/api/stats` (admin token): the
  subscriber's forwarded and target layers, layer switches, bandwidth estimate and what is sent,
  and the publisher's layer bitrates. Every second, the publisher's outbound-rtp per rid;
* warm-up: once the subscriber shows its first frame, profiles with a drop wait (at most
  `--warmup` s) for the subscriber to reach the top layer; then the lab's schedule starts
  (t = 0) and plays for the profile's duration.

The figures (adapt_down_s, adapt_up_s, freeze_pct, layer_switches, mean_kbps, frames_decoded,
audio_loss_pct, audio_concealed_pct, and for single-phase profiles the settled layer and
switches a minute once settled) are defined in benchmarks/weaklink_metrics.py. Targets
(issue 3), checked with BWE on: drop-recover adapt_down_s <= 2, adapt_up_s <= 15,
freeze_pct <= 2; cross-border: the top layer that fits 1.5 Mbit/s held (>= 90 % of the
settled time), freeze_pct <= 2, <= 2 switches/min.

Output: a table on stdout (`--compare`: BWE on and off side by side for every profile), `--json
PATH` (one object per run, keyed by profile name, `<profile>/bwe-off` for the baseline, each with
its figures, targets and timelines) and a PNG plot of estimate, link capacity and forwarded layer
over time for drop-recover (`--plot`, default build/weaklink-drop-recover.png).

`--quick` runs drop-recover time-scaled (3 Mbit/s, 300 kbit/s from t = 4 s for 8 s, 3 Mbit/s
again for 16 s) in under 60 s. Every run is bounded in time; namespaces, the SFU and the browsers
are torn down on every exit path (exceptions, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import weaklink_metrics as wm  # noqa: E402
from benchmarks.browser import BrowserMissing, chromium_path, chromium_version, launch  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Log,
    SfuProcess,
    machine_busy,
    print_log_tail,
    proc_cpu_s,
    sigterm_as_interrupt,
    token,
    write_json,
)
from benchmarks.netlab import PROFILES, LabError, NetLab, Profile, get_profile  # noqa: E402

ROOM = "weaklink"
HOST_ID = "weaklink-host"
VIEWER_ID = "weaklink-viewer"
SAMPLE_S = 0.25
PUBLISHER_SAMPLE_S = 1.0
LINK_SAMPLE_S = 0.5
CAPTURE = (1280, 720, 30)  # the publisher's camera: width, height, fps
CLIP_FRAMES = 60  # 2 s, looped by Chromium
PAGE_TIMEOUT_S = 20.0
WARMUP_HOLD_S = 2.0
SETUP_BUDGET_S = 60.0  # lab + SFU + browsers + first frame, before the warm-up
BUSY_MACHINE_PCT = 25.0  # other processes' CPU (% of one core) above which a run is flagged
DEFAULT_PLOT = ROOT / "build" / "weaklink-drop-recover.png"


log = Log("weaklink")


# ---------------------------------------------------------------------- profiles


def quick_profile() -> Profile:
    """drop-recover, time-scaled for --quick: same links, shorter phases."""
    full = PROFILES["drop-recover"]
    high, low = full.phases[0][1], full.phases[1][1]
    return Profile(
        "drop-recover",
        "drop-recover time-scaled for --quick: 3 Mbit/s, 300 kbit/s from t = 4 s for 8 s, "
        "then 3 Mbit/s again for 16 s",
        ((0.0, high), (4.0, low), (12.0, high)),
        28.0,
    )


def has_drop(profile: Profile) -> bool:
    return wm.capacity_events(profile.capacity_timeline())["t_drop"] is not None


def profile_schedule(profile: Profile) -> list[dict[str, Any]]:
    return [{"t": t, **dataclasses.asdict(p)} for t, p in profile.phases]


# ---------------------------------------------------------------------- the camera clip


def write_y4m(path: Path, width: int, height: int, fps: int, frames: int, seed: int = 1) -> Path:
    """A looping clip for Chromium's fake camera: a moving textured box over a panning
    pattern, plus per-frame noise like a camera sensor's, so that an encoder has use for every
    bit it is allowed (each simulcast layer then runs at its cap, as with a real camera)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 60 + 100 * (xx / width) + 40 * (yy / height)
    blocks = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1)).astype(np.float32)
    texture = np.kron(blocks, np.ones((8, 8), np.float32))[:height, :width]
    bw, bh = width * 5 // 16, height * 5 // 12
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            phase = 2 * np.pi * i / frames
            y = base + 30 * np.sin(xx / 37 + 4 * phase) * np.cos(yy / 23 - 2 * phase)
            bx = int((width - bw) * (0.5 + 0.5 * np.sin(phase)))
            by = int((height - bh) * (0.5 + 0.5 * np.cos(phase)))
            y[by : by + bh, bx : bx + bw] = texture[by : by + bh, bx : bx + bw] * 0.6 + 50
            y += rng.normal(0, 6, (height, width))
            luma = np.clip(y, 16, 235).astype(np.uint8)
            u = np.full((height // 2, width // 2), 128 + int(20 * np.sin(phase)), np.uint8)
            v = np.full((height // 2, width // 2), 128 + int(20 * np.cos(phase)), np.uint8)
            f.write(b"FRAME\n")
            for plane in (luma, u, v):
                f.write(plane.tobytes())
    tmp.replace(path)
    return path


def camera_clip() -> Path:
    """The publisher's camera clip, generated once (~1 s) and kept in the temp directory."""
    width, height, fps = CAPTURE
    path = Path(tempfile.gettempdir()) / f"sfu-weaklink-{width}x{height}-{fps}-{CLIP_FRAMES}-v1.y4m"
    expected = len(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n") + CLIP_FRAMES * (
        6 + width * height * 3 // 2
    )
    if not path.exists() or path.stat().st_size != expected:
        write_y4m(path, width, height, fps, CLIP_FRAMES)
    return path


# ---------------------------------------------------------------------- the pages

PUBLISH_JS = """
async ({sdkUrl, url, token, width, height, fps}) => {
  const { connect } = await import(sdkUrl);
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: fps } },
    audio: true,
  });
  const room = await connect(url, token, { name: "weaklink host", autoSubscribe: false });
  window.__room = room;
  const tracks = await room.publish(stream, { simulcast: true });
  for (const t of tracks) {
    if (t.kind !== "video") continue;
    // under CPU pressure drop frames, not resolution: a layer stays the size its rid says
    const params = t.sender.getParameters();
    params.degradationPreference = "maintain-resolution";
    try { await t.sender.setParameters(params); } catch (e) { console.warn(String(e)); }
  }
  const s = stream.getVideoTracks()[0].getSettings();
  return {
    capture: { width: s.width, height: s.height, frameRate: s.frameRate },
    tracks: tracks.map((t) => ({ id: t.id, kind: t.kind, mid: t.mid })),
  };
}
"""

SUBSCRIBE_JS = """
async ({sdkUrl, url, token, timeoutMs}) => {
  const { connect } = await import(sdkUrl);
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  document.body.appendChild(video);
  // the audio plays too (muted): a receiver nobody pulls samples from counts none, and
  // audio_concealed_pct needs totalSamplesReceived / concealedSamples
  const audio = document.createElement("audio");
  audio.muted = true;
  audio.autoplay = true;
  document.body.appendChild(audio);
  const room = await connect(url, token, { name: "weaklink viewer" });
  window.__room = room;
  window.__events = [];
  room.on("qualityChanged", (e) => window.__events.push({ at: Date.now(), e }));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no video frame in time")), timeoutMs);
    const attach = (remote) => {
      if (remote.kind === "audio" && !audio.srcObject) {
        audio.srcObject = remote.stream;
        audio.play().catch(() => {});
      }
      if (remote.kind !== "video" || video.srcObject) return;
      video.srcObject = remote.stream;
      video.requestVideoFrameCallback(() => { clearTimeout(timer); resolve(); });
    };
    for (const remote of room.remoteTracks.values()) attach(remote);
    room.on("trackSubscribed", attach);
  });
  return { width: video.videoWidth, height: video.videoHeight };
}
"""

SUBSCRIBER_STATS_JS = """
async () => {
  const pc = window.__room && window.__room.subscriberPc;
  if (!pc) return null;
  const report = await pc.getStats();
  let v = null, a = null;
  report.forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    if (r.kind === "video" && (!v || (r.bytesReceived || 0) > (v.bytesReceived || 0))) v = r;
    if (r.kind === "audio" && (!a || (r.packetsReceived || 0) > (a.packetsReceived || 0))) a = r;
  });
  const out = {};
  if (v) {
    out.frames_decoded = v.framesDecoded ?? null;
    out.width = v.frameWidth ?? null;
    out.height = v.frameHeight ?? null;
    out.fps = v.framesPerSecond ?? null;
    out.freeze_count = v.freezeCount ?? null;
    out.freezes_s = v.totalFreezesDuration ?? null;
    out.bytes = v.bytesReceived ?? null;
    out.lost = v.packetsLost ?? null;
    out.keyframes = v.keyFramesDecoded ?? null;
    out.nacks = v.nackCount ?? null;
    out.plis = v.pliCount ?? null;
    out.rtx_bytes = v.retransmittedBytesReceived ?? null;
    out.frames_dropped = v.framesDropped ?? null;
    out.frames_received = v.framesReceived ?? null;
    out.jb_delay_s = v.jitterBufferDelay ?? null;
    out.jb_target_s = v.jitterBufferTargetDelay ?? null;
    out.jb_emitted = v.jitterBufferEmittedCount ?? null;
  }
  if (a) {
    out.audio_lost = a.packetsLost ?? null;
    out.audio_received = a.packetsReceived ?? null;
    out.audio_samples = a.totalSamplesReceived ?? null;
    out.audio_concealed = a.concealedSamples ?? null;
  }
  return out;
}
"""

PUBLISHER_STATS_JS = """
async () => {
  const pc = window.__room && window.__room.publisherPc;
  if (!pc) return null;
  const report = await pc.getStats();
  const layers = [];
  report.forEach((r) => {
    if (r.type !== "outbound-rtp" || r.kind !== "video") return;
    layers.push({
      rid: r.rid ?? null, width: r.frameWidth ?? null, height: r.frameHeight ?? null,
      fps: r.framesPerSecond ?? null, bytes: r.bytesSent ?? null, active: r.active ?? null,
      limitation: r.qualityLimitationReason ?? null,
    });
  });
  return { layers };
}
"""


# ---------------------------------------------------------------------- SFU side


def bwe_setting_supported() -> bool:
    from sfu.config import RtcSettings

    return "bwe" in {f.name for f in dataclasses.fields(RtcSettings)}


def sfu_config_text(address: str, bwe: bool, with_bwe_key: bool) -> str:
    lines = [
        "# written by benchmarks/weaklink.py for one run",
        "[server]",
        'region = "weaklink-lab"',
        "[media]",
        f'bind_addresses = ["{address}"]',
        "[rtc]",
    ]
    if with_bwe_key:
        lines.append(f"bwe = {'true' if bwe else 'false'}")
    return "\n".join(lines) + "\n"


CONTRACT_KEYS = (
    "bandwidth",
    "spatial_layer",
    "temporal_layer",
    "target_spatial",
    "target_temporal",
    "layer_switches",
    "bitrate_bps",
    "layers",
)


def sfu_sample(stats: dict, viewer: str = VIEWER_ID, host: str = HOST_ID) -> tuple[dict, set]:
    """The subscriber's and publisher's figures from one /api/stats answer, and which of the
    stats keys this benchmark reads were present (the SFU may not have them all yet)."""
    entries: dict[str, dict] = {}
    for room in stats.get("rooms") or []:
        for p in room.get("participants") or []:
            if p.get("identity") in (viewer, host):
                entries[p["identity"]] = p
    out: dict[str, Any] = {}
    seen: set[str] = set()
    entry = entries.get(viewer)
    if entry is not None:
        bw = entry.get("bandwidth")
        if isinstance(bw, dict):
            seen.add("bandwidth")
            out["estimate_bps"] = bw.get("estimate_bps")
            out["source"] = bw.get("source")
            out["probing"] = bw.get("probing")
            out["bwe"] = {
                k: bw.get(k)
                for k in (
                    "limited_by",
                    "signal",
                    "loss_fraction",
                    "delay_based_bps",
                    "loss_based_bps",
                    "acked_bps",
                    "last_probe",
                    "delay_jitter_ms",
                    "trend_window",
                    "random_loss",
                )
            }
        videos = [d for d in entry.get("downtracks") or [] if d.get("kind") == "video"]
        active = [d for d in videos if d.get("track_id")] or videos
        if active:
            down = max(active, key=lambda d: d.get("packets_sent") or 0)
            for src, dst in (
                ("spatial_layer", "spatial"),
                ("temporal_layer", "temporal"),
                ("target_spatial", "target_spatial"),
                ("target_temporal", "target_temporal"),
                ("layer_switches", "switches"),
                ("bitrate_bps", "sent_bps"),
            ):
                if src in down:
                    seen.add(src)
                    out[dst] = down[src]
            for key in (
                "octets_sent",
                "packets_sent",
                "rtt_ms",
                "fraction_lost",
                "remb_bps",
                "playout_delay_ms",
            ):
                out[key] = down.get(key)
    entry = entries.get(host)
    if entry is not None:
        for producer in entry.get("producers") or []:
            if producer.get("kind") == "video" and isinstance(producer.get("layers"), list):
                seen.add("layers")
                out["layers"] = {
                    int(layer["spatial"]): layer.get("bitrate_bps")
                    for layer in producer["layers"]
                    if layer.get("spatial") is not None
                }
    return out, seen


# ---------------------------------------------------------------------- one run


class WeakLinkRun:
    """One profile, one BWE mode: lab, SFU, publisher and subscriber browsers, samplers."""

    def __init__(
        self, profile: Profile, bwe: bool, workdir: Path, warmup_s: float, quick: bool = False
    ) -> None:
        self.profile = profile
        self.bwe = bwe
        self.workdir = workdir
        self.warmup_max_s = warmup_s
        self.quick = quick
        self.lab: NetLab | None = None
        self.sfu = None
        self.http = None
        self.admin_token = ""
        self.auth = None
        self.stack = contextlib.AsyncExitStack()
        self.timeline: dict[str, list] = {"sfu": [], "subscriber": [], "publisher": [], "link": []}
        self.keys_seen: set[str] = set()
        self.page_errors: list[str] = []
        self.sample_errors: dict[str, str] = {}
        self.bwe_setting = "applied"
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.t0: float | None = None
        self.sub_page = self.pub_page = None

    # set-up -----------------------------------------------------------------------------------

    async def _start_lab(self) -> str:
        self.lab = NetLab(self.profile)
        await asyncio.to_thread(self.lab.start)
        return self.lab.wrapper_script(
            "client", chromium_path(), str(self.workdir / "chromium-in-lab")
        )

    async def _start_sfu(self) -> None:
        import aiohttp

        from sfu.config import Config

        supported = bwe_setting_supported()
        if not supported:
            self.bwe_setting = "unsupported"
            log("this SFU has no [rtc] bwe setting yet: running with its default behaviour")
        path = self.workdir / f"sfu-{self.profile.name}-{'on' if self.bwe else 'off'}.toml"
        path.write_text(sfu_config_text(self.lab.server_ip, self.bwe, supported))
        self.auth = Config.load(path).auth
        self.admin_token = token(self.auth, "weaklink-admin", "*", admin=True)
        self.sfu = SfuProcess(self.workdir / "sfu.log", path, self.lab.server_ip)
        self.sfu.start()
        await self.sfu.wait_ready(15.0)
        self.http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=aiohttp.ClientTimeout(total=2.0),
        )

    def _token(self, identity: str, **grants: bool) -> str:
        return token(self.auth, identity, ROOM, **grants)

    async def _open_page(self, context, name: str):
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.page_errors.append(f"{name}: {exc}"))

        def on_console(msg) -> None:
            if msg.type == "error" and "favicon" not in (msg.location or {}).get("url", ""):
                self.page_errors.append(f"{name} console: {msg.text}")

        page.on("console", on_console)
        await page.goto(f"{self.sfu.url}/healthz")
        return page

    async def _launch_browsers(self, executable: str) -> tuple[Any, Any]:
        """Publisher (here, clean link) and subscriber (behind the link) Chromium, in parallel.
        The pages come from the SFU's lab address over plain http: let getUserMedia work."""
        secure = f"--unsafely-treat-insecure-origin-as-secure={self.sfu.url}"
        clip = await asyncio.to_thread(camera_clip)
        publisher = launch(None, [f"--use-file-for-fake-video-capture={clip}", secure], False)
        subscriber = launch(executable, [secure], loopback=False)
        return await asyncio.gather(
            self.stack.enter_async_context(publisher),
            self.stack.enter_async_context(subscriber),
        )

    async def _start_publisher(self, context) -> dict:
        self.pub_page = await self._open_page(context, "publisher")
        width, height, fps = CAPTURE
        info = await self.pub_page.evaluate(
            PUBLISH_JS,
            {
                "sdkUrl": f"{self.sfu.url}/sdk/sfu-client.js",
                "url": self.sfu.url,
                "token": self._token(HOST_ID, publish=True),
                "width": width,
                "height": height,
                "fps": fps,
            },
        )
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while time.monotonic() < deadline:  # live: the SFU receives the video
            stats = await self._stats()
            packets = [
                prod.get("packets", 0)
                for room in stats.get("rooms", [])
                for p in room.get("participants", [])
                if p.get("identity") == HOST_ID
                for prod in p.get("producers") or []
                if prod.get("kind") == "video"
            ]
            if packets and max(packets) > 30:
                return info
            await asyncio.sleep(0.1)
        raise TimeoutError("the publisher's video did not reach the SFU")

    async def _start_subscriber(self, context) -> dict:
        self.sub_page = await self._open_page(context, "subscriber")
        return await self.sub_page.evaluate(
            SUBSCRIBE_JS,
            {
                "sdkUrl": f"{self.sfu.url}/sdk/sfu-client.js",
                "url": self.sfu.url,
                "token": self._token(VIEWER_ID, subscribe=True),
                "timeoutMs": int(PAGE_TIMEOUT_S * 1000),
            },
        )

    # sampling ---------------------------------------------------------------------------------

    async def _stats(self) -> dict:
        async with self.http.get(f"{self.sfu.url}/api/stats") as r:
            r.raise_for_status()
            return await r.json()

    async def _sample_sfu(self) -> dict | None:
        before = time.monotonic()
        stats = await self._stats()
        sample, seen = sfu_sample(stats)
        self.keys_seen |= seen
        sample["mono"] = (before + time.monotonic()) / 2
        return sample

    async def _sample_page(self, page, script: str) -> dict | None:
        before = time.monotonic()
        sample = await page.evaluate(script)
        if sample is None:
            return None
        sample["mono"] = (before + time.monotonic()) / 2
        return sample

    async def _sample_link(self) -> dict | None:
        """What the lab's link delivered to the viewer (its veth's received bytes) and what the
        bottleneck queue dropped (tbf drops; they reset when a phase removes the rate limit)."""
        lab = self.lab
        before = time.monotonic()
        link = await _command_json(
            ["ip", "-n", lab.client_ns, "-s", "-j", "link", "show", "dev", lab.if_client]
        )
        queue = await _command_json(
            ["tc", "-n", lab.router_ns, "-s", "-j", "qdisc", "show", "dev", lab.if_router_b]
        )
        rx = (link[0].get("stats64") or {}).get("rx", {}) if link else {}
        root = next((q for q in queue if q.get("root")), {}) if queue else {}
        return {
            "mono": (before + time.monotonic()) / 2,
            "rx_bytes": rx.get("bytes"),
            "rx_packets": rx.get("packets"),
            "queue_drops": root.get("drops"),
            "queue_backlog": root.get("backlog"),
        }

    async def _sampler(self, name: str, period: float, fn) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                sample = await asyncio.wait_for(fn(), max(1.0, 4 * period))
                if sample is not None:
                    self.timeline[name].append(sample)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a slow or failed poll: note it, keep sampling
                self.sample_errors[name] = f"{type(exc).__name__}: {exc}"
            due += period
            delay = due - time.monotonic()
            if delay < 0:
                due = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, delay))

    def _start_samplers(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sampler("sfu", SAMPLE_S, self._sample_sfu)),
            asyncio.create_task(
                self._sampler(
                    "subscriber",
                    SAMPLE_S,
                    lambda: self._sample_page(self.sub_page, SUBSCRIBER_STATS_JS),
                )
            ),
            asyncio.create_task(self._sampler("link", LINK_SAMPLE_S, self._sample_link)),
            asyncio.create_task(
                self._sampler(
                    "publisher",
                    PUBLISHER_SAMPLE_S,
                    lambda: self._sample_page(self.pub_page, PUBLISHER_STATS_JS),
                )
            ),
        ]

    async def _stop_samplers(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        self._tasks = []

    def _layer_now(self) -> tuple[int | None, int | None]:
        """(current spatial layer, top layer) from the samples so far."""
        sfu = self.timeline["sfu"]
        sub = self.timeline["subscriber"]
        with_t = [dict(s, t=s["mono"]) for s in sfu[-8:]]
        layers, _ = wm.layer_series(with_t, [dict(s, t=s["mono"]) for s in sub[-8:]], CAPTURE[0])
        top = wm.configured_top(with_t)
        return (layers[-1][1] if layers else None), (len(wm.RIDS) - 1 if top is None else top)

    async def _warm_up(self) -> float:
        """Profiles with a drop: wait (bounded) until the subscriber has held the top layer for
        `WARMUP_HOLD_S`, so that the drop starts from the top."""
        start = time.monotonic()
        if not has_drop(self.profile):
            await asyncio.sleep(1.0)
            return time.monotonic() - start
        on_top_since: float | None = None
        while time.monotonic() - start < self.warmup_max_s:
            layer, top = self._layer_now()
            if layer is not None and top is not None and layer >= top:
                on_top_since = on_top_since or time.monotonic()
                if time.monotonic() - on_top_since >= WARMUP_HOLD_S:
                    break
            else:
                on_top_since = None
            await asyncio.sleep(SAMPLE_S)
        return time.monotonic() - start

    # the run ----------------------------------------------------------------------------------

    async def run(self) -> dict:
        name = f"{self.profile.name}, bwe {'on' if self.bwe else 'off'}"
        log(f"{name}: building the lab")
        wall0 = time.monotonic()
        executable = await self._start_lab()
        await self._start_sfu()
        log(f"{name}: SFU at {self.sfu.url}; viewer at {self.lab.client_ip} behind the link")
        pub_context, sub_context = await asyncio.wait_for(
            self._launch_browsers(executable), PAGE_TIMEOUT_S
        )
        publisher = await asyncio.wait_for(self._start_publisher(pub_context), PAGE_TIMEOUT_S + 15)
        log(f"{name}: publisher live ({publisher['capture']}); starting the viewer")
        first = await asyncio.wait_for(self._start_subscriber(sub_context), PAGE_TIMEOUT_S + 15)
        self._start_samplers()
        setup_s = time.monotonic() - wall0
        log(f"{name}: first frame {first['width']}x{first['height']} after {setup_s:.1f} s")
        warmup = await self._warm_up()
        layer, top = self._layer_now()
        log(f"{name}: warm-up {warmup:.1f} s (layer {layer}, top {top}); schedule starts")
        cpu = await asyncio.to_thread(CpuWatch)
        self.t0 = t0 = await asyncio.to_thread(self.lab.start_schedule)
        duration = self.profile.duration_s
        # play the schedule; the samplers keep a sample just past the end
        await asyncio.sleep(max(0.0, t0 + duration + SAMPLE_S + 0.1 - time.monotonic()))
        await self._stop_samplers()
        load = await asyncio.to_thread(cpu.result)
        events = await self.sub_page.evaluate("window.__events || []")
        t0_wall = time.time() - (time.monotonic() - t0)
        result = self._result(publisher, first, warmup, setup_s, layer)
        result["cpu"] = load
        if load["other_cpu_pct"] > BUSY_MACHINE_PCT:
            log(
                f"{name}: other processes used {load['other_cpu_pct']} % of a core during the "
                "run: its figures measure a busy machine too"
            )
        # the viewer's qualityChanged events (the SFU's layer_changed messages), on our clock
        result["viewer_layer_events"] = [
            {"t": round(e["at"] / 1000 - t0_wall, 3), **(e.get("e") or {})} for e in events
        ]
        result["wall_s"] = round(time.monotonic() - wall0, 1)
        return result

    def _result(self, publisher: dict, first: dict, warmup: float, setup_s: float, layer) -> dict:
        t0 = self.t0
        assert t0 is not None and self.lab is not None
        timeline: dict[str, Any] = {}
        for key, samples in self.timeline.items():
            rows = []
            for s in samples:
                row = {k: v for k, v in s.items() if k != "mono"}
                row["t"] = round(s["mono"] - t0, 3)
                rows.append(row)
            timeline[key] = rows
        timeline["capacity"] = [
            (round(mono - t0, 3), params.down_kbps) for mono, params in self.lab.log
        ]
        figures = wm.run_figures(timeline, self.profile.duration_s, CAPTURE[0])
        missing = [k for k in CONTRACT_KEYS if k not in self.keys_seen]
        result: dict[str, Any] = {
            "profile": self.profile.name,
            "bwe": "on" if self.bwe else "off",
            "bwe_setting": self.bwe_setting,
            "quick": self.quick,
            "description": self.profile.description,
            "schedule": profile_schedule(self.profile),
            "duration_s": self.profile.duration_s,
            "top_width": CAPTURE[0],
            "run_id": self.lab.run_id,
            "setup_s": round(setup_s, 1),
            "warmup_s": round(warmup, 1),
            "layer_at_schedule_start": layer,
            **figures,
            "publisher": publisher_summary(publisher, timeline["publisher"], self.profile),
            "first_frame": first,
            "sfu_keys_missing": missing,
            "sample_errors": self.sample_errors,
            "page_errors": self.page_errors[:20],
        }
        result["targets"] = wm.check_targets(self.profile.name, figures) if self.bwe else {}
        result["meets_targets"] = (
            all(c["met"] for c in result["targets"].values()) if result["targets"] else None
        )
        result["timeline"] = timeline
        return result

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stop_samplers()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.stack.aclose(), 15)
        if self.http is not None:
            with contextlib.suppress(Exception):
                await self.http.close()
        if self.sfu is not None:
            await asyncio.to_thread(self.sfu.stop)
        if self.lab is not None:
            await asyncio.to_thread(self.lab.close)
            left = self.lab.leftovers()
            if left:
                log(f"left behind by the lab: {left}")


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by `root` and every process below it (the SFU,
    the browsers and their helpers, the lab's relay)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += sum(proc_cpu_s(pid))
        todo.extend(children.get(pid, []))
    return total


class CpuWatch:
    """Machine CPU over the run, and how much of it was not this benchmark (other sessions on
    a shared machine make a run measure the machine, not the SFU)."""

    def __init__(self) -> None:
        self._busy = machine_busy
        self.start = (time.monotonic(), machine_busy(), tree_cpu_s(os.getpid()))

    def result(self) -> dict[str, float]:
        t0, (busy0, total0), mine0 = self.start
        elapsed = max(1e-6, time.monotonic() - t0)
        busy1, total1 = self._busy()
        cpus = os.cpu_count() or 1
        machine = 100 * (busy1 - busy0) / max(1, total1 - total0) * cpus
        mine = 100 * (tree_cpu_s(os.getpid()) - mine0) / elapsed
        return {
            "machine_cpu_pct": round(machine, 1),
            "benchmark_cpu_pct": round(mine, 1),
            "other_cpu_pct": round(max(0.0, machine - mine), 1),
        }


async def _command_json(cmd: list[str]) -> Any:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return json.loads(out) if proc.returncode == 0 and out.strip() else None


def publisher_summary(publisher: dict, samples: list[dict], profile: Profile) -> dict:
    """What the publishing browser sent per rid over the run (rate, size, fps, limitation)."""
    by_rid: dict[str, list[tuple[float, dict]]] = {}
    for s in samples:
        for layer in s.get("layers") or []:
            by_rid.setdefault(str(layer.get("rid")), []).append((s["t"], layer))
    layers = []
    for rid, rows in sorted(by_rid.items(), key=lambda kv: "qhf".find(kv[0][:1])):
        window = [(t, r) for t, r in rows if 0 <= t <= profile.duration_s] or rows
        (ta, a), (tb, b) = window[0], window[-1]
        kbps = None
        if tb > ta and a.get("bytes") is not None and b.get("bytes") is not None:
            kbps = round((b["bytes"] - a["bytes"]) * 8 / 1000 / (tb - ta), 1)
        layers.append(
            {
                "rid": rid,
                "kbps": kbps,
                "width": b.get("width"),
                "height": b.get("height"),
                "fps": b.get("fps"),
                "limitation": b.get("limitation"),
            }
        )
    return {"capture": publisher.get("capture"), "layers": layers}


async def run_one(profile: Profile, bwe: bool, args: argparse.Namespace, workdir: Path) -> dict:
    run = WeakLinkRun(profile, bwe, workdir, args.warmup, quick=args.quick)
    budget = SETUP_BUDGET_S + args.warmup + profile.duration_s + 15
    try:
        return await asyncio.wait_for(run.run(), budget)
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise
    except BaseException:
        print_log_tail(workdir / "sfu.log")
        if run.page_errors:
            log(f"page errors: {run.page_errors[:10]}")
        raise
    finally:
        await run.close()


def run_key(profile: str, bwe: bool) -> str:
    return profile if bwe else f"{profile}/bwe-off"


def environment() -> dict:
    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "chromium": chromium_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
    }


async def run_all(args: argparse.Namespace, workdir: Path, results: dict[str, dict]) -> None:
    """Every requested run in turn; `results` fills as they finish (kept on a later failure)."""
    modes = [True, False] if args.compare else [args.bwe == "on"]
    command = " ".join([Path(sys.executable).name, *sys.argv])
    for profile in args.profiles:
        for bwe in modes:
            result = await run_one(profile, bwe, args, workdir)
            result["command"] = command
            result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
            result["environment"] = environment()
            results[run_key(profile.name, bwe)] = result
            log(f"{run_key(profile.name, bwe)} done in {result['wall_s']:.0f} s")


# ---------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile",
        default="drop-recover",
        help=f"a lab profile ({', '.join(PROFILES)}) or 'all' (default drop-recover)",
    )
    parser.add_argument("--bwe", choices=("on", "off"), default="on", help="[rtc] bwe of the SFU")
    parser.add_argument(
        "--compare", action="store_true", help="run every profile with BWE on and with BWE off"
    )
    parser.add_argument("--quick", action="store_true", help="drop-recover time-scaled, < 60 s")
    parser.add_argument("--duration", type=float, help="seconds each schedule plays (override)")
    parser.add_argument(
        "--warmup", type=float, help="most seconds to wait for the top layer before a drop"
    )
    parser.add_argument("--json", help="write the runs to this file")
    parser.add_argument(
        "--plot", default=str(DEFAULT_PLOT), help="PNG for drop-recover ('' for none)"
    )
    args = parser.parse_args(argv)
    if args.profile == "all":
        names = list(PROFILES)
    else:
        try:
            names = [get_profile(args.profile).name]
        except ValueError as exc:
            parser.error(str(exc))
    if args.quick and args.profile == "all":
        parser.error("--quick runs one profile")
    profiles = []
    for name in names:
        profile = quick_profile() if args.quick and name == "drop-recover" else get_profile(name)
        if args.quick and name != "drop-recover":
            profile = dataclasses.replace(profile, duration_s=min(profile.duration_s, 25.0))
        if args.duration is not None:
            if args.duration <= 0:
                parser.error("--duration must be positive")
            profile = dataclasses.replace(profile, duration_s=args.duration)
        profiles.append(profile)
    args.profiles = profiles
    if args.warmup is None:
        args.warmup = 6.0 if args.quick else 12.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    sigterm_as_interrupt()
    results: dict[str, dict] = {}
    status = 0
    try:
        chromium_path()
        with tempfile.TemporaryDirectory(prefix="weaklink-") as tmp:
            asyncio.run(run_all(args, Path(tmp), results))
    except (BrowserMissing, LabError) as exc:
        print(f"weaklink: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    except Exception as exc:
        log(f"run failed: {type(exc).__name__}: {exc}")
        status = 1
    if results:
        print(wm.format_table(results))
        for key, run in results.items():
            if run.get("sfu_keys_missing"):
                print(f"{key}: the SFU's stats lack {', '.join(run['sfu_keys_missing'])}")
    if args.json and results:
        log(f"wrote {write_json(args.json, results, indent=1)}")
    drops = [r for r in results.values() if r["profile"] == "drop-recover"]
    if args.plot and drops:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        wm.plot_runs(drops, args.plot, "weak-link lab: drop-recover")
        log(f"wrote {args.plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())
