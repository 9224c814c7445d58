"""The fan-out's one-call-per-packet path (`forwarder.fan_out`) sends what `Forwarder.forward`
would, byte for byte.

Each scenario runs twice on fresh objects: once as the node runs it (`Producer.on_rtp` ->
`fan_out`, whose steady case numbers and sends copies itself) and once with `fan_out` replaced
by the plain loop that calls `Forwarder.forward` for every copy. The packets every subscriber
receives, the DownTracks' counters, the NACK rings and the transport-wide sequence log must be
the same. The scenarios take the steady path and leave it: start on a keyframe, a transport
that is not up yet, reordered, duplicated and late packets, padding, a publisher restart and a
sequence jump, transport-cc stamps, audio levels, simulcast layer switches with picture-id
rewriting and temporal filtering, a recording-style tap in the forwarder list.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import sfu.media.producer as producer_module
from sfu.media.forwarder import DownTrack, Forwarder, bind
from sfu.media.layers import LayerConfig
from sfu.media.rtp import EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_MID, EXT_TRANSPORT_CC
from sfu.media.twcc import TransportSequencer

from .simulcast_packets import vp8_descriptor, vp8_interframe_header, vp8_keyframe_header
from .test_forwarder import (
    SUB_ABS_ID,
    SUB_LEVEL_ID,
    SUB_MID_ID,
    SUB_OPUS_PT,
    SUB_RTX_PT,
    SUB_VP8_PT,
    VP8_CONT,
    VP8_DELTA,
    Publisher,
    Wire,
    make_producer,
    payload_of,
)
from .test_simulcast_forwarding import Rig

TWCC_ID = 5


def plain_fan_out(forwarders, data, h, keyframe, now_s, enc, vp8, on_error) -> None:
    """What the fan-out did before: one `forward` call per copy."""
    for fw in forwarders:
        try:
            fw.forward(data, h, keyframe, now_s, enc, vp8)
        except Exception:
            on_error(fw)


def both_ways(scenario: Callable[[], object]) -> tuple[object, object]:
    """The scenario's outcome with the fast path, then with the plain loop."""
    fast = scenario()
    saved = producer_module.fan_out
    producer_module.fan_out = plain_fan_out
    try:
        plain = scenario()
    finally:
        producer_module.fan_out = saved
    return fast, plain


def downtrack(kind: str, index: int, wire: Wire, *, twcc: bool, extensions: bool = True):
    dt = DownTrack(
        kind=kind,
        mid=f"{kind[0]}{index}",
        ssrc=0x1000 + index,
        rtx_ssrc=0x2000 + index if kind == "video" else None,
        send=wire.send,
    )
    ids = {}
    if extensions:
        ids = {EXT_MID: SUB_MID_ID}
        ids[EXT_ABS_SEND_TIME if kind == "video" else EXT_AUDIO_LEVEL] = (
            SUB_ABS_ID if kind == "video" else SUB_LEVEL_ID
        )
        if twcc:
            ids[EXT_TRANSPORT_CC] = TWCC_ID
    dt.configure(
        mime_type="video/VP8" if kind == "video" else "audio/opus",
        payload_type=SUB_VP8_PT if kind == "video" else SUB_OPUS_PT,
        clock_rate=90000 if kind == "video" else 48000,
        rtx_payload_type=SUB_RTX_PT if kind == "video" else None,
        extension_ids=ids,
        transport_cc_id=TWCC_ID if twcc and extensions else 0,
        sequencer=TransportSequencer() if twcc and extensions else None,
    )
    return dt


def outcome(dts: list[DownTrack], wires: list[Wire]) -> list:
    """Everything the two paths must agree on, per subscriber."""
    result = []
    for dt, wire in zip(dts, wires, strict=True):
        fw = dt.forwarder
        seq = dt.sequencer
        result.append(
            (
                wire.packets,
                dt.packets_sent,
                dt.octets_sent,
                (dt.started, dt.last_seq, dt.last_ts, dt.last_send_s),
                None if fw is None else (list(fw._ring), fw.synced, fw.in_highest_seq),
                None if seq is None else (list(seq._ext), list(seq._send), list(seq._size)),
            )
        )
    return result


class Tap:
    """A recording-style entry in the forwarder list: anything with `forward`."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def forward(self, data, h, keyframe, now_s, enc=None, vp8=None) -> None:
        self.seen.append(h.sequence_number)


def single_layer_video():
    producer = make_producer("video")
    wires = [Wire() for _ in range(4)]
    dts = [
        downtrack("video", 0, wires[0], twcc=True),
        downtrack("video", 1, wires[1], twcc=False, extensions=False),
        downtrack("video", 2, wires[2], twcc=True),
        downtrack("video", 3, wires[3], twcc=False),
    ]
    wires[2].up = False  # its transport comes up later: starts again on a keyframe
    for dt in dts[:3]:
        bind(producer, dt)
    tap = Tap()
    producer.attach(tap)
    pub = Publisher(producer, ssrc=0x1111, seq=65500, ts=4_000_000_000, now=1000.0)
    pub.frame(key=True)
    for k in range(6):
        pub.frame(packets=2 + k % 3)
    wires[2].up = True
    bind(producer, dts[3])  # joins mid-stream: waits for the next keyframe
    pub.frame()
    pub.frame(key=True)
    # reordered, duplicated and late packets; padding
    late = [pub.packet(VP8_DELTA + bytes(30)), pub.packet(VP8_CONT + bytes(30))]
    tail = pub.packet(VP8_CONT + bytes(30), marker=True, padding=8)
    pub.push(late[1])
    pub.push(tail)
    pub.push(late[0])
    pub.push(late[0])
    pub.ts += 3000
    pub.now += 1 / 30
    for _ in range(3):
        pub.frame()
    pub.seq = (pub.seq + 5000) & 0xFFFF  # a jump: a restart on this SSRC
    pub.frame()
    pub.frame(key=True)
    pub.ssrc = 0x2222  # the publisher restarts on a new SSRC
    pub.seq = 17
    pub.frame(key=True)
    for _ in range(4):
        pub.frame()
    producer.detach(dts[0].forwarder)  # a subscriber leaves
    pub.frame()
    return outcome(dts, wires), tap.seen


def audio_levels():
    producer = make_producer("audio")
    wires = [Wire() for _ in range(3)]
    dts = [downtrack("audio", i, wires[i], twcc=i == 0, extensions=i < 2) for i in range(3)]
    for dt in dts:
        bind(producer, dt)
    pub = Publisher(producer, ssrc=0x3333, seq=100, ts=5, now=50.0)
    for _ in range(20):
        pub.frame()
    pub.seq -= 3  # a late packet with an older number
    pub.frame()
    pub.seq += 3
    for _ in range(5):
        pub.frame()
    return outcome(dts, wires)


def simulcast_switches():
    rig = Rig()
    rig.now = 1000.0  # the same clock in both runs
    rig.warm_up()
    rig.bind(5e6, config=LayerConfig(probe_required=False, up_hold_s=0.0))
    rig.until_tl0()
    rig.step(keyframes=(2,))
    rig.run(10)
    rig.update(6e5)  # down to h on h's next keyframe: picture ids rewritten from then on
    rig.until_tl0()
    rig.step(keyframes=(1,))
    rig.run(8)
    rig.update(6e5, max_temporal=0)  # temporal filtering
    rig.run(8)
    rig.update(6e5)
    rig.run(8)
    rig.update(5e6)
    rig.until_tl0()
    rig.step(keyframes=(2,))
    rig.run(8)
    return outcome([rig.dt], [rig.wire]), rig.events


@pytest.mark.parametrize("scenario", [single_layer_video, audio_levels, simulcast_switches])
def test_fast_path_sends_what_forward_sends(scenario) -> None:
    fast, plain = both_ways(scenario)
    assert fast == plain
    first = fast[0][0] if isinstance(fast, tuple) else fast[0]
    assert first[1] > 0  # packets flowed


def test_fast_path_is_taken_in_the_steady_case(monkeypatch) -> None:
    """Most copies are sent by fan_out itself, not through Forwarder.forward."""
    calls = []
    original = Forwarder.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Forwarder, "forward", counted)
    producer = make_producer("video")
    wires = [Wire() for _ in range(5)]
    dts = [downtrack("video", i, wires[i], twcc=True) for i in range(5)]
    for dt in dts:
        bind(producer, dt)
    pub = Publisher(producer, ssrc=9, seq=1, ts=1, now=1.0)
    pub.frame(key=True)
    for _ in range(30):
        pub.frame()
    copies = sum(dt.packets_sent for dt in dts)
    assert copies == 5 * 31 * 3
    assert len(calls) == 5  # the first packet of each subscriber (its start on the keyframe)


def test_a_broken_copy_is_reported_and_the_others_still_go() -> None:
    producer = make_producer("video")
    good = Wire()
    dts = [downtrack("video", 0, Wire(), twcc=False), downtrack("video", 1, good, twcc=False)]
    for dt in dts:
        bind(producer, dt)
    errors = []
    producer._forward_failed = errors.append  # (Producer passes this to fan_out)
    pub = Publisher(producer, ssrc=9, seq=1, ts=1, now=1.0)
    pub.frame(key=True)

    def broken(packet: bytes) -> bool:
        raise RuntimeError("SRTP replay")

    dts[0]._send = broken
    for _ in range(3):
        pub.frame()
    assert len(good.packets) == 12
    assert errors == [dts[0].forwarder] * 9


def test_a_subscriber_started_on_the_cached_keyframe_gets_untouched_payloads() -> None:
    """Going live after the cached keyframe continues the same stream: picture ids as the
    encoder numbered them, nothing rewritten per copy (as for a start on a live keyframe)."""
    producer = make_producer("video")
    producer.keyframe_cache_s = 3.0
    pub = Publisher(producer, ssrc=0x1111, seq=300, ts=0, now=10.0)
    pid = 4000

    def frame(key: bool) -> None:
        nonlocal pid
        first = vp8_descriptor(pid, pid & 0xFF, 0) + (
            vp8_keyframe_header(640, 360) if key else vp8_interframe_header()
        )
        for i in range(3):
            desc = first if i == 0 else vp8_descriptor(pid, pid & 0xFF, 0, start=False)
            pub.push(pub.packet(desc + bytes([pid & 0xFF, i]) * 20, marker=i == 2))
        pub.ts += 3000
        pub.now += 1 / 30
        pid += 1

    frame(True)
    for _ in range(5):
        frame(False)
    wire = Wire()
    dt = downtrack("video", 0, wire, twcc=True)
    fw = bind(producer, dt)
    assert fw.prime(pub.now)
    for _ in range(10):
        frame(False)
    sent = {payload_of(p) for p in pub.sent}
    out = [payload_of(p) for p in wire.packets]
    assert len(out) == 3 + 30
    assert all(p in sent for p in out)
    assert fw.primed and not fw.munging
