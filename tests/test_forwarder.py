"""Producer -> Forwarder -> DownTrack without any network: what a subscriber's decoder sees.

The DownTrack's `send` appends to a list, and every packet it emits is parsed back with
RtpHeader, so these tests check the bytes a subscriber would receive: its own SSRC, payload
type and MID, sequence numbers and timestamps that never go backwards (SRTP would drop them),
untouched payloads, and retransmissions answered from the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sfu.media.forwarder import DownTrack, bind
from sfu.media.producer import CodecInfo, Producer, TrackInfo
from sfu.media.rtcp import ReportBlock, Sdes, SenderReport, ntp_middle, parse_compound
from sfu.media.rtp import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    ExtensionIds,
    RtpHeader,
    build_rtp,
)

# the publisher's side: its own payload types and extension ids
PUB_EXT = ExtensionIds(mid=9, audio_level=10)
PUB_VP8_PT, PUB_RTX_PT, PUB_OPUS_PT = 96, 97, 111
# the subscriber's side: what its m-line negotiated
SUB_VP8_PT, SUB_RTX_PT, SUB_OPUS_PT = 120, 121, 109
SUB_MID_ID, SUB_ABS_ID, SUB_LEVEL_ID = 4, 2, 1
SUB_EXT = ExtensionIds(mid=SUB_MID_ID, abs_send_time=SUB_ABS_ID, audio_level=SUB_LEVEL_ID)
SUB_SSRC, SUB_RTX_SSRC = 0x5EB5C001, 0x5EB5C002

VP8_KEY = bytes([0x10, 0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A])  # S=1 PID=0, VP8 P=0: keyframe
VP8_DELTA = bytes([0x10, 0x31, 0x02, 0x00])  # S=1 PID=0, P=1: interframe
VP8_CONT = bytes([0x00])  # continuation of a frame


def _modular_ahead(a: int, b: int, bits: int) -> int:
    """How far b is ahead of a in a `bits`-bit counter (negative if behind)."""
    mod = 1 << bits
    d = (b - a) % mod
    return d - mod if d >= mod // 2 else d


@dataclass
class Wire:
    """The subscriber end of a DownTrack: every packet it was sent."""

    packets: list[bytes] = field(default_factory=list)
    up: bool = True  # False: the transport is not connected yet, sends fail

    def send(self, data: bytes) -> bool:
        if not self.up:
            return False
        self.packets.append(bytes(data))
        return True

    def parsed(self) -> list[tuple[RtpHeader, bytes]]:
        return [(RtpHeader.parse(p, SUB_EXT), p) for p in self.packets]

    def media(self, ssrc: int = SUB_SSRC) -> list[tuple[RtpHeader, bytes]]:
        return [(h, p) for h, p in self.parsed() if h.ssrc == ssrc]


def make_downtrack(kind: str = "video", *, rtx: bool = True) -> tuple[DownTrack, Wire]:
    wire = Wire()
    dt = DownTrack(
        kind=kind,
        mid="v1" if kind == "video" else "a1",
        ssrc=SUB_SSRC,
        rtx_ssrc=SUB_RTX_SSRC if rtx and kind == "video" else None,
        send=wire.send,
    )
    if kind == "video":
        dt.configure(
            mime_type="video/VP8",
            payload_type=SUB_VP8_PT,
            clock_rate=90000,
            rtx_payload_type=SUB_RTX_PT,
            extension_ids={EXT_MID: SUB_MID_ID, EXT_ABS_SEND_TIME: SUB_ABS_ID},
        )
    else:
        dt.configure(
            mime_type="audio/opus",
            payload_type=SUB_OPUS_PT,
            clock_rate=48000,
            rtx_payload_type=None,
            extension_ids={EXT_MID: SUB_MID_ID, EXT_AUDIO_LEVEL: SUB_LEVEL_ID},
        )
    return dt, wire


def make_producer(kind: str = "video", requests: list | None = None) -> Producer:
    if kind == "video":
        codec = CodecInfo("video/VP8", 90000, PUB_VP8_PT, rtx_payload_type=PUB_RTX_PT)
    else:
        codec = CodecInfo("audio/opus", 48000, PUB_OPUS_PT, channels=2)
    sink = requests if requests is not None else []
    return Producer(
        TrackInfo(id=f"TR_{kind}", kind=kind, publisher="pub"),
        codec,
        send_keyframe_request=lambda ssrc: sink.append((ssrc, time.monotonic())),
    )


class Publisher:
    """Packets as one publisher's encoder would send them: frames of several packets."""

    def __init__(self, producer: Producer, ssrc: int, seq: int, ts: int, now: float) -> None:
        self.producer = producer
        self.ssrc = ssrc
        self.seq = seq & 0xFFFF
        self.ts = ts & 0xFFFFFFFF
        self.now = now
        self.sent: list[bytes] = []  # what went into the producer, in order

    def packet(self, payload: bytes, *, marker: bool = False, padding: int = 0) -> bytes:
        video = self.producer.kind == "video"
        extensions = [(PUB_EXT.mid, b"0")]
        if not video:
            extensions.append((PUB_EXT.audio_level, bytes([0x80 | (len(self.sent) % 100)])))
        data = build_rtp(
            payload_type=PUB_VP8_PT if video else PUB_OPUS_PT,
            sequence_number=self.seq,
            timestamp=self.ts,
            ssrc=self.ssrc,
            payload=payload,
            marker=marker,
            extensions=extensions,
            padding_size=padding,
        )
        self.seq = (self.seq + 1) & 0xFFFF
        return data

    def push(self, data: bytes) -> None:
        self.sent.append(data)
        self.producer.on_rtp(data, RtpHeader.parse(data, PUB_EXT), self.now)

    def frame(self, key: bool = False, packets: int = 3) -> None:
        if self.producer.kind == "video":
            first = (VP8_KEY if key else VP8_DELTA) + bytes([len(self.sent) & 0xFF]) * 40
            for i in range(packets):
                payload = first if i == 0 else VP8_CONT + bytes([i, self.seq & 0xFF]) * 30
                self.push(self.packet(payload, marker=i == packets - 1))
            self.ts = (self.ts + 3000) & 0xFFFFFFFF
            self.now += 1 / 30
        else:
            self.push(self.packet(b"\xfc" + bytes([self.seq & 0xFF]) * 60))
            self.ts = (self.ts + 960) & 0xFFFFFFFF
            self.now += 0.02


def payload_of(data: bytes) -> bytes:
    h = RtpHeader.parse(data)
    return data[h.payload_offset :]


def assert_continuous(headers: list[RtpHeader]) -> None:
    """Each packet follows the previous one: seq +1, timestamp not behind."""
    for a, b in zip(headers, headers[1:], strict=False):
        assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1, (
            a.sequence_number,
            b.sequence_number,
        )
        assert 0 <= _modular_ahead(a.timestamp, b.timestamp, 32) < 90000 * 5, (
            a.timestamp,
            b.timestamp,
        )


# ---------------------------------------------------------------------------------------------


def test_header_rewritten_payload_untouched():
    t0 = time.monotonic()
    producer = make_producer()
    dt, wire = make_downtrack()
    bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=5000, ts=123456, now=t0)
    pub.frame(key=True)
    for _ in range(5):
        pub.frame()
    out = wire.parsed()
    assert len(out) == len(pub.sent) == 18
    for (h, data), original in zip(out, pub.sent, strict=True):
        src = RtpHeader.parse(original, PUB_EXT)
        assert h.ssrc == SUB_SSRC
        assert h.payload_type == SUB_VP8_PT
        assert h.mid == b"v1"  # the subscriber's MID, in the subscriber's extension id
        assert h.marker == src.marker
        assert data[h.payload_offset :] == original[src.payload_offset :]
    # first stream on a fresh m-line keeps the publisher's numbering
    assert out[0][0].sequence_number == 5000 and out[0][0].timestamp == 123456
    assert_continuous([h for h, _ in out])
    assert dt.packets_sent == 18
    assert dt.octets_sent == sum(len(payload_of(p)) for p in pub.sent)


def test_audio_level_and_mid_rewritten_for_audio():
    t0 = time.monotonic()
    producer = make_producer("audio")
    dt, wire = make_downtrack("audio")
    bind(producer, dt)
    pub = Publisher(producer, ssrc=0x2222, seq=65530, ts=0xFFFFF000, now=t0)
    for _ in range(20):  # crosses both the sequence and the timestamp wrap
        pub.frame()
    out = wire.parsed()
    assert len(out) == 20  # audio needs no keyframe
    for (h, data), original in zip(out, pub.sent, strict=True):
        src = RtpHeader.parse(original, PUB_EXT)
        assert (h.ssrc, h.payload_type, h.mid) == (SUB_SSRC, SUB_OPUS_PT, b"a1")
        assert h.audio_level == src.audio_level
        assert data[h.payload_offset :] == original[src.payload_offset :]
    assert_continuous([h for h, _ in out])


def test_padding_survives_forwarding():
    t0 = time.monotonic()
    producer = make_producer()
    dt, wire = make_downtrack()
    bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=1, ts=1, now=t0)
    pub.frame(key=True)
    pub.push(pub.packet(VP8_DELTA + b"x" * 10, padding=7))
    h, data = wire.parsed()[-1]
    assert h.padding_size == 7
    assert data[h.payload_offset : len(data) - 7] == VP8_DELTA + b"x" * 10


def test_video_starts_on_keyframe_and_requests_throttled():
    t0 = time.monotonic() + 10
    requests: list = []
    producer = make_producer(requests=requests)
    dt, wire = make_downtrack()
    fw = bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=100, ts=1000, now=t0)
    for _ in range(31):  # ~1 s of interframes: nothing forwarded
        pub.frame()
    assert wire.packets == []
    assert fw.dropped_waiting_keyframe == 31 * 3
    # a keyframe request at once, then at most one per 300 ms: t0, +0.33, +0.67, +1.0
    assert producer.keyframe_requests == 4
    assert all(ssrc == 0x1111 for ssrc, _ in requests)
    pub.frame(key=True)
    pub.frame()
    out = wire.parsed()
    assert len(out) == 6
    assert payload_of(out[0][1]).startswith(VP8_KEY)
    assert producer.keyframe_requests == 4  # none once flowing
    assert_continuous([h for h, _ in out])


def test_keyframe_sent_before_transport_is_up_is_not_lost():
    """The first keyframe may go out before the subscriber's DTLS is up: wait for the next."""
    t0 = time.monotonic() + 10
    producer = make_producer()
    dt, wire = make_downtrack()
    wire.up = False
    bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=100, ts=1000, now=t0)
    pub.frame(key=True)  # lost: nobody could receive it
    wire.up = True
    requests_before = producer.keyframe_requests
    for _ in range(12):
        pub.frame()  # interframes would not decode without that keyframe: held back
    assert wire.packets == []
    assert producer.keyframe_requests > requests_before
    pub.frame(key=True)
    pub.frame()
    out = wire.parsed()
    assert len(out) == 6
    assert payload_of(out[0][1]).startswith(VP8_KEY)
    assert_continuous([h for h, _ in out])


def test_subscriber_keyframe_requests_are_throttled():
    t0 = time.monotonic()
    requests: list = []
    producer = make_producer(requests=requests)
    dt, _ = make_downtrack()
    fw = bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=100, ts=1000, now=t0)
    pub.frame(key=True)
    before = len(requests)
    for _ in range(20):  # a PLI storm from the subscriber
        fw.on_keyframe_request()
    assert len(requests) - before <= 1


def _check_restart(out: list[RtpHeader], switch_index: int, gap_s: float) -> None:
    assert_continuous(out)
    a, b = out[switch_index - 1], out[switch_index]
    # the new stream's timestamps continue from the old ones by roughly the time elapsed
    assert abs(_modular_ahead(a.timestamp, b.timestamp, 32) - gap_s * 90000) < 0.05 * 90000


def test_continuity_across_publisher_restart_new_producer():
    """Producer A stops; producer B (new SSRC, seq, ts base) is bound to the same DownTrack."""
    t0 = time.monotonic()
    dt, wire = make_downtrack()
    a = make_producer()
    bind(a, dt)
    pub_a = Publisher(a, ssrc=0xAAAA, seq=65500, ts=0xFFFF0000, now=t0)
    pub_a.frame(key=True)
    for _ in range(20):
        pub_a.frame()
    a.close()
    assert dt.forwarder is None
    n_a = len(wire.packets)
    b = make_producer()
    fw_b = bind(b, dt)
    pub_b = Publisher(b, ssrc=0xBBBB, seq=7, ts=42, now=pub_a.now + 0.5)
    pub_b.frame()  # B's first frames are interframes: dropped while waiting for a keyframe
    pub_b.frame()
    assert len(wire.packets) == n_a
    assert fw_b.dropped_waiting_keyframe == 6
    pub_b.frame(key=True)
    for _ in range(10):
        pub_b.frame()
    out = [h for h, _ in wire.parsed()]
    assert len(out) == n_a + 33
    assert {h.ssrc for h in out} == {SUB_SSRC}
    _check_restart(out, n_a, gap_s=0.5 + 2 / 30)
    assert payload_of(wire.packets[n_a]).startswith(VP8_KEY)


def test_continuity_when_same_producer_changes_ssrc():
    t0 = time.monotonic()
    producer = make_producer()
    dt, wire = make_downtrack()
    bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=300, ts=900000, now=t0)
    pub.frame(key=True)
    for _ in range(5):
        pub.frame()
    n = len(wire.packets)
    # the publisher's encoder restarted: new SSRC, numbering from elsewhere
    pub.ssrc, pub.seq, pub.ts = 0x9999, 40000, 5
    pub.now += 0.2
    pub.frame()  # not a keyframe: held back
    assert len(wire.packets) == n
    pub.frame(key=True)
    pub.frame()
    out = [h for h, _ in wire.parsed()]
    assert len(out) == n + 6
    _check_restart(out, n, gap_s=0.2 + 2 / 30)


def test_continuity_when_audio_ssrc_changes():
    t0 = time.monotonic()
    producer = make_producer("audio")
    dt, wire = make_downtrack("audio")
    bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=10, ts=10, now=t0)
    for _ in range(10):
        pub.frame()
    pub.ssrc, pub.seq, pub.ts = 0x3333, 60000, 3_000_000_000
    pub.now += 1.0
    for _ in range(10):
        pub.frame()
    out = [h for h, _ in wire.parsed()]
    assert len(out) == 20
    assert_continuous(out)
    assert abs(_modular_ahead(out[9].timestamp, out[10].timestamp, 32) - 1.02 * 48000) < 2400


def test_continuity_when_sequence_jumps_forward():
    t0 = time.monotonic()
    producer = make_producer()
    dt, wire = make_downtrack()
    bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=1000, ts=0, now=t0)
    pub.frame(key=True)
    pub.frame()
    n = len(wire.packets)
    pub.seq, pub.ts = 30000, 77_000_000  # same SSRC, numbering restarted
    pub.frame(key=True)
    pub.frame()
    out = [h for h, _ in wire.parsed()]
    assert len(out) == n + 6
    _check_restart(out, n, gap_s=1 / 30)


def test_continuity_when_sequence_jumps_backward():
    """Same SSRC restarting with *lower* numbers must not be mistaken for old packets."""
    t0 = time.monotonic()
    producer = make_producer()
    dt, wire = make_downtrack()
    bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=20000, ts=50_000_000, now=t0)
    pub.frame(key=True)
    pub.frame()
    n = len(wire.packets)
    pub.seq, pub.ts = 10, 1000
    pub.frame(key=True)
    for _ in range(3):
        pub.frame()
    out = [h for h, _ in wire.parsed()]
    assert len(out) == n + 12
    _check_restart(out, n, gap_s=1 / 30)


def test_reordering_and_wrap_are_not_restarts():
    t0 = time.monotonic()
    producer = make_producer()
    dt, wire = make_downtrack()
    fw = bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=65533, ts=0, now=t0)
    pub.frame(key=True)  # 65533..65535
    offset = fw.seq_offset
    p0, p1, p2 = pub.packet(VP8_DELTA), pub.packet(VP8_CONT), pub.packet(VP8_CONT)  # 0, 1, 2
    for data in (p0, p2, p1):  # 1 arrives late
        pub.push(data)
    seqs = [h.sequence_number for h, _ in wire.parsed()]
    expected_in = [65533, 65534, 65535, 0, 2, 1]
    assert seqs == [(s + offset) & 0xFFFF for s in expected_in]
    assert fw.seq_offset == offset and fw.dropped_waiting_keyframe == 0


def _flowing(rtx: bool):
    t0 = time.monotonic()
    producer = make_producer()
    dt, wire = make_downtrack(rtx=rtx)
    fw = bind(producer, dt)
    pub = Publisher(producer, ssrc=0x1111, seq=65530, ts=0, now=t0)
    pub.frame(key=True)
    for _ in range(5):
        pub.frame()
    return producer, dt, wire, fw, pub


def test_nack_answered_as_rtx():
    producer, dt, wire, fw, pub = _flowing(rtx=True)
    media = wire.parsed()
    lost = [media[4][0].sequence_number, media[9][0].sequence_number]
    wire.packets.clear()
    assert fw.on_nack(lost) == 2
    assert dt.retransmitted == 2
    rtx = wire.parsed()
    assert len(rtx) == 2
    prev_rtx_seq = None
    for (h, data), index, osn in zip(rtx, (4, 9), lost, strict=True):
        original_h, original = media[index]
        assert h.ssrc == SUB_RTX_SSRC
        assert h.payload_type == SUB_RTX_PT
        assert h.timestamp == original_h.timestamp
        assert h.mid == b"v1"
        body = data[h.payload_offset :]
        assert body[:2] == osn.to_bytes(2, "big")  # OSN: the subscriber's sequence number
        assert body[2:] == original[original_h.payload_offset :]
        if prev_rtx_seq is not None:
            assert (h.sequence_number - prev_rtx_seq) & 0xFFFF == 1
        prev_rtx_seq = h.sequence_number


def test_nack_answered_as_plain_retransmission_without_rtx():
    producer, dt, wire, fw, pub = _flowing(rtx=False)
    media = wire.parsed()
    lost = media[7][0].sequence_number
    wire.packets.clear()
    assert fw.on_nack([lost]) == 1
    [(h, data)] = wire.parsed()
    original_h, original = media[7]
    assert (h.ssrc, h.payload_type, h.sequence_number, h.timestamp) == (
        SUB_SSRC,
        SUB_VP8_PT,
        lost,
        original_h.timestamp,
    )
    assert h.marker == original_h.marker
    assert data[h.payload_offset :] == original[original_h.payload_offset :]
    assert dt.retransmitted == 1


def test_nack_retransmits_padded_packet_intact():
    for rtx in (False, True):
        producer, dt, wire, fw, pub = _flowing(rtx=rtx)
        pub.push(pub.packet(VP8_CONT + b"body", padding=5))
        h_out, _ = wire.parsed()[-1]
        wire.packets.clear()
        assert fw.on_nack([h_out.sequence_number]) == 1
        [(h, data)] = wire.parsed()
        body = data[h.payload_offset : len(data) - h.padding_size]
        if rtx:
            assert body[2:] == VP8_CONT + b"body"
        else:
            assert body == VP8_CONT + b"body"


def test_nack_for_unknown_or_foreign_packets_is_ignored():
    producer, dt, wire, fw, pub = _flowing(rtx=True)
    newest = wire.parsed()[-1][0].sequence_number
    wire.packets.clear()
    assert fw.on_nack([(newest + 1) & 0xFFFF, (newest + 500) & 0xFFFF]) == 0
    assert wire.packets == [] and dt.retransmitted == 0
    # after another producer takes the m-line, the old one's packets are not resent as its own
    b = make_producer()
    fw_b = bind(b, dt)
    pub_b = Publisher(b, ssrc=0x7777, seq=1, ts=1, now=pub.now + 0.1)
    pub_b.frame(key=True)
    wire.packets.clear()
    assert fw_b.on_nack([newest]) == 0
    assert wire.packets == []


def test_sender_report_follows_publisher_sr():
    producer, dt, wire, fw, pub = _flowing(rtx=True)
    # the publisher's SR: NTP time T maps to its RTP time R
    ntp = 0xE1000000_40000000  # .25 s
    rtp = pub.ts
    producer.on_sender_report(ntp, rtp, pub.now)
    report = dt.sender_report(pub.now + 0.5)
    assert report is not None
    sr, sdes = parse_compound(report)
    assert isinstance(sr, SenderReport) and isinstance(sdes, Sdes)
    assert sr.ssrc == SUB_SSRC and sdes.chunks[0][0] == SUB_SSRC
    assert sr.ntp_timestamp == ntp + (1 << 31)  # 0.5 s later
    # the RTP time is the publisher's, translated by the forwarder's offset, 0.5 s on
    expected = (rtp + fw.ts_offset + 45000) & 0xFFFFFFFF
    assert abs(_modular_ahead(expected, sr.rtp_timestamp, 32)) <= 1
    # and it agrees with the timestamps the subscriber actually received
    last = wire.parsed()[-1][0]
    assert _modular_ahead(last.timestamp, sr.rtp_timestamp, 32) == 45000 + 3000
    assert sr.packet_count == dt.packets_sent == 18
    assert sr.octet_count == dt.octets_sent


def test_no_sender_report_without_publisher_sr_or_before_sync():
    producer, dt, wire, fw, pub = _flowing(rtx=True)
    assert dt.sender_report(pub.now) is None  # no SR from the publisher yet
    producer.on_sender_report(1 << 40, pub.ts, pub.now)
    assert dt.sender_report(pub.now) is not None
    # a new producer takes the m-line and has sent its SR, but no keyframe has been forwarded:
    # its offsets are not chosen yet, so an SR now would carry a wrong clock
    b = make_producer()
    bind(b, dt)
    pub_b = Publisher(b, ssrc=0x7777, seq=1, ts=1, now=pub.now + 0.1)
    pub_b.frame()
    b.on_sender_report(1 << 40, 1, pub_b.now)
    assert dt.sender_report(pub_b.now) is None
    pub_b.frame(key=True)
    report = dt.sender_report(pub_b.now + 0.1)
    sr = parse_compound(report)[0]
    last = wire.parsed()[-1][0]
    assert 0 <= _modular_ahead(last.timestamp, sr.rtp_timestamp, 32) < 90000


def test_round_trip_time_from_receiver_report():
    producer, dt, wire, fw, pub = _flowing(rtx=True)
    producer.on_sender_report(0xE1234567_89ABCDEF, pub.ts, pub.now)
    sr = parse_compound(dt.sender_report(pub.now))[0]
    block = ReportBlock(
        SUB_SSRC, fraction_lost=64, packets_lost=3, lsr=ntp_middle(sr.ntp_timestamp), dlsr=6554
    )
    dt.on_report_block(block, pub.now + 0.3)  # 0.3 s later, 0.1 s of it held by the receiver
    stats = dt.stats()
    assert abs(stats["rtt_ms"] - 200) < 1
    assert stats["fraction_lost"] == 0.25 and stats["packets_lost"] == 3
    assert stats["track_id"] == producer.id


def test_unnegotiated_downtrack_sends_nothing():
    t0 = time.monotonic()
    producer = make_producer("audio")
    wire = Wire()
    dt = DownTrack(kind="audio", mid="0", ssrc=1, send=wire.send)
    bind(producer, dt)
    pub = Publisher(producer, ssrc=5, seq=1, ts=1, now=t0)
    pub.frame()
    assert wire.packets == []


def test_a_failing_subscriber_does_not_cost_the_others_the_packet():
    from sfu.media.forwarder import DownTrack, bind
    from sfu.media.producer import CodecInfo, Producer, TrackInfo
    from sfu.media.rtp import EXT_MID, RtpHeader, build_rtp

    producer = Producer(
        TrackInfo(id="TR_x", kind="audio", publisher="host"),
        CodecInfo("audio/opus", 48000, 111),
        send_keyframe_request=lambda ssrc: None,
    )
    received = []

    def broken(packet: bytes) -> bool:
        raise RuntimeError("SRTP replay")

    tracks = []
    for i, send in enumerate((broken, lambda p: received.append(p) or True)):
        dt = DownTrack(kind="audio", mid=str(i), ssrc=1000 + i, send=send)
        dt.configure(
            mime_type="audio/opus",
            payload_type=111,
            clock_rate=48000,
            rtx_payload_type=None,
            extension_ids={EXT_MID: 1},
        )
        bind(producer, dt)
        tracks.append(dt)
    for seq in range(3):
        data = build_rtp(
            payload_type=111, sequence_number=seq, timestamp=960 * seq, ssrc=7, payload=b"x"
        )
        producer.on_rtp(data, RtpHeader.parse(data), 1.0 + seq * 0.02)
    assert len(received) == 3
    assert producer.forward_errors == 3
