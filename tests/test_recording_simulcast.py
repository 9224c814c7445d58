"""A recording of a simulcast track: the top layer, switching only on keyframes when the top
layer stops and comes back, with timestamps that keep increasing across the switches.

Packets are synthetic (tests/simulcast_packets.py: real RTP and VP8 payload descriptors, with
frame bodies that tell the layers apart), fed to a real Producer; the file written by PyAV
is demuxed (its frames are not decodable VP8, so not decoded)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av

from sfu.config import LimitSettings, RecordingSettings
from sfu.recording import Recorder
from sfu.room import Room, RoomRegistry

from .test_simulcast_forwarding import Rig

TAGS = {0xA0: 0, 0xB0: 1, 0xC0: 2}  # LayerStream tags of q, h, f


def layer_of(data: bytes, keyframe: bool) -> int:
    return TAGS[data[10 if keyframe else 3]]


async def test_top_layer_recorded_and_switched_on_keyframes_only(tmp_path: Path):
    settings = RecordingSettings(dir=str(tmp_path), min_free_mb=0)
    recorder = Recorder(settings)
    limits = LimitSettings()
    room = Room("sim", limits, RoomRegistry(limits))
    rig = Rig(pli_throttle_s=0.0)
    room.producers[rig.producer.id] = rig.producer
    rig.run(4)  # the host is live
    recording = recorder.start(room)
    tap = recording.tracks[0].tap
    assert rig.producer.forwarders == (tap,)
    assert rig.requests[-1] == rig.streams[2].ssrc  # a keyframe of the top layer, asked at start

    rig.run(3)  # no keyframe yet: nothing recorded
    assert recording.writer is None
    rig.until_tl0()
    rig.step(keyframes=(0, 1, 2))
    rig.run(45)
    assert recording.state == "recording" and tap.current == 2

    rig.requests.clear()
    for _ in range(45):  # the top layer stops (the publisher's uplink got worse)
        rig.step(layers=(0, 1))
    assert tap.target == 1 and tap.current == 2  # still on 2: no keyframe of 1 yet
    await asyncio.sleep(0.2)  # the producer's keyframe-request timer runs
    assert rig.streams[1].ssrc in rig.requests
    rig.until_tl0(layers=(0, 1))
    rig.step(keyframes=(1,), layers=(0, 1))
    assert tap.current == 1
    rig.run(30, layers=(0, 1))

    rig.requests.clear()
    rig.run(20)  # the top layer is back
    await asyncio.sleep(0.2)
    assert tap.target == 2 and rig.streams[2].ssrc in rig.requests and tap.current == 1
    rig.until_tl0()
    rig.step(keyframes=(2,))
    rig.run(30)
    assert tap.current == 2 and tap.switches == 2

    await recording.stop()
    assert recording.state == "stopped", recording.error
    assert recorder.active == {}
    assert rig.producer.forwarders == ()  # the tap is gone: no work per packet any more

    def demux() -> list[tuple[int, bool, int]]:
        with av.open(str(recording.path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
            return [
                (p.pts, p.is_keyframe, layer_of(bytes(p), p.is_keyframe))
                for p in container.demux(stream)
                if p.size
            ]

    packets = await asyncio.to_thread(demux)
    pts = [p[0] for p in packets]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False)), pts
    layers = [p[2] for p in packets]
    runs = [layers[0]] + [b for a, b in zip(layers, layers[1:], strict=False) if a != b]
    assert runs == [2, 1, 2], runs
    for i in range(1, len(packets)):
        if layers[i] != layers[i - 1]:
            assert packets[i][1], f"switch at frame {i} is not a keyframe"
    # frame spacing stays 1/30 s, but for the time the top layer was silent before the
    # switch down (the file follows arrival time there, not the other layer's RTP clock)
    gaps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
    down, up = (i for i in range(1, len(layers)) if layers[i] != layers[i - 1])
    silent_ms = (45 + 1) * 1000 / 30
    assert abs(gaps[down - 1] - silent_ms) < 100, (gaps[down - 1], silent_ms)
    # switching up, the new layer's keyframe may share its capture time with the old layer's
    # last frame (both arrive in one instant): it follows it by at least 1 ms
    assert 1 <= gaps[up - 1] < 70, gaps[up - 1]
    others = [g for i, g in enumerate(gaps) if i not in (down - 1, up - 1)]
    assert all(30 <= g <= 37 for g in others), others
    assert len(packets) == recording.writer.frames_written[0]
