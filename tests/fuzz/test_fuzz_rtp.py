"""RTP headers and header extensions (sfu/media/rtp.py) on arbitrary bytes.

`RtpHeader.parse` documents ValueError as its only error; whatever it returns must point
inside the packet. The extension writer and reader must agree on everything the writer
accepts.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.media.rtp import (
    ONE_BYTE_PROFILE,
    ExtensionIds,
    RtpHeader,
    build_extension_block,
    build_rtp,
    is_rtcp,
)

from .budget import fuzz
from .corpus import corpus

pytestmark = pytest.mark.fuzz

# The ids the SFU reads, all distinct (as negotiated), over the two-byte range too.
extension_ids = st.lists(st.integers(1, 255), min_size=6, max_size=6, unique=True).map(
    lambda ids: ExtensionIds(*ids)
)
CORPUS_IDS = ExtensionIds(
    mid=1, rid=2, repaired_rid=3, abs_send_time=4, audio_level=5, transport_cc=6
)


def check_rtp(data: bytes, ext: ExtensionIds | None) -> None:
    assert isinstance(is_rtcp(data), bool)
    try:
        h = RtpHeader.parse(data, ext)
    except ValueError:
        return
    n = len(data)
    assert 12 <= h.payload_offset <= n
    assert h.payload_offset + h.padding_size <= n
    assert 0 <= h.payload_type < 128 and 0 <= h.sequence_number < 1 << 16
    for value in (h.mid, h.rid, h.repaired_rid):
        assert value is None or len(value) <= n - 12
    assert -1 <= h.audio_level <= 255
    assert -1 <= h.transport_seq < 1 << 16


@st.composite
def extension_elements(draw, profile: int) -> bytes:
    """Extension elements with ids the SFU reads (1-6), any sizes, padding bytes between."""
    body = b""
    for _ in range(draw(st.integers(0, 6))):
        ext_id = draw(st.integers(0, 15 if profile == ONE_BYTE_PROFILE else 7))
        value = draw(st.one_of(st.just(b""), st.binary(max_size=17)))
        if profile == ONE_BYTE_PROFILE:
            body += bytes([(ext_id << 4) | max(0, len(value) - 1) & 0x0F]) + value
        else:
            size = draw(st.one_of(st.just(len(value)), st.integers(0, 20)))
            body += bytes([ext_id, size]) + value
    return body


@st.composite
def rtp_like(draw) -> bytes:
    """Bytes that get past the first checks: version 2, maybe CSRCs, extensions, padding."""
    flags = draw(st.integers(0, 0x3F)) & ~(0 if draw(st.integers(0, 3)) == 0 else 0x20)
    fixed = bytes([0x80 | flags, draw(st.integers(0, 255))]) + draw(
        st.binary(min_size=10, max_size=10)
    )
    cc = 4 * (flags & 0x0F)
    csrcs = draw(st.one_of(st.binary(min_size=cc, max_size=cc), st.binary(max_size=cc + 4)))
    block = b""
    if flags & 0x10:
        profile = draw(st.sampled_from([ONE_BYTE_PROFILE, 0x1000, 0x100F, 0x1234]))
        body = draw(st.one_of(st.binary(max_size=64), extension_elements(profile)))
        words = draw(st.one_of(st.just(-(-len(body) // 4)), st.integers(0, 0xFFFF)))
        pad = bytes(-len(body) % 4)  # zero bytes are padding: before, after or missing
        body = draw(st.sampled_from([pad + body, body + pad, body]))
        block = profile.to_bytes(2, "big") + words.to_bytes(2, "big") + body
    tail = draw(st.one_of(st.just(b""), st.binary(max_size=64)))  # payload (none, often)
    return fixed + csrcs + block + tail


@fuzz(400)
@given(st.binary(max_size=256), st.one_of(st.none(), extension_ids))
def test_rtp_parse_arbitrary_bytes(data: bytes, ext: ExtensionIds | None) -> None:
    check_rtp(data, ext)


@fuzz(600)
@given(rtp_like(), st.permutations(range(1, 7)))
def test_rtp_parse_structured(data: bytes, ids: list[int]) -> None:
    check_rtp(data, ExtensionIds(*ids))


@fuzz(300)
@given(
    st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=8),
    st.integers(0, 255),
    st.binary(max_size=32),
)
def test_rtp_extensions_round_trip(elements, padding: int, payload: bytes) -> None:
    """What build_rtp writes, parse reads back: the ids and values, payload and padding."""
    ids = dict(elements)  # one value per id, as a sender writes them
    packet = build_rtp(
        payload_type=96,
        sequence_number=7,
        timestamp=9,
        ssrc=11,
        payload=payload,
        extensions=list(ids.items()),
        padding_size=padding,
    )
    ext = ExtensionIds(mid=1, rid=2, repaired_rid=3, audio_level=4, transport_cc=5)
    h = RtpHeader.parse(packet, ext)
    assert packet[h.payload_offset : len(packet) - h.padding_size] == payload
    assert h.padding_size == padding
    assert h.mid == ids.get(1) and h.rid == ids.get(2) and h.repaired_rid == ids.get(3)
    assert h.audio_level == (ids[4][0] if 4 in ids else -1)
    assert h.transport_seq == (int.from_bytes(ids[5], "big") if len(ids.get(5, b"")) == 2 else -1)


@fuzz(200)
@given(st.lists(st.tuples(st.integers(-5, 20), st.binary(max_size=20)), max_size=6))
def test_build_extension_block_raises_only_value_error(elements) -> None:
    try:
        block = build_extension_block(elements)
    except ValueError:
        assert any(not 1 <= i <= 14 or not 1 <= len(v) <= 16 for i, v in elements)
        return
    assert len(block) % 4 == 0 and int.from_bytes(block[2:4], "big") == len(block) // 4 - 1


@pytest.mark.parametrize("data", corpus("rtp"))
def test_rtp_corpus(data: bytes) -> None:
    check_rtp(data, CORPUS_IDS)
    check_rtp(data, None)
