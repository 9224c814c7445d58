"""RTCP packets the SFU reads and writes (RFC 3550, RFC 4585, RFC 5104, REMB draft).

Each packet type is a small dataclass with `serialize()`; `parse_compound()` turns one
decrypted compound packet into a list of them. Types we do not handle come back as
`UnknownRtcp` with their raw bytes (transport-cc feedback, RTPFB fmt 15, among them) rather
than being misread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SR = 200
RR = 201
SDES = 202
BYE = 203
RTPFB = 205
PSFB = 206

RTPFB_NACK = 1
RTPFB_TWCC = 15
PSFB_PLI = 1
PSFB_FIR = 4
PSFB_AFB = 15

_HEADER = struct.Struct("!BBH")
_REPORT = struct.Struct("!IB3sIIII")


@dataclass
class ReportBlock:
    ssrc: int
    fraction_lost: int = 0  # 8-bit fixed point, lost/expected * 256
    packets_lost: int = 0  # cumulative, signed 24-bit
    highest_sequence: int = 0  # extended highest sequence number received
    jitter: int = 0
    lsr: int = 0  # middle 32 bits of the last SR's NTP timestamp
    dlsr: int = 0  # delay since that SR, 1/65536 s

    def serialize(self) -> bytes:
        lost = self.packets_lost
        if lost < 0:
            lost += 1 << 24
        lost = max(0, min(lost, 0xFFFFFF))
        return _REPORT.pack(
            self.ssrc,
            self.fraction_lost & 0xFF,
            lost.to_bytes(3, "big"),
            self.highest_sequence & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def parse(cls, data: bytes, pos: int) -> ReportBlock:
        ssrc, fraction, lost_b, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, pos)
        lost = int.from_bytes(lost_b, "big")
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)


def _header(count_or_fmt: int, packet_type: int, body_len: int) -> bytes:
    if body_len % 4:
        raise ValueError("RTCP body must be a multiple of 4 bytes")
    return _HEADER.pack(0x80 | (count_or_fmt & 0x1F), packet_type, body_len // 4)


@dataclass
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP time
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        body = struct.pack(
            "!IQIII",
            self.ssrc,
            self.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        ) + b"".join(r.serialize() for r in self.reports)
        return _header(len(self.reports), SR, len(body)) + body


@dataclass
class ReceiverReport:
    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(r.serialize() for r in self.reports)
        return _header(len(self.reports), RR, len(body)) + body


@dataclass
class Sdes:
    chunks: list[tuple[int, str]]  # (ssrc, cname)

    def serialize(self) -> bytes:
        body = b""
        for ssrc, cname in self.chunks:
            raw = cname.encode()[:255]
            chunk = struct.pack("!IBB", ssrc, 1, len(raw)) + raw + b"\x00"
            chunk += bytes(-len(chunk) % 4)
            body += chunk
        return _header(len(self.chunks), SDES, len(body)) + body


@dataclass
class Bye:
    sources: list[int]

    def serialize(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.sources)
        return _header(len(self.sources), BYE, len(body)) + body


@dataclass
class Nack:
    sender_ssrc: int
    media_ssrc: int
    lost: list[int]  # sequence numbers

    def serialize(self) -> bytes:
        fci = b""
        seqs = sorted(set(s & 0xFFFF for s in self.lost), key=lambda s: s)
        # Group into (PID, BLP) pairs; wrap-around is handled by modular distance.
        i = 0
        while i < len(seqs):
            pid = seqs[i]
            blp = 0
            j = i + 1
            while j < len(seqs) and 0 < (seqs[j] - pid) & 0xFFFF <= 16:
                blp |= 1 << (((seqs[j] - pid) & 0xFFFF) - 1)
                j += 1
            fci += struct.pack("!HH", pid, blp)
            i = j
        body = struct.pack("!II", self.sender_ssrc, self.media_ssrc) + fci
        return _header(RTPFB_NACK, RTPFB, len(body)) + body


@dataclass
class Pli:
    sender_ssrc: int
    media_ssrc: int

    def serialize(self) -> bytes:
        body = struct.pack("!II", self.sender_ssrc, self.media_ssrc)
        return _header(PSFB_PLI, PSFB, len(body)) + body


@dataclass
class Fir:
    sender_ssrc: int
    entries: list[tuple[int, int]]  # (media ssrc, command sequence number)

    def serialize(self) -> bytes:
        body = struct.pack("!II", self.sender_ssrc, 0) + b"".join(
            struct.pack("!IB3x", ssrc, seq & 0xFF) for ssrc, seq in self.entries
        )
        return _header(PSFB_FIR, PSFB, len(body)) + body


@dataclass
class Remb:
    sender_ssrc: int
    bitrate: int  # bits per second
    ssrcs: list[int]

    def serialize(self) -> bytes:
        exponent = 0
        mantissa = max(0, int(self.bitrate))
        while mantissa >= 1 << 18:
            mantissa >>= 1
            exponent += 1
        body = struct.pack("!II4sB", self.sender_ssrc, 0, b"REMB", len(self.ssrcs)) + (
            (exponent << 18) | mantissa
        ).to_bytes(3, "big")
        body += b"".join(struct.pack("!I", s) for s in self.ssrcs)
        return _header(PSFB_AFB, PSFB, len(body)) + body


@dataclass
class UnknownRtcp:
    packet_type: int
    fmt: int
    data: bytes  # the whole packet, header included

    def serialize(self) -> bytes:
        return self.data


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | Nack | Pli | Fir | Remb | UnknownRtcp


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Split a compound RTCP packet and parse each part; raises ValueError if malformed.

    ValueError is the only exception, whatever the bytes (tests/fuzz); the result holds at
    most one packet per 4 bytes, and what each holds is bounded by its length (a NACK's lost
    list: 17 sequence numbers per 4-byte FCI entry at most).
    """
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("RTCP header truncated")
        b0, ptype, words = _HEADER.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise ValueError("RTCP version is not 2")
        end = pos + 4 + 4 * words
        if end > len(data):
            raise ValueError("RTCP packet length exceeds data")
        count = b0 & 0x1F
        body = pos + 4
        packets.append(_parse_one(data, ptype, count, body, end, pos))
        pos = end
    return packets


def _parse_one(data: bytes, ptype: int, count: int, body: int, end: int, start: int) -> RtcpPacket:
    size = end - body
    if ptype == SR:
        if size < 24 + 24 * count:
            raise ValueError("SR too short")
        ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", data, body)
        reports = [ReportBlock.parse(data, body + 24 + 24 * i) for i in range(count)]
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, reports)
    if ptype == RR:
        if size < 4 + 24 * count:
            raise ValueError("RR too short")
        (ssrc,) = struct.unpack_from("!I", data, body)
        return ReceiverReport(
            ssrc, [ReportBlock.parse(data, body + 4 + 24 * i) for i in range(count)]
        )
    if ptype == BYE:
        if size < 4 * count:
            raise ValueError("BYE too short")
        return Bye([struct.unpack_from("!I", data, body + 4 * i)[0] for i in range(count)])
    if ptype in (RTPFB, PSFB):
        if size < 8:
            raise ValueError("feedback packet too short")
        sender, media = struct.unpack_from("!II", data, body)
        fci = body + 8
        if ptype == RTPFB and count == RTPFB_NACK:
            lost = []
            for p in range(fci, end - 3, 4):
                pid, blp = struct.unpack_from("!HH", data, p)
                lost.append(pid)
                for bit in range(16):
                    if blp & (1 << bit):
                        lost.append((pid + bit + 1) & 0xFFFF)
            return Nack(sender, media, lost)
        if ptype == PSFB and count == PSFB_PLI:
            return Pli(sender, media)
        if ptype == PSFB and count == PSFB_FIR:
            entries = [
                (struct.unpack_from("!I", data, p)[0], data[p + 4]) for p in range(fci, end - 7, 8)
            ]
            return Fir(sender, entries)
        if (
            ptype == PSFB
            and count == PSFB_AFB
            and end - fci >= 8
            and data[fci : fci + 4] == b"REMB"
        ):
            num = data[fci + 4]
            raw = int.from_bytes(data[fci + 5 : fci + 8], "big")
            bitrate = (raw & 0x3FFFF) << (raw >> 18)
            if fci + 8 + 4 * num > end:
                raise ValueError("REMB SSRC list truncated")
            ssrcs = [struct.unpack_from("!I", data, fci + 8 + 4 * i)[0] for i in range(num)]
            return Remb(sender, bitrate, ssrcs)
    if ptype == SDES:
        return _parse_sdes(data, count, body, end)
    return UnknownRtcp(ptype, count, bytes(data[start:end]))


def _parse_sdes(data: bytes, count: int, pos: int, end: int) -> Sdes:
    chunks = []
    for _ in range(count):
        if pos + 4 > end:
            raise ValueError("SDES chunk truncated")
        (ssrc,) = struct.unpack_from("!I", data, pos)
        pos += 4
        cname = ""
        while pos < end and data[pos] != 0:
            item, length = data[pos], data[pos + 1] if pos + 1 < end else 0
            value = bytes(data[pos + 2 : pos + 2 + length])
            if item == 1:
                cname = value.decode("utf-8", "replace")
            pos += 2 + length
        pos += 4 - (pos % 4) if pos % 4 else 4  # end-of-items null byte(s) to word boundary
        chunks.append((ssrc, cname))
    return Sdes(chunks)


def ntp_middle(ntp_timestamp: int) -> int:
    """The 32 middle bits of a 64-bit NTP timestamp, as LSR fields carry them."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


def ntp_now(now_s: float) -> int:
    """Unix time in seconds as a 64-bit NTP timestamp."""
    seconds = now_s + 2208988800
    return (int(seconds) << 32) | int((seconds % 1) * (1 << 32))
