"""Packet loss on either leg: NACKs are answered and the subscriber's video keeps decoding.

Loss is made inside the receiving transport, after SRTP: a seeded random ~5 % of video RTP
packets (not their retransmissions) never reach the receiver's RTP handling, as if the network
had dropped them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest

from sfu.client import RoomClient
from sfu.media.rtp import RtpHeader

from .conftest import LOOPBACK
from .media_sources import ColorVideoTrack, ToneAudioTrack, mean_rgb

pytestmark = pytest.mark.slow

LOSS = 0.05
MEASURE_S = 5.0
FPS = 30
COLOUR = (40, 60, 200)


class Dropper:
    """Decides, per RTP packet, whether the 'network' lost it (video only, seeded)."""

    def __init__(self, is_video: Callable[[int], bool], seed: int, rate: float = LOSS) -> None:
        self.is_video = is_video
        self.random = random.Random(seed)
        self.rate = rate
        self.video = 0
        self.dropped = 0

    def drop(self, data: bytes) -> bool:
        if len(data) < 12 or not self.is_video(data[1] & 0x7F):
            return False
        self.video += 1
        if self.random.random() < self.rate:
            self.dropped += 1
            return True
        return False


async def count_frames(track, seconds: float) -> tuple[int, object]:
    """Decoded frames that arrive within `seconds` (and the last one, to check its colour)."""
    frames, last = 0, None
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            last = await asyncio.wait_for(track.recv(), left)
        except TimeoutError:
            break
        frames += 1
    return frames, last


def participant_stats(node, identity: str) -> dict:
    for room in node.stats()["rooms"]:
        for p in room["participants"]:
            if p["identity"] == identity:
                return p
    raise AssertionError(f"{identity} not in the node's stats")


def video_media_payload_types(pc) -> set[int]:
    """The negotiated video payload types, RTX excluded.

    Retransmissions are spared: aiortc's receiver asks again for a packet only when a new gap
    appears, so a lost retransmission would stall its jitter buffer for a while, which says
    nothing about the SFU.
    """
    return {
        codec.payloadType
        for t in pc.getTransceivers()
        if t.kind == "video"
        for codec in t._codecs
        if not codec.mimeType.lower().endswith("/rtx")
    }


async def _decoding_well(track) -> None:
    frames, last = await count_frames(track, MEASURE_S)
    assert frames > 0.6 * FPS * MEASURE_S, f"only {frames} frames in {MEASURE_S} s"
    r, g, b = mean_rgb(last)
    assert b > 150 and r < 100, (r, g, b)


async def test_loss_toward_one_subscriber_is_repaired(sfu_node):
    publisher = await RoomClient.connect(sfu_node.url, sfu_node.token("cam"), network=LOOPBACK)
    clients = [publisher]
    try:
        await publisher.publish([ColorVideoTrack(COLOUR), ToneAudioTrack(440.0)])
        lossy = await RoomClient.connect(sfu_node.url, sfu_node.token("lossy"), network=LOOPBACK)
        clients.append(lossy)
        clean = await RoomClient.connect(sfu_node.url, sfu_node.token("clean"), network=LOOPBACK)
        clients.append(clean)
        video = await lossy.next_track(kind="video", timeout=15)
        clean_video = await clean.next_track(kind="video", timeout=15)
        await asyncio.wait_for(video.track.recv(), 10)

        # drop ~5 % of video packets inside the lossy subscriber's DTLS transport
        pc = lossy.subscriber.pc
        pts = video_media_payload_types(pc)
        assert pts, "the subscriber negotiated no video codec"
        dropper = Dropper(pts.__contains__, seed=1234)
        transport = pc.getTransceivers()[0].receiver.transport
        original = transport._handle_rtp_data

        async def lossy_handle(data: bytes, arrival_time_ms: int) -> None:
            if not dropper.drop(data):
                await original(data, arrival_time_ms)

        transport._handle_rtp_data = lossy_handle

        await asyncio.gather(_decoding_well(video.track), count_frames(clean_video.track, 1))
        assert dropper.video > 100 and dropper.dropped >= 3, (dropper.video, dropper.dropped)

        lossy_video = next(
            d
            for d in participant_stats(sfu_node.node, "lossy")["downtracks"]
            if d["kind"] == "video"
        )
        assert lossy_video["retransmitted"] > 0, lossy_video
        clean_video_stats = next(
            d
            for d in participant_stats(sfu_node.node, "clean")["downtracks"]
            if d["kind"] == "video"
        )
        # the loss is this subscriber's own: the other one needed no repair
        assert clean_video_stats["retransmitted"] == 0, clean_video_stats
        producer = next(
            p for p in participant_stats(sfu_node.node, "cam")["producers"] if p["kind"] == "video"
        )
        assert producer["nacks_sent"] == 0  # nothing was lost on the publisher's leg
    finally:
        for client in clients:
            await client.leave()


async def test_loss_from_publisher_is_nacked_by_the_sfu(sfu_node):
    publisher = await RoomClient.connect(sfu_node.url, sfu_node.token("cam"), network=LOOPBACK)
    clients = [publisher]
    try:
        await publisher.publish([ColorVideoTrack(COLOUR)])
        room = sfu_node.node.rooms.rooms["shop"]
        session = room.participants["cam"].publisher
        [producer] = session.producers.values()
        media_pt, rtx_pt = producer.codec.payload_type, producer.codec.rtx_payload_type
        assert rtx_pt is not None, "the publisher did not negotiate RTX"

        # drop ~5 % of the publisher's video packets inside the SFU's publisher session
        dropper = Dropper(lambda pt: pt == media_pt, seed=4321)
        rtx_received = 0
        on_rtp = session.peer._on_rtp

        def lossy_on_rtp(data: bytes, arrival_ms: int) -> None:
            nonlocal rtx_received
            if dropper.drop(data):
                return
            if len(data) >= 12 and data[1] & 0x7F == rtx_pt:
                h = RtpHeader.parse(data)
                if len(data) - h.padding_size - h.payload_offset > 2:  # not a padding probe
                    rtx_received += 1
            on_rtp(data, arrival_ms)

        session.peer._on_rtp = lossy_on_rtp

        viewer = await RoomClient.connect(sfu_node.url, sfu_node.token("viewer"), network=LOOPBACK)
        clients.append(viewer)
        video = await viewer.next_track(kind="video", timeout=15)
        await asyncio.wait_for(video.track.recv(), 10)
        await _decoding_well(video.track)

        assert dropper.dropped >= 3, (dropper.video, dropper.dropped)
        stats = next(
            p for p in participant_stats(sfu_node.node, "cam")["producers"] if p["kind"] == "video"
        )
        assert stats["nacks_sent"] > 0, stats
        assert rtx_received > 0, "the publisher's aiortc sender never retransmitted"
        # the repaired packets count as received: little loss remains on the publisher's leg
        assert stats["lost"] <= dropper.dropped // 2, (stats, dropper.dropped)
    finally:
        for client in clients:
            await client.leave()
