"""RID, repaired-RID and MID header extensions read by RtpHeader (byte vectors, RFC 8285), and
transport-wide sequence numbers stamped by DownTrack on media and retransmissions."""

from __future__ import annotations

import time

import pytest

from sfu.media.forwarder import DownTrack, bind
from sfu.media.producer import CodecInfo, Producer, TrackInfo
from sfu.media.rtp import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    ExtensionIds,
    RtpHeader,
    build_rtp,
)
from sfu.media.twcc import TransportSequencer, TwccFeedback

from .simulcast_packets import header_extensions, rtp_fields, vp8_descriptor

# Chromium's ids: mid 9, rid 10, repaired rid 11, transport-cc 4, audio level 1
CHROME = ExtensionIds(mid=9, rid=10, repaired_rid=11, audio_level=1, transport_cc=4)

FIXED = bytes.fromhex("80 60 1234 00010203 deadbeef".replace(" ", ""))  # V=2 PT=96, no X
PAYLOAD = bytes.fromhex("9080 8011 00 50 aabbcc")


def with_x(fixed: bytes, csrc: int = 0) -> bytes:
    return bytes([fixed[0] | 0x10 | csrc]) + fixed[1:]


# -- one-byte header -----------------------------------------------------------------------------


def test_one_byte_mid_and_rid() -> None:
    ext = bytes.fromhex(
        "bede 0002"  # one-byte profile, 2 words
        "90 31"  # id 9 (mid), 1 byte: "1"
        "a0 68"  # id 10 (rid), 1 byte: "h"
        "0000 0000"  # padding
    )
    packet = with_x(FIXED) + ext + PAYLOAD
    h = RtpHeader.parse(packet, CHROME)
    assert (h.mid, h.rid, h.repaired_rid) == (b"1", b"h", None)
    assert h.payload_offset == 24
    assert packet[h.payload_offset :] == PAYLOAD
    assert (h.payload_type, h.sequence_number, h.timestamp, h.ssrc) == (
        96,
        0x1234,
        0x00010203,
        0xDEADBEEF,
    )


def test_one_byte_rtx_packet_with_repaired_rid_among_other_extensions() -> None:
    ext = bytes.fromhex(
        "bede 0005"
        "41 0007"  # id 4 (transport-cc), 2 bytes
        "22 123456"  # id 2 (abs-send-time), 3 bytes
        "91 3130"  # id 9 (mid), 2 bytes: "10"
        "b5 68692d726573"  # id 11 (repaired rid), 6 bytes: "hi-res"
        "000000"
    )
    assert len(ext) == 4 + 20
    packet = bytes([0x90, 0x61]) + FIXED[2:] + ext + b"\x12\x34" + PAYLOAD  # RTX PT 97 + OSN
    h = RtpHeader.parse(packet, CHROME)
    assert h.mid == b"10"
    assert h.repaired_rid == b"hi-res"
    assert h.rid is None
    assert h.payload_type == 97
    assert packet[h.payload_offset : h.payload_offset + 2] == b"\x12\x34"


def test_one_byte_audio_level_mid_and_csrcs() -> None:
    csrcs = bytes.fromhex("00000001 00000002".replace(" ", ""))
    ext = bytes.fromhex("bede 0001 10 d5 90 30")  # audio level V=1 level 85; mid "0"
    packet = bytes([0x92]) + FIXED[1:] + csrcs + ext + PAYLOAD
    h = RtpHeader.parse(packet, CHROME)
    assert h.audio_level == 0xD5
    assert h.mid == b"0"
    assert h.payload_offset == 12 + 8 + 8


def test_id_15_stops_parsing_and_unnegotiated_ids_are_ignored() -> None:
    ext = bytes.fromhex("bede 0002 9030 f0 a071 000000")  # mid "0", then reserved id 15
    h = RtpHeader.parse(with_x(FIXED) + ext + PAYLOAD, CHROME)
    assert h.mid == b"0" and h.rid is None
    # the same packet read with no rid negotiated, or with nothing negotiated
    ext = bytes.fromhex("bede 0001 9030 a071")
    packet = with_x(FIXED) + ext + PAYLOAD
    h = RtpHeader.parse(packet, ExtensionIds(mid=9))
    assert (h.mid, h.rid) == (b"0", None)
    h = RtpHeader.parse(packet)
    assert (h.mid, h.rid) == (None, None) and h.payload_offset == 20


def test_element_running_past_the_block_is_ignored() -> None:
    ext = bytes.fromhex("bede 0001 90 31 af 71")  # rid claims 16 bytes in a 4-byte block
    h = RtpHeader.parse(with_x(FIXED) + ext + PAYLOAD, CHROME)
    assert h.mid == b"1" and h.rid is None
    assert h.payload_offset == 20


@pytest.mark.parametrize(
    "packet",
    [
        with_x(FIXED) + bytes.fromhex("bede"),  # extension header truncated
        with_x(FIXED) + bytes.fromhex("bede 0003 9031"),  # block longer than the packet
        bytes([0x40]) + FIXED[1:] + PAYLOAD,  # version 1
        FIXED[:11],
    ],
)
def test_malformed_extension_blocks_raise_value_error(packet: bytes) -> None:
    with pytest.raises(ValueError):
        RtpHeader.parse(packet, CHROME)


# -- two-byte header -----------------------------------------------------------------------------


def test_two_byte_mid_rid_and_long_element() -> None:
    long_value = bytes(range(20))  # too long for the one-byte form
    ext = (
        bytes.fromhex("1000 0008")  # two-byte profile (appbits 0), 8 words
        + bytes.fromhex("09 01 31")  # id 9 (mid), 1 byte
        + bytes.fromhex("00")  # padding between elements
        + bytes.fromhex("0a 01 66")  # id 10 (rid): "f"
        + bytes.fromhex("16 14")  # id 22, 20 bytes (unknown to the SFU)
        + long_value
        + bytes.fromhex("0b 00")  # id 11 (repaired rid), zero length
        + bytes.fromhex("00")
    )
    assert len(ext) == 4 + 32
    packet = with_x(FIXED) + ext + PAYLOAD
    h = RtpHeader.parse(packet, CHROME)
    assert (h.mid, h.rid) == (b"1", b"f")
    assert h.repaired_rid == b""
    assert packet[h.payload_offset :] == PAYLOAD


def test_two_byte_profile_with_appbits_and_unknown_profile() -> None:
    ext = bytes.fromhex("1003 0001 0a 01 71 00")  # appbits 3: still the two-byte form
    h = RtpHeader.parse(with_x(FIXED) + ext + PAYLOAD, CHROME)
    assert h.rid == b"q"
    ext = bytes.fromhex("abcd 0001 0a 01 71 00")  # some other profile: not read, skipped
    h = RtpHeader.parse(with_x(FIXED) + ext + PAYLOAD, CHROME)
    assert h.rid is None and h.payload_offset == 20


def test_build_rtp_round_trip() -> None:
    packet = build_rtp(
        payload_type=96,
        sequence_number=7,
        timestamp=9,
        ssrc=10,
        payload=PAYLOAD,
        marker=True,
        extensions=[(9, b"1"), (10, b"q"), (11, b"abcdefghijklmnop")],
    )
    h = RtpHeader.parse(packet, CHROME)
    assert (h.mid, h.rid, h.repaired_rid) == (b"1", b"q", b"abcdefghijklmnop")
    assert h.marker and packet[h.payload_offset :] == PAYLOAD
    assert header_extensions(packet) == {9: b"1", 10: b"q", 11: b"abcdefghijklmnop"}


# -- transport-cc stamping -----------------------------------------------------------------------

SUB_TWCC_ID, SUB_MID_ID, SUB_ABS_ID, SUB_LEVEL_ID = 5, 4, 2, 1
PUB_VP8_PT, PUB_RTX_PT = 96, 97


class SharedWire:
    """One subscriber transport: every packet of every DownTrack, in send order."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.packets.append(bytes(data))
        return True

    def transport_seqs(self) -> list[int]:
        return [int.from_bytes(header_extensions(p)[SUB_TWCC_ID], "big") for p in self.packets]


def make_downtrack(kind: str, n: int, wire: SharedWire, sequencer, *, rtx: bool = True):
    dt = DownTrack(
        kind=kind,
        mid=str(n),
        ssrc=0x5EB50000 + n,
        rtx_ssrc=0x5EB51000 + n if rtx and kind == "video" else None,
        send=wire.send,
    )
    if kind == "video":
        dt.configure(
            mime_type="video/VP8",
            payload_type=120,
            clock_rate=90000,
            rtx_payload_type=121,
            extension_ids={EXT_MID: SUB_MID_ID, EXT_ABS_SEND_TIME: SUB_ABS_ID},
            transport_cc_id=SUB_TWCC_ID,
            sequencer=sequencer,
        )
    else:
        dt.configure(
            mime_type="audio/opus",
            payload_type=109,
            clock_rate=48000,
            rtx_payload_type=None,
            extension_ids={EXT_MID: SUB_MID_ID, EXT_AUDIO_LEVEL: SUB_LEVEL_ID},
            transport_cc_id=SUB_TWCC_ID,
            sequencer=sequencer,
        )
    return dt


def video_producer() -> Producer:
    return Producer(
        TrackInfo(id="TR_v", kind="video", publisher="pub"),
        CodecInfo("video/VP8", 90000, PUB_VP8_PT, rtx_payload_type=PUB_RTX_PT),
        send_keyframe_request=lambda ssrc: None,
    )


def audio_producer() -> Producer:
    return Producer(
        TrackInfo(id="TR_a", kind="audio", publisher="pub"),
        CodecInfo("audio/opus", 48000, 111, channels=2),
        send_keyframe_request=lambda ssrc: None,
    )


def feed_video(producer: Producer, n: int, now: float, *, seq0: int = 500) -> None:
    for i in range(n):
        keyframe = i == 0
        payload = vp8_descriptor(10 + i, 1, 0) + (b"\x50" if keyframe else b"\x51") + bytes(90 + i)
        packet = build_rtp(
            payload_type=PUB_VP8_PT,
            sequence_number=seq0 + i,
            timestamp=1000 + 3000 * i,
            ssrc=0xAAAA,
            payload=payload,
            marker=True,
        )
        producer.on_rtp(packet, RtpHeader.parse(packet), now + i / 30)


def test_transport_seq_is_shared_across_downtracks_media_and_retransmissions() -> None:
    wire = SharedWire()
    sequencer = TransportSequencer(history=1024, start_seq=65533)
    video_a = make_downtrack("video", 1, wire, sequencer)
    video_b = make_downtrack("video", 2, wire, sequencer)
    audio = make_downtrack("audio", 3, wire, sequencer)
    vp = video_producer()
    ap = audio_producer()
    fw_a, fw_b = bind(vp, video_a), bind(vp, video_b)
    bind(ap, audio)
    now = time.monotonic()
    feed_video(vp, 3, now)
    opus = build_rtp(
        payload_type=111,
        sequence_number=40,
        timestamp=960,
        ssrc=0xBBBB,
        payload=b"\xfc" * 60,
        extensions=[(1, b"\x85")],
    )
    ap.on_rtp(opus, RtpHeader.parse(opus, ExtensionIds(audio_level=1)), now + 0.1)
    feed_video(vp, 2, now + 0.2, seq0=503)
    media = len(wire.packets)
    assert media == 5 * 2 + 1
    sent_a = [rtp_fields(p)["seq"] for p in wire.packets if rtp_fields(p)["ssrc"] == video_a.ssrc]
    sent_b = [rtp_fields(p)["seq"] for p in wire.packets if rtp_fields(p)["ssrc"] == video_b.ssrc]
    # retransmissions (RTX) on both video m-lines, interleaved with more media
    assert fw_a.on_nack([sent_a[1], sent_a[3]]) == 2
    feed_video(vp, 1, now + 0.3, seq0=505)
    assert fw_b.on_nack([sent_b[0]]) == 1
    assert video_a.retransmitted == 2 and video_b.retransmitted == 1

    seqs = wire.transport_seqs()
    assert len(seqs) == len(wire.packets) == media + 2 + 2 + 1
    # one counter for the whole transport: +1 per packet sent, across the 16-bit wrap
    assert seqs == [(65533 + i) & 0xFFFF for i in range(len(seqs))]
    rtx_ssrcs = {video_a.rtx_ssrc, video_b.rtx_ssrc}
    assert sum(1 for p in wire.packets if rtp_fields(p)["ssrc"] in rtx_ssrcs) == 3
    # the other extensions are still there and readable next to transport-cc
    for packet in wire.packets:
        ids = header_extensions(packet)
        assert ids[SUB_MID_ID] in (b"1", b"2", b"3")
        assert len(ids[SUB_TWCC_ID]) == 2
    assert sequencer.last_seq == 65533 + len(seqs) - 1

    # the sequencer logged each packet's size: feedback brings them back
    results = sequencer.on_feedback(
        TwccFeedback.from_arrivals(1, 2, 65533, [1000 * i for i in range(len(seqs))])
    )
    assert [r.seq for r in results] == [65533 + i for i in range(len(seqs))]
    assert [r.size for r in results] == [len(p) for p in wire.packets]
    assert all(r.cluster == -1 for r in results)


def test_probe_retransmissions_carry_their_cluster() -> None:
    wire = SharedWire()
    sequencer = TransportSequencer(history=256)
    dt = make_downtrack("video", 1, wire, sequencer)
    vp = video_producer()
    fw = bind(vp, dt)
    feed_video(vp, 4, time.monotonic())
    out = fw.recent_out_seqs(4)
    assert len(out) == 4
    sent = [fw.resend(seq, cluster=7) for seq in out]
    assert all(sent) and dt.probe_packets == 4 and dt.retransmitted == 0
    results = sequencer.on_feedback(
        TwccFeedback.from_arrivals(1, 2, 0, [500 * i for i in range(8)])
    )
    assert [r.cluster for r in results] == [-1] * 4 + [7] * 4
    assert [r.size for r in results] == [len(p) for p in wire.packets]
    assert wire.transport_seqs() == list(range(8))


def test_no_transport_cc_without_an_id_or_a_sequencer() -> None:
    wire = SharedWire()
    sequencer = TransportSequencer(history=64)
    dt = DownTrack(kind="video", mid="1", ssrc=1, rtx_ssrc=2, send=wire.send)
    dt.configure(
        mime_type="video/VP8",
        payload_type=120,
        clock_rate=90000,
        rtx_payload_type=121,
        extension_ids={EXT_MID: SUB_MID_ID},
        transport_cc_id=0,
        sequencer=sequencer,
    )
    vp = video_producer()
    bind(vp, dt)
    feed_video(vp, 2, time.monotonic())
    assert len(wire.packets) == 2
    assert all(set(header_extensions(p)) == {SUB_MID_ID} for p in wire.packets)
    assert sequencer.last_seq == -1  # nothing logged
