"""VP8 payload descriptor parsing/rewriting (RFC 7741) and picture id munging."""

from __future__ import annotations

import random

import pytest
from aiortc.codecs.vpx import VpxPayloadDescriptor

from sfu.media.codecs import Vp8Descriptor, vp8_is_keyframe
from sfu.media.vp8 import PictureIdMunger, Vp8Info, parse_vp8, rewrite_vp8

# First byte of a VP8 payload header (RFC 7741 section 4.3): P (inverse key frame flag) is the
# LSB. 0x50 / 0x9D are typical first bytes of a key frame / an interframe.
KEY = 0x50
DELTA = 0x9D


def fields(info: Vp8Info) -> dict:
    return {name: getattr(info, name) for name in Vp8Info.__slots__}


# ---------------------------------------------------------------------------------------------
# parse_vp8: hand-written vectors
# ---------------------------------------------------------------------------------------------


def test_minimal_descriptor_keyframe():
    info = parse_vp8(bytes([0x10, KEY, 0x01, 0x2A]))  # X=0 N=0 S=1 PID=0
    assert info is not None
    assert fields(info) == {
        "start_of_frame": True,
        "keyframe": True,
        "picture_id": -1,
        "picture_id_bits": 0,
        "tl0picidx": -1,
        "tid": -1,
        "layer_sync": False,
        "key_idx": -1,
        "picture_id_offset": -1,
        "tl0_offset": -1,
        "header_size": 1,
    }


def test_minimal_descriptor_delta_and_non_start():
    info = parse_vp8(bytes([0x10, DELTA]))
    assert info.start_of_frame and not info.keyframe
    # S=0: a continuation packet, never a keyframe even though its first byte has P=0.
    info = parse_vp8(bytes([0x00, KEY]))
    assert not info.start_of_frame and not info.keyframe
    # S=1 but PID=1: start of a later partition, not of the frame.
    info = parse_vp8(bytes([0x11, KEY]))
    assert not info.start_of_frame and not info.keyframe
    # N (non-reference) does not matter.
    info = parse_vp8(bytes([0x30, KEY]))
    assert info.start_of_frame and info.keyframe


def test_reserved_bits_ignored():
    # R bits of the first byte (0x40, 0x08) and RSV bits of the X byte (0x0F) set.
    info = parse_vp8(bytes([0x58, KEY]))
    assert info.start_of_frame and info.keyframe and info.header_size == 1
    info = parse_vp8(bytes([0xD8, 0x8F, 0x05, KEY]))
    assert info.keyframe and info.picture_id == 5 and info.header_size == 3


def test_picture_id_7_bit():
    info = parse_vp8(bytes([0x90, 0x80, 0x2A, KEY]))  # X, S / I / M=0 id=42
    assert info.picture_id == 42
    assert info.picture_id_bits == 7
    assert info.picture_id_offset == 2
    assert info.header_size == 3
    assert info.keyframe
    assert (info.tl0picidx, info.tl0_offset, info.tid, info.key_idx) == (-1, -1, -1, -1)
    assert parse_vp8(bytes([0x90, 0x80, 0x7F, DELTA])).picture_id == 127


def test_picture_id_15_bit():
    info = parse_vp8(bytes([0x90, 0x80, 0x81, 0x23, DELTA]))  # M=1 id=0x0123
    assert info.picture_id == 0x0123
    assert info.picture_id_bits == 15
    assert info.picture_id_offset == 2
    assert info.header_size == 4
    assert info.start_of_frame and not info.keyframe
    assert parse_vp8(bytes([0x80, 0x80, 0xFF, 0xFF, 0x00])).picture_id == 0x7FFF
    assert parse_vp8(bytes([0x80, 0x80, 0x80, 0x00, 0x00])).picture_id == 0


def test_tl0picidx():
    info = parse_vp8(bytes([0x90, 0x40, 0xC8, KEY]))  # L only
    assert info.tl0picidx == 200
    assert info.tl0_offset == 2
    assert info.header_size == 3
    assert info.picture_id == -1 and info.picture_id_offset == -1


def test_tid_y_keyidx():
    # T and K: TID=2, Y=1, KEYIDX=3
    info = parse_vp8(bytes([0x90, 0x30, 0b10_1_00011, KEY]))
    assert (info.tid, info.layer_sync, info.key_idx, info.header_size) == (2, True, 3, 3)
    # T only: KEYIDX bits are not reported
    info = parse_vp8(bytes([0x80, 0x20, 0b01_0_11111, DELTA]))
    assert (info.tid, info.layer_sync, info.key_idx) == (1, False, -1)
    # K only: TID/Y are not reported
    info = parse_vp8(bytes([0x80, 0x10, 0b11_1_00101, DELTA]))
    assert (info.tid, info.layer_sync, info.key_idx) == (-1, False, 5)
    assert not info.start_of_frame


def test_all_fields():
    # X S PID=0 | I L T K | M id=0x7FFE | TL0PICIDX=7 | TID=3 Y=1 KEYIDX=31 | payload
    payload = bytes([0x90, 0xF0, 0xFF, 0xFE, 0x07, 0xFF, KEY, 0x11, 0x22])
    info = parse_vp8(payload)
    assert fields(info) == {
        "start_of_frame": True,
        "keyframe": True,
        "picture_id": 0x7FFE,
        "picture_id_bits": 15,
        "tl0picidx": 7,
        "tid": 3,
        "layer_sync": True,
        "key_idx": 31,
        "picture_id_offset": 2,
        "tl0_offset": 4,
        "header_size": 6,
    }
    # 7-bit picture id shifts the later fields by one.
    info = parse_vp8(bytes([0x80, 0xE0, 0x05, 0x09, 0x40, DELTA]))
    assert (info.picture_id, info.picture_id_bits, info.tl0picidx, info.tid) == (5, 7, 9, 1)
    assert (info.picture_id_offset, info.tl0_offset, info.header_size) == (2, 3, 5)
    assert not info.layer_sync and not info.start_of_frame


VECTORS = [
    bytes([0x10, KEY]),
    bytes([0x90, 0x80, 0x2A, KEY]),
    bytes([0x90, 0x80, 0x81, 0x23, KEY]),
    bytes([0x90, 0x40, 0xC8, KEY]),
    bytes([0x90, 0x30, 0xA3, KEY]),
    bytes([0x90, 0xF0, 0xFF, 0xFE, 0x07, 0xFF, KEY]),
    bytes([0x80, 0xE0, 0x05, 0x09, 0x40, DELTA]),
]


@pytest.mark.parametrize("payload", VECTORS, ids=lambda p: p.hex())
def test_truncated_returns_none(payload):
    size = parse_vp8(payload).header_size
    assert size == len(payload) - 1
    for n in range(len(payload)):  # every prefix without a VP8 payload byte
        assert parse_vp8(payload[:n]) is None
        assert parse_vp8(memoryview(payload)[:n]) is None
        assert parse_vp8(bytearray(payload[:n])) is None


def test_input_types_and_reuse():
    payload = bytes([0x90, 0xF0, 0xFF, 0xFE, 0x07, 0xFF, KEY])
    expected = fields(parse_vp8(payload))
    packet = bytes(12) + payload  # as if sliced out of an RTP packet
    assert fields(parse_vp8(memoryview(packet)[12:])) == expected
    assert fields(parse_vp8(bytearray(payload))) == expected

    out = Vp8Info()
    assert parse_vp8(payload, out) is out
    assert fields(out) == expected
    # Reusing the object resets every field from the previous packet.
    assert parse_vp8(bytes([0x00, DELTA]), out) is out
    assert fields(out) == fields(Vp8Info()) | {"header_size": 1}
    assert parse_vp8(b"", out) is None


def test_fuzz_never_raises():
    rng = random.Random(7)
    for _ in range(20000):
        data = rng.randbytes(rng.randrange(0, 9))
        info = parse_vp8(data)
        if info is not None:
            assert 1 <= info.header_size < len(data)


# ---------------------------------------------------------------------------------------------
# Oracles: aiortc's parser, and the repo's keyframe detector in sfu.media.codecs
# ---------------------------------------------------------------------------------------------


def random_descriptor(rng: random.Random) -> bytes:
    """A random, mostly well-formed descriptor plus 0-2 payload bytes, sometimes truncated."""
    b0 = rng.randrange(256) & ~0x80 & ~0x48  # reserved bits 0 (aiortc folds R into PID)
    out = bytearray()
    if rng.random() < 0.8:
        b0 |= 0x80
        x = rng.randrange(16) << 4  # I L T K, RSV=0
        out += bytes([b0, x])
        if x & 0x80:
            if rng.random() < 0.5:
                out += bytes([0x80 | rng.randrange(128), rng.randrange(256)])
            else:
                out += bytes([rng.randrange(128)])
        if x & 0x40:
            out.append(rng.randrange(256))
        if x & 0x30:
            out.append(rng.randrange(256))
    else:
        out.append(b0)
    out += rng.randbytes(rng.randrange(0, 3))
    if rng.random() < 0.2:
        del out[rng.randrange(len(out) + 1) :]
    return bytes(out)


def test_agrees_with_aiortc():
    rng = random.Random(1234)
    parsed = 0
    for _ in range(20000):
        data = random_descriptor(rng)
        info = parse_vp8(data)
        try:
            desc, rest = VpxPayloadDescriptor.parse(data)
        except ValueError:
            assert info is None, data.hex()
            continue
        if not rest:  # aiortc accepts a descriptor with no payload; we require one byte
            assert info is None, data.hex()
            continue
        assert info is not None, data.hex()
        parsed += 1
        assert info.header_size == len(data) - len(rest)
        assert info.start_of_frame == (desc.partition_start == 1 and desc.partition_id == 0)
        assert info.keyframe == (info.start_of_frame and not rest[0] & 1)
        assert info.picture_id == (-1 if desc.picture_id is None else desc.picture_id)
        assert info.tl0picidx == (-1 if desc.tl0picidx is None else desc.tl0picidx)
        assert info.key_idx == (-1 if desc.keyidx is None else desc.keyidx)
        if desc.tid is None:
            assert (info.tid, info.layer_sync) == (-1, False)
        else:
            assert (info.tid, int(info.layer_sync)) == desc.tid
        if desc.picture_id is not None:
            assert info.picture_id_bits == (15 if data[2] & 0x80 else 7)
    assert parsed > 10000


def test_agrees_with_codecs_keyframe_detector():
    rng = random.Random(99)
    for _ in range(20000):
        data = random_descriptor(rng) if rng.random() < 0.7 else rng.randbytes(rng.randrange(6))
        info = parse_vp8(data)
        assert vp8_is_keyframe(data) == (info is not None and info.keyframe), data.hex()
        try:
            desc = Vp8Descriptor.parse(data)
        except ValueError:
            assert info is None
            continue
        if info is None:  # codecs accepts a descriptor with no payload byte after it
            assert desc.size == len(data) and not desc.keyframe
            continue
        assert desc.keyframe == info.keyframe
        assert desc.size == info.header_size
        assert desc.picture_id == info.picture_id
        assert desc.picture_id_bits == info.picture_id_bits
        assert desc.tl0_pic_idx == info.tl0picidx
        assert desc.tid == info.tid and desc.layer_sync == info.layer_sync
        assert desc.key_idx == info.key_idx


# ---------------------------------------------------------------------------------------------
# rewrite_vp8
# ---------------------------------------------------------------------------------------------

RTP_HEADER = bytes(range(0xA0, 0xAC))  # 12 recognisable bytes standing in for the RTP header


def rewritten(payload: bytes, picture_id: int, tl0: int) -> tuple[bytearray, Vp8Info]:
    buf = bytearray(RTP_HEADER + payload + b"\xee\xff")
    info = parse_vp8(memoryview(buf)[12:])
    rewrite_vp8(buf, 12, info, picture_id, tl0)
    return buf, info


def changed(before: bytes, after: bytes) -> list[int]:
    assert len(before) == len(after)
    return [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]


def test_rewrite_15_bit_and_tl0():
    payload = bytes([0x90, 0xF0, 0x81, 0x23, 0x07, 0xA3, KEY])
    buf, info = rewritten(payload, 0x1234, 0x42)
    assert changed(RTP_HEADER + payload + b"\xee\xff", bytes(buf)) == [14, 15, 16]
    assert buf[14:17] == bytes([0x80 | 0x12, 0x34, 0x42])
    again = parse_vp8(buf[12:])
    assert (again.picture_id, again.picture_id_bits, again.tl0picidx) == (0x1234, 15, 0x42)
    assert (again.tid, again.layer_sync, again.key_idx, again.keyframe) == (2, True, 3, True)
    assert info.picture_id == 0x0123  # info is not modified


def test_rewrite_wraps_keeping_width():
    payload15 = bytes([0x90, 0xC0, 0xFF, 0xFF, 0xFF, KEY])
    buf, _ = rewritten(payload15, 32767 + 1, 255 + 1)
    assert buf[14:17] == bytes([0x80, 0x00, 0x00])  # M bit kept, id 0, tl0 0
    assert parse_vp8(buf[12:]).picture_id == 0
    buf, _ = rewritten(payload15, -1, -1)
    assert buf[14:17] == bytes([0xFF, 0xFF, 0xFF])

    payload7 = bytes([0x90, 0xC0, 0x7F, 0xFF, DELTA])
    buf, _ = rewritten(payload7, 127 + 1, 3)
    assert buf[14:16] == bytes([0x00, 0x03])  # M bit stays 0
    assert changed(RTP_HEADER + payload7 + b"\xee\xff", bytes(buf)) == [14, 15]
    buf, _ = rewritten(payload7, 0x7FFF, 0)  # a 15-bit value is cut to 7 bits
    again = parse_vp8(buf[12:])
    assert (again.picture_id, again.picture_id_bits, again.header_size) == (127, 7, 4)


def test_rewrite_leaves_absent_fields_alone():
    only_pid = bytes([0x90, 0xA0, 0x85, 0x00, 0x40, KEY])
    buf, _ = rewritten(only_pid, 300, 77)
    assert changed(RTP_HEADER + only_pid + b"\xee\xff", bytes(buf)) == [14, 15]
    assert parse_vp8(buf[12:]).picture_id == 300

    only_tl0 = bytes([0x90, 0x60, 0x09, 0x40, KEY])
    buf, _ = rewritten(only_tl0, 300, 77)
    assert changed(RTP_HEADER + only_tl0 + b"\xee\xff", bytes(buf)) == [14]
    assert buf[14] == 77

    for payload in (bytes([0x10, KEY]), bytes([0x90, 0x20, 0x40, KEY])):
        buf, _ = rewritten(payload, 300, 77)
        assert bytes(buf) == RTP_HEADER + payload + b"\xee\xff"


# ---------------------------------------------------------------------------------------------
# PictureIdMunger
# ---------------------------------------------------------------------------------------------


def test_munger_passes_first_source_through():
    m = PictureIdMunger()
    assert m.map(1000, 17) == (1000, 17)
    assert m.map(1000, 17) == (1000, 17)  # second packet of the frame
    assert m.map(1001, 17) == (1001, 17)
    assert m.map(-1, -1) == (-1, -1)


def test_munger_source_switch_continues():
    m = PictureIdMunger()
    for pid in range(100, 105):
        m.map(pid, 10 + (pid - 100) // 2)  # last: 104 / tl0 12
    m.switch_source(5000, 200)
    assert m.map(5000, 200) == (105, 13)
    assert m.map(5000, 200) == (105, 13)
    assert m.map(5001, 200) == (106, 13)
    assert m.map(5002, 201) == (107, 14)
    # ... and back to another stream, across the 15-bit and 8-bit wraps
    m.switch_source(32767, 255)
    assert m.map(32767, 255) == (108, 15)
    assert m.map(0, 0) == (109, 16)


def test_munger_switch_wraps():
    m = PictureIdMunger()
    m.map(32766, 254)
    m.map(32767, 255)
    m.switch_source(40, 90)
    assert m.map(40, 90) == (0, 0)
    assert m.map(41, 91) == (1, 1)


def test_munger_drops_close_gaps():
    m = PictureIdMunger()
    # Frames 10..17 with TIDs 0,2,1,2,...; TID 2 dropped; three packets per frame.
    tids = [0, 2, 1, 2, 0, 2, 1, 2]
    out = []
    for i, tid in enumerate(tids):
        pid = 10 + i
        for _ in range(3):
            if tid == 2:
                m.drop_frame(pid)
            else:
                out.append(m.map(pid, 5 + i // 4)[0])
    assert out == [10, 10, 10, 11, 11, 11, 12, 12, 12, 13, 13, 13]


def test_munger_drop_counting_rules():
    m = PictureIdMunger()
    assert m.map(10, 0) == (10, 0)
    assert m.drop_frame(11) is True
    assert m.drop_frame(11) is False  # another packet of the same frame
    assert m.drop_frame(10) is False  # already forwarded: cannot close that gap
    assert m.drop_frame(9) is False  # older than what was forwarded
    assert m.drop_frame(-1) is False
    assert m.map(12, 0) == (11, 0)
    assert m.drop_frame(12) is False


def test_munger_reordered_packets():
    m = PictureIdMunger()
    assert m.map(10, 0) == (10, 0)
    m.drop_frame(11)
    assert m.map(12, 0) == (11, 0)
    assert m.map(10, 0) == (10, 0)  # late packet of frame 10 keeps its id
    m.drop_frame(13)
    # A dropped frame arriving before an earlier forwarded one still closes its gap.
    m.drop_frame(15)
    assert m.map(16, 1) == (13, 1)
    assert m.map(14, 0) == (12, 0)
    assert m.map(12, 0) == (11, 0)
    assert m.map(10, 0) == (10, 0)
    # A drop reported out of order (older than the newest drop, newer than all forwarded).
    m.drop_frame(19)
    m.drop_frame(18)
    assert m.drop_frame(19) is False
    assert m.map(17, 1) == (14, 1)
    assert m.map(20, 2) == (15, 2)


def test_munger_drops_across_wrap():
    m = PictureIdMunger()
    m.switch_source(32760, 0)
    seen = []
    for i in range(40):
        pid = (32760 + i) & 0x7FFF
        if i % 2:
            m.drop_frame(pid)
        else:
            seen.append(m.map(pid, i // 4)[0])
    assert seen == list(range(32760, 32768)) + list(range(12))


def test_munger_long_run_stays_continuous():
    """Many wraps with drops and switches: forwarded frames always get consecutive ids."""
    rng = random.Random(5)
    m = PictureIdMunger()
    pid = rng.randrange(32768)
    tl0 = rng.randrange(256)
    expected_pid = expected_tl0 = None
    for frame in range(200000):
        tid = (0, 2, 1, 2)[frame % 4]
        if tid == 0:
            tl0 = (tl0 + 1) & 0xFF
        if frame % 5000 == 4999:  # switch to an unrelated stream at its (base layer) frame
            pid = rng.randrange(32768)
            tl0 = rng.randrange(256)
            tid = 0
            m.switch_source(pid, tl0)
        forward = tid == 0 or (tid == 1 and frame % 3000 < 1500) or (frame % 10000 < 100)
        if not forward:
            for _ in range(rng.randrange(1, 3)):
                m.drop_frame(pid)
        else:
            for _ in range(rng.randrange(1, 3)):
                out_pid, out_tl0 = m.map(pid, tl0)
                if expected_pid is not None:
                    assert out_pid == expected_pid
                    assert out_tl0 in (expected_tl0, (expected_tl0 + 1) & 0xFF)
                expected_tl0 = out_tl0
            expected_pid = (out_pid + 1) & 0x7FFF
        pid = (pid + 1) & 0x7FFF


def test_munger_old_drops_expire():
    """A drop long ago must not shift packets once picture ids have wrapped past it."""
    m = PictureIdMunger()
    m.map(0, 0)
    m.drop_frame(1)
    out = None
    for i in range(2, 40000):
        out = m.map(i & 0x7FFF, 0)[0]
        assert out == (i - 1) & 0x7FFF
    # A packet reordered by a few frames is still right after the wrap.
    assert m.map((39990) & 0x7FFF, 0)[0] == 39989 & 0x7FFF


def test_munger_7_bit():
    m = PictureIdMunger(bits=7)
    m.map(126, 0)
    m.drop_frame(127)
    assert m.map(0, 1) == (127, 1)
    m.switch_source(50, 7)
    assert m.map(50, 7) == (0, 2)
    with pytest.raises(ValueError):
        PictureIdMunger(bits=8)


def test_munger_with_rewrite():
    """The forwarder's use: parse once, map per subscriber, rewrite a copy."""
    m = PictureIdMunger()
    m.map(700, 3)
    source = bytes(RTP_HEADER + bytes([0x90, 0xE0, 0x80 | 0x12, 0x34, 0x99, 0x20, KEY]))
    info = parse_vp8(memoryview(source)[12:])
    m.switch_source(info.picture_id, info.tl0picidx)
    out = bytearray(source)
    rewrite_vp8(out, 12, info, *m.map(info.picture_id, info.tl0picidx))
    again = parse_vp8(out[12:])
    assert (again.picture_id, again.tl0picidx, again.tid, again.keyframe) == (701, 4, 0, True)
