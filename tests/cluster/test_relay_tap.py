"""The origin's RelayTap on its own: what it puts on the relay for each packet (header
rewritten, payload untouched, the publisher's sequence numbers), RED audio sent as plain Opus
with the packets RED recovered, NACKs answered from the cache at most once per spacing, and
the edge's receiver reports taken as the loss the publisher's FEC should cover."""

from __future__ import annotations

from sfu.cluster.relay_origin import RelayOrigin, RelaySender, RelayTap
from sfu.media.producer import CodecInfo, Producer, TrackInfo
from sfu.media.rtcp import Nack, ReceiverReport, ReportBlock
from sfu.media.rtp import EXT_MID, ExtensionIds, RtpHeader, build_rtp
from tests.test_red import FRAMES, OPUS_PT, RED_PT, _red_packet, _ts

RELAY_PT = 96
RELAY_SSRC = 0xABCDEF01


class FakePeer:
    """Stands in for the relay's MediaPeer: keeps what would be protected and sent."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []

    def send_rtp(self, data: bytes) -> bool:
        self.rtp.append(bytes(data))
        return True


def _tap(producer: Producer) -> tuple[RelayTap, FakePeer]:
    peer = FakePeer()
    tap = RelayTap(producer, peer, "3", [RELAY_SSRC])  # type: ignore[arg-type]
    tap.configure(RELAY_PT, {EXT_MID: 4})
    producer.attach(tap)
    return tap, peer


def test_red_audio_crosses_as_plain_opus_with_recovered_packets() -> None:
    codec = CodecInfo("audio/opus", 48000, OPUS_PT, channels=2, red_payload_type=RED_PT)
    producer = Producer(
        TrackInfo(id="TR_a", kind="audio", publisher="host"), codec,
        send_keyframe_request=lambda ssrc: None,
    )  # fmt: skip
    _, peer = _tap(producer)
    for seq in (100, 101, 103):  # 102 lost on the publisher's uplink
        data = _red_packet(seq, _ts(seq), FRAMES, redundancy=1)
        producer.on_rtp(data, RtpHeader.parse(data), 1.0 + seq / 50)
    out = [RtpHeader.parse(p, ExtensionIds(mid=4)) for p in peer.rtp]
    assert [h.sequence_number for h in out] == [100, 101, 102, 103]  # 102 rebuilt from RED
    assert {h.payload_type for h in out} == {RELAY_PT}
    assert {h.ssrc for h in out} == {RELAY_SSRC} and {h.mid for h in out} == {b"3"}
    for packet, h in zip(peer.rtp, out, strict=True):
        assert packet[h.payload_offset :] == FRAMES[h.sequence_number]  # plain Opus frames
        assert h.timestamp == _ts(h.sequence_number)


def test_video_packets_keep_sequence_and_payload_and_nacks_are_spaced() -> None:
    codec = CodecInfo("video/VP8", 90000, 100)
    producer = Producer(
        TrackInfo(id="TR_v", kind="video", publisher="host"), codec,
        send_keyframe_request=lambda ssrc: None,
    )  # fmt: skip
    tap, peer = _tap(producer)
    for seq in range(10):
        data = build_rtp(payload_type=100, sequence_number=seq, timestamp=seq * 3000,
                         ssrc=0x1111, payload=b"\x10\x00\x00" + bytes([seq]) * 50,
                         marker=True, extensions=[(9, b"\x01\x02")])  # fmt: skip
        producer.on_rtp(data, RtpHeader.parse(data), 1.0)
        sent = RtpHeader.parse(peer.rtp[-1], ExtensionIds(mid=4))
        assert (sent.sequence_number, sent.timestamp) == (seq, seq * 3000)
        assert sent.ssrc == RELAY_SSRC and sent.payload_type == RELAY_PT and sent.marker
        assert peer.rtp[-1][sent.payload_offset :] == data[-53:]  # payload untouched
    assert tap.resend(0, [3, 4, 99]) == 2  # 99 was never cached
    assert tap.resend(0, [3, 4]) == 0  # asked again at once: not yet
    assert RtpHeader.parse(peer.rtp[-1]).sequence_number == 4


def test_edge_receiver_report_sets_the_loss_and_nack_resends() -> None:
    codec = CodecInfo("video/VP8", 90000, 100)
    producer = Producer(
        TrackInfo(id="TR_v", kind="video", publisher="host"), codec,
        send_keyframe_request=lambda ssrc: None,
    )  # fmt: skip
    tap, peer = _tap(producer)
    data = build_rtp(payload_type=100, sequence_number=7, timestamp=1, ssrc=0x1111,
                     payload=b"\x10\x00\x00" + b"x" * 20)  # fmt: skip
    producer.on_rtp(data, RtpHeader.parse(data), 1.0)
    relay = RelaySender("RL_x", "shop", "eu-1", peer)  # type: ignore[arg-type]
    relay.taps["TR_v"] = tap
    relay.by_ssrc[RELAY_SSRC] = (tap, 0)
    origin = RelayOrigin.__new__(RelayOrigin)
    block = ReportBlock(RELAY_SSRC, 51, 3, 7, 0, 0, 0)
    origin._on_rtcp(relay, ReceiverReport(0x42, [block]).serialize())
    assert tap.fraction_lost == 51
    before = len(peer.rtp)
    origin._on_rtcp(relay, Nack(0x42, RELAY_SSRC, [7]).serialize())
    assert len(peer.rtp) == before + 1 and relay.nacks == 1
