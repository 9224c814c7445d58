"""The SFU forwards media without decoding or re-encoding it.

An aiortc publisher sends through the SFU to an aiortc subscriber. Taps below SRTP on both
clients record the RTP payloads the publisher's encoder produced and the payloads the
subscriber received: they must be byte-identical. Meanwhile aiortc's decoder/encoder factories
and its receivers' packet handler record who used them: the SFU's own peer connections never
create a codec and their receivers never see a packet.
"""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict

import pytest
from aiortc import rtcrtpreceiver, rtcrtpsender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from sfu.client import RoomClient
from sfu.media.codecs import vp8_is_keyframe
from sfu.media.rtp import RtpHeader, is_rtcp

from .conftest import LOOPBACK
from .media_sources import ColorVideoTrack, ToneAudioTrack

pytestmark = pytest.mark.slow


class Taps:
    """Class-level hooks that record per instance, so the first packet is never missed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: dict[int, list[bytes]] = defaultdict(list)  # id(dtls transport) -> RTP
        self.received: dict[int, list[bytes]] = defaultdict(list)
        self.receiver_packets: dict[int, int] = defaultdict(int)  # id(RTCRtpReceiver) -> n
        self.decoder_queues: list[int] = []  # id(receiver's decoder queue) per decoder made
        self.encoder_senders: list[int] = []  # id(RTCRtpSender) per encoder made
        taps = self

        original_send = RTCDtlsTransport._send_rtp
        original_handle = RTCDtlsTransport._handle_rtp_data
        original_packet = RTCRtpReceiver._handle_rtp_packet
        original_get_decoder = rtcrtpreceiver.get_decoder
        original_get_encoder = rtcrtpsender.get_encoder

        async def send_rtp(self, data: bytes) -> None:
            if not is_rtcp(data):
                taps.sent[id(self)].append(bytes(data))
            await original_send(self, data)

        async def handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
            taps.received[id(self)].append(bytes(data))
            await original_handle(self, data, arrival_time_ms)

        async def handle_rtp_packet(self, packet, arrival_time_ms: int) -> None:
            taps.receiver_packets[id(self)] += 1
            await original_packet(self, packet, arrival_time_ms)

        def get_decoder(codec):
            # called from aiortc's decoder_worker thread: its input queue names the receiver
            queue = sys._getframe(1).f_locals.get("input_q")
            taps.decoder_queues.append(id(queue))
            return original_get_decoder(codec)

        def get_encoder(codec):
            sender = sys._getframe(1).f_locals.get("self")
            taps.encoder_senders.append(id(sender))
            return original_get_encoder(codec)

        monkeypatch.setattr(RTCDtlsTransport, "_send_rtp", send_rtp)
        monkeypatch.setattr(RTCDtlsTransport, "_handle_rtp_data", handle_rtp_data)
        monkeypatch.setattr(RTCRtpReceiver, "_handle_rtp_packet", handle_rtp_packet)
        monkeypatch.setattr(rtcrtpreceiver, "get_decoder", get_decoder)
        monkeypatch.setattr(rtcrtpsender, "get_encoder", get_encoder)


def payload_types(pc) -> dict[int, tuple[str, bool]]:
    """payload type -> (kind, is RTX) as negotiated on a peer connection."""
    result = {}
    for transceiver in pc.getTransceivers():
        for codec in transceiver._codecs:
            result[codec.payloadType] = (
                transceiver.kind,
                codec.mimeType.lower().endswith("/rtx"),
            )
    return result


def media_payloads(packets: list[bytes], pts: dict[int, tuple[str, bool]]) -> dict[str, list]:
    """Payloads (padding stripped) of non-RTX packets, per kind, in arrival order."""
    result: dict[str, list[bytes]] = {"audio": [], "video": []}
    for data in packets:
        h = RtpHeader.parse(data)
        kind, rtx = pts.get(h.payload_type, ("?", True))
        if not rtx and kind in result:
            result[kind].append(data[h.payload_offset : len(data) - h.padding_size])
    return result


def dtls_transports(pc) -> list[RTCDtlsTransport]:
    found = []
    for transceiver in pc.getTransceivers():
        for t in (transceiver.sender.transport, transceiver.receiver.transport):
            if t is not None and t not in found:
                found.append(t)
    return found


def sfu_peers(node) -> list:
    peers = []
    for room in node.rooms.rooms.values():
        for participant in room.participants.values():
            for session in (participant.publisher, participant.subscriber):
                if session is not None:
                    peers.append(session.peer.pc)
    return peers


async def test_payloads_forwarded_byte_identical_without_codecs(sfu_node, monkeypatch):
    taps = Taps(monkeypatch)
    publisher = await RoomClient.connect(sfu_node.url, sfu_node.token("cam"), network=LOOPBACK)
    subscriber = None
    try:
        await publisher.publish([ColorVideoTrack((30, 160, 60)), ToneAudioTrack(523.0)])
        subscriber = await RoomClient.connect(
            sfu_node.url, sfu_node.token("viewer"), network=LOOPBACK
        )
        video = await subscriber.next_track(kind="video", timeout=15)
        audio = await subscriber.next_track(kind="audio", timeout=15)
        for _ in range(30):  # about a second of decoded media at the subscriber
            await asyncio.wait_for(video.track.recv(), 10)
        for _ in range(20):
            await asyncio.wait_for(audio.track.recv(), 10)
        await asyncio.sleep(1.0)

        # -- the SFU's peer connections made no codec and fed no aiortc receiver ---------------
        sfu_pcs = sfu_peers(sfu_node.node)
        assert len(sfu_pcs) == 3  # publisher session + subscriber sessions of both clients
        sfu_receivers = [t.receiver for pc in sfu_pcs for t in pc.getTransceivers()]
        sfu_senders = [t.sender for pc in sfu_pcs for t in pc.getTransceivers()]
        assert sfu_receivers and sfu_senders
        assert all(taps.receiver_packets.get(id(r), 0) == 0 for r in sfu_receivers)
        sfu_queues = {id(r._RTCRtpReceiver__decoder_queue) for r in sfu_receivers}
        assert not sfu_queues & set(taps.decoder_queues)
        assert not {id(s) for s in sfu_senders} & set(taps.encoder_senders)
        # ...while the taps do see the clients' codecs (so the check above can fail)
        client_receivers = [t.receiver for t in subscriber.subscriber.pc.getTransceivers()]
        assert any(taps.receiver_packets.get(id(r), 0) > 0 for r in client_receivers)
        client_queues = {id(r._RTCRtpReceiver__decoder_queue) for r in client_receivers}
        assert len(client_queues & set(taps.decoder_queues)) == 2
        client_senders = {id(t.sender) for t in publisher.publisher.pc.getTransceivers()}
        assert len(client_senders & set(taps.encoder_senders)) == 2

        # -- payload bytes: what the subscriber got is what the publisher's encoder made -------
        pub_pc, sub_pc = publisher.publisher.pc, subscriber.subscriber.pc
        sent_packets = [p for t in dtls_transports(pub_pc) for p in taps.sent[id(t)]]
        recv_packets = [p for t in dtls_transports(sub_pc) for p in taps.received[id(t)]]
        sent = media_payloads(sent_packets, payload_types(pub_pc))
        received = media_payloads(recv_packets, payload_types(sub_pc))
        for kind, minimum in (("video", 30), ("audio", 50)):
            got, made = received[kind], sent[kind]
            assert len(got) >= minimum, (kind, len(got))
            made_set = set(made)
            foreign = [p for p in got if p not in made_set]
            assert not foreign, f"{kind}: {len(foreign)} payloads the publisher never sent"
            # in order, and (on loopback, nothing lost) a contiguous run of what was sent
            start = made.index(got[0])
            assert made[start : start + len(got)] == got, kind
            # the subscriber got everything sent since it started receiving, bar the last few
            assert len(got) >= len(made) - start - 10, (kind, len(got), len(made) - start)
        # video started on a keyframe
        assert vp8_is_keyframe(received["video"][0])
    finally:
        for client in (publisher, subscriber):
            if client is not None:
                await client.leave()
