"""Wire formats from hand-written byte vectors: RTP (RFC 3550/8285), RTCP (RFC 3550/4585/5104,
REMB), VP8/H264 payload peeks, and the receive-side bookkeeping built on them.

Vectors are written out byte by byte from the RFC layouts, so a parser and a serialiser that
agree with each other but not with the standard still fail.
"""

from __future__ import annotations

import struct

import pytest

from sfu.media.codecs import (
    Vp8Descriptor,
    h264_is_keyframe,
    keyframe_detector,
    vp8_is_keyframe,
)
from sfu.media.ingress import NackGenerator, PacketCache, ReceiveStats
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
    ntp_middle,
    ntp_now,
    parse_compound,
)
from sfu.media.rtp import (
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_RID,
    ExtensionIds,
    RtpHeader,
    build_extension_block,
    build_rtp,
    is_rtcp,
)

# ---------------------------------------------------------------------------------------------
# RTP
# ---------------------------------------------------------------------------------------------

EXT = ExtensionIds(mid=1, rid=2, audio_level=3)

# V=2 P=0 X=1 CC=2 | M=1 PT=96 | seq 0x1234 | ts 0xDEADBEEF | ssrc 0x11223344 | 2 CSRCs |
# one-byte extension block (0xBEDE, 2 words): id1 len2 "ab", id3 len1 0x85, 3 padding bytes
RTP_ONE_BYTE = (
    bytes(
        [0x92, 0xE0, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0x11, 0x22, 0x33, 0x44]
        + [0xAA, 0xAA, 0xAA, 0xAA, 0xBB, 0xBB, 0xBB, 0xBB]
        + [0xBE, 0xDE, 0x00, 0x02, 0x11, ord("a"), ord("b"), 0x30, 0x85, 0x00, 0x00, 0x00]
    )
    + b"hello"
)


def test_rtp_one_byte_extensions_and_csrcs():
    h = RtpHeader.parse(RTP_ONE_BYTE, EXT)
    assert h.marker is True
    assert h.payload_type == 96
    assert h.sequence_number == 0x1234
    assert h.timestamp == 0xDEADBEEF
    assert h.ssrc == 0x11223344
    assert h.payload_offset == 12 + 8 + 12
    assert RTP_ONE_BYTE[h.payload_offset :] == b"hello"
    assert h.mid == b"ab"
    assert h.rid is None
    assert h.audio_level == 0x85
    assert h.padding_size == 0


def test_rtp_extensions_ignored_without_ids():
    h = RtpHeader.parse(RTP_ONE_BYTE)  # no ids: the block is skipped, not read
    assert h.mid is None and h.audio_level == -1
    assert RTP_ONE_BYTE[h.payload_offset :] == b"hello"


def test_rtp_one_byte_reserved_id_15_stops_parsing():
    # id 15 is reserved (RFC 8285 4.2): parsing stops, later elements are not read
    data = (
        bytes(
            [0x90, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]
            + [0xBE, 0xDE, 0x00, 0x01, 0xF0, 0x11, ord("x"), ord("y")]
        )
        + b"p"
    )
    h = RtpHeader.parse(data, EXT)
    assert h.mid is None
    assert data[h.payload_offset :] == b"p"


def test_rtp_two_byte_extensions():
    # profile 0x1000 (two-byte header, appbits 0): id1 len3 "mid", a padding byte, id2 len2 "hi"
    # 5 + 1 + 4 = 10 bytes, padded to 12 (3 words)
    data = (
        bytes(
            [0x90, 0x6F, 0xFF, 0xFF, 0, 0, 0, 0, 0xCA, 0xFE, 0xBA, 0xBE]
            + [0x10, 0x00, 0x00, 0x03]
            + [0x01, 0x03, ord("m"), ord("i"), ord("d"), 0x00, 0x02, 0x02, ord("h"), ord("i"), 0, 0]
        )
        + b"\x01\x02\x03"
    )
    h = RtpHeader.parse(data, EXT)
    assert h.marker is False and h.payload_type == 0x6F
    assert h.sequence_number == 0xFFFF and h.ssrc == 0xCAFEBABE
    assert h.mid == b"mid"
    assert h.rid == b"hi"
    assert data[h.payload_offset :] == b"\x01\x02\x03"


def test_rtp_two_byte_extension_ids_above_14():
    ext = ExtensionIds(mid=20)
    data = bytes(
        [0x90, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3] + [0x10, 0x00, 0x00, 0x01, 20, 0x01, ord("7"), 0]
    )
    assert RtpHeader.parse(data, ext).mid == b"7"


def test_rtp_unknown_extension_profile_is_skipped():
    data = bytes([0x90, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3] + [0xAB, 0xCD, 0x00, 0x01, 1, 2, 3, 4])
    h = RtpHeader.parse(data + b"z", EXT)
    assert h.mid is None and h.payload_offset == 20


def test_rtp_padding():
    # P=1: the last byte counts the padding bytes, itself included
    data = bytes([0xA0, 0x08, 0, 7, 0, 0, 0, 9, 0, 0, 0, 1]) + b"abc" + b"\x00\x00\x00\x04"
    h = RtpHeader.parse(data)
    assert h.padding_size == 4
    assert data[h.payload_offset : len(data) - h.padding_size] == b"abc"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (bytes([0x80, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0]), "11 bytes"),
        (bytes([0x40, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]), "version 1"),
        (bytes([0x00, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]), "version 0"),
        (bytes([0x83, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 1]), "3 CSRCs, 1 present"),
        (bytes([0x90, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xBE, 0xDE]), "ext header cut"),
        (
            bytes([0x90, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xBE, 0xDE, 0, 2, 0x10, 1, 0, 0]),
            "ext says 2 words, 1 present",
        ),
        (bytes([0xA0, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]), "padding on empty payload"),
        (bytes([0xA0, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 0]), "padding count 0"),
        (bytes([0xA0, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 9]), "padding longer than packet"),
    ],
)
def test_rtp_malformed_raises_value_error(data, reason):
    with pytest.raises(ValueError):
        RtpHeader.parse(data, EXT)


def test_build_extension_block_layout():
    block = build_extension_block([(1, b"0"), (3, b"\x7f")])
    # 0xBEDE, 1 word: 0x10 '0' 0x30 0x7f
    assert block == bytes([0xBE, 0xDE, 0x00, 0x01, 0x10, ord("0"), 0x30, 0x7F])
    padded = build_extension_block([(2, b"abc")])
    assert padded == bytes([0xBE, 0xDE, 0x00, 0x01, 0x22, ord("a"), ord("b"), ord("c")])
    assert build_extension_block([(1, b"ab")]) == bytes([0xBE, 0xDE, 0, 1, 0x11, 97, 98, 0])
    with pytest.raises(ValueError):
        build_extension_block([(15, b"x")])
    with pytest.raises(ValueError):
        build_extension_block([(1, b"x" * 17)])
    with pytest.raises(ValueError):
        build_extension_block([(1, b"")])


def test_build_rtp_exact_bytes():
    data = build_rtp(
        payload_type=111, sequence_number=0x10001, timestamp=(1 << 32) + 5, ssrc=7, payload=b"xy"
    )
    assert data == bytes([0x80, 111, 0, 1, 0, 0, 0, 5, 0, 0, 0, 7]) + b"xy"


def test_build_rtp_round_trip_with_extensions_and_padding():
    ids = ExtensionIds.from_map({EXT_MID: 4, EXT_RID: 5, EXT_AUDIO_LEVEL: 6})
    assert (ids.mid, ids.rid, ids.audio_level) == (4, 5, 6)
    data = build_rtp(
        payload_type=100,
        sequence_number=65535,
        timestamp=0xFFFFFFFF,
        ssrc=0x80000001,
        payload=b"\x00payload\xff",
        marker=True,
        extensions=[(4, b"video0"), (5, b"h"), (6, b"\x9a")],
        padding_size=3,
    )
    h = RtpHeader.parse(data, ids)
    assert (h.marker, h.payload_type, h.sequence_number, h.timestamp, h.ssrc) == (
        True,
        100,
        65535,
        0xFFFFFFFF,
        0x80000001,
    )
    assert (h.mid, h.rid, h.audio_level, h.padding_size) == (b"video0", b"h", 0x9A, 3)
    assert data[h.payload_offset : len(data) - h.padding_size] == b"\x00payload\xff"
    assert data[-3:] == b"\x00\x00\x03"


def test_is_rtcp_demultiplexing():
    assert is_rtcp(bytes([0x80, 200, 0, 6]))
    assert is_rtcp(bytes([0x81, 206, 0, 2]))
    assert not is_rtcp(bytes([0x80, 96, 0, 1]))
    assert not is_rtcp(bytes([0x80, 0xE0, 0, 1]))  # marker + PT 96 = 224
    assert not is_rtcp(b"\x80")


# ---------------------------------------------------------------------------------------------
# RTCP
# ---------------------------------------------------------------------------------------------


def _report_block_bytes(ssrc, fraction, lost24, highest, jitter, lsr, dlsr) -> bytes:
    return (
        struct.pack("!IB", ssrc, fraction)
        + lost24
        + struct.pack("!IIII", highest, jitter, lsr, dlsr)
    )


SR_VECTOR = (
    bytes([0x81, 200, 0x00, 0x0C])  # V=2 RC=1 SR, length 12 words (52 bytes)
    + struct.pack("!I", 0x01020304)
    + struct.pack("!II", 0xE1234567, 0x80000000)  # NTP seconds, half a second
    + struct.pack("!III", 0x00112233, 1000, 123456)
    + _report_block_bytes(0x0A0B0C0D, 25, b"\x00\x00\x07", 0x0001FFFF, 42, 0x45678000, 0x8000)
)


def test_sender_report_vector():
    [sr] = parse_compound(SR_VECTOR)
    assert isinstance(sr, SenderReport)
    assert sr.ssrc == 0x01020304
    assert sr.ntp_timestamp == 0xE123456780000000
    assert (sr.rtp_timestamp, sr.packet_count, sr.octet_count) == (0x00112233, 1000, 123456)
    [block] = sr.reports
    assert block == ReportBlock(0x0A0B0C0D, 25, 7, 0x0001FFFF, 42, 0x45678000, 0x8000)
    assert sr.serialize() == SR_VECTOR
    assert ntp_middle(sr.ntp_timestamp) == 0x45678000


def test_receiver_report_negative_cumulative_loss():
    # duplicates make the cumulative loss negative: a signed 24-bit field (-3 = 0xFFFFFD)
    vector = (
        bytes([0x82, 201, 0x00, 0x0D])  # RC=2, 4 + 2*24 = 52 bytes body -> 13 words
        + struct.pack("!I", 0xCAFE0001)
        + _report_block_bytes(1, 0, b"\xff\xff\xfd", 70000, 3, 0, 0)
        + _report_block_bytes(2, 128, b"\x7f\xff\xff", 5, 0, 1, 2)
    )
    [rr] = parse_compound(vector)
    assert isinstance(rr, ReceiverReport)
    assert rr.ssrc == 0xCAFE0001
    assert rr.reports[0].packets_lost == -3
    assert rr.reports[0].highest_sequence == 70000
    assert rr.reports[1].packets_lost == (1 << 23) - 1
    assert rr.reports[1].fraction_lost == 128
    assert rr.serialize() == vector


def test_receiver_report_without_blocks():
    vector = bytes([0x80, 201, 0x00, 0x01, 0, 0, 0, 9])
    [rr] = parse_compound(vector)
    assert rr == ReceiverReport(9, [])
    assert rr.serialize() == vector


def test_sdes_cname_vector():
    # chunk: SSRC, CNAME(1) len 2 "ab", end null, padded to a word: 4 + 4 + 4 = 12 bytes
    vector = bytes([0x81, 202, 0x00, 0x03, 0, 0, 0, 1, 0x01, 0x02, ord("a"), ord("b"), 0, 0, 0, 0])
    [sdes] = parse_compound(vector)
    assert isinstance(sdes, Sdes)
    assert sdes.chunks == [(1, "ab")]
    assert sdes.serialize() == vector


def test_sdes_two_chunks_with_other_items():
    # chunk 1: NAME(2) "n" then CNAME "xyz"; chunk 2: CNAME "q"
    chunk1 = bytes([0, 0, 0, 5, 0x02, 0x01, ord("n"), 0x01, 0x03, ord("x"), ord("y"), ord("z")])
    chunk1 += bytes(4)  # items end exactly on a word: a full null word follows
    chunk2 = bytes([0, 0, 0, 6, 0x01, 0x01, ord("q"), 0])
    body = chunk1 + chunk2
    vector = bytes([0x82, 202, 0, len(body) // 4]) + body
    [sdes] = parse_compound(vector)
    assert sdes.chunks == [(5, "xyz"), (6, "q")]


def test_sdes_round_trip_every_length_alignment():
    for n in range(0, 9):
        cname = "c" * n
        packet = Sdes([(0x1234, cname), (0x5678, "other")]).serialize()
        assert len(packet) % 4 == 0
        [parsed] = parse_compound(packet)
        assert parsed.chunks == [(0x1234, cname), (0x5678, "other")]


def test_bye_vector():
    vector = bytes([0x82, 203, 0x00, 0x02, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF])
    [bye] = parse_compound(vector)
    assert bye == Bye([1, 0xFFFFFFFF])
    assert bye.serialize() == vector


def test_nack_vector_pid_blp():
    # PID 100, BLP 0b1000000000000101: lost 100, 101, 103, 116
    vector = bytes([0x81, 205, 0x00, 0x03, 0, 0, 0, 1, 0, 0, 0, 2, 0x00, 0x64, 0x80, 0x05])
    [nack] = parse_compound(vector)
    assert isinstance(nack, Nack)
    assert (nack.sender_ssrc, nack.media_ssrc) == (1, 2)
    assert sorted(nack.lost) == [100, 101, 103, 116]
    assert nack.serialize() == vector


def test_nack_wraps_around_sequence_space():
    # PID 65534 with bits 0 and 1: 65534, 65535, 0
    vector = bytes([0x81, 205, 0x00, 0x03, 0, 0, 0, 1, 0, 0, 0, 2, 0xFF, 0xFE, 0x00, 0x03])
    [nack] = parse_compound(vector)
    assert sorted(nack.lost) == [0, 65534, 65535]
    lost = [65533, 65535, 0, 1, 5, 40000]
    [again] = parse_compound(Nack(1, 2, lost).serialize())
    assert sorted(again.lost) == sorted(lost)


def test_nack_many_pairs():
    lost = list(range(1000, 1100, 3)) + [1, 2, 3]
    packet = Nack(7, 8, lost).serialize()
    [parsed] = parse_compound(packet)
    assert sorted(parsed.lost) == sorted(lost)
    assert len(parsed.lost) == len(lost)  # no duplicates


def test_pli_vector():
    vector = bytes([0x81, 206, 0x00, 0x02, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78])
    [pli] = parse_compound(vector)
    assert pli == Pli(1, 0x12345678)
    assert pli.serialize() == vector


def test_fir_vector():
    # FMT 4: sender, media ssrc 0, then (ssrc, seq nr, 3 reserved) per entry
    vector = bytes(
        [0x84, 206, 0x00, 0x06, 0, 0, 0, 1, 0, 0, 0, 0]
        + [0, 0, 0, 9, 7, 0, 0, 0]
        + [0, 0, 0, 10, 255, 0, 0, 0]
    )
    [fir] = parse_compound(vector)
    assert fir == Fir(1, [(9, 7), (10, 255)])
    assert fir.serialize() == vector


def test_remb_known_vector():
    # 'REMB', 2 SSRCs, exponent 1, mantissa 0x3FB93: 522022 bps
    vector = bytes.fromhex("8fce0006123456780000000052454d420207fb93234567892bcdef01")
    [remb] = parse_compound(vector)
    assert isinstance(remb, Remb)
    assert remb.sender_ssrc == 0x12345678
    assert remb.bitrate == 0x3FB93 << 1 == 522022
    assert remb.ssrcs == [0x23456789, 0x2BCDEF01]
    assert remb.serialize() == vector


@pytest.mark.parametrize("bitrate", [0, 1, 262143, 262144, 1_000_000, 2_500_000, 10**9])
def test_remb_exponent_mantissa(bitrate):
    packet = Remb(1, bitrate, [2]).serialize()
    raw = int.from_bytes(packet[17:20], "big")
    exponent, mantissa = raw >> 18, raw & 0x3FFFF
    assert mantissa < 1 << 18
    assert mantissa << exponent <= bitrate < (mantissa + 1) << exponent
    [parsed] = parse_compound(packet)
    assert parsed.bitrate == mantissa << exponent
    if bitrate < 1 << 18:
        assert exponent == 0 and parsed.bitrate == bitrate


def test_remb_1mbps_bytes():
    packet = Remb(1, 1_000_000, [2]).serialize()
    # 1_000_000 = 250000 << 2: exponent 2, mantissa 0x3D090 -> 0x0BD090
    assert packet[16:20] == bytes([1, 0x0B, 0xD0, 0x90])


def test_transport_cc_is_not_a_nack():
    # RTPFB FMT 15 (transport-wide CC): its FCI is not a PID/BLP list
    vector = bytes(
        [0x8F, 205, 0x00, 0x05, 0, 0, 0, 1, 0, 0, 0, 2]
        + [0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x10, 0x00, 0x20, 0x01, 0x04, 0x00]
    )
    [packet] = parse_compound(vector)
    assert isinstance(packet, UnknownRtcp)
    assert (packet.packet_type, packet.fmt) == (205, 15)
    assert packet.data == vector
    assert packet.serialize() == vector


def test_unknown_types_come_back_raw():
    app = bytes([0x80, 204, 0x00, 0x02, 0, 0, 0, 1]) + b"NAME"  # APP
    afb = bytes([0x8F, 206, 0x00, 0x03, 0, 0, 0, 1, 0, 0, 0, 0, ord("X"), 0, 0, 0])  # not REMB
    [a, b] = parse_compound(app + afb)
    assert isinstance(a, UnknownRtcp) and a.packet_type == 204 and a.data == app
    assert isinstance(b, UnknownRtcp) and (b.packet_type, b.fmt) == (206, 15)


def test_compound_packet_sr_sdes_remb_nack():
    sr = SenderReport(5, ntp_now(1_700_000_000.25), 90000, 10, 12000, [ReportBlock(6, 1, -1)])
    sdes = Sdes([(5, "publisher")])
    remb = Remb(5, 1_500_000, [6, 7])
    nack = Nack(5, 6, [10, 12])
    pli = Pli(5, 6)
    compound = b"".join(p.serialize() for p in (sr, sdes, remb, nack, pli))
    parsed = parse_compound(compound)
    assert [type(p) for p in parsed] == [SenderReport, Sdes, Remb, Nack, Pli]
    assert parsed[0] == sr
    assert parsed[0].reports[0].packets_lost == -1
    assert parsed[1] == sdes
    assert parsed[2].ssrcs == [6, 7] and abs(parsed[2].bitrate - 1_500_000) < 1_500_000 / 2**17
    assert sorted(parsed[3].lost) == [10, 12]
    assert parsed[4] == pli


def test_ntp_helpers():
    ntp = ntp_now(0.5)  # Unix epoch + 0.5 s
    assert ntp >> 32 == 2208988800
    assert ntp & 0xFFFFFFFF == 1 << 31
    assert ntp_middle(0x1122334455667788) == 0x33445566


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x80, 201, 0x00]),  # header cut
        bytes([0x81, 201, 0x00, 0x01, 0, 0, 0, 1]),  # RR says 1 block, none present
        bytes([0x80, 200, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 0]),  # SR without sender info
        bytes([0x81, 206, 0x00, 0x01, 0, 0, 0, 1]),  # PLI without media SSRC
        bytes([0x81, 205, 0x00, 0x01, 0, 0, 0, 1]),  # NACK without media SSRC
        bytes([0x81, 206, 0x00, 0x05, 0, 0, 0, 1]),  # length beyond data
        bytes([0x41, 206, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2]),  # version 1
        bytes([0x82, 203, 0x00, 0x01, 0, 0, 0, 1]),  # BYE with 2 sources, 1 present
        bytes([0x81, 202, 0x00, 0x00]),  # SDES chunk missing
        # REMB claims 3 SSRCs, carries 1
        bytes.fromhex("8fce0005123456780000000052454d420307fb9323456789"),
        # a valid PLI followed by a cut header
        bytes([0x81, 206, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2, 0x80, 200]),
    ],
)
def test_rtcp_malformed_raises_value_error(data):
    with pytest.raises(ValueError):
        parse_compound(data)


# ---------------------------------------------------------------------------------------------
# VP8 and H264 payload peeks
# ---------------------------------------------------------------------------------------------

VP8_KEY_HEADER = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A])  # P=0: keyframe (+ start code)
VP8_INTER_HEADER = bytes([0x31, 0x02, 0x00])  # P=1: interframe


def test_vp8_minimal_descriptor_keyframe():
    payload = bytes([0x10]) + VP8_KEY_HEADER
    d = Vp8Descriptor.parse(payload)
    assert d.start_of_partition and d.partition_index == 0
    assert (d.picture_id, d.picture_id_bits, d.tl0_pic_idx, d.tid, d.key_idx) == (-1, 0, -1, -1, -1)
    assert d.size == 1
    assert d.keyframe
    assert vp8_is_keyframe(payload)


def test_vp8_interframe():
    payload = bytes([0x10]) + VP8_INTER_HEADER
    assert not Vp8Descriptor.parse(payload).keyframe
    assert not vp8_is_keyframe(payload)


def test_vp8_seven_bit_picture_id():
    # X=1 S=1 | I=1 | M=0 pid 0x12
    payload = bytes([0x90, 0x80, 0x12]) + VP8_KEY_HEADER
    d = Vp8Descriptor.parse(payload)
    assert (d.picture_id, d.picture_id_bits, d.size) == (0x12, 7, 3)
    assert d.keyframe and vp8_is_keyframe(payload)


def test_vp8_fifteen_bit_picture_id_tl0_tid_keyidx():
    # X=1 S=1 | I L T K | M=1 pid 0x0123 | TL0PICIDX 5 | TID=2 Y=1 KEYIDX=3
    payload = bytes([0x90, 0xF0, 0x81, 0x23, 0x05, 0b10_1_00011]) + VP8_INTER_HEADER
    d = Vp8Descriptor.parse(payload)
    assert (d.picture_id, d.picture_id_bits) == (0x0123, 15)
    assert d.tl0_pic_idx == 5
    assert (d.tid, d.layer_sync, d.key_idx) == (2, True, 3)
    assert d.size == 6
    assert not d.keyframe and not vp8_is_keyframe(payload)
    key = bytes([0x90, 0xF0, 0x81, 0x23, 0x05, 0b10_1_00011]) + VP8_KEY_HEADER
    assert Vp8Descriptor.parse(key).keyframe and vp8_is_keyframe(key)


def test_vp8_tid_without_keyidx_and_keyidx_without_tid():
    t_only = Vp8Descriptor.parse(bytes([0x90, 0x20, 0b01_0_11111]) + VP8_INTER_HEADER)
    assert (t_only.tid, t_only.layer_sync, t_only.key_idx, t_only.size) == (1, False, -1, 3)
    k_only = Vp8Descriptor.parse(bytes([0x90, 0x10, 0b11_1_00111]) + VP8_INTER_HEADER)
    assert (k_only.tid, k_only.layer_sync, k_only.key_idx, k_only.size) == (-1, False, 7, 3)


def test_vp8_continuation_packets_are_not_keyframes():
    # S=0 (continuation) and partition 1: the P bit is not at this position
    for b0 in (0x00, 0x11, 0x80):
        payload = bytes([b0, 0x00, 0x00]) + bytes(4)
        assert not Vp8Descriptor.parse(payload).keyframe
        assert not vp8_is_keyframe(payload)


@pytest.mark.parametrize(
    "payload",
    [b"", bytes([0x80]), bytes([0x90, 0x80]), bytes([0x90, 0x80, 0x81]), bytes([0x90, 0x40])],
)
def test_vp8_truncated_descriptor(payload):
    with pytest.raises(ValueError):
        Vp8Descriptor.parse(payload)
    assert not vp8_is_keyframe(payload)


def test_h264_keyframes():
    assert h264_is_keyframe(bytes([0x65, 0x88, 0x80]))  # single NAL: IDR slice (type 5)
    assert h264_is_keyframe(bytes([0x67, 0x42, 0xC0, 0x1F]))  # SPS (type 7)
    assert not h264_is_keyframe(bytes([0x41, 0x9A]))  # non-IDR slice (type 1)
    assert not h264_is_keyframe(bytes([0x68, 0xCE]))  # PPS alone
    assert not h264_is_keyframe(b"")


def test_h264_stap_a():
    sps, pps = bytes([0x67, 0x42, 0xC0, 0x1F]), bytes([0x68, 0xCE, 0x3C, 0x80])
    stap = bytes([0x78]) + len(pps).to_bytes(2, "big") + pps + len(sps).to_bytes(2, "big") + sps
    assert h264_is_keyframe(stap)  # the SPS is the second aggregated unit
    only_pps = bytes([0x78]) + len(pps).to_bytes(2, "big") + pps
    assert not h264_is_keyframe(only_pps)
    cut = bytes([0x78, 0x00, 0x04, 0x68, 0xCE, 0x00])  # second size field cut short
    assert not h264_is_keyframe(cut)


def test_h264_fu_a():
    assert h264_is_keyframe(bytes([0x7C, 0x85, 0xB8]))  # FU-A, S=1, type 5
    assert not h264_is_keyframe(bytes([0x7C, 0x05, 0xB8]))  # middle fragment of an IDR
    assert not h264_is_keyframe(bytes([0x7C, 0x45, 0xB8]))  # end fragment
    assert not h264_is_keyframe(bytes([0x7C, 0x81, 0x9A]))  # start of a non-IDR slice
    assert not h264_is_keyframe(bytes([0x7C]))


def test_keyframe_detector_by_codec():
    assert keyframe_detector("video/VP8") is vp8_is_keyframe
    assert keyframe_detector("VIDEO/h264") is h264_is_keyframe
    assert keyframe_detector("audio/opus") is None


# ---------------------------------------------------------------------------------------------
# Receive statistics, NACK generation, packet cache
# ---------------------------------------------------------------------------------------------


def test_receive_stats_across_wrap_with_loss():
    stats = ReceiveStats(0x42, 90000)
    t = 100.0
    for seq in (65533, 65534, 65535, 0, 1, 3, 4):  # 2 is lost
        stats.update(seq, seq * 3000, t, 1000)
        t += 1 / 30
    assert stats.extended_max == 65536 + 4
    assert stats.packets_lost == 1
    block = stats.report_block(t)
    assert block.ssrc == 0x42
    assert block.highest_sequence == 65536 + 4
    assert block.packets_lost == 1
    assert block.fraction_lost == (1 * 256) // 8
    assert (block.lsr, block.dlsr) == (0, 0)
    # next interval: nothing lost
    for seq in range(5, 15):
        stats.update(seq, seq * 3000, t, 1000)
    block = stats.report_block(t)
    assert block.fraction_lost == 0 and block.packets_lost == 1
    assert stats.bytes_received == 17 * 1000


def test_receive_stats_duplicates_make_loss_negative():
    stats = ReceiveStats(1, 48000)
    for seq in (10, 11, 11, 12, 12):
        stats.update(seq, 0, 1.0, 100)
    assert stats.packets_lost == -2
    block = stats.report_block(2.0)
    assert block.packets_lost == -2 and block.fraction_lost == 0
    [rr] = parse_compound(ReceiverReport(9, [block]).serialize())
    assert rr.reports[0].packets_lost == -2


def test_receive_stats_reordering_does_not_count_as_cycle():
    stats = ReceiveStats(1, 90000)
    for seq in (100, 102, 101, 103):
        stats.update(seq, 0, 1.0, 100)
    assert stats.extended_max == 103 and stats.packets_lost == 0


def test_receive_stats_restart_after_large_jump():
    stats = ReceiveStats(1, 90000)
    for seq in range(1000, 1010):
        stats.update(seq, 0, 1.0, 100)
    stats.update(40000, 0, 1.0, 100)  # the sender restarted its numbering
    for seq in range(40001, 40005):
        stats.update(seq, 0, 1.0, 100)
    assert stats.packets_lost == 0
    assert stats.extended_max == 40004


def test_receive_stats_jitter_and_sender_report():
    stats = ReceiveStats(1, 90000)
    for i in range(50):  # perfectly paced: no jitter
        stats.update(i, i * 3000, 10.0 + i / 30, 100)
    assert stats.jitter < 1e-6
    for i in range(50, 100):  # every other packet 10 ms late: 900 ticks of transit change
        stats.update(i, i * 3000, 10.0 + i / 30 + (0.01 if i % 2 else 0.0), 100)
    assert 300 < stats.jitter < 900
    ntp = 0x1122334455667788
    stats.on_sender_report(ntp, 12345, 20.0)
    block = stats.report_block(20.5)
    assert block.lsr == 0x33445566
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s
    assert block.jitter == int(stats.jitter)


def test_nack_generator_asks_once_then_retries():
    gen = NackGenerator(max_age_s=1.0, retry_s=0.1, max_asks=5)
    t = 1000.0
    for seq in (10, 11, 14):  # 12 and 13 missing
        gen.on_packet(seq, t)
    assert sorted(gen.due(t)) == [12, 13]
    assert gen.due(t + 0.05) == []  # asked just now: not again before retry_s
    assert sorted(gen.due(t + 0.1)) == [12, 13]
    gen.on_packet(12, t + 0.12)  # arrived (retransmitted): no longer asked for
    assert gen.due(t + 0.25) == [13]
    assert gen.nacks_sent == 5


def test_nack_generator_asks_at_once_even_early_in_the_clock():
    gen = NackGenerator(retry_s=0.1)
    gen.on_packet(1, 0.0)
    gen.on_packet(3, 0.0)
    assert gen.due(0.01) == [2]


def test_nack_generator_forgets_after_max_age_and_max_asks():
    gen = NackGenerator(max_age_s=1.0, retry_s=0.1, max_asks=3)
    t = 1000.0
    gen.on_packet(1, t)
    gen.on_packet(3, t)
    asked = sum(len(gen.due(t + i * 0.1)) for i in range(8))
    assert asked == 3  # max_asks
    assert gen.missing == {}
    gen.on_packet(6, t + 1)  # 4, 5 missing
    assert sorted(gen.due(t + 1)) == [4, 5]
    assert gen.due(t + 2.01) == []  # older than max_age: forgotten, never asked again
    assert gen.missing == {}


def test_nack_generator_wrap_and_restart():
    gen = NackGenerator(max_gap=500)
    t = 1000.0
    gen.on_packet(65534, t)
    gen.on_packet(1, t)  # 65535 and 0 missing across the wrap
    assert sorted(gen.due(t)) == [0, 65535]
    gen.on_packet(5000, t)  # a jump beyond max_gap is a restart, not loss
    assert gen.missing == {}
    assert gen.due(t + 1) == []
    gen.on_packet(5002, t + 1)
    assert gen.due(t + 1) == [5001]


def test_nack_generator_restart_backwards():
    """A publisher that restarts with lower sequence numbers gets NACKs for new gaps."""
    gen = NackGenerator(max_gap=500)
    t = 1000.0
    for seq in range(30000, 30010):
        gen.on_packet(seq, t)
    gen.on_packet(100, t)  # far behind: a restart, not a late packet
    gen.on_packet(101, t)
    gen.on_packet(103, t)
    assert gen.due(t) == [102]


def test_nack_generator_duplicates_and_late_packets():
    gen = NackGenerator()
    t = 1000.0
    gen.on_packet(100, t)
    gen.on_packet(100, t)
    gen.on_packet(105, t)
    gen.on_packet(103, t)  # late
    gen.on_packet(103, t)
    assert sorted(gen.due(t)) == [101, 102, 104]


class _H:
    def __init__(self, seq: int) -> None:
        self.sequence_number = seq


def test_packet_cache_overwrite_semantics():
    cache = PacketCache(64)
    assert cache.get(5) is None
    h5 = _H(5)
    cache.put(5, b"five", h5)
    assert cache.get(5) == (b"five", h5)
    assert cache.get(69) is None  # same slot, different sequence number
    h69 = _H(69)
    cache.put(69, b"sixty-nine", h69)  # overwrites slot 5
    assert cache.get(5) is None
    assert cache.get(69) == (b"sixty-nine", h69)
    # wrap of the 16-bit space: 65535 and 0 live in different slots
    cache.put(65535, b"a", _H(65535))
    cache.put(0, b"b", _H(0))
    assert cache.get(65535)[0] == b"a" and cache.get(0)[0] == b"b"
    # the last `size` packets are all there
    for seq in range(1000, 1064):
        cache.put(seq, bytes([seq & 0xFF]), _H(seq))
    assert all(cache.get(seq) is not None for seq in range(1000, 1064))
    assert cache.get(999) is None
    with pytest.raises(ValueError):
        PacketCache(1000)
