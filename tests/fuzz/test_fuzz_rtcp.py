"""RTCP compound packets (sfu/media/rtcp.py) and transport-cc feedback (sfu/media/twcc.py).

`parse_compound`, `TwccFeedback.parse` and `TransportSequencer.on_feedback` document ValueError
as their only error. What they return is bounded by the input's length (and, for the
sequencer, by the packets it sent), and every packet type reads back what it writes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.media.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    Sdes,
    SenderReport,
    UnknownRtcp,
    parse_compound,
)
from sfu.media.twcc import (
    LARGE_DELTA,
    NOT_RECEIVED,
    SMALL_DELTA,
    TransportSequencer,
    TwccFeedback,
)

from .budget import fuzz
from .corpus import corpus

pytestmark = pytest.mark.fuzz

u32 = st.integers(0, 0xFFFFFFFF)


def check_rtcp(data: bytes) -> None:
    try:
        packets = parse_compound(data)
    except ValueError:
        return
    n = len(data)
    assert len(packets) <= n // 4
    for p in packets:
        if isinstance(p, SenderReport | ReceiverReport):
            assert len(p.reports) <= 31
        elif isinstance(p, Nack):
            assert len(p.lost) <= 17 * (n // 4)
            assert all(0 <= s < 1 << 16 for s in p.lost)
        elif isinstance(p, Fir):
            assert len(p.entries) <= n // 8
        elif isinstance(p, Remb):
            assert len(p.ssrcs) <= n // 4 and p.bitrate >= 0
        elif isinstance(p, Sdes):
            assert len(p.chunks) <= 31 and all(len(c) <= 255 for _, c in p.chunks)
        elif isinstance(p, Bye):
            assert len(p.sources) <= 31
        elif isinstance(p, UnknownRtcp):
            assert len(p.data) <= n
            if p.packet_type == 205 and p.fmt == 15:
                check_twcc(p.data)


def check_twcc(data: bytes) -> None:
    try:
        fb = TwccFeedback.parse(data)
    except ValueError:
        return
    n = len(data)
    assert len(fb.statuses) == int.from_bytes(data[14:16], "big")
    assert len(fb.statuses.runs) <= 7 * n  # what is stored follows the length...
    assert len(fb.deltas) <= n  # ...whatever count the packet claims
    received = sum(c for s, c in fb.statuses.runs if s != NOT_RECEIVED)
    assert received == len(fb.deltas)
    # the sequencer: results only for packets it sent, each at most once lost, once received
    seqr = TransportSequencer(history=256, start_seq=(fb.base_seq - 100) & 0xFFFF)
    for i in range(300):
        seqr.next_seq(1000, now=i * 0.001)
    seen: dict[tuple[int, bool], int] = {}
    for _ in range(2):
        results = seqr.on_feedback(data)
        assert len(results) <= 256
        for r in results:
            assert seqr.last_seq - 255 <= r.seq <= seqr.last_seq
            key = (r.seq, r.arrival_time is None)
            seen[key] = seen.get(key, 0) + 1
    assert all(count == 1 for count in seen.values())


@st.composite
def rtcp_like(draw) -> bytes:
    """A compound of parts with version 2 and plausible types; lengths right or wrong."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        ptype = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 206, 207]))
        count = draw(st.integers(0, 31))
        body = draw(st.binary(max_size=120))
        if ptype in (205, 206) and draw(st.booleans()):  # feedback: ssrcs, then FCI
            fci = b"REMB" + draw(st.binary(max_size=40)) if ptype == 206 else b""
            body = draw(st.binary(min_size=8, max_size=8)) + fci + body
        if draw(st.booleans()):
            body += bytes(-len(body) % 4)
        words = draw(st.one_of(st.just(len(body) // 4), st.integers(0, 0xFFFF)))
        out += bytes([0x80 | draw(st.sampled_from([0, 0x20])) | count, ptype])
        out += words.to_bytes(2, "big") + body
    return out


@st.composite
def twcc_like(draw) -> bytes:
    """Transport-cc feedback: header right, chunks, deltas and counts anything."""
    chunks = draw(
        st.lists(
            st.one_of(
                st.integers(0, 0x7FFF),  # run length (any symbol, including reserved 3)
                st.integers(0x8000, 0xFFFF),  # status vectors
                st.sampled_from([0x1FFF, 0x3FFF, 0x5FFF]),  # the longest runs
            ),
            max_size=24,
        )
    )
    body = b"".join(c.to_bytes(2, "big") for c in chunks) + draw(st.binary(max_size=80))
    count = draw(st.one_of(st.integers(0, 0xFFFF), st.integers(0, 200)))
    base = draw(st.integers(0, 0xFFFF))
    fixed = struct.pack("!IIHHI", 1, 2, base, count, draw(u32))
    padded = draw(st.booleans())
    if padded:
        pad = draw(st.integers(1, 4))
        body += bytes(pad - 1) + bytes([draw(st.one_of(st.just(pad), st.integers(0, 255)))])
    body += bytes(-len(fixed + body) % 4)
    words = (4 + len(fixed) + len(body)) // 4 - 1
    b0 = 0x80 | (0x20 if padded else 0) | 15
    return bytes([b0, 205]) + words.to_bytes(2, "big") + fixed + body


@fuzz(300)
@given(st.binary(max_size=300))
def test_rtcp_arbitrary_bytes(data: bytes) -> None:
    check_rtcp(data)


@fuzz(500)
@given(rtcp_like())
def test_rtcp_structured(data: bytes) -> None:
    check_rtcp(data)


@fuzz(300)
@given(st.binary(max_size=200))
def test_twcc_arbitrary_bytes(data: bytes) -> None:
    check_twcc(bytes([0x8F, 205]) + data)
    check_twcc(data)


@fuzz(500)
@given(twcc_like())
def test_twcc_structured(data: bytes) -> None:
    check_twcc(data)
    check_rtcp(data)


# -- every packet type reads back what it writes --------------------------------------------------

report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-(1 << 23), (1 << 23) - 1),
    highest_sequence=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
blocks = st.lists(report_blocks, max_size=31)
packets = st.one_of(
    st.builds(SenderReport, u32, st.integers(0, (1 << 64) - 1), u32, u32, u32, blocks),
    st.builds(ReceiverReport, u32, blocks),
    st.builds(
        Sdes,
        st.lists(st.tuples(u32, st.text("abcdefXYZ0123-_.@", max_size=255)), max_size=31),
    ),
    st.builds(Bye, st.lists(u32, max_size=31)),
    st.builds(Pli, u32, u32),
    st.builds(Fir, u32, st.lists(st.tuples(u32, st.integers(0, 255)), max_size=20)),
    st.builds(Remb, u32, st.integers(0, (1 << 18) - 1), st.lists(u32, max_size=20)),
)


@fuzz(300)
@given(st.lists(packets, min_size=1, max_size=4))
def test_rtcp_types_round_trip(parts) -> None:
    assert parse_compound(b"".join(p.serialize() for p in parts)) == parts


@fuzz(200)
@given(u32, u32, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=100))
def test_nack_round_trip(sender: int, media: int, lost: list[int]) -> None:
    (nack,) = parse_compound(Nack(sender, media, lost).serialize())
    assert (nack.sender_ssrc, nack.media_ssrc) == (sender, media)
    assert sorted(nack.lost) == sorted(set(lost))


@fuzz(200)
@given(u32, st.integers(0, (1 << 40)))
def test_remb_bitrate_survives_its_18_bit_mantissa(sender: int, bitrate: int) -> None:
    (remb,) = parse_compound(Remb(sender, bitrate, [1]).serialize())
    assert bitrate * (1 - 2**-17) <= remb.bitrate <= bitrate


@st.composite
def feedback(draw) -> TwccFeedback:
    statuses = draw(
        st.lists(st.sampled_from([NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA]), max_size=300)
    )
    if draw(st.booleans()):  # and a long run somewhere
        at = draw(st.integers(0, len(statuses)))
        statuses[at:at] = [draw(st.sampled_from([NOT_RECEIVED, SMALL_DELTA]))] * draw(
            st.integers(14, 9000)
        )
    deltas = [
        draw(st.integers(0, 255)) if s == SMALL_DELTA else draw(st.integers(-0x8000, 0x7FFF))
        for s in statuses
        if s != NOT_RECEIVED
    ][:400]
    if len(deltas) < sum(1 for s in statuses if s):
        statuses = [NOT_RECEIVED if s else s for s in statuses]
        deltas = []
    return TwccFeedback(
        draw(u32),
        draw(u32),
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFFFF)),
        draw(st.integers(0, 255)),
        statuses,
        deltas,
    )


@fuzz(200)
@given(feedback())
def test_twcc_round_trip(fb: TwccFeedback) -> None:
    data = fb.serialize()
    assert TwccFeedback.parse(data) == fb
    check_twcc(data)


@pytest.mark.parametrize("data", corpus("rtcp"))
def test_rtcp_corpus(data: bytes) -> None:
    check_rtcp(data)


@pytest.mark.parametrize("data", corpus("twcc"))
def test_twcc_corpus(data: bytes) -> None:
    check_twcc(data)
    check_rtcp(data)
