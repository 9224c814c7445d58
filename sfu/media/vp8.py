"""The VP8 RTP payload descriptor (RFC 7741), read and rewritten on the forwarding hot path.

The SFU forwards simulcast VP8 without decoding it. For every video packet it needs a few facts
from the payload descriptor (RFC 7741 section 4.2) and from the first byte of the VP8 payload
header (section 4.3), and when it switches a subscriber between simulcast streams or filters
temporal layers it rewrites the picture id and TL0PICIDX in place so the subscriber sees one
continuous stream.

Descriptor layout (section 4.2)::

          0 1 2 3 4 5 6 7
         +-+-+-+-+-+-+-+-+
         |X|R|N|S|R| PID | (REQUIRED)
         +-+-+-+-+-+-+-+-+
    X:   |I|L|T|K| RSV   | (OPTIONAL)
         +-+-+-+-+-+-+-+-+
    I:   |M| PictureID   | (OPTIONAL)  M=1: 15-bit picture id, one more byte follows
         +-+-+-+-+-+-+-+-+
    L:   |   TL0PICIDX   | (OPTIONAL)
         +-+-+-+-+-+-+-+-+
    T/K: |TID|Y| KEYIDX  | (OPTIONAL)  present when T or K is set
         +-+-+-+-+-+-+-+-+

The VP8 payload header follows the descriptor; bit 0 (LSB) of its first byte is P, the inverse
key frame flag, meaningful only in the first packet of a frame (S=1 and PID=0).

Everything here is written for speed: :func:`parse_vp8` fills a reusable ``__slots__`` object
and :func:`rewrite_vp8` does a handful of integer stores into a ``bytearray``.
"""

from __future__ import annotations

__all__ = ["PictureIdMunger", "Vp8Info", "parse_vp8", "rewrite_vp8"]


class Vp8Info:
    """What the SFU needs to know about one VP8 packet; filled by :func:`parse_vp8`.

    Plain attributes, meant to be reused from packet to packet (pass it as ``out``).
    Offsets are relative to the start of the RTP payload (the first descriptor byte).
    """

    __slots__ = (
        "start_of_frame",
        "keyframe",
        "picture_id",
        "picture_id_bits",
        "tl0picidx",
        "tid",
        "layer_sync",
        "key_idx",
        "picture_id_offset",
        "tl0_offset",
        "header_size",
    )

    def __init__(self) -> None:
        self.start_of_frame = False  # S=1 and PID=0: first packet of a frame
        self.keyframe = False  # start_of_frame and the payload header's P bit is 0
        self.picture_id = -1  # -1 when absent
        self.picture_id_bits = 0  # 0 (absent), 7 or 15
        self.tl0picidx = -1  # -1 when absent
        self.tid = -1  # temporal layer id, -1 when absent (T=0)
        self.layer_sync = False  # Y bit (False when T=0)
        self.key_idx = -1  # KEYIDX, -1 when absent (K=0)
        self.picture_id_offset = -1  # byte offset of the picture id field, -1 when absent
        self.tl0_offset = -1  # byte offset of TL0PICIDX, -1 when absent
        self.header_size = 0  # descriptor length in bytes

    def __repr__(self) -> str:
        return (
            f"Vp8Info(start_of_frame={self.start_of_frame}, keyframe={self.keyframe}, "
            f"picture_id={self.picture_id}/{self.picture_id_bits}b, "
            f"tl0picidx={self.tl0picidx}, tid={self.tid}, layer_sync={self.layer_sync}, "
            f"key_idx={self.key_idx}, header_size={self.header_size})"
        )


def parse_vp8(
    payload: bytes | bytearray | memoryview, out: Vp8Info | None = None
) -> Vp8Info | None:
    """Parse the VP8 payload descriptor at the start of an RTP payload.

    Returns None (never raises) if the descriptor is truncated or if no VP8 payload byte follows
    it (a packet must carry at least the first byte of VP8 data; for the first packet of a frame
    that byte holds the P bit). If ``out`` is given it is filled and returned, so the per-packet
    path allocates nothing; when None is returned ``out`` may be partly overwritten.

    Reserved bits (R in the first byte, RSV in the X byte) are ignored, as RFC 7741 asks of
    receivers. TID and Y are only reported when T=1, KEYIDX only when K=1.
    """
    try:
        b0 = payload[0]
        picture_id = -1
        bits = 0
        pid_off = -1
        tl0 = -1
        tl0_off = -1
        tid = -1
        sync = False
        key_idx = -1
        if b0 & 0x80:  # X: extension byte present
            x = payload[1]
            pos = 2
            if x & 0x80:  # I: picture id
                pid_off = 2
                m = payload[2]
                if m & 0x80:  # M: 15-bit picture id
                    picture_id = ((m & 0x7F) << 8) | payload[3]
                    bits = 15
                    pos = 4
                else:
                    picture_id = m
                    bits = 7
                    pos = 3
            if x & 0x40:  # L: TL0PICIDX
                tl0 = payload[pos]
                tl0_off = pos
                pos += 1
            if x & 0x30:  # T or K: one shared TID|Y|KEYIDX byte
                tk = payload[pos]
                if x & 0x20:
                    tid = tk >> 6
                    sync = (tk & 0x20) != 0
                if x & 0x10:
                    key_idx = tk & 0x1F
                pos += 1
        else:
            pos = 1
        # The first VP8 payload byte must be there; it carries P (inverse key frame flag).
        p = payload[pos]
    except IndexError:
        return None
    start = (b0 & 0x17) == 0x10  # S=1 and PID=0
    if out is None:
        out = Vp8Info()
    out.start_of_frame = start
    out.keyframe = start and not (p & 0x01)
    out.picture_id = picture_id
    out.picture_id_bits = bits
    out.tl0picidx = tl0
    out.tid = tid
    out.layer_sync = sync
    out.key_idx = key_idx
    out.picture_id_offset = pid_off
    out.tl0_offset = tl0_off
    out.header_size = pos
    return out


def rewrite_vp8(
    buf: bytearray, payload_start: int, info: Vp8Info, picture_id: int, tl0picidx: int
) -> None:
    """Overwrite the picture id and TL0PICIDX of a packet in place.

    ``buf[payload_start:]`` is the RTP payload that ``info`` was parsed from (typically a copy
    of the whole RTP packet, ``payload_start`` being the RTP header length). The picture id is
    written modulo 2**bits keeping the field's width (7 or 15 bits) and its M bit; TL0PICIDX is
    written modulo 256. A field absent from the packet is left alone, and nothing else in
    ``buf`` is touched. ``info`` itself is not modified (it may be shared between subscribers).
    """
    off = info.picture_id_offset
    if off >= 0:
        i = payload_start + off
        if info.picture_id_bits == 15:
            buf[i] = 0x80 | ((picture_id >> 8) & 0x7F)
            buf[i + 1] = picture_id & 0xFF
        else:
            buf[i] = picture_id & 0x7F
    off = info.tl0_offset
    if off >= 0:
        buf[payload_start + off] = tl0picidx & 0xFF


class PictureIdMunger:
    """Per-subscriber picture id / TL0PICIDX translation for one outgoing VP8 stream.

    The outgoing stream is ``out = (in + offset) mod 2**bits`` (and ``mod 256`` for
    TL0PICIDX). The offsets change in two situations:

    * :meth:`switch_source` -- the subscriber moves to another simulcast stream. Call it with
      the picture id and TL0PICIDX of the first packet that will be forwarded from the new
      stream (normally the first packet of a keyframe), before mapping that packet. That frame
      then comes out as (last forwarded picture id + 1, last forwarded TL0PICIDX + 1). Before
      anything has been forwarded, the first source passes through unchanged.
    * :meth:`drop_frame` -- a frame of the current source is not forwarded (temporal layer
      filtering). Later picture ids move down by one so the receiver sees no gap. Only drop
      frames nothing forwarded depends on (TID > 0 frames above the target layer); TL0PICIDX is
      never adjusted, because TL0 frames are never legitimately skipped and a gap there
      correctly tells the receiver that base-layer frames are missing.

    All packets of a frame share its picture id, so :meth:`drop_frame` may be called for every
    packet of a dropped frame (later calls for the same id are ignored) and :meth:`map` gives
    every packet of a forwarded frame the same outgoing id. Picture ids are compared modulo
    2**bits with half-range ("serial number") arithmetic, so wrap from 2**bits - 1 to 0 is
    handled everywhere.

    Reordering: a drop is counted only if its picture id is newer than every picture id
    forwarded so far (otherwise closing the gap would collide with ids already sent, so the gap
    is left). Packets arriving late with a picture id older than a counted drop (reordered or
    retransmitted packets of earlier frames) are mapped with the offset they had before that
    drop, as long as they are at most ``window`` frames older than the newest forwarded or
    dropped frame (1024 for 15-bit ids, 32 for 7-bit ids) and among the last ``HISTORY`` drops.

    ``bits`` is the picture id width of the streams (15 for all browsers' simulcast; use 7
    only when every source uses 7-bit ids). Call :meth:`drop_frame` and :meth:`map` only for
    packets of the current source.
    """

    HISTORY = 64

    __slots__ = (
        "_mask",
        "_half",
        "_offset",
        "_tl0_offset",
        "_drops",
        "_window",
        "_max_in",
        "_max_out",
        "_max_out_tl0",
    )

    def __init__(self, bits: int = 15) -> None:
        if bits not in (7, 15):
            raise ValueError("VP8 picture ids have 7 or 15 bits")
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._offset = 0  # current picture id offset (for frames newer than every drop)
        self._tl0_offset = 0
        self._drops: list[int] = []  # counted drops of this source, oldest first
        self._window = min(1024, self._half // 2)  # how far back reordered packets are handled
        self._max_in = -1  # newest incoming picture id forwarded from this source
        self._max_out = -1  # outgoing picture id of _max_in
        self._max_out_tl0 = -1  # newest outgoing TL0PICIDX

    def _newer(self, a: int, b: int) -> bool:
        """True if picture id ``a`` comes after ``b`` (modular, half range)."""
        return 0 < ((a - b) & self._mask) < self._half

    def _prune(self, newest: int) -> None:
        """Forget drops too old to matter, before modular comparisons with them turn wrong."""
        drops = self._drops
        mask = self._mask
        window = self._window
        while drops and ((newest - drops[0]) & mask) > window:
            del drops[0]

    def switch_source(self, first_picture_id: int, first_tl0: int) -> None:
        """Start forwarding another source whose first forwarded packet has these ids.

        Either id may be -1 (absent); that field's offset is then left as it is. Drop history
        is cleared: from now on :meth:`map` and :meth:`drop_frame` refer to the new source.
        """
        mask = self._mask
        if first_picture_id >= 0 and self._max_out >= 0:
            self._offset = (self._max_out + 1 - first_picture_id) & mask
        elif first_picture_id >= 0:
            self._offset = 0
        if first_tl0 >= 0 and self._max_out_tl0 >= 0:
            self._tl0_offset = (self._max_out_tl0 + 1 - first_tl0) & 0xFF
        elif first_tl0 >= 0:
            self._tl0_offset = 0
        self._drops.clear()
        self._max_in = -1

    def drop_frame(self, picture_id: int) -> bool:
        """Record that the frame with this picture id (of the current source) is not forwarded.

        Returns True if the drop was counted (later picture ids shift down by one), False if it
        was ignored: picture id absent (-1), already counted (another packet of the same frame),
        or not newer than what has already been forwarded.
        """
        if picture_id < 0:
            return False
        picture_id &= self._mask
        if self._max_in >= 0 and not self._newer(picture_id, self._max_in):
            return False
        drops = self._drops
        # Keep drops sorted oldest first; they usually arrive in order, so scan from the end.
        i = len(drops)
        while i and not self._newer(picture_id, drops[i - 1]):
            if drops[i - 1] == picture_id:
                return False
            i -= 1
        drops.insert(i, picture_id)
        if len(drops) > self.HISTORY:
            del drops[0]
        self._prune(drops[-1])
        self._offset = (self._offset - 1) & self._mask
        return True

    def map(self, picture_id: int, tl0: int) -> tuple[int, int]:
        """Outgoing (picture id, TL0PICIDX) for a forwarded packet; -1 in, -1 out."""
        mask = self._mask
        if picture_id >= 0:
            picture_id &= mask
            offset = self._offset
            drops = self._drops
            if drops and not self._newer(picture_id, drops[-1]):
                # An older frame, reordered behind drops: undo the drops that came after it.
                for d in drops:
                    if self._newer(d, picture_id):
                        offset += 1
            out_pid = (picture_id + offset) & mask
            if self._max_in < 0 or self._newer(picture_id, self._max_in):
                self._max_in = picture_id
                self._max_out = out_pid
                if drops and ((picture_id - drops[0]) & mask) > self._window:
                    self._prune(picture_id)
        else:
            out_pid = -1
        if tl0 >= 0:
            out_tl0 = (tl0 + self._tl0_offset) & 0xFF
            m = self._max_out_tl0
            if m < 0 or 0 < ((out_tl0 - m) & 0xFF) < 0x80:
                self._max_out_tl0 = out_tl0
        else:
            out_tl0 = -1
        return out_pid, out_tl0
