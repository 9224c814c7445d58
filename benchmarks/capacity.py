#!/usr/bin/env python3
"""Capacity side by side: our node and Janus, the same publisher and viewers, viewers per core.

    .venv/bin/python benchmarks/capacity.py --sfu both --subscribers 20 --json build/capacity.json
    .venv/bin/python benchmarks/capacity.py --sfu both --quick --json build/capacity-quick.json

What runs (needs root: it makes a network namespace):

* a namespace with one veth pair, made by the benchmark: the SFU under test runs inside it on
  10.231.N.1, the publisher and the viewers outside on 10.231.N.2. Janus's ICE skips loopback
  interfaces, so both SFUs get the same kind of path: a real interface, one veth hop;
* the SFUs, one after the other, alternating round by round:
  - ours: `python -m sfu serve` with default settings except its media address;
  - Janus (Debian's `janus`, 1.1.2): a generated minimal configuration (the VideoRoom plugin,
    the HTTP transport, nothing else; no event handlers, no loggers), run both stock (a thread
    per handle) and with `event_loops = 1` (one shared loop), driven through its HTTP API:
    a session with keepalives and a long poll, a publisher handle (`join` as publisher,
    `publish` with the offer), one subscriber handle per viewer (`join` as subscriber, then
    `start` with the answer); no trickle (every candidate rides in the SDP);
* the fan-out benchmark's publisher (pre-encoded VP8 ~1 Mbit/s, 30 fps, plus Opus, replayed:
  benchmarks/fanout.py) and its packet-counting viewers, as worker processes under
  SCHED_BATCH. The `simulcast` scenario publishes three VP8 layers with rids (320x180,
  640x360, 1280x720; the rates libvpx reached are in `publisher_kbps`), and the viewers are
  split across the layers (a third each: `quality` low/medium/high with ours, the matching
  `substream` with Janus; `viewer_packets_per_s` shows that both sent the same layers).

Per SFU configuration over the measured window: `cpu_us_per_packet` (SFU process CPU, every
thread, user + system, ÷ RTP packets the viewers received: with no loss that is what the SFU
sent), `forward_delay_ms_p99` (publisher send -> viewer receive, packets matched by payload),
`loss_pct` (sequence gaps at the viewers) and `subscribers_per_core`: one core ÷ the CPU one
viewer costs at the measured packet rate, i.e. 1e6 ÷ (cpu_us_per_packet × packets/s per viewer).
`ratio_subscribers_per_core` is ours ÷ the best Janus configuration.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import fanout  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Child,
    Log,
    SfuProcess,
    command_line,
    format_table,
    machine,
    machine_busy,
    print_log_tail,
    proc_cpu_s,
    quantile,
    sigterm_as_interrupt,
    write_json,
)
from benchmarks.netlab import LabError, _run, cleanup_stale, lab_leftovers, require_root  # noqa: E402

log = Log("capacity")

JANUS = "/usr/bin/janus"
JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
JANUS_ROOM = 1234
HTTP_PORT = 8088  # inside the namespace: nothing else listens there
SINGLE_PORT = 50000  # our node's one media port with --single-port (inside the namespace too)
CONFIGS = ("ours", "janus_stock", "janus_event_loops_1")
SIMULCAST_LAYERS = (  # (rid, width, height, bit rate)
    ("q", 320, 180, 150_000),
    ("h", 640, 360, 500_000),
    ("f", 1280, 720, 1_200_000),
)
QUALITY_BY_LAYER = ("low", "medium", "high")
SERVER_START_S = 15.0
PUBLISHER_READY_S = 30.0
SUBSCRIBERS_READY_S = 60.0
BUSY_MACHINE_PCT = 25.0
TARGET_RATIO = 0.8


# -- the namespace -----------------------------------------------------------------------------


class ServerNet:
    """A namespace holding the SFU under test, joined to this one by one veth pair.

    Named like netlab's labs (`netlab-<run id>-<pid>-srv`), so netlab's cleanup of labs whose
    process died removes it too; the veth pair goes with the namespace.
    """

    def __init__(self) -> None:
        self.run_id = f"nl{os.urandom(3).hex()}"
        self.ns = f"netlab-{self.run_id}-{os.getpid()}-srv"
        self.if_server, self.if_client = f"{self.run_id}s", f"{self.run_id}c"
        self.server_ip = self.client_ip = ""
        self._up = False

    def __enter__(self) -> ServerNet:
        require_root()
        cleanup_stale()
        self._up = True
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        used = _run(["ip", "-o", "-4", "addr", "show"], check=False)
        used += _run(["ip", "-4", "route", "show", "table", "all"], check=False)
        taken = {int(part.split(".")[2]) for part in used.split() if part.startswith("10.231.")}
        free = [n for n in range(256) if n not in taken]
        if not free:
            raise LabError("no free 10.231.N.0/24 subnet")
        n = free[int.from_bytes(os.urandom(1), "big") % len(free)]
        self.server_ip, self.client_ip = f"10.231.{n}.1", f"10.231.{n}.2"
        ns = self.ns
        _run(["ip", "netns", "add", ns])
        self.sh("ip link set lo up")
        self.sh("sysctl -q -w net.ipv6.conf.all.disable_ipv6=1")
        _run(["ip", "link", "add", self.if_client, "type", "veth", "peer", "name", self.if_server])
        _run(["ip", "link", "set", self.if_server, "netns", ns])
        self.sh(f"ip addr add {self.server_ip}/30 dev {self.if_server}")
        self.sh(f"ip link set {self.if_server} up")
        _run(["sysctl", "-q", "-w", f"net.ipv6.conf.{self.if_client}.disable_ipv6=1"])
        _run(["ip", "addr", "add", f"{self.client_ip}/30", "dev", self.if_client])
        _run(["ip", "link", "set", self.if_client, "up"])

    def sh(self, command: str) -> str:
        return _run(["ip", "netns", "exec", self.ns, *command.split()])

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def close(self) -> None:
        if not self._up:
            return
        self._up = False
        _run(["ip", "netns", "del", self.ns], check=False)
        _run(["ip", "link", "del", self.if_client], check=False)

    def leftovers(self) -> list[str]:
        return lab_leftovers(self.run_id)


# -- the SFUs ------------------------------------------------------------------------------------


def janus_config(folder: Path, interface: str, event_loops: int | None) -> Path:
    """A minimal Janus configuration in `folder`: VideoRoom and HTTP only, nothing else."""
    for name, lib in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        target = JANUS_LIB / name / lib
        if not target.exists():
            raise RuntimeError(f"{target} is missing: install Debian's janus package")
        (folder / name / lib).symlink_to(target)
    for name in ("events", "loggers"):
        (folder / name).mkdir(exist_ok=True)
    loops = f"\n\tevent_loops = {event_loops}" if event_loops else ""
    (folder / "janus.jcfg").write_text(
        f"""general: {{
\tconfigs_folder = "{folder}"
\tplugins_folder = "{folder}/plugins"
\ttransports_folder = "{folder}/transports"
\tevents_folder = "{folder}/events"
\tloggers_folder = "{folder}/loggers"
\tdebug_level = 3
\tsession_timeout = 60{loops}
}}
media: {{
}}
nat: {{
\tnice_debug = false
\tice_enforce_list = "{interface}"
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
\tbroadcast = false
}}
"""
    )
    (folder / "janus.transport.http.jcfg").write_text(
        f"""general: {{
\tjson = "compact"
\tbase_path = "/janus"
\thttp = true
\tport = {HTTP_PORT}
\thttps = false
}}
admin: {{
\tadmin_http = false
\tadmin_https = false
}}
cors: {{
}}
"""
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text(
        f"""general: {{
}}
room-{JANUS_ROOM}: {{
\tdescription = "capacity"
\tpublishers = 2
\tbitrate = 0
\tfir_freq = 10
\taudiocodec = "opus"
\tvideocodec = "vp8"
\tnotify_joining = false
}}
"""
    )
    return folder / "janus.jcfg"


class JanusProcess(Child):
    """Janus in the namespace, with a generated configuration; ready when /janus/info answers."""

    def __init__(self, net: ServerNet, folder: Path, event_loops: int | None) -> None:
        config = janus_config(folder, net.if_server, event_loops)
        argv = [*net.prefix(), JANUS, "-C", str(config), "-F", str(folder), "-o"]
        super().__init__(argv, folder / "janus.log")
        self.url = f"http://{net.server_ip}:{HTTP_PORT}"

    async def wait_ready(self, timeout: float) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise RuntimeError("janus exited at start (see its log)")
                with contextlib.suppress(OSError, aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"{self.url}/janus/info") as r:
                        if r.status == 200:
                            info = await r.json()
                            if "janus.plugin.videoroom" in info.get("plugins", {}):
                                return
                await asyncio.sleep(0.1)
        raise TimeoutError("janus did not start in time")


def our_node(net: ServerNet, folder: Path, simulcast: bool, udp_port: int = 0) -> SfuProcess:
    """`python -m sfu serve` in the namespace, default settings but for the media address.

    With simulcast, bandwidth estimation is off: the packet-counting viewers send no
    transport-cc feedback, so the estimate would stay at its start value and hold the top
    layer back; Janus forwards the substream asked for, and so do we then. `udp_port`: the
    node's one media port (media.udp_port), 0 for a port per peer (the default)."""
    config = folder / "sfu.toml"
    text = f'[media]\nbind_addresses = ["{net.server_ip}"]\nudp_port = {udp_port}\n'
    if simulcast:
        text += "[rtc]\nbwe = false\n"
    config.write_text(text)
    node = SfuProcess(folder / "sfu.log", config=config, host=net.server_ip, port=HTTP_PORT)
    node.argv = [*net.prefix(), *node.argv]
    return node


# -- Janus's HTTP API (used by the workers) ------------------------------------------------------


class JanusError(RuntimeError):
    pass


class JanusSession:
    """One Janus session over HTTP: requests, a long poll that routes events by transaction,
    and a keepalive every 15 s (sessions time out after 60 s without a request)."""

    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url.rstrip("/") + "/janus"
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40))
        self.session_id = 0
        self._n = 0
        self._waiting: dict[str, asyncio.Future] = {}
        self._tasks: list[asyncio.Task] = []

    def _transaction(self) -> str:
        self._n += 1
        return f"t{self._n}"

    async def _post(self, path: str, body: dict) -> dict:
        async with self.http.post(self.url + path, json=body) as response:
            reply = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{body.get('janus')}: {reply.get('error')}")
        return reply

    async def create(self) -> None:
        reply = await self._post("", {"janus": "create", "transaction": self._transaction()})
        self.session_id = reply["data"]["id"]
        self._tasks = [
            asyncio.ensure_future(self._poll()),
            asyncio.ensure_future(self._keepalive()),
        ]

    async def attach(self) -> int:
        body = {
            "janus": "attach",
            "plugin": "janus.plugin.videoroom",
            "transaction": self._transaction(),
        }
        reply = await self._post(f"/{self.session_id}", body)
        return reply["data"]["id"]

    async def message(
        self, handle: int, request: dict, jsep: dict | None = None, timeout: float = 20.0
    ) -> dict:
        """Send a plugin request and return the event that answers it (asynchronous ones
        come through the long poll, with the same transaction)."""
        transaction = self._transaction()
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = waiter
        body: dict[str, Any] = {"janus": "message", "body": request, "transaction": transaction}
        if jsep is not None:
            body["jsep"] = jsep
        try:
            reply = await self._post(f"/{self.session_id}/{handle}", body)
            if reply.get("janus") != "ack":
                return reply  # a synchronous answer
            event = await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiting.pop(transaction, None)
        data = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{request.get('request')}: {data['error']}")
        return event

    async def _poll(self) -> None:
        while True:
            try:
                async with self.http.get(f"{self.url}/{self.session_id}?maxev=10") as response:
                    events = await response.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                waiter = self._waiting.get(event.get("transaction", ""))
                if waiter is not None and not waiter.done() and event.get("janus") == "event":
                    waiter.set_result(event)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(15)
            with contextlib.suppress(Exception):
                body = {"janus": "keepalive", "transaction": self._transaction()}
                await self._post(f"/{self.session_id}", body)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            body = {"janus": "destroy", "transaction": self._transaction()}
            await asyncio.wait_for(self._post(f"/{self.session_id}", body), 2)
        await self.http.close()


# -- pre-encoded media, shared by the runs -------------------------------------------------------


def encode_clip(path: Path, seconds: float, simulcast: bool) -> dict:
    """Encode the publisher's media once per run (the workers load it)."""
    if simulcast:
        video = {
            rid: fanout.encode_video(seconds, width=w, height=h, bitrate=rate)
            for rid, w, h, rate in SIMULCAST_LAYERS
        }
    else:
        video = {"": fanout.encode_video(seconds)}
    clip = {"video": video, "audio": fanout.encode_audio(seconds), "seconds": seconds}
    with open(path, "wb") as f:
        pickle.dump(clip, f)
    return {
        rid or "single": round(sum(len(p) for p in frames) * 8 / seconds / 1000)
        for rid, frames in video.items()
    }


# -- publisher worker ------------------------------------------------------------------------------


class SimulcastSender:
    """Three VP8 layers with rids, packetised and sent by us through MediaPeer.send_rtp.

    aiortc has no simulcast send: the offer gets `a=rid`/`a=simulcast` lines (and the rid
    header extension), and each layer is a replayed clip of its own with its own SSRC, a MID
    and a RID extension on every packet, as a browser sends them.
    """

    def __init__(self, peer, layers: dict[str, list[bytes]], record) -> None:
        self.peer = peer
        self.layers = layers
        self.record = record
        self.mid = "0"
        self.mid_id = self.rid_id = 0
        self.payload_type = 96
        self.ssrcs = {rid: int.from_bytes(os.urandom(4), "big") for rid in layers}

    def edit_offer(self, sdp: str) -> str:
        """Add rid lines, the simulcast line and the rid extension to the video m-line."""
        out, in_video = [], False
        rids = list(self.layers)
        for line in sdp.split("\r\n"):
            if line.startswith("m="):
                if in_video:
                    out.extend(self._simulcast_lines(rids))
                in_video = line.startswith("m=video")
            if in_video and line.startswith("a=ssrc"):
                continue  # (aiortc's own SSRC for the track: the layers have theirs)
            if in_video and line.startswith("a=mid:"):
                self.mid = line[6:]
            if in_video and line.startswith("a=rtpmap:") and "VP8/90000" in line:
                self.payload_type = int(line[9:].split()[0])
            if in_video and line.startswith("a=extmap:") and line.endswith("sdes:mid"):
                self.mid_id = int(line[9:].split()[0].split("/")[0])
            out.append(line)
        if in_video:
            while out and out[-1] == "":
                out.pop()
            out.extend(self._simulcast_lines(rids))
            out.append("")
        return "\r\n".join(out)

    def _simulcast_lines(self, rids: list[str]) -> list[str]:
        self.rid_id = 10
        return [
            f"a=extmap:{self.rid_id} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            *(f"a=rid:{rid} send" for rid in rids),
            "a=simulcast:send " + ";".join(rids),
        ]

    async def run(self, stop: asyncio.Future) -> None:
        from aiortc.codecs.vpx import Vp8Encoder
        from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
        from aiortc.rtp import HeaderExtensionsMap, RtpPacket

        extensions = HeaderExtensionsMap()
        extensions.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(
                        id=self.mid_id, uri="urn:ietf:params:rtp-hdrext:sdes:mid"
                    ),
                    RTCRtpHeaderExtensionParameters(
                        id=self.rid_id, uri="urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
                    ),
                ]
            )
        )
        await self.peer.connected.wait()
        seqs = {rid: 0 for rid in self.layers}
        picture_ids = {rid: 0 for rid in self.layers}
        start = time.monotonic()
        n = 0
        while not stop.done():
            delay = start + n / fanout.FPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            timestamp = (n * (fanout.VIDEO_CLOCK // fanout.FPS)) & 0xFFFFFFFF
            for rid, frames in self.layers.items():
                payloads = Vp8Encoder._packetize(frames[n % len(frames)], picture_ids[rid])
                picture_ids[rid] = (picture_ids[rid] + 1) % (1 << 15)
                for i, payload in enumerate(payloads):
                    packet = RtpPacket(
                        payload_type=self.payload_type,
                        marker=int(i == len(payloads) - 1),
                        sequence_number=seqs[rid],
                        timestamp=timestamp,
                        ssrc=self.ssrcs[rid],
                        payload=payload,
                    )
                    packet.extensions.mid = self.mid
                    packet.extensions.rtp_stream_id = rid
                    seqs[rid] = (seqs[rid] + 1) & 0xFFFF
                    data = packet.serialize(extensions)
                    self.record(data)
                    self.peer.send_rtp(data)
            n += 1


async def run_publisher(args: argparse.Namespace) -> None:
    from sfu.client import RoomClient
    from sfu.media.peer import MediaPeer, NetworkSettings

    clip = await asyncio.to_thread(lambda: pickle.loads(Path(args.clip).read_bytes()))
    network = NetworkSettings(addresses=(args.client_address,))
    keys, times = array.array("q"), array.array("d")

    def record(data: bytes) -> None:
        keys.append(fanout.payload_key(data))
        times.append(time.monotonic())

    simulcast = len(clip["video"]) > 1
    sender: SimulcastSender | None = None
    audio = fanout.looping_track(
        "audio", clip["audio"], fanout.AUDIO_RATE / fanout.AUDIO_FRAME, fanout.AUDIO_RATE
    )
    if simulcast:
        video = None  # sent by SimulcastSender; the transceiver has no track
    else:
        video = fanout.looping_track("video", clip["video"][""], fanout.FPS, fanout.VIDEO_CLOCK)

    peer = MediaPeer(network, label="capacity-pub")
    peer.pc.addTransceiver(video or "video", direction="sendonly")
    peer.pc.addTransceiver(audio, direction="sendonly")
    if simulcast:
        sender = SimulcastSender(peer, clip["video"], record)
    offer = await peer.offer()
    if sender is not None:
        offer = sender.edit_offer(offer)
    janus: JanusSession | None = None
    client = None
    if args.sfu == "ours":
        client = await RoomClient.connect(
            args.url, fanout.token("publisher", publish=True), network=network,
            auto_subscribe=False,
        )  # fmt: skip
        tracks = [
            {"mid": t.mid, "kind": t.kind, "source": source}
            for t, source in zip(peer.pc.getTransceivers(), ("camera", "microphone"), strict=True)
        ]
        reply = await client.request({"type": "publish", "sdp": offer, "tracks": tracks})
        await peer.accept_answer(reply["sdp"])
        feed = 0
    else:
        janus = JanusSession(args.url)
        await janus.create()
        handle = await janus.attach()
        joined = await janus.message(
            handle, {"request": "join", "ptype": "publisher", "room": JANUS_ROOM}
        )
        feed = joined["plugindata"]["data"]["id"]
        event = await janus.message(
            handle,
            {"request": "publish", "audio": True, "video": True},
            jsep={"type": "offer", "sdp": offer},
        )
        await peer.accept_answer(event["jsep"]["sdp"])
    fanout.record_sent_rtp(peer.pc, record)
    stop = asyncio.ensure_future(fanout.wait_for_stop(args.deadline))
    sending = None
    if sender is not None:
        sending = asyncio.ensure_future(sender.run(stop))
    await asyncio.wait_for(peer.connected.wait(), 15)
    fanout.emit({"event": "ready", "feed": feed})
    await stop
    if sending is not None:
        sending.cancel()
    fanout.write_pickle(args.out, {"keys": keys.tobytes(), "times": times.tobytes()})
    fanout.emit({"event": "done", "packets": len(keys)})
    with contextlib.suppress(Exception):
        await asyncio.wait_for(peer.close(), 3)
    for closing in (client.close() if client else None, janus.close() if janus else None):
        if closing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, 3)


# -- viewer worker --------------------------------------------------------------------------------


class JanusViewer:
    """A packet-counting viewer of one Janus publisher: a subscriber handle and a MediaPeer
    that hands every decrypted RTP packet to a PacketCounter (nothing decoded)."""

    def __init__(self, identity: str, network) -> None:
        self.identity = identity
        self.network = network
        self.counter = fanout.PacketCounter()
        self.peer = None
        self.session: JanusSession | None = None

    async def join(self, url: str, feed: int, substream: int | None) -> None:
        from sfu.media.peer import MediaPeer

        self.session = JanusSession(url)
        await self.session.create()
        handle = await self.session.attach()
        event = await self.session.message(
            handle,
            {"request": "join", "ptype": "subscriber", "room": JANUS_ROOM,
             "streams": [{"feed": feed}]},
        )  # fmt: skip
        self.peer = MediaPeer(
            self.network, on_rtp=self.counter.on_rtp, label=f"capacity:{self.identity}"
        )
        answer = await self.peer.answer(event["jsep"]["sdp"])
        await self.session.message(
            handle, {"request": "start"}, jsep={"type": "answer", "sdp": answer}
        )
        if substream is not None:
            # Janus numbers the substreams of a rid simulcast from the last rid of the
            # offer's a=simulcast line (found by measuring: with "q;h;f", 0 is f)
            substream = len(SIMULCAST_LAYERS) - 1 - substream
            video_mids = [
                s["mid"]
                for s in event["plugindata"]["data"].get("streams", [])
                if s.get("type") == "video"
            ]
            await self.session.message(
                handle,
                {"request": "configure",
                 "streams": [{"mid": mid, "substream": substream} for mid in video_mids]},
            )  # fmt: skip

    def ssrc_kinds(self) -> dict[int, str]:
        from sfu.media.sdp import parse_offer

        if self.peer is None or self.peer.pc.remoteDescription is None:
            return {}
        offer = parse_offer(self.peer.pc.remoteDescription.sdp)
        return {ssrc: m.kind for m in offer for ssrc in m.ssrcs}

    def has_media(self) -> bool:
        kinds = self.ssrc_kinds()
        seen = {kinds.get(s) for s, stream in self.counter.streams.items() if stream.times}
        return {"audio", "video"} <= seen

    async def close(self) -> None:
        if self.peer is not None:
            await self.peer.close()
        if self.session is not None:
            await self.session.close()


async def run_subscribers(args: argparse.Namespace) -> None:
    from sfu.media.peer import NetworkSettings

    network = NetworkSettings(addresses=(args.client_address,))
    identities = args.identities.split(",")
    layers = [int(x) for x in args.layers.split(",")] if args.layers else [None] * len(identities)
    clients: list[Any] = []
    if args.sfu == "ours":
        cls = fanout.subscriber_client_class()
        for identity, layer in zip(identities, layers, strict=True):
            client = await cls.connect(
                args.url, fanout.token(identity, subscribe=True), network=network, timeout=20
            )
            clients.append(client)
            if layer is not None:
                asyncio.ensure_future(set_quality(client, QUALITY_BY_LAYER[layer]))
    else:
        for identity, layer in zip(identities, layers, strict=True):
            viewer = JanusViewer(identity, network)
            await viewer.join(args.url, args.feed, layer)
            clients.append(viewer)
    await fanout.report_viewers(clients, args.deadline, args.out)


async def set_quality(client, quality: str) -> None:
    """Ask our node for one simulcast layer of every video track this viewer receives."""
    for _ in range(100):
        video = [tid for tid, t in client.remote_tracks.items() if t.kind == "video"]
        if video:
            for track_id in video:
                await client.request({"type": "quality", "track_id": track_id, "quality": quality})
            return
        await asyncio.sleep(0.1)


def worker_main(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # (see fanout.worker_main)
    fanout.install_uvloop()
    run = run_publisher if args.worker == "publisher" else run_subscribers
    asyncio.run(run(args))
    return 0


# -- the orchestrating process --------------------------------------------------------------------


async def measure(
    args: argparse.Namespace,
    net: ServerNet,
    config: str,
    scenario: str,
    clip: Path,
    workdir: Path,
    worker_log,
) -> dict:
    """One SFU configuration, one scenario: start it, fill it, measure a window, stop it."""
    folder = Path(tempfile.mkdtemp(prefix=f"{config}-", dir=workdir))
    if config.startswith("ours"):
        port = SINGLE_PORT if config == "ours_single_port" else 0
        server: Child = our_node(net, folder, scenario == "simulcast", port)
        url = server.url
    else:
        server = JanusProcess(net, folder, 1 if config == "janus_event_loops_1" else None)
        url = server.url
    sfu_kind = "ours" if config.startswith("ours") else "janus"
    try:
        server.start()
        await server.wait_ready(SERVER_START_S)
        deadline = time.monotonic() + args.deadline
        common = [
            "--sfu", sfu_kind, "--url", url, "--deadline", str(deadline),
            "--client-address", net.client_ip,
        ]  # fmt: skip
        publisher = await fanout.start_worker(
            "publisher",
            ["--worker", "publisher", "--clip", str(clip), *common],
            folder / "publisher.pickle",
            worker_log,
            script=SCRIPT,
        )
        await publisher.wait(lambda: publisher.last("ready"), PUBLISHER_READY_S, "publish")
        feed = publisher.last("ready")["feed"]
        n_workers = min(args.workers, args.subscribers)
        groups = [list(range(i, args.subscribers, n_workers)) for i in range(n_workers)]
        subs = []
        for i, group in enumerate(groups):
            argv = [
                "--worker", "subscribers", "--feed", str(feed),
                "--identities", ",".join(f"viewer{j:03d}" for j in group), *common,
            ]  # fmt: skip
            if scenario == "simulcast":
                argv += ["--layers", ",".join(str(j % len(SIMULCAST_LAYERS)) for j in group)]
            out = folder / f"subs-{i}.pickle"
            subs.append(
                await fanout.start_worker(f"subscribers-{i}", argv, out, worker_log, script=SCRIPT)
            )
        join_s = await fanout.wait_all_receiving(
            subs, groups, SUBSCRIBERS_READY_S, "video and audio at every viewer"
        )
        await asyncio.sleep(args.warmup)
        pids = [server.pid, publisher.proc.pid, *(w.proc.pid for w in subs)]
        cpu0 = {pid: proc_cpu_s(pid) for pid in pids}
        busy0 = machine_busy()
        t0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        t1 = time.monotonic()
        cpu1 = {pid: proc_cpu_s(pid) for pid in pids}
        busy1 = machine_busy()
        alive = server.alive
        await asyncio.gather(*(fanout.stop_worker(w) for w in [publisher, *subs]))
        found = fanout.analyse(publisher.out, [w.out for w in subs], t0, t1)
    except BaseException:
        print_log_tail(server.log_path, name=f"{config} log")
        raise
    finally:
        await fanout.stop_children(3.0)
        await asyncio.to_thread(server.stop, 5.0)
    if not alive:
        raise RuntimeError(f"{config} died during the window")
    return figures(args, config, found, cpu0, cpu1, busy0, busy1, server_pid=pids[0], join_s=join_s,
                   window=t1 - t0)  # fmt: skip


def figures(args, config, found, cpu0, cpu1, busy0, busy1, *, server_pid, join_s, window) -> dict:
    user = cpu1[server_pid][0] - cpu0[server_pid][0]
    system = cpu1[server_pid][1] - cpu0[server_pid][1]
    cpu = user + system
    packets = found["received"]
    delays = found["delay_all"]
    loss = 100.0 * (1 - found["received"] / found["expected"]) if found["expected"] else 100.0
    clients = sum(sum(cpu1[p]) - sum(cpu0[p]) for p in cpu0 if p != server_pid)
    machine_pct = 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * (os.cpu_count() or 1)
    cpu_us = cpu * 1e6 / packets if packets else None
    per_viewer_pps = packets / window / args.subscribers
    result = {
        "config": config,
        "subscribers": args.subscribers,
        "seconds": round(window, 2),
        "packets_forwarded": packets,
        "packets_per_s": round(packets / window, 1),
        "cpu_us_per_packet": None if cpu_us is None else round(cpu_us, 2),
        "cpu_user_s": round(user, 3),
        "cpu_system_s": round(system, 3),
        "cpu_pct": round(100 * cpu / window, 1),
        "forward_delay_ms_p50": _ms(quantile(delays, 0.5)),
        "forward_delay_ms_p99": _ms(quantile(delays, 0.99)),
        "loss_pct": round(loss, 4),
        "subscribers_per_core": (
            round(1e6 / (cpu_us * per_viewer_pps), 1) if cpu_us and per_viewer_pps else None
        ),
        "delay_samples": len(delays),
        "delay_unmatched": found["unmatched"],
        "join_s": round(join_s, 2),
        "viewer_packets_per_s": {
            identity: round(received / window, 1)
            for identity, received, _expected in sorted(found["per_subscriber"])
        },
        "clients_cpu_pct": round(100 * clients / window, 1),
        "machine_cpu_pct": round(machine_pct, 1),
    }
    result["other_cpu_pct"] = round(
        max(0.0, result["machine_cpu_pct"] - result["cpu_pct"] - result["clients_cpu_pct"]), 1
    )
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def combine(runs: list[dict]) -> dict:
    """One configuration's rounds as one entry: means of the costs, worst delay and loss."""
    if len(runs) == 1:
        return dict(runs[0], rounds=1)
    out = dict(runs[-1])

    def mean(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(sum(values) / len(values), 2) if values else None

    for key in (
        "cpu_us_per_packet",
        "packets_per_s",
        "cpu_pct",
        "subscribers_per_core",
        "forward_delay_ms_p50",
        "clients_cpu_pct",
        "machine_cpu_pct",
        "other_cpu_pct",
    ):
        out[key] = mean(key)  # fmt: skip
    for key in ("forward_delay_ms_p99", "loss_pct"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = max(values) if values else None
    out["rounds"] = len(runs)
    out["per_round_cpu_us_per_packet"] = [r["cpu_us_per_packet"] for r in runs]
    return out


def scenario_summary(by_config: dict[str, list[dict]]) -> dict:
    """The issue's JSON shape: ours, the best Janus configuration, each Janus one, the ratio."""
    combined = {config: combine(runs) for config, runs in by_config.items() if runs}
    ours_configs = {k: v for k, v in combined.items() if k.startswith("ours")}
    # ours: the single port when it ran (what the node would run with), else the port range
    summary: dict[str, Any] = {"ours": combined.get("ours_single_port") or combined.get("ours")}
    if len(ours_configs) > 1:
        summary["ours_configs"] = {
            "port_range": combined.get("ours"),
            "single_port": combined.get("ours_single_port"),
        }
    janus = {
        name.removeprefix("janus_"): value
        for name, value in combined.items()
        if name.startswith("janus_")
    }
    summary["janus_configs"] = janus
    best = max(janus.values(), key=lambda r: r["subscribers_per_core"] or 0, default=None)
    summary["janus"] = best
    ours = summary["ours"]
    summary["ratio_subscribers_per_core"] = (
        round(ours["subscribers_per_core"] / best["subscribers_per_core"], 3)
        if ours and best and ours["subscribers_per_core"] and best["subscribers_per_core"]
        else None
    )
    return summary


async def orchestrate(args: argparse.Namespace, workdir: Path, worker_log) -> dict:
    configs = [c for c in CONFIGS if args.sfu == "both" or c.startswith(args.sfu)]
    if args.single_port and args.sfu != "janus":
        configs.insert(configs.index("ours") + 1, "ours_single_port")
    result: dict[str, Any] = {}
    with ServerNet() as net:
        log(f"namespace {net.ns}: SFU at {net.server_ip}, clients at {net.client_ip}")
        for scenario in args.scenarios:
            clip = workdir / f"clip-{scenario}.pickle"
            started = time.monotonic()
            kbps = await asyncio.to_thread(
                encode_clip, clip, args.clip_seconds, scenario == "simulcast"
            )
            log(f"{scenario}: encoded in {time.monotonic() - started:.1f} s, kbit/s {kbps}")
            runs: dict[str, list[dict]] = {c: [] for c in configs}
            for round_no in range(args.rounds):
                order = configs if round_no % 2 == 0 else list(reversed(configs))
                for config in order:
                    log(f"{scenario} round {round_no + 1}: {config} ...")
                    run = await measure(args, net, config, scenario, clip, workdir, worker_log)
                    log(
                        f"{scenario} round {round_no + 1}: {config}: "
                        f"{run['cpu_us_per_packet']} us/packet, p99 "
                        f"{run['forward_delay_ms_p99']} ms, loss {run['loss_pct']} %, "
                        f"other load {run['other_cpu_pct']} %"
                    )
                    runs[config].append(run)
            summary = scenario_summary(runs)
            summary["publisher_kbps"] = kbps
            if scenario == "single":
                result.update(summary)
            else:
                result[scenario] = summary
    result["leftovers"] = net.leftovers()  # the namespace and the veth pair: none expected
    return result


def foreign_load(result: dict) -> float:
    """The highest load from outside the benchmark seen in any window (% of one core)."""
    values = []
    for summary in (result, result.get("simulcast") or {}):
        ours = list((summary.get("ours_configs") or {"": summary.get("ours")}).values())
        for entry in [*ours, *(summary.get("janus_configs") or {}).values()]:
            if entry:
                values.append(entry["other_cpu_pct"] or 0)
    return max(values, default=0.0)


def print_table(result: dict) -> None:
    for name, summary in (("single layer", result), ("simulcast", result.get("simulcast"))):
        if not summary or summary.get("ours") is None and not summary.get("janus_configs"):
            continue
        ours = summary.get("ours_configs")
        entries = (
            [("ours, port range", ours["port_range"]), ("ours, one port", ours["single_port"])]
            if ours
            else [("ours", summary.get("ours"))]
        ) + [(f"janus {k}", v) for k, v in (summary.get("janus_configs") or {}).items()]
        rows = []
        for label, e in entries:
            if e is None:
                continue
            rows.append((
                label, e["cpu_us_per_packet"], f"{e['cpu_user_s']}/{e['cpu_system_s']}",
                e["packets_per_s"], e["subscribers_per_core"], e["forward_delay_ms_p99"],
                e["loss_pct"], e["other_cpu_pct"],
            ))  # fmt: skip
        print(f"\n{name}, {result['subscribers']} viewers:")
        print(
            format_table(
                (
                    "SFU",
                    "us/packet",
                    "user/sys s",
                    "packets/s",
                    "viewers/core",
                    "p99 ms",
                    "loss %",
                    "other load %",
                ),
                rows,
            )  # fmt: skip
        )
        ratio = summary.get("ratio_subscribers_per_core")
        if ratio is not None:
            print(f"viewers per core, ours / best Janus: {ratio}")
    load = foreign_load(result)
    if load > BUSY_MACHINE_PCT:
        print(
            f"\nwarning: processes outside this benchmark used up to {load}% of a core during "
            "the windows: the figures are those of a loaded machine (compare ratios)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sfu", choices=["ours", "janus", "both"], default="both")
    parser.add_argument("--subscribers", type=int, help="viewers; default 20 (10 with --quick)")
    parser.add_argument("--seconds", type=float, help="measured window; default 20 (8 --quick)")
    parser.add_argument("--rounds", type=int, help="alternating rounds; default 2 (1 --quick)")
    parser.add_argument(
        "--scenario", choices=["single", "simulcast", "both"], default="both",
        help="single-layer publisher, simulcast publisher or both (default)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument(
        "--single-port",
        action="store_true",
        help=f"also run our node with media.udp_port = {SINGLE_PORT} (reported as `ours`)",
    )
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--workers", type=int, default=4, help="viewer processes")
    parser.add_argument("--clip-seconds", type=float, help="length of the replayed clip")
    hidden = argparse.SUPPRESS
    parser.add_argument("--worker", choices=["publisher", "subscribers"], help=hidden)
    parser.add_argument("--url", help=hidden)
    parser.add_argument("--identities", help=hidden)
    parser.add_argument("--layers", help=hidden)
    parser.add_argument("--feed", type=int, default=0, help=hidden)
    parser.add_argument("--out", help=hidden)
    parser.add_argument("--deadline", type=float, help=hidden)
    parser.add_argument("--clip", help=hidden)
    parser.add_argument("--client-address", help=hidden)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    args.subscribers = args.subscribers or (10 if args.quick else 20)
    args.seconds = args.seconds or (8.0 if args.quick else 20.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.subscribers < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--subscribers, --seconds and --rounds must be positive")
    args.scenarios = ["single", "simulcast"] if args.scenario == "both" else [args.scenario]
    args.warmup = 1.0 if args.quick else 3.0
    args.clip_seconds = args.clip_seconds or (6.0 if args.quick else 10.0)
    # per configuration, everything after the workers start: generous, never unbounded
    args.deadline = PUBLISHER_READY_S + SUBSCRIBERS_READY_S + args.seconds + 60.0
    return args


def check_janus() -> None:
    if shutil.which(JANUS) is None and not Path(JANUS).exists():
        raise RuntimeError(f"{JANUS} is missing: install Debian's janus package")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    sigterm_as_interrupt()
    started = time.monotonic()
    try:
        if args.sfu != "ours":
            check_janus()
        with (
            tempfile.TemporaryDirectory(prefix="capacity-") as tmp,
            open(Path(tmp) / "workers.log", "wb") as worker_log,
        ):
            runs = len(args.scenarios) * args.rounds * (3 if args.sfu == "both" else 1)
            total = runs * (args.deadline + 30) + 120
            try:
                run = orchestrate(args, Path(tmp), worker_log)
                result = asyncio.run(asyncio.wait_for(run, total))
            except Exception:
                print_log_tail(Path(tmp) / "workers.log")
                raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (TimeoutError, RuntimeError, LabError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        fanout.kill_children(grace_s=1.0)
    result["subscribers"] = args.subscribers
    result["machine"] = {
        k: v for k, v in machine().items() if k in ("cpus", "cpu_model", "python", "kernel",
                                                    "load_average")
    }  # fmt: skip
    result["foreign_load_max_pct"] = foreign_load(result)
    result["command"] = command_line()
    result["wall_s"] = round(time.monotonic() - started, 1)
    print_table(result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
