"""The producer's cached keyframe: a new subscriber starts on it at once, numbered as its
DownTrack continues, and live packets follow without a gap (no network: see test_forwarder)."""

from __future__ import annotations

import asyncio
import time

from sfu.media.forwarder import bind
from sfu.media.rtp import RtpHeader

from .test_forwarder import (
    PUB_EXT,
    VP8_CONT,
    VP8_KEY,
    Publisher,
    _modular_ahead,
    assert_continuous,
    make_downtrack,
    make_producer,
    payload_of,
)


def cached_producer(requests: list | None = None, max_age_s: float = 3.0):
    producer = make_producer(requests=requests)
    producer.keyframe_cache_s = max_age_s
    return producer


def test_complete_keyframe_is_cached_and_replaced_by_the_next():
    producer = cached_producer()
    pub = Publisher(producer, ssrc=0x1111, seq=100, ts=9000, now=time.monotonic())
    pub.frame(key=True, packets=4)
    first = producer.keyframe_packets
    assert [h.sequence_number for _, h in first] == [100, 101, 102, 103]
    assert first[-1][1].marker and payload_of(first[0][0]).startswith(VP8_KEY)
    pub.frame()
    assert producer.keyframe_packets is first  # interframes do not touch it
    pub.frame(key=True, packets=2)
    assert [h.sequence_number for _, h in producer.keyframe_packets] == [107, 108]


def test_keyframe_with_a_lost_packet_is_not_cached():
    producer = cached_producer()
    pub = Publisher(producer, ssrc=0x1111, seq=100, ts=9000, now=time.monotonic())
    pub.frame(key=True)
    complete = producer.keyframe_packets
    pub.ts += 3000
    packets = [
        pub.packet(VP8_KEY + b"k" * 30),
        pub.packet(VP8_CONT),
        pub.packet(VP8_CONT, marker=True),
    ]
    pub.push(packets[0])
    pub.push(packets[2])  # the middle packet is lost
    assert producer.keyframe_packets is complete  # the older complete keyframe stays


def test_late_subscriber_starts_on_cached_keyframe_then_goes_live_without_a_gap():
    requests: list = []
    producer = cached_producer(requests)
    pub = Publisher(producer, ssrc=0x1111, seq=65000, ts=500_000, now=time.monotonic())
    pub.frame(key=True)
    keyframe = [payload_of(d) for d, _ in producer.keyframe_packets]
    for _ in range(10):
        pub.frame()  # a third of a second of interframes after the keyframe
    dt, wire = make_downtrack()
    fw = bind(producer, dt)
    asked = len(requests)
    assert fw.prime(pub.now)  # the subscriber's transport just connected
    out = wire.parsed()
    assert [data[h.payload_offset :] for h, data in out] == keyframe
    assert dt.keyframes_from_cache == 1 and dt.first_packet_s == pub.now
    # the rest of the frame in flight is skipped; live packets resume at the next frame
    pub.frame()
    pub.frame()
    out = wire.parsed()
    assert len(out) == 3 + 6
    headers = [h for h, _ in out]
    assert_continuous(headers)  # sequence numbers: no gap, nothing for the subscriber to NACK
    # the live frames' timestamps follow the cached keyframe by the time elapsed since it was
    # sent, not by the capture time between them (which would stall the subscriber's playout)
    assert _modular_ahead(headers[2].timestamp, headers[3].timestamp, 32) < 0.1 * 90000
    assert payload_of(out[3][1]) == payload_of(pub.sent[-6])  # from the first packet of a frame
    assert RtpHeader.parse(pub.sent[-6], PUB_EXT).marker is False
    assert fw.synced and fw.primed
    assert len(requests) == asked  # (the keyframe requests: see the next test)


async def test_primed_subscriber_asks_for_a_fresh_keyframe_until_one_comes():
    """The skipped frames refer to frames the subscriber never got: it needs a new keyframe,
    and a publisher may ignore a request that follows the previous one too closely."""
    requests: list = []
    producer = cached_producer(requests)
    producer._pli_throttle_s = 0.1
    pub = Publisher(producer, ssrc=0x1111, seq=1, ts=0, now=time.monotonic())
    pub.frame(key=True)
    pub.frame()
    dt, _ = make_downtrack()
    fw = bind(producer, dt)  # asks once (the publisher ignores it)
    assert len(requests) == 1
    pub.now = time.monotonic()
    assert fw.prime(pub.now)
    await asyncio.sleep(0.42)  # asked again each throttle interval (+ a margin)
    assert 3 <= len(requests) <= 5
    gaps = [b - a for (_, a), (_, b) in zip(requests, requests[1:], strict=False)]
    assert all(gap >= 0.1 for gap in gaps)
    pub.now = time.monotonic()
    pub.frame(key=True)  # here it is: no more asking
    asked = len(requests)
    await asyncio.sleep(0.3)
    assert len(requests) == asked


def test_keyframe_that_is_the_newest_frame_continues_seamlessly():
    producer = cached_producer()
    pub = Publisher(producer, ssrc=0x1111, seq=10, ts=3000, now=time.monotonic())
    pub.frame(key=True)
    dt, wire = make_downtrack()
    fw = bind(producer, dt)
    assert fw.prime(pub.now)
    pub.frame()
    pub.frame()
    headers = [h for h, _ in wire.parsed()]
    assert len(headers) == 9
    assert_continuous(headers)
    assert _modular_ahead(headers[2].timestamp, headers[3].timestamp, 32) == 3000  # capture pace
    assert fw.seq_offset == 0 and fw.ts_offset == 0  # first stream on the m-line keeps numbering


def test_prime_waits_for_the_transport_then_the_next_packet_starts_it():
    producer = cached_producer()
    pub = Publisher(producer, ssrc=0x1111, seq=200, ts=0, now=time.monotonic())
    pub.frame(key=True)
    dt, wire = make_downtrack()
    wire.up = False
    fw = bind(producer, dt)
    assert not fw.prime(pub.now)  # DTLS is not up: nothing sent, nothing lost
    pub.frame()
    assert wire.packets == [] and not fw.primed
    wire.up = True
    pub.frame()  # the first packet after the transport came up sends the cached keyframe
    out = wire.parsed()
    assert payload_of(out[0][1]).startswith(VP8_KEY)
    assert dt.keyframes_from_cache == 1
    pub.frame()
    assert_continuous([h for h, _ in wire.parsed()])


def test_old_keyframe_is_not_used():
    requests: list = []
    producer = cached_producer(requests)
    pub = Publisher(producer, ssrc=0x1111, seq=1, ts=0, now=time.monotonic())
    pub.frame(key=True)
    pub.now += 3.5  # the keyframe is older than the cache keeps it
    dt, wire = make_downtrack()
    fw = bind(producer, dt)
    assert not fw.prime(pub.now)
    pub.frame()
    assert wire.packets == []  # interframes are held back as before
    assert fw.dropped_waiting_keyframe == 3
    pub.frame(key=True)
    assert payload_of(wire.packets[0]).startswith(VP8_KEY)
    assert dt.keyframes_from_cache == 0


def test_cache_off_and_new_ssrc_forget_the_keyframe():
    producer = cached_producer(max_age_s=0.0)
    pub = Publisher(producer, ssrc=0x1111, seq=1, ts=0, now=time.monotonic())
    pub.frame(key=True)
    assert producer.keyframe_packets == ()
    producer.keyframe_cache_s = 3.0
    pub.frame(key=True)
    assert producer.keyframe_packets
    pub.ssrc = 0x2222  # the publisher's encoder restarted
    pub.frame()
    assert producer.keyframe_packets == ()
    assert producer.cached_keyframe(pub.now) == ()


def test_reused_mline_continues_numbering_through_the_cached_keyframe():
    """A DownTrack that carried another track: the cached keyframe follows its last packet."""
    t0 = time.monotonic()
    dt, wire = make_downtrack()
    old = make_producer()
    bind(old, dt)
    pub_old = Publisher(old, ssrc=0xAAAA, seq=40000, ts=7_000_000, now=t0)
    pub_old.frame(key=True)
    pub_old.frame()
    n = len(wire.packets)
    old.close()
    producer = cached_producer()
    pub = Publisher(producer, ssrc=0xBBBB, seq=5, ts=5, now=t0 + 0.5)
    pub.frame(key=True)
    pub.frame()
    fw = bind(producer, dt)
    assert fw.prime(pub.now)
    pub.frame()
    headers = [h for h, _ in wire.parsed()]
    assert len(headers) == n + 3 + 3
    assert_continuous(headers)


def test_nacks_for_the_cached_keyframe_resend_it_after_live_packets_renumbered():
    producer = cached_producer()
    pub = Publisher(producer, ssrc=0x1111, seq=1000, ts=0, now=time.monotonic())
    pub.frame(key=True)
    for _ in range(5):
        pub.frame()
    dt, wire = make_downtrack(rtx=False)
    fw = bind(producer, dt)
    assert fw.prime(pub.now)
    pub.frame()
    pub.frame()
    out = wire.parsed()
    assert len(out) == 3 + 6 and fw.seq_offset != 0  # live packets were renumbered
    wire.packets.clear()
    # the subscriber lost the keyframe's second packet and the first live packet
    lost = [out[1][0].sequence_number, out[3][0].sequence_number]
    assert fw.on_nack(lost) == 2
    resent = wire.parsed()
    for (h, data), index in zip(resent, (1, 3), strict=True):
        original_h, original = out[index]
        assert h.sequence_number == original_h.sequence_number
        assert h.timestamp == original_h.timestamp
        assert data[h.payload_offset :] == original[original_h.payload_offset :]
