"""Synthetic simulcast VP8 as a browser sends it, and readers for what a subscriber receives.

Written from RFC 7741 (VP8 payload descriptor), RFC 6386 section 9.1 (keyframe header) and
RFC 8285 (header extensions), independently of sfu.media's own parsers, so the tests that use
it check the SFU's bytes against a second implementation. Also: a real aiortc offer edited into
a Chromium-style simulcast offer (rids, or a SIM group).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection

from .media_sources import ColorVideoTrack

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
RID_ID, RRID_ID = 10, 11  # the extension ids the edited offers use (as Chromium)
RIDS = ["q", "h", "f"]

# libvpx's usual three-temporal-layer pattern (L1T3): TID per frame, repeating every 4 frames.
L1T3 = (0, 2, 1, 2)


def vp8_descriptor(
    picture_id: int,
    tl0picidx: int,
    tid: int,
    *,
    start: bool = True,
    layer_sync: bool = False,
    non_reference: bool = False,
) -> bytes:
    """X=1 with I (15-bit picture id, M=1), L (TL0PICIDX) and T (TID/Y); S on the first packet."""
    b0 = 0x80 | (0x20 if non_reference else 0) | (0x10 if start else 0)
    x = 0x80 | 0x40 | 0x20
    pid = 0x8000 | (picture_id & 0x7FFF)
    tyk = ((tid & 0x03) << 6) | (0x20 if layer_sync else 0)
    return bytes([b0, x]) + struct.pack("!H", pid) + bytes([tl0picidx & 0xFF, tyk])


def vp8_keyframe_header(width: int, height: int, *, scale_bits: int = 0) -> bytes:
    """The first 10 bytes of a VP8 keyframe (RFC 6386 9.1): frame tag with P=0, start code,
    14-bit width and height (the top 2 bits of each 16-bit field are the scaling mode)."""
    first_partition = 1234
    tag = (first_partition << 5) | (1 << 4) | 0  # show_frame=1, version 0, P=0 (key frame)
    return (
        bytes([tag & 0xFF, (tag >> 8) & 0xFF, (tag >> 16) & 0xFF])
        + b"\x9d\x01\x2a"
        + struct.pack(
            "<HH", (width & 0x3FFF) | (scale_bits << 14), (height & 0x3FFF) | (scale_bits << 14)
        )
    )


def vp8_interframe_header() -> bytes:
    first_partition = 321
    tag = (first_partition << 5) | (1 << 4) | 1  # P=1: interframe
    return bytes([tag & 0xFF, (tag >> 8) & 0xFF, (tag >> 16) & 0xFF])


def read_vp8(payload: bytes) -> dict:
    """Picture id, TL0PICIDX, TID and S of a descriptor written by vp8_descriptor, plus where
    the VP8 data starts."""
    b0, x = payload[0], payload[1]
    assert b0 & 0x80 and x & 0x80 and x & 0x40 and x & 0x20, payload[:6].hex()
    assert payload[2] & 0x80, "15-bit picture id expected"
    return {
        "start": bool(b0 & 0x10) and (b0 & 0x07) == 0,
        "picture_id": ((payload[2] & 0x7F) << 8) | payload[3],
        "tl0": payload[4],
        "tid": payload[5] >> 6,
        "sync": bool(payload[5] & 0x20),
        "data_offset": 6,
    }


def one_byte_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def rtp_packet(
    *,
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    marker: bool = False,
    extensions: list[tuple[int, bytes]] | None = None,
) -> bytes:
    ext = one_byte_extensions(extensions) if extensions else b""
    b0 = 0x80 | (0x10 if ext else 0)
    b1 = (0x80 if marker else 0) | pt
    return struct.pack("!BBHII", b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + ext + payload


def header_extensions(packet: bytes) -> dict[int, bytes]:
    """id -> value of every element of a one- or two-byte extension block (RFC 8285)."""
    if not packet[0] & 0x10:
        return {}
    pos = 12 + 4 * (packet[0] & 0x0F)
    profile, words = struct.unpack_from("!HH", packet, pos)
    pos += 4
    end = pos + 4 * words
    found: dict[int, bytes] = {}
    while pos < end:
        if profile == 0xBEDE:
            if packet[pos] == 0:
                pos += 1
                continue
            ext_id, size = packet[pos] >> 4, (packet[pos] & 0x0F) + 1
            if ext_id == 15:
                break
            pos += 1
        else:
            if packet[pos] == 0:
                pos += 1
                continue
            ext_id, size = packet[pos], packet[pos + 1]
            pos += 2
        found[ext_id] = packet[pos : pos + size]
        pos += size
    return found


def rtp_fields(packet: bytes) -> dict:
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        offset += 4 + 4 * struct.unpack_from("!H", packet, offset + 2)[0]
    end = len(packet) - (packet[-1] if b0 & 0x20 else 0)
    return {
        "marker": bool(b1 & 0x80),
        "pt": b1 & 0x7F,
        "seq": seq,
        "ts": ts,
        "ssrc": ssrc,
        "payload": packet[offset:end],
    }


@dataclass
class LayerStream:
    """One simulcast encoding's RTP stream: its own SSRC, sequence, timestamp and picture id
    bases, TL0PICIDX, and the marker that tells its packets apart (`tag`)."""

    tag: int
    ssrc: int
    rtx_ssrc: int
    seq: int
    ts: int
    picture_id: int
    tl0: int
    width: int
    height: int
    frame_bytes: int = 400  # VP8 data per frame (split into packets of at most mtu bytes)
    mtu: int = 1200
    frame_no: int = 0
    sent: list[bytes] = field(default_factory=list)
    _pattern: bytes = b""

    def frame(
        self,
        *,
        keyframe: bool,
        tid: int,
        pt: int,
        ext: list[tuple[int, bytes]] | None = None,
        sync: bool = False,
        ts_step: int = 3000,
    ) -> list[bytes]:
        """The packets of the next frame (keyframes restart the temporal pattern at TID 0)."""
        if self.frame_no:
            self.picture_id = (self.picture_id + 1) & 0x7FFF
            self.ts = (self.ts + ts_step) & 0xFFFFFFFF
        if tid == 0 and self.frame_no:
            self.tl0 = (self.tl0 + 1) & 0xFF
        self.frame_no += 1
        head = vp8_keyframe_header(self.width, self.height) if keyframe else vp8_interframe_header()
        count = max(1, -(-self.frame_bytes // self.mtu))
        chunks = []
        for n in range(count):
            # every packet's VP8 data is unique: layer tag, frame number, packet index
            chunk = (head if n == 0 else b"") + bytes(
                [self.tag, (self.frame_no >> 8) & 0xFF, self.frame_no & 0xFF, n]
            )
            size = min(self.mtu, self.frame_bytes - n * self.mtu)
            chunk += self._filler()[: max(0, size - len(chunk))]
            chunks.append(chunk)
        packets = []
        for n, chunk in enumerate(chunks):
            desc = vp8_descriptor(self.picture_id, self.tl0, tid, start=n == 0, layer_sync=sync)
            packets.append(
                rtp_packet(
                    pt=pt,
                    seq=self.seq,
                    ts=self.ts,
                    ssrc=self.ssrc,
                    payload=desc + chunk,
                    marker=n == len(chunks) - 1,
                    extensions=ext,
                )
            )
            self.seq = (self.seq + 1) & 0xFFFF
        self.sent.extend(packets)
        return packets

    def _filler(self) -> bytes:
        if len(self._pattern) < self.mtu:
            self._pattern = bytes((self.tag + 7 * i) & 0xFF for i in range(self.mtu))
        return self._pattern


def three_layers() -> list[LayerStream]:
    """q/h/f as Chromium sends a 1280x720 camera: unrelated bases on every stream."""
    return [
        LayerStream(
            tag=0xA0, ssrc=0x1111AAAA, rtx_ssrc=0x1111BBBB, seq=65500, ts=4_294_900_000,
            picture_id=32700, tl0=250, width=320, height=180, frame_bytes=600,
        ),
        LayerStream(
            tag=0xB0, ssrc=0x2222AAAA, rtx_ssrc=0x2222BBBB, seq=1200, ts=90_000,
            picture_id=17, tl0=3, width=640, height=360, frame_bytes=2000,
        ),
        LayerStream(
            tag=0xC0, ssrc=0x3333AAAA, rtx_ssrc=0x3333BBBB, seq=30000, ts=2_000_000_000,
            picture_id=9000, tl0=128, width=1280, height=720, frame_bytes=6000,
        ),
    ]  # fmt: skip


def serial_delta(a: int, b: int, bits: int) -> int:
    """b - a in a `bits`-bit serial number space (negative if b is behind a)."""
    mod = 1 << bits
    d = (b - a) % mod
    return d - mod if d >= mod // 2 else d


# -- offers -------------------------------------------------------------------------------------


async def aiortc_video_offer() -> str:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(ColorVideoTrack((10, 20, 30)), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def to_rid_simulcast(offer: str) -> str:
    """aiortc's offer, edited into what Chromium sends for three rids."""
    lines = [
        line
        for line in offer.split("\r\n")
        if line and not line.startswith(("a=ssrc:", "a=ssrc-group:"))
    ]
    out = []
    for line in lines:
        out.append(line)
        if line.startswith("a=extmap:") and EXT_MID in line:
            out += [f"a=extmap:{RID_ID} {EXT_RID}", f"a=extmap:{RRID_ID} {EXT_REPAIRED_RID}"]
    # the only m-section: rid and simulcast lines at its end, as Chromium writes them
    out += [f"a=rid:{rid} send" for rid in RIDS]
    out.append("a=simulcast:send " + ";".join(RIDS))
    return "\r\n".join(out) + "\r\n"


def to_sim_group(offer: str, streams: list[LayerStream]) -> str:
    """aiortc's offer with its SSRCs replaced by a SIM group and one FID group per layer."""
    lines = [
        line
        for line in offer.split("\r\n")
        if line and not line.startswith(("a=ssrc:", "a=ssrc-group:"))
    ]
    lines.append("a=ssrc-group:SIM " + " ".join(str(s.ssrc) for s in streams))
    lines += [f"a=ssrc-group:FID {s.ssrc} {s.rtx_ssrc}" for s in streams]
    for s in streams:
        lines += [f"a=ssrc:{s.ssrc} cname:sim", f"a=ssrc:{s.rtx_ssrc} cname:sim"]
    return "\r\n".join(lines) + "\r\n"


def payload_types(answer: str) -> tuple[int, int]:
    vp8 = int(re.search(r"a=rtpmap:(\d+) VP8/90000", answer).group(1))
    rtx = int(re.search(rf"a=fmtp:(\d+) apt={vp8}\b", answer).group(1))
    return vp8, rtx
