"""RED audio redundancy (RFC 2198): the wire format, unwrapping with recovery, the SDP we
write for publishers, subscribers and players, and the fan-out to viewers with and without RED.

Byte vectors are written out by hand from the RFC's layout, not produced by the code under
test, so a wrong bit position in parse or build fails here.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.forwarder import DownTrack, bind
from sfu.media.producer import CodecInfo, Producer, TrackInfo
from sfu.media.publisher import PublisherSession
from sfu.media.red import (
    MAX_RED_BLOCKS,
    RedError,
    RedUnwrapper,
    build_red,
    parse_red,
    rewrite_block_types,
)
from sfu.media.rtcp import ReportBlock
from sfu.media.rtp import RtpHeader, build_rtp
from sfu.media.sdp import (
    accept_red,
    answered_red,
    offer_red,
    parse_simulcast,
    patch_publisher_answer,
)

RED_PT, OPUS_PT = 63, 111  # what Chromium offers
SSRC = 0x11223344

# Two redundant blocks (offsets 1920 and 960, lengths 3 and 2) and a 4-byte primary, all Opus:
#   F=1 PT=111 | offset 1920 = 0b00011110000000 | length 3    -> EF 1E 00 03
#   F=1 PT=111 | offset  960 = 0b00001111000000 | length 2    -> EF 0F 00 02
#   F=0 PT=111                                                 -> 6F
VECTOR = bytes.fromhex("EF1E0003EF0F00026F") + b"AAA" + b"BB" + b"CCCC"


def test_parse_vector_blocks_offsets_lengths() -> None:
    blocks = parse_red(VECTOR, 0, len(VECTOR))
    assert [(pt, off) for pt, off, _, _ in blocks] == [(111, 1920), (111, 960), (111, 0)]
    assert [VECTOR[b:e] for _, _, b, e in blocks] == [b"AAA", b"BB", b"CCCC"]


def test_parse_inside_a_packet_uses_absolute_offsets() -> None:
    packet = b"\x00" * 12 + VECTOR + b"\x00\x00\x02"  # 3 bytes after the payload (padding)
    blocks = parse_red(packet, 12, len(packet) - 3)
    assert packet[blocks[-1][2] : blocks[-1][3]] == b"CCCC"
    assert packet[blocks[0][2] : blocks[0][3]] == b"AAA"


def test_build_vector_and_limits() -> None:
    assert build_red([(111, 1920, b"AAA"), (111, 960, b"BB"), (111, 0, b"CCCC")]) == VECTOR
    # the largest offset and length fit exactly: 0x3FFF -> FF FC | 03 FF
    assert build_red([(111, 0x3FFF, b"x" * 1023), (111, 0, b"")])[:5] == bytes.fromhex("EFFFFFFF6F")
    assert build_red([(111, 0, b"only")]) == b"\x6fonly"
    with pytest.raises(ValueError):
        build_red([(111, 0x4000, b"x"), (111, 0, b"y")])
    with pytest.raises(ValueError):
        build_red([(111, 960, b"x" * 1024), (111, 0, b"y")])
    with pytest.raises(ValueError):
        build_red([])


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # nothing
        bytes.fromhex("EF1E00"),  # block header cut short
        bytes.fromhex("EF1E0003") + b"A",  # no primary header after the block header
        bytes.fromhex("EF1E00096F") + b"AAA",  # block length past the end
        bytes.fromhex("EF0F0000") * MAX_RED_BLOCKS + b"\x6f",  # too many blocks
    ],
)
def test_malformed_payloads_raise(payload: bytes) -> None:
    with pytest.raises(RedError):
        parse_red(payload, 0, len(payload))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_red_error(payload: bytes) -> None:
    try:
        blocks = parse_red(payload, 0, len(payload))
    except RedError:
        return
    assert blocks and all(0 <= b <= e <= len(payload) for _, _, b, e in blocks)


def test_rewrite_block_types_changes_only_payload_types() -> None:
    rewritten = rewrite_block_types(VECTOR, 0, len(VECTOR), 96)
    assert bytes(rewritten[:9]) == bytes.fromhex("E01E0003E00F000260")
    assert bytes(rewritten[9:]) == VECTOR[9:]


def _red_packet(seq: int, ts: int, frames: dict[int, bytes], redundancy: int = 2) -> bytes:
    """What a browser sends: the frame of `seq` as primary, the ones before as redundancy."""
    blocks = [
        (OPUS_PT, 960 * k, frames[seq - k]) for k in range(redundancy, 0, -1) if seq - k in frames
    ]
    blocks.append((OPUS_PT, 0, frames[seq]))
    return build_rtp(
        payload_type=RED_PT,
        sequence_number=seq,
        timestamp=ts,
        ssrc=SSRC,
        payload=build_red(blocks),
        marker=seq == 100,
    )


FRAMES = {seq: bytes([seq & 0xFF]) * (20 + seq % 7) for seq in range(100, 120)}


def _ts(seq: int) -> int:
    return 5000 + 960 * (seq - 100)


def _unwrap(unwrapper: RedUnwrapper, seq: int, redundancy: int = 2) -> list[tuple[int, int, bytes]]:
    data = _red_packet(seq, _ts(seq), FRAMES, redundancy)
    out = unwrapper.unwrap(data, RtpHeader.parse(data))
    result = []
    for pdata, ph in out:
        assert ph.payload_type == OPUS_PT and ph.ssrc == SSRC
        result.append((ph.sequence_number, ph.timestamp, bytes(pdata[ph.payload_offset :])))
    return result


def test_unwrap_without_loss_gives_the_primaries() -> None:
    unwrapper = RedUnwrapper(RED_PT, OPUS_PT)
    for seq in range(100, 105):
        assert _unwrap(unwrapper, seq) == [(seq, _ts(seq), FRAMES[seq])]
    assert unwrapper.recovered == 0


def test_lost_primary_is_recovered_from_the_next_packets_redundancy() -> None:
    unwrapper = RedUnwrapper(RED_PT, OPUS_PT)
    assert _unwrap(unwrapper, 100) == [(100, _ts(100), FRAMES[100])]
    # 101 lost: 102 carries it (offset 960) and 100 (offset 1920, already sent)
    assert _unwrap(unwrapper, 102) == [
        (101, _ts(101), FRAMES[101]),
        (102, _ts(102), FRAMES[102]),
    ]
    # 103 and 104 lost: 105 carries both (distance 2)
    assert _unwrap(unwrapper, 105) == [
        (103, _ts(103), FRAMES[103]),
        (104, _ts(104), FRAMES[104]),
        (105, _ts(105), FRAMES[105]),
    ]
    assert unwrapper.recovered == 3
    # 106-108 lost with only two frames of redundancy: 106 stays lost
    assert [s for s, _, _ in _unwrap(unwrapper, 109)] == [107, 108, 109]


def test_late_original_of_a_recovered_packet_is_not_sent_twice() -> None:
    unwrapper = RedUnwrapper(RED_PT, OPUS_PT)
    _unwrap(unwrapper, 100)
    assert [s for s, _, _ in _unwrap(unwrapper, 102)] == [101, 102]
    assert _unwrap(unwrapper, 101) == []  # arrives late: already recovered
    assert _unwrap(unwrapper, 102) == []  # duplicate
    # a late packet nobody recovered (redundancy 1 could not cover 104) still goes out
    _unwrap(unwrapper, 103)
    assert [s for s, _, _ in _unwrap(unwrapper, 106, redundancy=1)] == [105, 106]
    assert _unwrap(unwrapper, 104) == [(104, _ts(104), FRAMES[104])]


def test_plain_opus_and_malformed_red_in_a_red_stream() -> None:
    unwrapper = RedUnwrapper(RED_PT, OPUS_PT)
    plain = build_rtp(payload_type=OPUS_PT, sequence_number=7, timestamp=1, ssrc=SSRC, payload=b"o")
    h = RtpHeader.parse(plain)
    assert unwrapper.unwrap(plain, h) == [(plain, h)]
    junk = build_rtp(
        payload_type=RED_PT, sequence_number=8, timestamp=2, ssrc=SSRC, payload=b"\xff"
    )
    assert unwrapper.unwrap(junk, RtpHeader.parse(junk)) == []
    assert unwrapper.malformed == 1


def test_sequence_numbers_wrap() -> None:
    unwrapper = RedUnwrapper(RED_PT, OPUS_PT)
    frames = {0xFFFE: b"a", 0xFFFF: b"b", 0x10000: b"c"}

    def send(seq: int) -> list[int]:
        data = build_rtp(
            payload_type=RED_PT,
            sequence_number=seq & 0xFFFF,
            timestamp=seq * 960,
            ssrc=SSRC,
            payload=build_red(
                ([(OPUS_PT, 960, frames[seq - 1])] if seq - 1 in frames else [])
                + [(OPUS_PT, 0, frames[seq])]
            ),
        )
        return [ph.sequence_number for _, ph in unwrapper.unwrap(data, RtpHeader.parse(data))]

    assert send(0xFFFE) == [0xFFFE]
    assert send(0x10000) == [0xFFFF, 0]


# -- SDP ---------------------------------------------------------------------------------------

CHROMIUM_AUDIO = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "a=mid:0",
        "a=sendonly",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "",
    ]
)
# what aiortc answers to it: Opus only, no fmtp
AIORTC_ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 9 0",
        "a=mid:0",
        "a=recvonly",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "",
    ]
)
# what aiortc offers a subscriber: its own Opus payload type 96
AIORTC_OFFER = AIORTC_ANSWER.replace("111", "96").replace("recvonly", "sendonly")


def _mline(sdp: str) -> list[str]:
    return next(line for line in sdp.split("\r\n") if line.startswith("m=audio")).split()[3:]


def test_chromium_offer_red_and_opus_payload_types() -> None:
    offer = parse_simulcast(CHROMIUM_AUDIO)["0"]
    assert offer.red == (63, 111) and offer.opus_payload_type == 111
    # RED over another codec, or a RED fmtp naming other payload types: not ours to use
    other = CHROMIUM_AUDIO.replace("a=fmtp:63 111/111", "a=fmtp:63 9/9")
    assert parse_simulcast(other)["0"].red is None
    assert parse_simulcast(AIORTC_ANSWER)["0"].red is None


def test_publisher_answer_puts_red_first_and_asks_for_fec() -> None:
    offers = parse_simulcast(CHROMIUM_AUDIO)
    answer = patch_publisher_answer(AIORTC_ANSWER, offers, red=True, opus_fec=True)
    assert _mline(answer) == ["63", "111", "9", "0"]
    assert "a=rtpmap:63 red/48000/2" in answer and "a=fmtp:63 111/111" in answer
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in answer
    assert answered_red(answer) == {"0": (63, 111)}
    plain = patch_publisher_answer(AIORTC_ANSWER, offers, red=False, opus_fec=False)
    assert _mline(plain) == ["111", "9", "0"] and "red/" not in plain and "fmtp" not in plain
    # an offer without RED gets no RED back
    no_red = parse_simulcast(CHROMIUM_AUDIO.replace("a=rtpmap:63 red/48000/2", ""))
    assert "red/" not in patch_publisher_answer(AIORTC_ANSWER, no_red, red=True)


def test_subscriber_offer_adds_red_after_opus_with_its_payload_type() -> None:
    offer = offer_red(AIORTC_OFFER, red=True, opus_fec=True)
    assert _mline(offer) == ["96", "9", "0", "63"]
    assert "a=fmtp:63 96/96" in offer and "a=fmtp:96 minptime=10;useinbandfec=1" in offer
    assert answered_red(offer) == {"0": (63, 96)}
    # a browser's answer that keeps RED, with the fmtp left out
    answer = offer.replace("a=fmtp:63 96/96\r\n", "").replace("sendonly", "recvonly")
    assert answered_red(answer) == {"0": (63, 96)}
    assert offer_red(offer, red=True, opus_fec=True) == offer  # idempotent
    assert "red/" not in offer_red(AIORTC_OFFER, red=False, opus_fec=True)


def test_player_answer_accepts_red_when_offered() -> None:
    player_offer = CHROMIUM_AUDIO.replace("sendonly", "recvonly")
    answer = accept_red(AIORTC_ANSWER, parse_simulcast(player_offer), red=True, opus_fec=False)
    assert _mline(answer) == ["111", "9", "0", "63"]
    assert answered_red(answer) == {"0": (63, 111)}


# -- fan-out -----------------------------------------------------------------------------------

SUB_OPUS_PT, SUB_RED_PT = 96, 63


class Wire:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.packets.append(bytes(data))
        return True


def _viewer(red: bool) -> tuple[DownTrack, Wire]:
    wire = Wire()
    dt = DownTrack(kind="audio", mid="a", ssrc=0xABCD0000 + red, send=wire.send)
    dt.configure(
        mime_type="audio/opus",
        payload_type=SUB_OPUS_PT,
        clock_rate=48000,
        rtx_payload_type=None,
        extension_ids={},
        red=(SUB_RED_PT, SUB_OPUS_PT) if red else None,
    )
    return dt, wire


def _red_producer() -> Producer:
    codec = CodecInfo("audio/opus", 48000, OPUS_PT, channels=2, red_payload_type=RED_PT)
    return Producer(
        TrackInfo(id="TR_red", kind="audio", publisher="seller"),
        codec,
        send_keyframe_request=lambda ssrc: None,
    )


def test_red_to_red_viewers_and_plain_opus_with_recovery_to_the_others() -> None:
    producer = _red_producer()
    red_dt, red_wire = _viewer(red=True)
    plain_dt, plain_wire = _viewer(red=False)
    bind(producer, red_dt)
    bind(producer, plain_dt)
    assert red_dt.red_source_pt == RED_PT and plain_dt.red_source_pt == -1
    sent = [100, 101, 103, 104, 106]  # 102 and 105 lost on the publisher's uplink
    for seq in sent:
        data = _red_packet(seq, _ts(seq), FRAMES, redundancy=1)
        producer.on_rtp(data, RtpHeader.parse(data), 1.0 + seq / 50)

    red_out = [RtpHeader.parse(p) for p in red_wire.packets]
    assert [h.payload_type for h in red_out] == [SUB_RED_PT] * len(sent)
    # consecutive input gaps stay gaps (the viewer's own decoder recovers from RED)
    assert [(h.sequence_number - red_out[0].sequence_number) & 0xFFFF for h in red_out] == [
        s - 100 for s in sent
    ]
    # the blocks now name the viewer's Opus payload type; the frames are untouched
    last = red_wire.packets[-1]
    blocks = parse_red(last, red_out[-1].payload_offset, len(last))
    assert [(pt, off) for pt, off, _, _ in blocks] == [(SUB_OPUS_PT, 960), (SUB_OPUS_PT, 0)]
    assert [last[b:e] for _, _, b, e in blocks] == [FRAMES[105], FRAMES[106]]

    plain_out = [(RtpHeader.parse(p), p) for p in plain_wire.packets]
    first = plain_out[0][0]
    assert all(h.payload_type == SUB_OPUS_PT for h, _ in plain_out)
    got = [
        (
            (h.sequence_number - first.sequence_number) & 0xFFFF,
            (h.timestamp - first.timestamp) & 0xFFFFFFFF,
            p[h.payload_offset :],
        )
        for h, p in plain_out
    ]
    # every frame arrives, in order, numbered without a gap, each at its own timestamp
    assert got == [(s - 100, 960 * (s - 100), FRAMES[s]) for s in range(100, 107)]
    assert producer.red.recovered == 2


def test_publisher_reports_its_viewers_audio_loss_capped() -> None:
    producer = _red_producer()
    data = _red_packet(100, _ts(100), FRAMES)
    producer.on_rtp(data, RtpHeader.parse(data), 1.0)
    viewers = [_viewer(red=False)[0] for _ in range(3)]
    for dt in viewers:
        bind(producer, dt)
    viewers[0].fraction_lost, viewers[1].fraction_lost = 8, 13  # 3 % and 5 %
    blocks = [ReportBlock(ssrc=SSRC, fraction_lost=2), ReportBlock(ssrc=0x999, fraction_lost=0)]
    PublisherSession._report_viewer_loss(blocks, producer, cap=25)
    assert blocks[0].fraction_lost == 13 and blocks[1].fraction_lost == 0
    viewers[2].fraction_lost = 200  # one terrible viewer: capped
    PublisherSession._report_viewer_loss(blocks, producer, cap=25)
    assert blocks[0].fraction_lost == 25
    blocks[0].fraction_lost = 40  # the uplink's own loss is never lowered
    PublisherSession._report_viewer_loss(blocks, producer, cap=25)
    assert blocks[0].fraction_lost == 40


def test_red_audio_comes_off_the_top_of_the_estimate_before_video() -> None:
    """Audio first: what RED audio sends (about twice plain Opus) is taken off the estimate
    before the video layers share the rest, so congestion drops video layers, not audio."""
    from sfu.media.bandwidth import BandwidthController

    producer = _red_producer()
    audio, _ = _viewer(red=True)
    video = DownTrack(kind="video", mid="v", ssrc=0x5151, send=lambda _: True)
    bind(producer, audio)
    ctrl = BandwidthController([video, audio], start_bps=400_000)
    big = {seq: bytes(150) for seq in range(0, 200)}  # 150-byte frames: ~60 kbit/s each
    now = 10.0
    ctrl.tick(now)
    for seq in range(1, 200):  # 4 s of 20 ms packets, a primary and one redundant frame
        data = _red_packet(seq, seq * 960, big, redundancy=1)
        producer.on_rtp(data, RtpHeader.parse(data), now)
        now += 0.02
        if seq % 5 == 0:
            ctrl.tick(now)
    assert audio.bitrate_bps > 100_000  # RED: ~2 x 60 kbit/s
    share = ctrl._video_share(now)
    assert share == pytest.approx(ctrl.estimator.estimate_bps - audio.bitrate_bps)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 70), st.booleans(), st.binary(max_size=40)),
        min_size=1,
        max_size=40,
    )
)
def test_any_publisher_stream_unwraps_and_fans_out_without_error(
    packets: list[tuple[int, bool, bytes]],
) -> None:
    """Whatever a publisher sends on its RED stream (sequence jumps, reordering, plain Opus,
    junk payloads): nothing raises, viewers get each sequence number at most once on the
    plain path, always as Opus, and the RED viewer only RED that parses."""
    producer = _red_producer()
    red_dt, red_wire = _viewer(red=True)
    plain_dt, plain_wire = _viewer(red=False)
    bind(producer, red_dt)
    bind(producer, plain_dt)
    seq = 1000
    for step, red, payload in packets:
        seq = (seq + step - 10) & 0xFFFF  # back by up to 10, ahead by up to 60
        data = build_rtp(
            payload_type=RED_PT if red else OPUS_PT,
            sequence_number=seq,
            timestamp=seq * 960,
            ssrc=SSRC,
            payload=payload,
        )
        producer.on_rtp(data, RtpHeader.parse(data), 1.0)
    assert producer.forward_errors == 0
    plain = [RtpHeader.parse(p) for p in plain_wire.packets]
    assert all(h.payload_type == SUB_OPUS_PT for h in plain)
    for p in red_wire.packets:
        h = RtpHeader.parse(p)
        if h.payload_type == SUB_RED_PT:
            blocks = parse_red(p, h.payload_offset, len(p))
            assert all(pt == SUB_OPUS_PT for pt, _, _, _ in blocks)
        else:
            assert h.payload_type == SUB_OPUS_PT


def test_blocks_of_another_codec_are_not_sent_as_opus() -> None:
    unwrapper = RedUnwrapper(RED_PT, OPUS_PT)
    first = _red_packet(100, _ts(100), FRAMES)
    unwrapper.unwrap(first, RtpHeader.parse(first))
    # 101 lost; 102 repeats it as G722 (pt 9) and its primary is G722 too
    data = build_rtp(
        payload_type=RED_PT,
        sequence_number=102,
        timestamp=_ts(102),
        ssrc=SSRC,
        payload=build_red([(9, 960, b"g722"), (9, 0, b"g722")]),
    )
    assert unwrapper.unwrap(data, RtpHeader.parse(data)) == []
    assert unwrapper.recovered == 0
