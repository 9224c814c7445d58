"""Payload descriptors (sfu/media/codecs.py, sfu/media/vp8.py) on arbitrary payloads.

`Vp8Descriptor.parse` raises ValueError (only); `parse_vp8` never raises (None instead);
`vp8_is_keyframe` and `h264_is_keyframe` never raise. The two VP8 readers must agree, and
`rewrite_vp8` must change the ids it is asked to and nothing else.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.media.codecs import Vp8Descriptor, h264_is_keyframe, keyframe_detector, vp8_is_keyframe
from sfu.media.vp8 import Vp8Info, parse_vp8, rewrite_vp8

from .budget import fuzz
from .corpus import corpus

pytestmark = pytest.mark.fuzz


def check_vp8(payload: bytes) -> None:
    n = len(payload)
    fast = vp8_is_keyframe(payload)
    assert fast is True or fast is False
    assert keyframe_detector("video/VP8")(payload) == fast
    try:
        d = Vp8Descriptor.parse(payload)
    except ValueError:
        d = None
    assert fast == (d is not None and d.keyframe)
    info = parse_vp8(payload)
    view = parse_vp8(memoryview(payload), Vp8Info())
    assert (info is None) == (view is None)
    if info is None:
        return
    assert d is not None  # a descriptor parse_vp8 takes, Vp8Descriptor takes too
    assert 1 <= info.header_size < n and info.header_size == d.size
    assert (info.picture_id, info.picture_id_bits) == (d.picture_id, d.picture_id_bits)
    assert (info.tl0picidx, info.tid, info.layer_sync) == (d.tl0_pic_idx, d.tid, d.layer_sync)
    assert info.key_idx == d.key_idx and info.keyframe == d.keyframe
    assert -1 <= info.picture_id_offset < info.header_size
    assert -1 <= info.tl0_offset < info.header_size
    assert repr(view) == repr(info)


def check_h264(payload: bytes) -> None:
    result = h264_is_keyframe(payload)
    assert result is True or result is False
    assert keyframe_detector("video/H264")(payload) == result


@st.composite
def vp8_like(draw) -> bytes:
    """A descriptor with any of X/I/M/L/T/K set, then zero or more payload bytes."""
    b0 = draw(st.integers(0, 255)) | draw(st.sampled_from([0, 0x80, 0x90]))
    out = bytes([b0])
    if b0 & 0x80:
        x = draw(st.integers(0, 255))
        out += bytes([x])
        if x & 0x80:
            out += draw(st.sampled_from([b"\x05", b"\x85\x01", b"\x85"]))
        out += draw(st.binary(max_size=2))
    return out + draw(st.binary(max_size=6))


@st.composite
def h264_like(draw) -> bytes:
    """Single NAL units, STAP-A aggregates (sizes right or wrong) and FU-A fragments."""
    kind = draw(st.sampled_from(["nal", "stap", "fu"]))
    if kind == "nal":
        return bytes([draw(st.integers(0, 255))]) + draw(st.binary(max_size=8))
    if kind == "fu":
        return bytes([0x7C, draw(st.integers(0, 255))]) + draw(st.binary(max_size=8))
    out = b"\x78"
    for _ in range(draw(st.integers(0, 5))):
        nal = draw(st.binary(max_size=6))
        size = draw(st.one_of(st.just(len(nal)), st.integers(0, 0xFFFF)))
        out += size.to_bytes(2, "big") + nal
    return out


@fuzz(300)
@given(st.binary(max_size=40))
def test_vp8_arbitrary_bytes(payload: bytes) -> None:
    check_vp8(payload)


@fuzz(400)
@given(vp8_like())
def test_vp8_structured(payload: bytes) -> None:
    check_vp8(payload)


@fuzz(300)
@given(vp8_like(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=12))
def test_rewrite_vp8_changes_only_the_ids(payload: bytes, pid: int, tl0: int, head: bytes):
    info = parse_vp8(payload)
    if info is None:
        return
    buf = bytearray(head + payload)
    rewrite_vp8(buf, len(head), info, pid, tl0)
    assert len(buf) == len(head) + len(payload) and buf[: len(head)] == head
    again = parse_vp8(bytes(buf[len(head) :]))
    assert again is not None and again.header_size == info.header_size
    if info.picture_id_bits:
        assert again.picture_id == pid & ((1 << info.picture_id_bits) - 1)
    if info.tl0_offset >= 0:
        assert again.tl0picidx == tl0 & 0xFF
    touched = {info.picture_id_offset, info.tl0_offset}
    if info.picture_id_bits == 15:
        touched.add(info.picture_id_offset + 1)
    for i, (a, b) in enumerate(zip(payload, buf[len(head) :], strict=True)):
        assert a == b or i in touched
    assert (again.tid, again.key_idx, again.keyframe) == (info.tid, info.key_idx, info.keyframe)


@fuzz(300)
@given(st.binary(max_size=40))
def test_h264_arbitrary_bytes(payload: bytes) -> None:
    check_h264(payload)


@fuzz(300)
@given(h264_like())
def test_h264_structured(payload: bytes) -> None:
    check_h264(payload)


@pytest.mark.parametrize("payload", corpus("vp8"))
def test_vp8_corpus(payload: bytes) -> None:
    check_vp8(payload)


@pytest.mark.parametrize("payload", corpus("h264"))
def test_h264_corpus(payload: bytes) -> None:
    check_h264(payload)
