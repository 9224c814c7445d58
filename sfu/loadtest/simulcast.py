"""A synthetic simulcast publisher: three pre-encoded VP8 layers as raw RTP on one m-line.

aiortc sends one encoding per track, so the video m-line of aiortc's offer is edited the way
a browser announces SSRC simulcast (`a=ssrc-group:SIM low mid high`, RFC 5576 grouping) and
the layers' packets are built here (RTP header, VP8 payload descriptor per RFC 7741 with a
15-bit picture id and TL0PICIDX) and sent through MediaPeer.send_rtp (SRTP, no encoder).
Audio goes through aiortc as pre-encoded Opus. Keyframes come every GOP of the clip; keyframe
requests (PLI, FIR) make the layer jump to the clip's next keyframe, as an encoder would
send one; NACKs are answered from the last packets sent (the same packet again: no RTX
stream is announced); a frame's packets go out in small paced groups, not one burst.
"""

from __future__ import annotations

import asyncio
import random
import re
import struct
import time
from dataclasses import dataclass, field

from .media import FPS, encode_video

MTU_PAYLOAD = 1100
RTP = struct.Struct("!BBHII")
HISTORY = 512  # packets per layer kept for NACKs
PACING_GROUP = 8  # packets sent back to back, then a short pause
PACING_PAUSE_S = 0.002


@dataclass
class Layer:
    frames: list[bytes]
    ssrc: int = field(default_factory=lambda: random.getrandbits(32) | 1)
    seq: int = field(default_factory=lambda: random.getrandbits(16))
    ts_base: int = field(default_factory=lambda: random.getrandbits(32))
    picture_id: int = field(default_factory=lambda: random.getrandbits(15))
    tl0: int = field(default_factory=lambda: random.getrandbits(8))
    offset: int = 0  # frames skipped to answer keyframe requests
    keyframe_wanted: bool = False
    history: dict[int, bytes] = field(default_factory=dict)  # seq -> packet, for NACKs
    retransmitted: int = 0

    def packets(self, n: int, pt: int) -> list[bytes]:
        """The RTP packets of frame `n` of the loop (every frame is a TL0 frame)."""
        count = len(self.frames)
        if self.keyframe_wanted:
            self.keyframe_wanted = False
            i = (n + self.offset) % count
            while self.frames[i % count][0] & 0x01 and i < (n + self.offset) % count + count:
                i += 1  # the next keyframe of the clip (P bit clear)
            self.offset += i - (n + self.offset) % count
        frame = self.frames[(n + self.offset) % count]
        ts = (self.ts_base + n * (90000 // FPS)) & 0xFFFFFFFF
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.tl0 = (self.tl0 + 1) & 0xFF
        chunks = [frame[i : i + MTU_PAYLOAD] for i in range(0, len(frame), MTU_PAYLOAD)] or [b""]
        out = []
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            header = RTP.pack(0x80, (0x80 if last else 0) | pt, self.seq, ts, self.ssrc)
            descriptor = bytes(
                [
                    0x80 | (0x10 if i == 0 else 0),  # X, S (PID 0)
                    0xE0,  # I, L, T
                    0x80 | (self.picture_id >> 8),
                    self.picture_id & 0xFF,
                    self.tl0,
                    0x20,  # TID 0, Y
                ]
            )
            packet = header + descriptor + chunk
            out.append(packet)
            self.history[self.seq] = packet
            self.history.pop((self.seq - HISTORY) & 0xFFFF, None)
            self.seq = (self.seq + 1) & 0xFFFF
        return out


def encode_layers(top_width: int, top_height: int, bitrate: int, seconds: float) -> list[Layer]:
    """Low, mid and top layers (a quarter, half and full size), as a browser's simulcast."""
    layers = []
    for scale, share in ((4, 0.12), (2, 0.3), (1, 1.0)):
        width = max(16, top_width // scale // 2 * 2)
        height = max(16, top_height // scale // 2 * 2)
        rate = max(60_000, int(bitrate * share))
        layers.append(Layer(encode_video(seconds, width, height, rate)))
    return layers


def sim_offer(offer: str, mid: str, layers: list[Layer]) -> str:
    """The offer with the video m-line `mid` announcing the layers as a SIM group."""
    sections = re.split(r"(?=\r\nm=)", offer)
    out = []
    for section in sections:
        if f"\r\na=mid:{mid}\r\n" in section + "\r\n":
            lines = [
                line
                for line in section.split("\r\n")
                if not line.startswith(("a=ssrc:", "a=ssrc-group:"))
            ]
            while lines and not lines[-1]:
                lines.pop()
            lines.append("a=ssrc-group:SIM " + " ".join(str(layer.ssrc) for layer in layers))
            lines += [f"a=ssrc:{layer.ssrc} cname:loadtest" for layer in layers]
            section = "\r\n".join(lines)
        out.append(section)
    result = "".join(out)
    return result if result.endswith("\r\n") else result + "\r\n"


def vp8_payload_type(answer: str) -> int:
    found = re.search(r"a=rtpmap:(\d+) VP8/90000", answer)
    if found is None:
        raise ValueError("the answer accepts no VP8")
    return int(found.group(1))


def silent_video_track():
    """A video track that never yields a frame: aiortc's sender stays quiet on this m-line."""
    from aiortc import MediaStreamTrack

    class Silent(MediaStreamTrack):
        kind = "video"

        async def recv(self):
            await asyncio.Event().wait()

    return Silent()


def feedback_handler(layers: list[Layer], send):
    """An RTCP callback for the publisher's MediaPeer: PLI/FIR -> that layer's next keyframe,
    NACK -> the packets again (`send(packet)`)."""
    by_ssrc = {layer.ssrc: layer for layer in layers}

    def on_nack(data: bytes, pos: int, length: int) -> None:
        layer = by_ssrc.get(int.from_bytes(data[pos + 8 : pos + 12], "big"))
        if layer is None:
            return
        for i in range(pos + 12, min(pos + length, len(data)) - 3, 4):
            pid = int.from_bytes(data[i : i + 2], "big")
            blp = int.from_bytes(data[i + 2 : i + 4], "big")
            for k in range(17):
                if k == 0 or blp & (1 << (k - 1)):
                    packet = layer.history.get((pid + k) & 0xFFFF)
                    if packet is not None:
                        layer.retransmitted += 1
                        send(packet)

    def on_rtcp(data: bytes) -> None:
        pos = 0
        while pos + 12 <= len(data):
            fmt, pt = data[pos] & 0x1F, data[pos + 1]
            length = (int.from_bytes(data[pos + 2 : pos + 4], "big") + 1) * 4
            if pt == 206 and fmt in (1, 4):  # PLI (RFC 4585) or FIR (RFC 5104)
                media = int.from_bytes(data[pos + 8 : pos + 12], "big")
                targets = (
                    [media]
                    if fmt == 1
                    else [
                        int.from_bytes(data[i : i + 4], "big")
                        for i in range(pos + 12, min(pos + length, len(data)) - 7, 8)
                    ]
                )
                for ssrc in targets:
                    if ssrc in by_ssrc:
                        by_ssrc[ssrc].keyframe_wanted = True
            elif pt == 205 and fmt == 1:  # generic NACK (RFC 4585 6.2.1)
                on_nack(data, pos, length)
            pos += length

    return on_rtcp


async def send_layers(peer, layers: list[Layer], pt: int, stop: asyncio.Event) -> None:
    """Every layer's next frame each 1/FPS s, in real time, until `stop`."""
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        packets = [p for layer in layers for p in layer.packets(n, pt)]
        for i in range(0, len(packets), PACING_GROUP):
            if i:
                await asyncio.sleep(PACING_PAUSE_S)
            for packet in packets[i : i + PACING_GROUP]:
                peer.send_rtp(packet)
        n += 1
        delay = start + n / FPS - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
