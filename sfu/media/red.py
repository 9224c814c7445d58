"""RED (RFC 2198) audio redundancy: the payload format, and unwrapping it to plain Opus.

Browsers that negotiate `audio/red` with Opus (fmtp `111/111`) repeat the previous frame(s)
inside every packet, so a single lost packet costs the listener nothing. The SFU forwards RED
as it is to viewers that accepted it, and for viewers that did not (aiortc clients, WHEP
players without RED) sends the primary block as a plain Opus packet; when packets went
missing, the redundant blocks of the next packet stand in for them, with the timestamp the
block's offset gives and the sequence number its position gives (block k from the end is the
packet k before the primary: the sender repeats its last frames in order).

Payload layout: one 4-byte header per redundant block (F=1, block PT, 14-bit timestamp offset,
10-bit length), then a 1-byte header (F=0, primary PT), then the block data in the same order,
the primary's data last with its length implied by the packet's end.
"""

from __future__ import annotations

from .rtp import RTP_FIXED, RtpHeader

# A RED payload may hold more blocks in theory; browsers send one or two redundant frames.
# More than this is not a stream we know how to use, and bounds the work per packet.
MAX_RED_BLOCKS = 8
MAX_TIMESTAMP_OFFSET = 0x3FFF
MAX_BLOCK_LENGTH = 0x3FF
# Packets remembered (by sequence number) as already sent on the plain path, so a late
# original of a recovered packet is not sent twice.
SENT_WINDOW = 64
_SENT_MASK = (1 << SENT_WINDOW) - 1


class RedError(ValueError):
    """A RED payload that does not parse (truncated, too many blocks, lengths past the end)."""


def parse_red(data: bytes | memoryview, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The blocks of the RED payload `data[start:end]`, oldest first, the primary last.

    Each block is (payload type, timestamp offset, begin, stop) with begin/stop indices into
    `data`; the primary's offset is 0. Raises RedError for a malformed payload.
    """
    headers: list[tuple[int, int, int]] = []  # (pt, ts offset, length) of redundant blocks
    pos = start
    while True:
        if pos >= end:
            raise RedError("RED header truncated")
        b0 = data[pos]
        if not b0 & 0x80:
            primary_pt = b0 & 0x7F
            pos += 1
            break
        if pos + 4 > end:
            raise RedError("RED block header truncated")
        if len(headers) >= MAX_RED_BLOCKS - 1:
            raise RedError("too many RED blocks")
        b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
        offset = (b1 << 6) | (b2 >> 2)
        length = ((b2 & 0x03) << 8) | b3
        headers.append((b0 & 0x7F, offset, length))
        pos += 4
    blocks = []
    for pt, offset, length in headers:
        if pos + length > end:
            raise RedError("RED block longer than the payload")
        blocks.append((pt, offset, pos, pos + length))
        pos += length
    blocks.append((primary_pt, 0, pos, end))
    return blocks


def build_red(blocks: list[tuple[int, int, bytes]]) -> bytes:
    """A RED payload from (payload type, timestamp offset, data) blocks, the primary last.

    Raises ValueError for an offset or length the format cannot carry.
    """
    if not blocks or len(blocks) > MAX_RED_BLOCKS:
        raise ValueError(f"a RED payload has 1 to {MAX_RED_BLOCKS} blocks")
    header = bytearray()
    for pt, offset, payload in blocks[:-1]:
        if not 0 <= offset <= MAX_TIMESTAMP_OFFSET or len(payload) > MAX_BLOCK_LENGTH:
            raise ValueError("RED timestamp offset or block length out of range")
        header += bytes(
            (
                0x80 | (pt & 0x7F),
                offset >> 6,
                ((offset & 0x3F) << 2) | (len(payload) >> 8),
                len(payload) & 0xFF,
            )
        )
    header.append(blocks[-1][0] & 0x7F)
    return bytes(header) + b"".join(payload for _, _, payload in blocks)


def rewrite_block_types(
    data: bytes | memoryview, start: int, end: int, payload_type: int
) -> bytearray:
    """The RED payload `data[start:end]` with every block's payload type set to another one
    (a viewer whose Opus payload type differs from the publisher's). Raises RedError."""
    payload = bytearray(data[start:end])
    pos = 0
    for _ in range(MAX_RED_BLOCKS):
        if pos >= len(payload):
            raise RedError("RED header truncated")
        last = not payload[pos] & 0x80
        payload[pos] = (payload[pos] & 0x80) | (payload_type & 0x7F)
        if last:
            return payload
        pos += 4
    raise RedError("too many RED blocks")


class RedUnwrapper:
    """Turns one publisher's RED stream into the plain Opus packets a non-RED viewer gets.

    Call `unwrap()` for every packet of the stream in arrival order (plain Opus packets too:
    a sender may mix them). It returns the packets to forward, oldest first: on a gap, the
    missing packets the redundant blocks carry, then the primary.
    """

    __slots__ = ("red_pt", "primary_pt", "highest", "sent", "red_packets", "recovered", "malformed")

    def __init__(self, red_pt: int, primary_pt: int) -> None:
        self.red_pt = red_pt
        self.primary_pt = primary_pt
        self.highest = -1  # highest sequence number seen
        self.sent = 0  # bit i: sequence number highest - i went out on the plain path
        self.red_packets = 0  # packets that came as RED (others: plain Opus)
        self.recovered = 0  # packets rebuilt from redundant blocks
        self.malformed = 0

    def unwrap(self, data: bytes, h: RtpHeader) -> list[tuple[bytes, RtpHeader]]:
        blocks = None
        if h.payload_type == self.red_pt:
            self.red_packets += 1
            try:
                blocks = parse_red(data, h.payload_offset, len(data) - h.padding_size)
            except RedError:
                self.malformed += 1  # (checked first: the caller drops it for everyone)
                return []
        seq = h.sequence_number
        gap = 0
        if self.highest < 0:
            self.highest, self.sent = seq, 1
        else:
            delta = (seq - self.highest) & 0xFFFF
            if delta == 0:
                return []
            if delta < 0x8000:
                gap = delta - 1
                self.sent = ((self.sent << delta) | 1) & _SENT_MASK if delta < SENT_WINDOW else 1
                self.highest = seq
            else:
                back = 0x10000 - delta
                if back < SENT_WINDOW:
                    if self.sent >> back & 1:
                        return []  # already sent (recovered from a later packet's redundancy)
                    self.sent |= 1 << back
        if blocks is None:
            return [(data, h)]
        out: list[tuple[bytes, RtpHeader]] = []
        if gap:
            out = self._recover(data, h, blocks, gap)
        pt, _, begin, stop = blocks[-1]
        if stop > begin and pt == self.primary_pt:  # (blocks of another codec: not ours)
            primary = _copy_header(h)
            primary.payload_type = pt
            primary.payload_offset = begin
            out.append((data, primary))
        return out

    def _recover(
        self, data: bytes, h: RtpHeader, blocks: list[tuple[int, int, int, int]], gap: int
    ) -> list[tuple[bytes, RtpHeader]]:
        """Missing packets (up to `gap` before this one) rebuilt from the redundant blocks."""
        redundant = len(blocks) - 1
        out = []
        previous_offset = MAX_TIMESTAMP_OFFSET + 1
        for i in range(redundant):
            k = redundant - i  # this block repeats the packet k before the primary
            pt, offset, begin, stop = blocks[i]
            if k > gap or offset <= 0 or offset >= previous_offset or stop <= begin:
                continue
            if pt != self.primary_pt:
                continue
            previous_offset = offset
            seq = (h.sequence_number - k) & 0xFFFF
            ts = (h.timestamp - offset) & 0xFFFFFFFF
            packet = RTP_FIXED.pack(0x80, pt, seq, ts, h.ssrc) + bytes(data[begin:stop])
            rh = RtpHeader()
            rh.payload_type, rh.sequence_number, rh.timestamp, rh.ssrc = pt, seq, ts, h.ssrc
            out.append((packet, rh))
            self.sent |= 1 << k
            self.recovered += 1
        return out


def _copy_header(h: RtpHeader) -> RtpHeader:
    c = RtpHeader()
    c.marker, c.payload_type, c.sequence_number = h.marker, h.payload_type, h.sequence_number
    c.timestamp, c.ssrc, c.payload_offset = h.timestamp, h.ssrc, h.payload_offset
    c.padding_size, c.mid, c.audio_level = h.padding_size, h.mid, h.audio_level
    c.transport_seq = h.transport_seq
    return c
