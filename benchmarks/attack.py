#!/usr/bin/env python3
"""Attack benchmark: what a careless or hostile client does to a live node and its viewers.

    .venv/bin/python benchmarks/attack.py --json build/attack.json
    .venv/bin/python benchmarks/attack.py --quick --json build/attack-quick.json

A node (`python -m sfu serve`, generated config, log captured) runs with a publisher of
pre-encoded media and an observer viewer in a process of their own (benchmarks/livenode.py).
Then each attack runs in turn from this process, over loopback only, every loop bounded in
count and time:

  token matrix       bad, expired, wrongly signed tokens; wrong room; missing grants;
                     a grant given as the string "false" (WebSocket join, WHIP, WHEP, admin API)
  junk SDP           WHIP/WHEP bodies that are not offers: binary, truncated, no fingerprint,
                     no ICE credentials, bad m-line, wrong content type, 1 MB
  WebSocket flood    thousands of pings, junk JSON, unknown types, binary frames a second from
                     one joined socket, plus many sockets that never join
  UDP garbage        random datagrams (STUN-, DTLS- and RTP-looking first bytes) to every UDP
                     port of the node
  malformed STUN     STUN binding requests whose PRIORITY attribute is 2 bytes long
  TWCC bomb          a viewer sending transport-cc feedback that claims 65535 packet
                     statuses in 40 bytes, ~200 a second
  slow reader + data a WebSocket viewer that stops reading while another sends ~1500 data
                     messages of 30 kB
  WHEP session flood 200 POST /whep with one viewer token
  oversized offers   WHIP offers with thousands of rids or 4 m-lines x 512 rids, a WHEP
                     offer with hundreds of m-lines

Per attack: the observer's packet rate during the attack (at least MIN_WINDOW_S) relative to
the BASELINE_S before it, its lowest one-second rate, the node's CPU, tracebacks and ERROR
records in the node's log, whether the node still answers /healthz. A node that dies or hangs
is reported and restarted (with its stage) for the next attack.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import re
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Log,
    command_line,
    format_table,
    machine,
    token,
    until,
    write_json,
)
from benchmarks.livenode import ROOM, LiveNode, auth, loopback, run_bench  # noqa: E402

log = Log("attack")
BASELINE_S = 4.0
MIN_WINDOW_S = 4.0
SETTLE_S = 1.0
TARGET_RATE_RATIO = 0.9
MAX_MESSAGE_BYTES = 64 * 1024  # the node's default limits.max_message_bytes
STUN_MAGIC = 0x2112A442


# -- packet and message builders (pure) -------------------------------------------------------


def malformed_stun(txid: bytes) -> bytes:
    """A STUN Binding Request whose PRIORITY attribute (0x0024) is 2 bytes long (RFC 8445
    says 4): a parser that trusts the type and unpacks 4 bytes fails on it."""
    assert len(txid) == 12
    attribute = struct.pack("!HH", 0x0024, 2) + b"\x00\x01" + b"\x00\x00"  # value + padding
    return struct.pack("!HHI", 0x0001, len(attribute), STUN_MAGIC) + txid + attribute


def twcc_bomb(sender_ssrc: int, media_ssrc: int, base_seq: int = 0, fb_count: int = 0) -> bytes:
    """A 40-byte transport-cc feedback (RTCP RTPFB, FMT 15) claiming 65535 packet statuses:
    nine run-length chunks of "not received", which need no receive deltas, so the packet
    is well formed and a receiver that trusts the count walks all 65535."""
    statuses = 0xFFFF
    chunks = b""
    left = statuses
    while left:
        run = min(left, 0x1FFF)
        chunks += struct.pack("!H", run)  # T=0, symbol 00 (not received), run length
        left -= run
    fci = struct.pack("!HHI", base_seq & 0xFFFF, statuses, fb_count & 0xFF) + chunks
    body = struct.pack("!II", sender_ssrc, media_ssrc) + fci
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!BBH", 0x80 | 15, 205, len(body) // 4) + body


def junk_datagram(rng: random.Random) -> bytes:
    """A random datagram whose first byte looks like STUN, DTLS, RTP/RTCP or nothing."""
    first = rng.choice((0x00, 0x01, 0x16, 0x17, 0x14, 0x80, 0x81, 0x90, rng.randrange(256)))
    return bytes([first]) + rng.randbytes(rng.randrange(0, 1200))


def ws_upgrade_request(host: str, port: int, path: str = "/rtc") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def ws_frame(payload: bytes, opcode: int = 1, mask: bytes | None = None) -> bytes:
    """One masked client frame (RFC 6455 5.2), FIN set."""
    mask = mask or os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


def _sections(sdp: str) -> tuple[str, list[str]]:
    """(session part, media sections) of an SDP, each with its CRLFs."""
    parts = re.split(r"(?m)^(?=m=)", sdp.replace("\r\n", "\n"))
    return parts[0], parts[1:]


def _join(session: str, media: list[str]) -> str:
    mids = [re.search(r"(?m)^a=mid:(\S+)", m).group(1) for m in media]  # type: ignore[union-attr]
    session = re.sub(r"(?m)^a=group:BUNDLE.*$", "a=group:BUNDLE " + " ".join(mids), session)
    return (session + "".join(media)).replace("\n", "\r\n")


def offer_with_rids(template: str, rids: int, mlines: int = 1) -> str:
    """`template`'s first video m-section, `mlines` times, each with `rids` send rids and an
    a=simulcast line naming them all (the audio is left out)."""
    session, media = _sections(template)
    video = next(m for m in media if m.startswith("m=video"))
    rid_lines = "".join(f"a=rid:r{i} send\n" for i in range(rids))
    simulcast = "a=simulcast:send " + ";".join(f"r{i}" for i in range(rids)) + "\n"
    out = []
    for k in range(mlines):
        m = re.sub(r"(?m)^a=mid:\S+$", f"a=mid:{k}", video)
        m = re.sub(r"(?m)^a=ssrc.*\n", "", m)
        out.append(m + rid_lines + simulcast)
    return _join(session, out)


def offer_with_mlines(template: str, mlines: int) -> str:
    """`template`'s first video m-section repeated `mlines` times (mids 0..mlines-1)."""
    session, media = _sections(template)
    video = next(m for m in media if m.startswith("m=video"))
    out = [re.sub(r"(?m)^a=mid:\S+$", f"a=mid:{k}", video) for k in range(mlines)]
    return _join(session, out)


def largest_fitting(
    build: Callable[[int], str], limit: int, low: int = 1, high: int = 20000
) -> int:
    """The largest n with len(build(n)) <= limit (build grows with n)."""
    while low < high:
        mid = (low + high + 1) // 2
        if len(build(mid).encode()) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


def without_lines(sdp: str, prefix: str) -> str:
    return "".join(line for line in sdp.splitlines(keepends=True) if not line.startswith(prefix))


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Attack:
    name: str
    what: str
    run: Callable[[Ctx], Awaitable[dict[str, Any]]]
    budget_s: float


class Ctx:
    """What an attack gets: the node, offer templates, scale, the aiohttp session."""

    def __init__(self, node: LiveNode, quick: bool, offers: dict[str, str]) -> None:
        self.node = node
        self.quick = quick
        self.offers = offers
        self.auth = auth()
        self.http: Any = None

    def scale(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def token(self, identity: str, room: str = ROOM, **grants: Any) -> str:
        return token(self.auth, identity, room, **grants)

    @property
    def url(self) -> str:
        return self.node.url

    async def post_sdp(
        self, kind: str, body: str | bytes, bearer: str | None, ctype: str = ""
    ) -> tuple[int, str]:
        """POST /whip|whep/<room>; (status, Location). A created session is deleted at once
        unless the caller keeps it (it gets the Location)."""
        headers = {"Content-Type": ctype or "application/sdp"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        async with self.http.post(f"{self.url}/{kind}/{ROOM}", data=body, headers=headers) as r:
            await r.read()
            return r.status, r.headers.get("Location", "")

    async def delete(self, location: str, bearer: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        with contextlib.suppress(Exception):
            async with self.http.delete(f"{self.url}{location}", headers=headers) as r:
                return r.status
        return 0

    async def ws_join(self, bearer: str, room: str | None = None, timeout: float = 5.0) -> dict:
        """Join over a WebSocket and return the first reply (joined or error); then close."""
        ws = await self.http.ws_connect(f"{self.url}/rtc")
        try:
            join: dict[str, Any] = {"type": "join", "token": bearer, "request_id": 1}
            if room is not None:
                join["room"] = room
            await ws.send_json(join)
            msg = await ws.receive_json(timeout=timeout)
            return msg
        finally:
            await ws.close()


async def template_offers() -> dict[str, str]:
    """Real aiortc offers to start from: WHEP (recvonly) and WHIP (sendonly), video + audio."""
    from aiortc import RTCPeerConnection

    offers = {}
    for kind, direction in (("whep", "recvonly"), ("whip", "sendonly")):
        pc = RTCPeerConnection()
        try:
            for media in ("video", "audio"):
                pc.addTransceiver(media, direction=direction)
            await pc.setLocalDescription(await pc.createOffer())
            offers[kind] = pc.localDescription.sdp
        finally:
            await pc.close()
    return offers


# -- the attacks ----------------------------------------------------------------------------------


async def token_matrix(ctx: Ctx) -> dict:
    import jwt

    from sfu.config import AuthSettings

    now = int(time.time())
    key, secret = next(iter(ctx.auth.api_keys.items()))
    string_false = jwt.encode(
        {
            "iss": key,
            "sub": "stringy",
            "room": ROOM,
            "grants": {"admin": "false", "publish": "false", "subscribe": True},
            "nbf": now - 10,
            "iat": now,
            "exp": now + 600,
        },
        secret,
        algorithm="HS256",
    )
    forged = token(AuthSettings(api_keys={key: "x" * 48}), "forger", ROOM, subscribe=True)
    bad = {
        "garbage": "not.a.token",
        "empty": "",
        "forged signature": forged,
        "expired": ctx.token("late", ttl_s=-60, subscribe=True),
    }
    viewer = ctx.token("viewer-only", subscribe=True)
    publisher = ctx.token("publisher-only", publish=True)
    other_room = ctx.token("elsewhere", room="another-room", subscribe=True, publish=True)
    whep, whip = ctx.offers["whep"], ctx.offers["whip"]
    cases: list[tuple[str, Callable[[], Awaitable[Any]], set]] = []
    for name, value in bad.items():
        cases.append((f"ws join, {name} token", lambda v=value: ctx.ws_join(v), {"unauthorized"}))
        cases.append((f"WHEP, {name} token", lambda v=value: ctx.post_sdp("whep", whep, v), {401}))
        cases.append((f"admin API, {name} token", lambda v=value: stats(ctx, v), {401}))
    cases += [
        ("WHIP, no token", lambda: ctx.post_sdp("whip", whip, None), {401}),
        ("ws join, token for another room", lambda: ctx.ws_join(other_room, ROOM), {"forbidden"}),
        ("WHEP, token for another room", lambda: ctx.post_sdp("whep", whep, other_room), {403}),
        ("WHIP, viewer token (no publish)", lambda: ctx.post_sdp("whip", whip, viewer), {403}),
        ("WHEP, publisher token (no subscribe)",
         lambda: ctx.post_sdp("whep", whep, publisher), {403}),
        ("admin API, viewer token", lambda: stats(ctx, viewer), {401, 403}),
        ('admin API, grant "false" as a string', lambda: stats(ctx, string_false), {401, 403}),
        ('WHIP, publish grant "false" as a string',
         lambda: ctx.post_sdp("whip", whip, string_false), {401, 403}),
    ]  # fmt: skip
    rounds = ctx.scale(3, 10)
    seen: dict[str, Counter] = {name: Counter() for name, _, _ in cases}
    accepted: list[str] = []
    unanswered = 0
    for _ in range(rounds):
        for name, call, expected in cases:
            try:
                answer = await call()
            except Exception as exc:
                seen[name][type(exc).__name__] += 1
                unanswered += 1
                continue
            if isinstance(answer, tuple):  # (status, location) of WHIP/WHEP
                status, location = answer
                if location:
                    await ctx.delete(location)
                got: Any = status
            elif isinstance(answer, dict):  # a WebSocket reply
                got = answer.get("code") or answer.get("type")
            else:
                got = answer
            seen[name][got] += 1
            if got not in expected and name not in accepted:
                accepted.append(name)
    return {
        "summary": f"{len(accepted)} of {len(cases)} cases answered wrongly"
        + (f": {'; '.join(accepted)}" if accepted else "")
        + (f"; {unanswered} requests got no answer" if unanswered else ""),
        "requests": rounds * len(cases),
        "unanswered": unanswered,
        "wrong": accepted,
        "answers": {name: dict(c) for name, c in seen.items()},
    }


async def stats(ctx: Ctx, bearer: str) -> int:
    headers = {"Authorization": f"Bearer {bearer}"}
    async with ctx.http.get(f"{ctx.url}/api/stats", headers=headers) as r:
        await r.read()
        return r.status


async def junk_sdp(ctx: Ctx) -> dict:
    rng = random.Random(5)
    results: dict[str, Counter] = {}
    wrong: list[str] = []
    unanswered = 0
    for kind, grant in (("whep", "subscribe"), ("whip", "publish")):
        offer = ctx.offers[kind]
        bearer = ctx.token(f"junk-{kind}", **{grant: True})
        bodies: list[tuple[str, str | bytes, str, set]] = [
            ("binary", rng.randbytes(2048), "", {400}),
            ("v=0 only", "v=0\r\n", "", {400}),
            ("prose", "hello, this is not an offer", "", {400}),
            ("truncated offer", offer[: len(offer) // 3], "", {400}),
            ("no a=fingerprint", without_lines(offer, "a=fingerprint"), "", {400}),
            ("no ICE credentials", without_lines(offer, "a=ice-"), "", {400}),
            ("bad m-line", re.sub(r"(?m)^m=video .*$", "m=video x FOO bar", offer), "", {400}),
            ("text/plain", offer, "text/plain", {415}),
            ("1 MB body", "v=0\r\n" + "a=x\r\n" * 200_000, "", {413}),
        ]
        for name, body, ctype, expected in bodies:
            label = f"{kind.upper()} {name}"
            counter = results.setdefault(label, Counter())
            for _ in range(ctx.scale(2, 5)):
                try:
                    status, location = await ctx.post_sdp(kind, body, bearer, ctype)
                except Exception as exc:
                    counter[type(exc).__name__] += 1
                    unanswered += 1
                    continue
                counter[status] += 1
                if location:
                    await ctx.delete(location, bearer)
                if status not in expected and label not in wrong:
                    wrong.append(label)
    # and a join whose publish offer is junk
    ws = await ctx.http.ws_connect(f"{ctx.url}/rtc")
    try:
        await ws.send_json(
            {
                "type": "join",
                "token": ctx.token("junk-ws", publish=True),
                "request_id": 1,
                "publish": {"sdp": "v=0\r\nm=video\r\n", "tracks": [{"mid": "0", "kind": "video"}]},
            }
        )
        reply = await ws.receive_json(timeout=5)
        ws_answer = reply.get("code") or reply.get("type")
        if "publish_error" in reply:  # joined, the offer refused: what a client should get
            ws_answer = f"joined, publish_error {reply['publish_error'].get('code')}"
    except Exception as exc:
        ws_answer = type(exc).__name__
    finally:
        await ws.close()
    return {
        "summary": f"{len(wrong)} of {len(results)} bodies answered wrongly"
        + (f": {'; '.join(wrong)}" if wrong else "")
        + (f"; {unanswered} requests got no answer" if unanswered else "")
        + f"; junk publish offer in a join: {ws_answer}",
        "wrong": wrong,
        "unanswered": unanswered,
        "answers": {k: dict(v) for k, v in results.items()},
        "ws_join_with_junk_offer": ws_answer,
    }


async def ws_flood(ctx: Ctx) -> dict:
    import aiohttp

    total = ctx.scale(10_000, 25_000)
    idle_count = ctx.scale(100, 300)
    seconds = ctx.scale(4, 6)
    idle = []
    for _ in range(idle_count):
        with contextlib.suppress(aiohttp.ClientError, OSError):
            idle.append(await ctx.http.ws_connect(f"{ctx.url}/rtc"))
    ws = await ctx.http.ws_connect(f"{ctx.url}/rtc")
    received = Counter()

    async def drain() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                with contextlib.suppress(ValueError):
                    received[msg.json().get("type") or "?"] += 1

    reader = asyncio.ensure_future(drain())
    sent = 0
    try:
        await ws.send_json({"type": "join", "token": ctx.token("ws-flooder", subscribe=True),
                            "auto_subscribe": False, "request_id": 0})  # fmt: skip
        junk = [
            '{"type": "ping", "ts": 1}',
            "{",
            '{"type": "no-such-type"}',
            '{"type": "subscribe", "track_ids": "not a list"}',
            '{"type": "data"}',
            "[]",
            '"just a string"',
        ]
        t_end = time.monotonic() + seconds
        per_tick = max(1, total // (seconds * 50))
        while sent < total and time.monotonic() < t_end and not ws.closed:
            for _ in range(per_tick):
                if sent % 97 == 0:
                    await ws.send_bytes(b"\x00\x01binary")
                else:
                    await ws.send_str(junk[sent % len(junk)])
                sent += 1
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
    finally:
        closed_by_node = ws.closed
        await ws.close()
        reader.cancel()
        for sock in idle:
            await sock.close()
    return {
        "summary": f"{sent} messages in {seconds} s from one socket "
        f"({'dropped by the node' if closed_by_node else 'kept'}), "
        f"{len(idle)} sockets that never join",
        "sent": sent,
        "idle_sockets": len(idle),
        "replies": dict(received),
        "flooder_dropped": closed_by_node,
    }  # fmt: skip


def _blast(ports: list[int], packets: int, seconds: float, make: Callable[[int], bytes]) -> int:
    """Send `packets` datagrams round-robin to `ports` on 127.0.0.1, paced over `seconds`."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        t0 = time.monotonic()
        while sent < packets:
            elapsed = time.monotonic() - t0
            if elapsed > seconds + 2:
                break
            due = int(packets * min(1.0, elapsed / seconds)) + 1
            while sent < min(due, packets):
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    s.sendto(make(sent), ("127.0.0.1", ports[sent % len(ports)]))
                sent += 1
            time.sleep(0.002)
    return sent


async def udp_garbage(ctx: Ctx) -> dict:
    ports = ctx.node.udp_ports()
    rng = random.Random(11)
    packets = ctx.scale(30_000, 100_000)
    seconds = ctx.scale(4, 8)
    sent = await asyncio.to_thread(_blast, ports, packets, seconds, lambda i: junk_datagram(rng))
    return {
        "summary": f"{sent} random datagrams to {len(ports)} UDP ports in {seconds} s",
        "sent": sent,
        "ports": len(ports),
    }


async def stun_malformed(ctx: Ctx) -> dict:
    ports = ctx.node.udp_ports()
    packets = ctx.scale(3000, 5000)
    seconds = ctx.scale(3, 5)
    rng = random.Random(13)
    sent = await asyncio.to_thread(
        _blast, ports, packets, seconds, lambda i: malformed_stun(rng.randbytes(12))
    )
    return {
        "summary": f"{sent} STUN requests with a 2-byte PRIORITY to {len(ports)} UDP ports",
        "sent": sent,
        "ports": len(ports),
    }


async def twcc_flood(ctx: Ctx) -> dict:
    from benchmarks.fanout import subscriber_client_class

    rate = 200
    seconds = ctx.scale(4, 6)
    client = await subscriber_client_class().connect(
        ctx.url, ctx.token("twcc-bomber", subscribe=True), network=loopback(), timeout=15
    )
    sent = 0
    try:
        if not await until(client.has_media, 10):
            raise RuntimeError("the attacking viewer got no media")
        kinds = client.ssrc_kinds()
        media_ssrc = next(s for s, k in kinds.items() if k == "video")
        transport = client.subscriber.pc.getTransceivers()[0].receiver.transport
        t0 = time.monotonic()
        while sent < rate * seconds and not client.closed:
            await transport._send_rtp(twcc_bomb(0x1234, media_ssrc, sent * 7, sent))
            sent += 1
            delay = t0 + sent / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.leave(), 5)
    return {
        "summary": f"{sent} feedback packets claiming 65535 statuses ({rate}/s, 40 bytes each)",
        "sent": sent,
    }


async def slow_reader_data_flood(ctx: Ctx) -> dict:
    import aiohttp

    messages = 1500  # more than a participant's event queue holds (1000)
    size = 30_000
    seconds = ctx.scale(10, 15)
    host, port = "127.0.0.1", int(ctx.url.rsplit(":", 1)[1])
    # viewer A: joins, then never reads again; a small receive buffer fills at once
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(raw, (host, port)), 5)
        reader, writer = await asyncio.open_connection(sock=raw)
    except BaseException:
        raw.close()
        raise
    sent = 0
    b_dropped = False
    told: Counter = Counter()
    draining: asyncio.Future | None = None
    try:
        writer.write(ws_upgrade_request(host, port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"no WebSocket upgrade: {head[:60]!r}")
        join = {"type": "join", "token": ctx.token("slow-reader", subscribe=True)}
        writer.write(ws_frame(__import__("json").dumps(join).encode()))
        await writer.drain()
        await asyncio.sleep(1.0)  # joined; from now on nothing is read from this socket
        # viewer B: floods the room with data messages
        ws = await ctx.http.ws_connect(f"{ctx.url}/rtc", max_msg_size=0)
        try:
            await ws.send_json({"type": "join", "token": ctx.token("data-flooder", subscribe=True),
                                "auto_subscribe": False, "request_id": 0})  # fmt: skip
            await ws.receive(timeout=5)

            async def drain() -> None:  # what the node tells the flooder (rate limits...)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        with contextlib.suppress(ValueError, AttributeError):
                            reply = msg.json()
                            told[reply.get("code") or reply.get("type") or "?"] += 1

            draining = asyncio.ensure_future(drain())
            payload = "x" * size
            t_end = time.monotonic() + seconds
            while sent < messages and time.monotonic() < t_end:
                try:
                    await asyncio.wait_for(
                        ws.send_json({"type": "data", "topic": "flood", "payload": payload}), 5
                    )
                except (ConnectionError, aiohttp.ClientError, TimeoutError):
                    b_dropped = True
                    break
                if ws.closed:
                    b_dropped = True
                    break
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.5)  # the node's last answers
        finally:
            await ws.close()
            if draining is not None:
                draining.cancel()
        left = await ctx.node.participants()
    finally:
        writer.transport.abort()
    still_in = None if left is None else "slow-reader" in left
    return {
        "summary": f"{sent} data messages of {size // 1000} kB; slow reader "
        + ("still in the room" if still_in else "dropped" if still_in is False else "unknown")
        + ("; the flooder was disconnected" if b_dropped else "")
        + (f"; the node told the flooder: {dict(told)}" if told else ""),
        "sent": sent,
        "flooder_told": dict(told),
        "slow_reader_still_in_room": still_in,
        "flooder_disconnected": b_dropped,
    }


async def whep_flood(ctx: Ctx) -> dict:
    posts = ctx.scale(200, 200)
    bearer = ctx.token("whep-flooder", subscribe=True)
    offer = ctx.offers["whep"]
    statuses: Counter = Counter()
    locations: list[str] = []
    queue = iter(range(posts))

    async def poster() -> None:
        for _ in queue:
            try:
                status, location = await ctx.post_sdp("whep", offer, bearer)
            except Exception as exc:
                statuses[type(exc).__name__] += 1
                continue
            statuses[status] += 1
            if location:
                locations.append(location)

    await asyncio.gather(*(poster() for _ in range(8)))
    try:
        reply = await ctx.ws_join(ctx.token("late-viewer", subscribe=True))
        late = reply.get("code") or reply.get("type")
    except Exception as exc:
        late = type(exc).__name__
    deleted = Counter()
    for location in locations:
        deleted[await ctx.delete(location, bearer)] += 1
    return {
        "summary": f"{len(locations)} of {posts} sessions accepted for one token; "
        f"a real viewer then got: {late}",
        "accepted": len(locations),
        "statuses": dict(statuses),
        "real_viewer_after": late,
        "deleted": dict(deleted),
    }


async def oversized_offers(ctx: Ctx) -> dict:
    whip, whep = ctx.offers["whip"], ctx.offers["whep"]
    limit = MAX_MESSAGE_BYTES - 512
    rids_max = largest_fitting(lambda n: offer_with_rids(whip, n), limit)
    mlines_max = largest_fitting(lambda n: offer_with_mlines(whep, n), limit, high=2000)
    publisher = ctx.token("rid-publisher", publish=True)
    viewer = ctx.token("mline-viewer", subscribe=True)
    plan = [
        (f"WHIP 1 m-line x {rids_max} rids", "whip", offer_with_rids(whip, rids_max), publisher)
    ]
    plan += [
        ("WHIP 4 m-lines x 512 rids", "whip", offer_with_rids(whip, 512, 4), publisher)
    ] * ctx.scale(3, 10)
    many_mlines = offer_with_mlines(whep, mlines_max)
    plan += [(f"WHEP {mlines_max} m-lines", "whep", many_mlines, viewer)]
    rss0 = ctx.node.rss_mb()
    peak = rss0
    answers: dict[str, Counter] = {}
    kept: list[tuple[str, str]] = []
    for label, kind, body, bearer in plan:
        try:
            status, location = await ctx.post_sdp(kind, body, bearer)
        except Exception as exc:
            status, location = type(exc).__name__, ""
        answers.setdefault(label, Counter())[status] += 1
        if location:
            kept.append((location, bearer))
        with contextlib.suppress(OSError):
            peak = max(peak, ctx.node.rss_mb())
    for location, bearer in kept:
        await ctx.delete(location, bearer)
    await asyncio.sleep(1.0)
    after = ctx.node.rss_mb()
    return {
        "summary": f"{len(kept)} of {len(plan)} oversized offers accepted; node RSS "
        f"+{peak - rss0:.0f} MB at the peak, +{after - rss0:.0f} MB after DELETE",
        "accepted": len(kept),
        "answers": {k: dict(v) for k, v in answers.items()},
        "rss_mb_before": round(rss0, 1),
        "rss_mb_peak": round(peak, 1),
        "rss_mb_after_delete": round(after, 1),
        "largest_offer_bytes": max(len(b.encode()) for _, _, b, _ in plan),
    }


ATTACKS = [
    Attack("token_matrix", "bad/expired/forged tokens, wrong room, missing grants",
           token_matrix, 30),
    Attack("junk_sdp", "WHIP/WHEP bodies that are not offers", junk_sdp, 30),
    Attack("ws_flood", "WebSocket message flood + sockets that never join", ws_flood, 30),
    Attack("udp_garbage", "random datagrams to every media port", udp_garbage, 20),
    Attack("stun_malformed", "STUN with a 2-byte PRIORITY attribute", stun_malformed, 15),
    Attack("whep_flood", "200 WHEP sessions with one viewer token", whep_flood, 60),
    Attack("oversized_offers", "offers with thousands of rids / hundreds of m-lines",
           oversized_offers, 60),
    Attack("twcc_bomb", "transport-cc feedback claiming 65535 statuses, 200/s", twcc_flood, 40),
    Attack("slow_reader_data_flood", "a viewer that stops reading + a 30 kB data flood",
           slow_reader_data_flood, 40),
]  # fmt: skip


# -- running one attack ---------------------------------------------------------------------------


async def ensure_healthy(node: LiveNode, healthy_rate: float | None) -> str:
    """Restart the node (and stage) when it is gone, hung or its observer starved."""
    reason = ""
    if not node.alive:
        reason = "node was dead"
    elif await node.healthz_ms() is None:
        reason = "node did not answer /healthz"
    elif node.stage is None or not node.stage.alive:
        reason = "stage worker was gone"
    elif healthy_rate:
        now = time.monotonic()
        rate = node.observer_rate(now - 2.0, now)
        if rate is None or rate < 0.5 * healthy_rate:
            reason = f"observer starved ({rate and round(rate)} pkt/s)"
    if reason:
        log(f"restart: {reason}")
        await node.restart()
    return reason


async def run_attack(node: LiveNode, attack: Attack, ctx: Ctx, healthy_rate: float | None) -> dict:
    import aiohttp

    restarted = await ensure_healthy(node, healthy_rate)
    tb = time.monotonic()
    await asyncio.sleep(BASELINE_S)
    t0 = time.monotonic()
    before = node.observer_rate(tb, t0)
    cpu0 = node.cpu_s()
    log_at = node.log_size()
    outcome = "done"
    details: dict[str, Any] = {}
    log(f"{attack.name}: {attack.what}")
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=15), connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        ctx.http = http
        try:
            details = await asyncio.wait_for(attack.run(ctx), attack.budget_s)
        except TimeoutError:
            outcome = f"attack still running after {attack.budget_s:.0f} s: stopped"
        except Exception as exc:
            outcome = f"attack failed: {type(exc).__name__}: {exc}"[:300]
    left = t0 + MIN_WINDOW_S - time.monotonic()
    if left > 0:
        await asyncio.sleep(left)
    t1 = time.monotonic()
    cpu1 = None
    with contextlib.suppress(OSError, AssertionError):
        cpu1 = node.cpu_s()
    health = await node.healthz_ms(5.0)
    await asyncio.sleep(SETTLE_S)
    during = node.observer_rate(t0, t1)
    problems = node.log_problems(log_at)
    state = "ok" if node.alive and health is not None else ("died" if not node.alive else "hung")
    ratio = round(during / before, 3) if during is not None and before else None
    result = {
        "what": attack.what,
        "outcome": outcome,
        "seconds": round(t1 - t0, 1),
        "observer_pkts_per_s_before": None if before is None else round(before, 1),
        "observer_pkts_per_s_during": None if during is None else round(during, 1),
        "observer_rate_ratio": ratio,
        "observer_min_pkts_per_s": node.observer_min_rate(t0, t1),
        "node_cpu_pct": None if cpu1 is None else round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "healthz_ms_after": health,
        "node": state,
        "tracebacks": problems.tracebacks,
        "error_records": problems.errors,
        "log_samples": problems.samples,
        "log_bytes": node.log_size() - log_at,
        "restarted_before": restarted or None,
        **details,
    }
    log(
        f"{attack.name}: ratio {ratio}, node {state}, tracebacks {problems.tracebacks}; "
        + str(details.get("summary", outcome))
    )
    return result


def summarise(attacks: dict[str, dict], quick: bool) -> dict:
    ratios = [a["observer_rate_ratio"] for a in attacks.values()]
    # an attack with no ratio (the observer got nothing to compare) counts as a total loss
    ratio_min = min((0.0 if r is None else r) for r in ratios) if ratios else None
    tracebacks = sum(a["tracebacks"] for a in attacks.values())
    down = [name for name, a in attacks.items() if a["node"] != "ok"]
    return {
        "observer_rate_ratio_min": ratio_min,
        "tracebacks": tracebacks,
        "nodes_down": down,
        "targets": {
            "observer_rate_ratio_min": TARGET_RATE_RATIO,
            "tracebacks": 0,
            "met": bool(ratio_min is not None and ratio_min >= TARGET_RATE_RATIO)
            and tracebacks == 0
            and not down,
        },
        "quick": quick,
        "attacks": attacks,
    }


def print_table(result: dict) -> None:
    rows = []
    for name, a in result["attacks"].items():
        rows.append(
            (
                name,
                a["observer_pkts_per_s_before"],
                a["observer_pkts_per_s_during"],
                a["observer_rate_ratio"],
                a["observer_min_pkts_per_s"],
                a["node_cpu_pct"],
                a["tracebacks"],
                a["error_records"],
                a["node"] + (" (restarted before)" if a["restarted_before"] else ""),
            )
        )
    header = ("attack", "obs pkt/s before", "during", "ratio", "min 1 s", "node CPU %",
              "tracebacks", "errors", "node after")  # fmt: skip
    print(format_table(header, rows, "<>>>>>>><"))
    print()
    for name, a in result["attacks"].items():
        text = a.get("summary") or a["outcome"]
        if a["outcome"] != "done" and a.get("summary"):
            text += f" ({a['outcome']})"
        print(f"{name}: {text}")
        for line in a["log_samples"][:3]:
            print(f"    log: {line[:160]}")
    met = result["targets"]["met"]
    print(
        f"\nobserver rate ratio, lowest: {result['observer_rate_ratio_min']} (target >= "
        f"{TARGET_RATE_RATIO}); tracebacks: {result['tracebacks']} (target 0); node down after: "
        f"{', '.join(result['nodes_down']) or 'none'}; targets met: {'yes' if met else 'NO'}"
    )


async def run(args: argparse.Namespace, node: LiveNode) -> dict:
    attacks: dict[str, dict] = {}
    try:
        offers = await template_offers()
        await node.start()
        log(f"node pid {node.pid} at {node.url}; stage live")
        t = time.monotonic()
        await asyncio.sleep(BASELINE_S)
        healthy = node.observer_rate(t, time.monotonic())
        ctx = Ctx(node, args.quick, offers)
        chosen = [a for a in ATTACKS if not args.only or a.name in args.only]
        for attack in chosen:
            attacks[attack.name] = await run_attack(node, attack, ctx, healthy)
    finally:
        await asyncio.to_thread(node.stop)
    result = summarise(attacks, args.quick)
    result["node_restarts"] = node.starts - 1
    result["machine"] = machine()
    result["command"] = command_line()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller floods (~2 minutes in all)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--only", nargs="+", choices=[a.name for a in ATTACKS], help="run only these attacks"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    budget = 60 + sum(a.budget_s + BASELINE_S + MIN_WINDOW_S + 45 for a in ATTACKS)
    result = run_bench("attack-", lambda node: run(args, node), budget, log)
    if result is None:
        return 130
    result["wall_s"] = round(time.monotonic() - started, 1)
    print_table(result)
    if args.json:
        log(f"wrote {write_json(args.json, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
