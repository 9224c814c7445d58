"""VP8 frame reassembly and the recording timeline, packet by packet (no network)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sfu.recording.frames import Vp8FrameAssembler
from sfu.recording.timeline import Timeline


def packets_of(frame_no: int, parts: int, seq0: int, keyframe: bool = False, ts_step=3000):
    """(seq, ts, marker, start, keyframe, payload) for one frame split into `parts`."""
    ts = (1000 + frame_no * ts_step) & 0xFFFFFFFF
    return [
        (
            (seq0 + i) & 0xFFFF,
            ts,
            i == parts - 1,
            i == 0,
            keyframe and i == 0,
            bytes([frame_no & 0xFF, i]),
        )
        for i in range(parts)
    ]


def stream(frames: int, parts: int = 3, seq0: int = 65530, key_every: int = 10):
    out, seq = [], seq0
    for n in range(frames):
        out.append(packets_of(n, parts, seq, keyframe=n % key_every == 0))
        seq += parts
    return out


def feed(assembler, frames, now=0.0):
    got = []
    for frame in frames:
        for p in frame:
            got += assembler.push(*p, now)
    return got


def test_frames_come_whole_and_in_order_across_sequence_wrap():
    a = Vp8FrameAssembler()
    got = feed(a, stream(12))
    assert len(got) == 12
    assert [f.data for f in got[:2]] == [bytes([0, 0, 0, 1, 0, 2]), bytes([1, 0, 1, 1, 1, 2])]
    assert got[0].keyframe and not got[1].keyframe


def test_reordered_packets_wait_for_the_missing_one():
    a = Vp8FrameAssembler()
    frames = stream(3)
    assert len(feed(a, frames[:1])) == 1
    p = frames[1]
    assert a.push(*p[0], 0.0) == [] and a.push(*p[2], 0.0) == []
    assert feed(a, frames[2:]) == []  # frame 2 is complete but waits behind frame 1
    late = a.push(*p[1], 0.1)
    assert [f.data[0] for f in late] == [1, 2]


def test_a_lost_packet_drops_until_the_next_keyframe_and_asks_for_one():
    a = Vp8FrameAssembler(max_wait_s=0.2)
    frames = stream(25, key_every=20)
    feed(a, frames[:5])
    a.push(*frames[5][0], 1.0)  # frame 5 loses its other packets
    got = []
    for i, frame in enumerate(frames[6:], 6):
        for p in frame:
            got += a.push(*p, 1.0 + 0.05 * i)
    assert a.needs_keyframe
    assert got and got[0].keyframe and got[0].data[0] == 20  # nothing between 5 and 20
    assert [f.data[0] for f in got] == list(range(20, 25))


def test_a_whole_frame_missing_is_a_gap_too():
    a = Vp8FrameAssembler()
    frames = stream(15, key_every=12)
    got = feed(a, frames[:4] + frames[5:])  # frame 4 never arrives
    assert [f.data[0] for f in got] == [0, 1, 2, 3, 12, 13, 14]
    assert a.needs_keyframe


def test_duplicates_and_retransmissions_of_written_frames_are_ignored():
    a = Vp8FrameAssembler()
    frames = stream(4)
    got = feed(a, frames + frames[1:3])
    assert len(got) == 4


def test_nothing_before_the_first_keyframe():
    a = Vp8FrameAssembler()
    frames = stream(14, key_every=10)
    got = feed(a, frames[1:])
    assert [f.data[0] for f in got] == [10, 11, 12, 13]


packet = st.tuples(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=8),
    st.floats(0, 100),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(packet, max_size=300))
@example(  # RTP clock jumping by half its range and back (found by this test)
    [(0, 0, False, False, False, b"", 0.0)] * 3
    + [
        (0, 3, True, True, True, b"", 0.0),
        (0, 2_147_483_650, False, False, False, b"", 0.0),
        (32768, 1, False, False, False, b"", 0.0),
        (0, 0, False, False, False, b"", 1.0),
        (0, 2, True, True, True, b"", 0.0),
    ]
)
def test_any_packets_never_raise_and_memory_stays_bounded(packets):
    a = Vp8FrameAssembler(max_frames=16)
    last_ts = None
    for p in packets:
        for frame in a.push(*p):
            assert frame.data is not None and frame.ext_ts & 0xFFFFFFFF == frame.rtp_ts
            if last_ts is not None:  # frames come out in (unwrapped) RTP time order
                assert frame.ext_ts > last_ts
            last_ts = frame.ext_ts
        assert len(a._pending) <= 16


def test_timeline_follows_rtp_time_and_survives_wrap():
    t = Timeline(90000)
    assert t.pts_ms(0xFFFFFFFF - 2999, 100.0) == 100
    assert t.pts_ms(0xFFFFFFFF - 2999 + 3000 & 0xFFFFFFFF, 133.0) == 133  # wrapped
    assert t.pts_ms(90000, 1133.0) == 1133


def test_timeline_reanchors_on_jumps_and_never_goes_back():
    t = Timeline(48000)
    assert t.pts_ms(1000, 0.0) == 0
    assert t.pts_ms(1960, 20.0) == 20
    assert t.pts_ms(500, 40.0) == 40  # backwards RTP clock: from arrival
    assert t.pts_ms(500 + 48000 * 60, 60.0) == 60  # a 60 s jump that arrival contradicts
    t.reanchor()
    assert t.pts_ms(7, 10.0) == 61  # arrival earlier than what is written: just after it


@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.floats(0, 1e7)), max_size=200))
def test_timeline_is_strictly_increasing_for_any_input(frames):
    t = Timeline(90000)
    last = -1
    for ts, arrival in frames:
        ms = t.pts_ms(ts, arrival)
        assert ms > last
        last = ms
