"""RTP header view (RFC 3550) and header extensions (RFC 8285), read and written in one place.

The forwarding path reads each incoming packet once into an `RtpHeader` and writes each
outgoing packet as `fixed header + extension block + untouched payload`, so the payload
bytes of a publisher's packet reach every subscriber unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_FIXED = struct.Struct("!BBHII")
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE_MASK = 0xFFF0
TWO_BYTE_PROFILE = 0x1000

# Header extension URIs this node understands.
EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
EXT_PLAYOUT_DELAY = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192..223 sit where RTP has M+PT."""
    return len(data) >= 2 and 192 <= data[1] <= 223


@dataclass(frozen=True)
class ExtensionIds:
    """The negotiated id of each extension we read or write on one stream (0 = absent)."""

    mid: int = 0
    rid: int = 0
    repaired_rid: int = 0
    abs_send_time: int = 0
    audio_level: int = 0
    transport_cc: int = 0

    @classmethod
    def from_map(cls, uri_to_id: dict[str, int]) -> ExtensionIds:
        return cls(
            mid=uri_to_id.get(EXT_MID, 0),
            rid=uri_to_id.get(EXT_RID, 0),
            repaired_rid=uri_to_id.get(EXT_REPAIRED_RID, 0),
            abs_send_time=uri_to_id.get(EXT_ABS_SEND_TIME, 0),
            audio_level=uri_to_id.get(EXT_AUDIO_LEVEL, 0),
            transport_cc=uri_to_id.get(EXT_TRANSPORT_CC, 0),
        )


class RtpHeader:
    """The parts of an RTP packet the SFU routes and rewrites by; the payload stays in `data`."""

    __slots__ = (
        "marker",
        "payload_type",
        "sequence_number",
        "timestamp",
        "ssrc",
        "payload_offset",
        "padding_size",
        "mid",
        "rid",
        "repaired_rid",
        "audio_level",
        "transport_seq",
    )

    def __init__(self) -> None:
        self.marker = False
        self.payload_type = 0
        self.sequence_number = 0
        self.timestamp = 0
        self.ssrc = 0
        self.payload_offset = 12
        self.padding_size = 0
        self.mid: bytes | None = None
        self.rid: bytes | None = None
        self.repaired_rid: bytes | None = None
        # (voice activity, level in -dBov) packed as in the extension byte; -1 = absent.
        self.audio_level = -1
        self.transport_seq = -1  # transport-wide sequence number; -1 = absent

    @classmethod
    def parse(cls, data: bytes, ext: ExtensionIds | None = None) -> RtpHeader:
        """Read the fixed header, CSRCs and the extensions named in `ext`.

        Raises ValueError for anything that is not a well-formed RTP version 2 packet, and no
        other exception whatever the bytes (tests/fuzz). Extension elements that do not fit
        their block, or have an id we do not read, are skipped.
        """
        length = len(data)
        if length < 12:
            raise ValueError("RTP packet shorter than 12 bytes")
        b0, b1, seq, ts, ssrc = RTP_FIXED.unpack_from(data, 0)
        if b0 >> 6 != 2:
            raise ValueError("RTP version is not 2")
        h = cls()
        h.marker = bool(b1 & 0x80)
        h.payload_type = b1 & 0x7F
        h.sequence_number = seq
        h.timestamp = ts
        h.ssrc = ssrc
        offset = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            if offset + 4 > length:
                raise ValueError("RTP extension header truncated")
            profile, words = struct.unpack_from("!HH", data, offset)
            start = offset + 4
            offset = start + 4 * words
            if offset > length:
                raise ValueError("RTP extension block truncated")
            if ext is not None:
                _read_extensions(h, data, profile, start, offset, ext)
        if b0 & 0x20:
            if length == offset:
                raise ValueError("RTP padding flag set on an empty payload")
            h.padding_size = data[-1]
            if h.padding_size == 0 or offset + h.padding_size > length:
                raise ValueError("RTP padding length invalid")
        elif offset > length:
            raise ValueError("RTP header longer than packet")
        h.payload_offset = offset
        return h


def _read_extensions(
    h: RtpHeader, data: bytes, profile: int, pos: int, end: int, ext: ExtensionIds
) -> None:
    one_byte = profile == ONE_BYTE_PROFILE
    if not one_byte and (profile & TWO_BYTE_PROFILE_MASK) != TWO_BYTE_PROFILE:
        return  # some other profile: nothing we understand
    while pos < end:
        if one_byte:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            ext_id = byte >> 4
            if ext_id == 15:
                return  # reserved: stop parsing (RFC 8285 4.2)
            size = (byte & 0x0F) + 1
            pos += 1
        else:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                return
            size = data[pos + 1]
            pos += 2
        if pos + size > end:
            return
        if ext_id == ext.mid:
            h.mid = bytes(data[pos : pos + size])
        elif ext_id == ext.rid:
            h.rid = bytes(data[pos : pos + size])
        elif ext_id == ext.repaired_rid:
            h.repaired_rid = bytes(data[pos : pos + size])
        elif ext_id == ext.audio_level and size:  # (a two-byte element may be empty)
            h.audio_level = data[pos]
        elif ext_id == ext.transport_cc and size == 2:
            h.transport_seq = (data[pos] << 8) | data[pos + 1]
        pos += size


def build_extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """A one-byte-header extension block (RFC 8285 4.2) from (id, value) pairs, padded to words."""
    body = bytearray()
    for ext_id, value in elements:
        if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
            raise ValueError(f"extension {ext_id} cannot use the one-byte form")
        body.append((ext_id << 4) | (len(value) - 1))
        body += value
    while len(body) % 4:
        body.append(0)
    return struct.pack("!HH", ONE_BYTE_PROFILE, len(body) // 4) + bytes(body)


def build_rtp(
    *,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: bool = False,
    extensions: list[tuple[int, bytes]] | None = None,
    padding_size: int = 0,
) -> bytes:
    """Serialise one RTP packet; used by tests, probes and the Python client, not the fan-out."""
    ext = build_extension_block(extensions) if extensions else b""
    b0 = 0x80 | (0x10 if ext else 0) | (0x20 if padding_size else 0)
    b1 = (0x80 if marker else 0) | (payload_type & 0x7F)
    header = RTP_FIXED.pack(b0, b1, sequence_number & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    padding = b""
    if padding_size:
        padding = bytes(padding_size - 1) + bytes([padding_size])
    return header + ext + payload + padding
