"""The fan-out's per-copy cost in one process: Producer -> Forwarders -> SRTP -> UDP, no peers.

One VP8 publisher's packets (1100-byte payloads, one frame each) go into a Producer with N
bound subscribers. Each subscriber's DownTrack sends through the node's real send path,
`MediaPeer.send_rtp`, on a MediaPeer shell that holds only what that path reads: an
AES-256-GCM SRTP session (`srtp_protector`, as DTLS negotiates with aiortc and Chromium) and
its own uvloop UDP socket, sending to a loopback sink that drops what it gets. The figure is
this process's CPU time per copy.

Modes: `full` (as above), `python` (SRTP and sendto replaced by no-ops: our Python alone),
`srtp` (no sendto). `--prime`: the subscribers start on the producer's cached keyframe, as
most viewers of benchmarks/fanout.py do. This isolates the per-copy path from the receive
path, wake-ups and the kernel's delivery to a live receiver, which the end-to-end fan-out
benchmark includes; use it to compare trees side by side (`--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pylibsrtp  # noqa: E402

from benchmarks.common import command_line, format_table, write_json  # noqa: E402
from sfu.media.forwarder import DownTrack, bind  # noqa: E402
from sfu.media.peer import MediaPeer, srtp_protector  # noqa: E402
from sfu.media.producer import CodecInfo, Producer, TrackInfo  # noqa: E402
from sfu.media.rtp import (  # noqa: E402
    EXT_ABS_SEND_TIME,
    EXT_MID,
    EXT_TRANSPORT_CC,
    RtpHeader,
    build_rtp,
)
from sfu.media.twcc import TransportSequencer  # noqa: E402

PAYLOAD_BYTES = 1100
LEAD_IN = 10  # packets before the subscribers are bound (the first is the keyframe)


class _Pair:
    """A nominated ICE pair as MediaPeer.send_rtp sees it (only its identity is read)."""


def shell_peer(protect, send, addr: tuple) -> MediaPeer:
    """A MediaPeer without a connection: just what `send_rtp` reads, already routed."""
    peer = object.__new__(MediaPeer)
    pair = _Pair()
    peer._tx_protect = protect
    peer._ice_connection = type("Connection", (), {"_nominated": {1: pair}})()
    peer._route_pair = pair
    peer._route_send = send
    peer._route_addr = addr
    return peer


def vp8_packet(seq: int, keyframe: bool) -> bytes:
    pid = seq & 0x7FFF
    descriptor = bytes([0x90, 0x80, 0x80 | (pid >> 8), pid & 0xFF])
    frame = bytes([0x00 if keyframe else 0x01]) + b"\x9d\x01\x2a" + bytes(PAYLOAD_BYTES)
    return build_rtp(
        payload_type=96,
        sequence_number=seq & 0xFFFF,
        timestamp=(seq * 3000) & 0xFFFFFFFF,
        ssrc=0x1234,
        payload=descriptor + frame,
        marker=True,
    )


async def measure(subscribers: int, packets: int, mode: str, prime: bool) -> dict:
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    addr = sink.getsockname()
    producer = Producer(
        TrackInfo("TR_bench", "video", "pub"),
        CodecInfo("video/VP8", 90000, 96),
        send_keyframe_request=lambda ssrc: None,
        keyframe_cache_s=3.0 if prime else 0.0,
    )
    transports, downtracks = [], []
    for i in range(subscribers):
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        policy = pylibsrtp.Policy(
            key=os.urandom(44),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
        )
        session = pylibsrtp.Session(policy)
        protect = (lambda data: data) if mode == "python" else srtp_protector(session)
        send = transport.sendto if mode == "full" else (lambda data, addr: None)
        peer = shell_peer(protect, send, addr)
        peer._session = session  # (kept alive with the peer)
        dt = DownTrack(
            kind="video", mid="0", ssrc=0x1000 + i, send=peer.send_rtp, rtx_ssrc=2000 + i
        )
        dt.configure(
            mime_type="video/VP8",
            payload_type=96,
            clock_rate=90000,
            rtx_payload_type=97,
            extension_ids={EXT_MID: 1, EXT_ABS_SEND_TIME: 2, EXT_TRANSPORT_CC: 3},
            transport_cc_id=3,
            sequencer=TransportSequencer(),
        )
        downtracks.append(dt)
    data = [vp8_packet(i, i == 0) for i in range(packets + LEAD_IN)]
    headers = [RtpHeader.parse(d) for d in data]
    for i in range(LEAD_IN):
        producer.on_rtp(data[i], headers[i], time.monotonic())
    for dt in downtracks:
        fw = bind(producer, dt)
        if prime:
            fw.prime(time.monotonic())
    if not prime:  # start on a live keyframe
        producer.on_rtp(data[0], headers[0], time.monotonic())
    sent_before = sum(dt.packets_sent for dt in downtracks)
    on_rtp, clock = producer.on_rtp, time.monotonic
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(LEAD_IN, LEAD_IN + packets):
        on_rtp(data[i], headers[i], clock())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    copies = sum(dt.packets_sent for dt in downtracks) - sent_before
    for transport in transports:
        transport.close()
    sink.close()
    return {
        "mode": mode,
        "prime": prime,
        "subscribers": subscribers,
        "packets": packets,
        "copies": copies,
        "cpu_us_per_copy": round(cpu / copies * 1e6, 3) if copies else None,
        "wall_us_per_copy": round(wall / copies * 1e6, 3) if copies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--packets", type=int, help="incoming packets timed; default 10000")
    parser.add_argument("--modes", default="python,srtp,full", help="comma-separated")
    parser.add_argument("--prime", action="store_true", help="start on the cached keyframe")
    parser.add_argument("--quick", action="store_true", help="1000 packets")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    packets = args.packets or (1000 if args.quick else 10000)
    import uvloop

    results = [
        uvloop.run(measure(args.subscribers, packets, mode, args.prime))
        for mode in args.modes.split(",")
    ]
    rows = [
        [r["mode"], str(r["copies"]), f"{r['cpu_us_per_copy']}", f"{r['wall_us_per_copy']}"]
        for r in results
    ]
    print(format_table(["mode", "copies", "CPU µs/copy", "wall µs/copy"], rows))
    if args.json:
        write_json(args.json, {"command": command_line(), "results": results})


if __name__ == "__main__":
    main()
