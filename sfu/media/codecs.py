"""Just enough of each video payload format to find keyframes (and, for VP8, layer indices).

The SFU never decodes media; it only peeks at payload descriptors so a new subscriber starts
on a keyframe and layer switches land on the right frames.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Vp8Descriptor:
    """The VP8 payload descriptor (RFC 7741 section 4.2) of one packet."""

    start_of_partition: bool
    partition_index: int
    picture_id: int  # -1 when absent
    picture_id_bits: int  # 0, 7 or 15
    tl0_pic_idx: int  # -1 when absent
    tid: int  # -1 when absent
    layer_sync: bool
    key_idx: int  # -1 when absent
    size: int  # descriptor length in bytes
    keyframe: bool  # first packet of a keyframe

    @classmethod
    def parse(cls, payload: bytes | memoryview) -> Vp8Descriptor:
        """Read the descriptor; raises ValueError (only) if it is truncated (tests/fuzz)."""
        n = len(payload)
        if n < 1:
            raise ValueError("VP8 payload empty")
        b0 = payload[0]
        pos = 1
        picture_id, pid_bits, tl0, tid, sync, key_idx = -1, 0, -1, -1, False, -1
        if b0 & 0x80:  # X: extended control bits present
            if n < 2:
                raise ValueError("VP8 descriptor truncated")
            x = payload[1]
            pos = 2
            if x & 0x80:  # I: picture id
                if pos >= n:
                    raise ValueError("VP8 picture id truncated")
                if payload[pos] & 0x80:
                    if pos + 1 >= n:
                        raise ValueError("VP8 picture id truncated")
                    picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                    pid_bits = 15
                    pos += 2
                else:
                    picture_id = payload[pos] & 0x7F
                    pid_bits = 7
                    pos += 1
            if x & 0x40:  # L: TL0PICIDX
                if pos >= n:
                    raise ValueError("VP8 TL0PICIDX truncated")
                tl0 = payload[pos]
                pos += 1
            if x & 0x30:  # T or K: TID/Y/KEYIDX byte
                if pos >= n:
                    raise ValueError("VP8 TID truncated")
                t = payload[pos]
                if x & 0x20:
                    tid = t >> 6
                    sync = bool(t & 0x20)
                if x & 0x10:
                    key_idx = t & 0x1F
                pos += 1
        start = bool(b0 & 0x10)
        partition = b0 & 0x07
        # The VP8 payload header's P bit (inverse key frame flag) is in the first byte of
        # the first partition of a frame.
        keyframe = start and partition == 0 and pos < n and not (payload[pos] & 0x01)
        return cls(start, partition, picture_id, pid_bits, tl0, tid, sync, key_idx, pos, keyframe)


def vp8_is_keyframe(payload: bytes | memoryview) -> bool:
    """True for the first packet of a VP8 keyframe (cheap path without building a descriptor).

    Never raises; False for anything too short (agrees with `Vp8Descriptor.parse`).
    """
    n = len(payload)
    if n < 1:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x07:
        return False
    pos = 1
    if b0 & 0x80:
        if n < 2:
            return False
        x = payload[1]
        pos = 2
        if x & 0x80:
            if pos >= n:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:
            pos += 1
        if x & 0x30:
            pos += 1
    return pos < n and not (payload[pos] & 0x01)


def h264_is_keyframe(payload: bytes | memoryview) -> bool:
    """True if the packet carries an IDR slice or SPS (RFC 6184: single NAL, STAP-A, FU-A).

    Never raises; a STAP-A walk stops at the payload's end or a zero size.
    """
    n = len(payload)
    if n < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (5, 7):
        return True
    if nal_type == 24:  # STAP-A: 16-bit size then NAL unit, repeated
        pos = 1
        while pos + 2 < n:
            size = (payload[pos] << 8) | payload[pos + 1]
            if size == 0 or pos + 2 >= n:
                break
            if payload[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal_type == 28 and n >= 2:  # FU-A start fragment of an IDR
        return bool(payload[1] & 0x80) and (payload[1] & 0x1F) in (5, 7)
    return False


def keyframe_detector(mime_type: str):
    """The keyframe test for a codec, or None for audio and codecs we cannot inspect."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_is_keyframe
    if mime == "video/h264":
        return h264_is_keyframe
    return None
