"""Simulcast VP8 through Producer -> Forwarder -> DownTrack, without a network.

A synthetic publisher sends three encodings (rids q, h, f) the way Chromium does: separate
SSRCs, sequence numbers, timestamps and 15-bit picture ids, TL0PICIDX and the L1T3 temporal
pattern, keyframes per layer. A LayerSelector is driven by hand (bitrates from the producer,
estimates chosen by the test). What the subscriber receives is parsed back with the
independent readers of tests/simulcast_packets.py and must look like one continuous VP8
stream: sequence numbers +1, timestamps never backwards, picture ids +1 per frame, TL0PICIDX +1
per base-layer frame, VP8 data untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from sfu.media import bandwidth as bandwidth_module
from sfu.media.bandwidth import BandwidthController
from sfu.media.encoding import INACTIVE_AFTER_S
from sfu.media.forwarder import NO_TEMPORAL_LIMIT, DownTrack, bind, feed_layer_bitrates
from sfu.media.layers import Layer, LayerConfig, LayerSelector
from sfu.media.producer import CodecInfo, Producer, TrackInfo
from sfu.media.rtp import EXT_MID, ExtensionIds, RtpHeader
from sfu.media.twcc import TwccFeedback

from .simulcast_packets import (
    L1T3,
    LayerStream,
    read_vp8,
    rtp_fields,
    rtp_packet,
    serial_delta,
    three_layers,
    vp8_descriptor,
    vp8_keyframe_header,
)

PUB_EXT = ExtensionIds(mid=9, rid=10, repaired_rid=11)
PUB_VP8_PT, PUB_RTX_PT = 96, 97
SUB_SSRC, SUB_RTX_SSRC = 0x5EB5C001, 0x5EB5C002
SUB_VP8_PT, SUB_RTX_PT = 120, 121
RIDS = ["q", "h", "f"]
FPS = 30


@dataclass
class Wire:
    packets: list[bytes] = field(default_factory=list)

    def send(self, data: bytes) -> bool:
        self.packets.append(bytes(data))
        return True

    def media(self) -> list[dict]:
        return [f for f in map(rtp_fields, self.packets) if f["ssrc"] == SUB_SSRC]

    def rtx(self) -> list[dict]:
        return [f for f in map(rtp_fields, self.packets) if f["ssrc"] == SUB_RTX_SSRC]


class Rig:
    """A simulcast publisher, its Producer, and one subscriber's DownTrack."""

    def __init__(
        self, *, pli_throttle_s: float = 0.3, sync_bits: bool = True, keyframe_cache_s: float = 0.0
    ) -> None:
        self.requests: list[int] = []  # SSRCs the producer asked keyframes for
        self.producer = Producer(
            TrackInfo(id="TR_sim", kind="video", publisher="pub"),
            CodecInfo("video/VP8", 90000, PUB_VP8_PT, rtx_payload_type=PUB_RTX_PT),
            send_keyframe_request=self.requests.append,
            pli_throttle_s=pli_throttle_s,
            rids=RIDS,
            keyframe_cache_s=keyframe_cache_s,
        )
        self.streams = three_layers()
        self.sync_bits = sync_bits
        self.now = time.monotonic()
        self.k = 0  # frame index, shared by the layers (same capture times)
        self.wire = Wire()
        self.dt = DownTrack(
            kind="video", mid="1", ssrc=SUB_SSRC, rtx_ssrc=SUB_RTX_SSRC, send=self.wire.send
        )
        self.dt.configure(
            mime_type="video/VP8",
            payload_type=SUB_VP8_PT,
            clock_rate=90000,
            rtx_payload_type=SUB_RTX_PT,
            extension_ids={EXT_MID: 4},
        )
        self.fw = None
        self.selector: LayerSelector | None = None
        self.events: list[tuple[tuple[int, int] | None, str]] = []

    @property
    def tid(self) -> int:
        return L1T3[self.k % 4]

    def step(self, keyframes=(), layers=(0, 1, 2)) -> dict[int, list[bytes]]:
        """One frame on each of `layers` (keyframes only where the pattern has TID 0)."""
        tid = self.tid
        assert not keyframes or tid == 0, "keyframes only on TL0 frames"
        sync = self.sync_bits and tid > 0 and self.k % 4 in (1, 2)
        out = {}
        for i in layers:
            ext = [(9, b"1"), (10, RIDS[i].encode())]
            packets = self.streams[i].frame(
                keyframe=i in keyframes, tid=tid, pt=PUB_VP8_PT, ext=ext, sync=sync
            )
            for p in packets:
                self.feed(i, p)
            out[i] = packets
        self.k += 1
        self.now += 1 / FPS
        return out

    def feed(self, layer: int, packet: bytes) -> None:
        h = RtpHeader.parse(packet, PUB_EXT)
        self.producer.on_rtp(packet, h, self.now, self.producer.layers[layer])

    def until_tl0(self, **kw) -> None:
        while self.tid != 0:
            self.step(**kw)

    def run(self, frames: int, **kw) -> None:
        for _ in range(frames):
            self.step(**kw)

    def warm_up(self, seconds: float = 1.2) -> None:
        """Keyframes on every layer, then long enough for the bitrates to be measured."""
        self.step(keyframes=(0, 1, 2))
        self.run(int(seconds * FPS))

    def start_on(self, spatial: int, estimate: float, frames: int = 10) -> None:
        """Warm up, bind at `estimate`, start on `spatial`'s keyframe, then `frames` frames."""
        self.warm_up()
        self.bind(estimate)
        self.until_tl0()
        self.step(keyframes=(spatial,))
        self.run(frames)

    def bind(
        self,
        estimate: float,
        *,
        max_temporal: int | None = None,
        config: LayerConfig | None = None,
    ) -> None:
        self.selector = LayerSelector(config or LayerConfig(probe_required=False, up_hold_s=0.0))
        feed_layer_bitrates(self.selector, self.producer, self.now)
        self.selector.set_requested(None, max_temporal)
        self.selector.update(estimate, self.now)
        self.fw = bind(self.producer, self.dt, self.selector)
        self.fw.on_layer_change = lambda fw, reason: self.events.append((fw.layer, reason))

    def update(self, estimate: float, *, max_temporal: int | None = None) -> None:
        feed_layer_bitrates(self.selector, self.producer, self.now)
        self.selector.set_requested(None, max_temporal)
        self.selector.update(estimate, self.now)

    def source_index(self) -> dict[bytes, tuple[int, bytes]]:
        """VP8 data (after the descriptor) -> (layer, the packet the publisher sent)."""
        index = {}
        for i, stream in enumerate(self.streams):
            for p in stream.sent:
                index[rtp_fields(p)["payload"][6:]] = (i, p)
        return index


@dataclass
class Frame:
    layer: int
    tid: int
    picture_id: int
    tl0: int
    packets: int


def check_continuous(rig: Rig, start: int = 0) -> list[Frame]:
    """Assert the subscriber's stream (media packets from `start`) is one continuous VP8 stream;
    returns its frames."""
    media = rig.wire.media()[start:]
    assert media, "nothing was forwarded"
    index = rig.source_index()
    frames: list[Frame] = []
    prev = None
    for f in media:
        assert f["pt"] == SUB_VP8_PT
        desc = read_vp8(f["payload"])
        layer, src_packet = index[f["payload"][6:]]  # VP8 data untouched
        src = rtp_fields(src_packet)
        src_desc = read_vp8(src["payload"])
        # only picture id and TL0PICIDX may be rewritten
        assert f["payload"][:2] == src["payload"][:2] and f["payload"][5] == src["payload"][5]
        assert f["marker"] == src["marker"]
        if prev is not None:
            assert f["seq"] == (prev["seq"] + 1) & 0xFFFF, (prev["seq"], f["seq"])
            assert serial_delta(prev["ts"], f["ts"], 32) >= 0, (prev["ts"], f["ts"])
        if desc["start"]:
            if frames:
                last = frames[-1]
                assert serial_delta(prev["ts"], f["ts"], 32) > 0, "a new frame, the same ts"
                assert desc["picture_id"] == (last.picture_id + 1) & 0x7FFF, (
                    last.picture_id,
                    desc["picture_id"],
                )
                if desc["tid"] == 0:
                    assert desc["tl0"] == (last.tl0 + 1) & 0xFF, (last.tl0, desc["tl0"])
                else:
                    assert desc["tl0"] == last.tl0
            frames.append(Frame(layer, src_desc["tid"], desc["picture_id"], desc["tl0"], 1))
        else:
            assert frames and frames[-1].layer == layer, "a frame must not mix layers"
            assert desc["picture_id"] == frames[-1].picture_id
            assert desc["tl0"] == frames[-1].tl0
            assert f["ts"] == prev["ts"]
            frames[-1].packets += 1
        prev = f
    return frames


def layers_of(frames: list[Frame]) -> list[int]:
    """The layers in the order they were forwarded, consecutive repeats merged."""
    out: list[int] = []
    for fr in frames:
        if not out or out[-1] != fr.layer:
            out.append(fr.layer)
    return out


# -- start, up, down ------------------------------------------------------------------------------


def test_starts_on_the_target_layers_keyframe() -> None:
    rig = Rig()
    rig.warm_up()
    rig.requests.clear()
    rig.bind(600_000)
    assert rig.selector.target == Layer(1, 2)
    # bind asks every layer for a keyframe, the selector for the target's
    assert sorted(rig.requests) == sorted(s.ssrc for s in rig.streams)
    assert rig.selector.keyframe_request(rig.now) == 1
    rig.run(6)  # no keyframe yet: nothing goes out
    assert rig.wire.packets == []
    rig.until_tl0()
    first = rig.step(keyframes=(1,))[1]
    media = rig.wire.media()
    assert len(media) == len(first)
    # the very first packet keeps the publisher's numbering and picture id
    src = rtp_fields(first[0])
    assert (media[0]["seq"], media[0]["ts"]) == (src["seq"], src["ts"])
    assert media[0]["payload"] == src["payload"]
    rig.run(20)
    frames = check_continuous(rig)
    assert layers_of(frames) == [1]
    assert len(frames) == 21  # every frame of h, all temporal layers
    assert rig.fw.layer == (1, 2)
    assert rig.events == [((1, 2), "start")]
    assert rig.selector.keyframe_request(rig.now) is None  # nothing pending


def test_a_lower_keyframe_starts_at_once_then_moves_up_on_the_targets_keyframe() -> None:
    rig = Rig()
    rig.warm_up()
    rig.bind(600_000)
    rig.until_tl0()
    rig.step(keyframes=(0, 2))  # q and f keyframes; the target is h
    assert layers_of(check_continuous(rig)) == [0]  # q starts the picture, f is above target
    rig.run(8)
    rig.until_tl0()
    rig.step(keyframes=(1,))
    rig.run(8)
    frames = check_continuous(rig)
    assert layers_of(frames) == [0, 1]
    assert [reason for _, reason in rig.events] == ["start", "up"]


def test_switch_up_and_down_only_at_keyframes_with_one_continuous_stream() -> None:
    rig = Rig()
    rig.start_on(1, 600_000)
    assert rig.fw.current == 1

    # up: the estimate has room for f; nothing changes until f's keyframe
    rig.update(3_000_000)
    assert rig.selector.target == Layer(2, 2)
    assert rig.selector.keyframe_request(rig.now) == 2
    rig.until_tl0()
    rig.step(keyframes=(0,))  # a q keyframe is no reason to move
    rig.run(5)
    assert layers_of(check_continuous(rig)) == [1]
    switches_before = rig.dt.layer_switches
    rig.until_tl0()
    rig.step(keyframes=(2,))
    rig.run(9)
    assert rig.fw.current == 2 and rig.fw.layer == (2, 2)
    assert rig.dt.layer_switches == switches_before + 1
    rig.until_tl0()
    rig.step(keyframes=(1,))  # h keyframes no longer matter
    rig.run(3)
    frames = check_continuous(rig)
    assert layers_of(frames) == [1, 2]
    first_f = next(i for i, fr in enumerate(frames) if fr.layer == 2)
    assert frames[first_f].tid == 0 and frames[first_f].packets == 5  # the whole keyframe

    # down: the estimate falls far (a severe fall: q) but f's base layer still fits it; f is
    # cut to its base layer until q's keyframe
    rig.update(650_000)
    assert rig.selector.target == Layer(0, 2) and not rig.selector.draining
    assert rig.fw.layer == (2, 0)
    mark = len(rig.wire.media())
    rig.run(8)  # no q keyframe yet: f's TL0 frames only
    waiting = check_continuous(rig, start=mark)
    assert {fr.layer for fr in waiting} == {2} and {fr.tid for fr in waiting} == {0}
    rig.until_tl0()
    rig.step(keyframes=(0,))
    rig.run(8)
    frames = check_continuous(rig)
    assert layers_of(frames) == [1, 2, 0]
    after = [fr for fr in frames if fr.layer == 0]
    assert {fr.tid for fr in after} == {0, 1, 2}  # q forwarded whole
    assert [reason for _, reason in rig.events] == ["start", "up", "down", "down"]
    assert [layer for layer, _ in rig.events] == [(1, 2), (2, 2), (2, 0), (0, 2)]


def test_sequence_numbers_and_timestamps_survive_wrap_on_every_layer() -> None:
    rig = Rig()
    # q's sequence numbers wrap within a few frames and its timestamps within a second
    assert rig.streams[0].seq > 65000 and rig.streams[0].ts > 4_290_000_000
    rig.warm_up(0.2)
    rig.bind(200_000)
    rig.until_tl0()
    rig.step(keyframes=(0,))
    rig.run(80)
    rig.update(3_000_000)
    rig.until_tl0()
    rig.step(keyframes=(2,))
    rig.run(10)
    assert layers_of(check_continuous(rig)) == [0, 2]


def test_subscriber_bound_before_the_layers_are_measured_keeps_its_layer() -> None:
    """A subscriber that joins as the publisher starts is planned on nominal bitrates (one
    value per spatial layer). When the real ones, per temporal layer, are measured, a constant
    estimate that fits h must not send it down to q (with the production config, climbing back
    takes a hold time and a probe)."""
    rig = Rig()
    rig.bind(1_000_000, config=LayerConfig())  # no packet yet: nominal rates
    assert rig.selector.target.spatial == 1
    rig.step(keyframes=(0, 1, 2))
    targets = []
    for _ in range(60):  # 2 s; the bandwidth controller decides every 100 ms
        rig.step()
        if rig.k % 3 == 0:
            rig.update(1_000_000)
            targets.append(rig.selector.target)
    measured = rig.producer.layer_bitrates(rig.now)
    assert measured[1][-1] * 1.15 < 1_000_000  # all of h fits the estimate
    assert min(t.spatial for t in targets) == 1, targets
    assert rig.selector.keyframe_request(rig.now) is None  # no reason to ask q for a keyframe


def test_layer_planned_on_nominal_rates_is_forwarded_whole() -> None:
    """Before the bitrates are measured the selector knows one (nominal) rate per spatial
    layer, so its temporal index 0 stands for the whole layer; the forwarder must not cut the
    layer to TID 0 because the encoding has already shown three temporal layers."""
    rig = Rig()
    rig.warm_up(0.3)  # TIDs seen, no bitrate measured yet
    assert rig.producer.layer_bitrates(rig.now) == {}
    assert rig.producer.layers[1].temporal_layers == 3
    rig.bind(700_000)  # room for h's nominal 500 kbps, not for f's 1.5 Mbps
    assert rig.selector.target.spatial == 1
    rig.until_tl0()
    rig.step(keyframes=(1,))
    rig.run(7)
    frames = check_continuous(rig)
    assert layers_of(frames) == [1]
    assert [fr.tid for fr in frames] == [0, 2, 1, 2, 0, 2, 1, 2], rig.fw.max_tid


# -- temporal filtering ---------------------------------------------------------------------------


def test_max_temporal_zero_drops_upper_frames_without_gaps() -> None:
    rig = Rig()
    rig.warm_up()
    rig.bind(200_000, max_temporal=0)
    assert rig.selector.target == Layer(1, 0)
    rig.until_tl0()
    rig.step(keyframes=(1,))
    rig.run(23)
    frames = check_continuous(rig)  # no sequence or picture id gap where frames were dropped
    assert {fr.tid for fr in frames} == {0}
    assert len(frames) == 6  # one frame in four
    assert rig.fw.max_tid == 0
    # every packet of the dropped frames was counted
    assert rig.fw.dropped_temporal == 18 * 2
    assert rig.wire.rtx() == []


def _filtered_q(rig: Rig) -> None:
    """Start on q limited to its base layer by the estimate, then give it room for all three."""
    rig.warm_up()
    rig.bind(60_000)
    assert rig.selector.target == Layer(0, 0)
    rig.until_tl0()
    rig.step(keyframes=(0,))
    rig.run(11)
    assert {fr.tid for fr in check_continuous(rig)} == {0}
    assert rig.fw.max_tid == 0
    rig.update(200_000)  # room for q's three temporal layers, not for h
    assert rig.selector.target == Layer(0, 2)
    assert rig.fw.layer == (0, 2) and rig.events[-1] == ((0, 2), "up")
    assert rig.fw.pending_tid == NO_TEMPORAL_LIMIT


def test_temporal_layers_come_back_at_a_sync_frame() -> None:
    rig = Rig()
    _filtered_q(rig)
    rig.run(12)
    frames = check_continuous(rig)
    assert {fr.tid for fr in frames[-6:]} == {0, 1, 2}
    assert layers_of(frames) == [0]


def test_temporal_layers_come_back_after_a_base_layer_frame_without_sync_bits() -> None:
    """A publisher that never sets Y: the forwarder may move up at a TL0 frame (every later
    frame of the L1T3 pattern only refers to it and to frames after it), as its comment says."""
    rig = Rig(sync_bits=False)
    _filtered_q(rig)
    rig.run(16)
    frames = check_continuous(rig)
    assert {fr.tid for fr in frames[-6:]} == {0, 1, 2}, [fr.tid for fr in frames]


def test_late_base_layer_packet_after_dropped_frames_fills_its_own_slot() -> None:
    """The SFU NACKs the publisher for a lost TL0 packet; its retransmission arrives after
    frames that temporal filtering dropped. It must go out with the sequence number the
    subscriber is missing, not one already used."""
    rig = Rig()
    rig.warm_up()
    rig.bind(200_000, max_temporal=0)
    rig.until_tl0()
    rig.step(keyframes=(1,))
    rig.run(7)
    rig.until_tl0()
    # the next TL0 frame of h has two packets; the second is lost on the way in
    h = rig.streams[1]
    h.frame_bytes = 2400
    lost = []
    real_feed = rig.feed

    def lossy_feed(layer: int, packet: bytes) -> None:
        if layer == 1 and not lost and rtp_fields(packet)["marker"] and h.frame_no % 4 == 1:
            lost.append(packet)  # held back
            return
        real_feed(layer, packet)

    rig.feed = lossy_feed
    rig.step()
    assert lost, "the TL0 frame's last packet was held back"
    rig.feed = real_feed
    h.frame_bytes = 2000
    rig.run(3)  # TID 2, 1, 2 frames: dropped
    before = rig.wire.media()
    rig.feed(1, lost[0])  # the retransmission, unwrapped by the publisher session
    late = rig.wire.media()[len(before) :]
    assert len(late) == 1
    sent_seqs = [f["seq"] for f in before]
    # the subscriber has seen everything up to the held-back packet's predecessor
    missing = (sent_seqs[-1] + 1) & 0xFFFF
    assert late[0]["seq"] == missing, (late[0]["seq"], sent_seqs[-3:])
    assert late[0]["seq"] not in sent_seqs
    rig.run(8)
    check_continuous(rig)


# -- NACKs -----------------------------------------------------------------------------------------


def test_nack_after_a_switch_resends_the_new_layer_as_sent_and_skips_the_old() -> None:
    rig = Rig()
    rig.start_on(1, 600_000)
    rig.update(3_000_000)
    rig.until_tl0()
    rig.step(keyframes=(2,))
    rig.run(6)
    media = rig.wire.media()
    frames = check_continuous(rig)
    assert layers_of(frames) == [1, 2]
    # picture ids were rewritten on f (its own ids are thousands away)
    index = rig.source_index()
    f_first = next(f for f in media if index[f["payload"][6:]][0] == 2)
    f_source = rtp_fields(index[f_first["payload"][6:]][1])
    assert read_vp8(f_first["payload"])["picture_id"] != read_vp8(f_source["payload"])["picture_id"]
    assert f_first["payload"] != f_source["payload"]
    # NACK two packets of h (before the switch) and three of f (after it): the h ones are not
    # worth resending (the subscriber restarts on f's keyframe), the f ones exactly as sent
    by_seq = {f["seq"]: f for f in media}
    switch_at = media.index(f_first)
    old_layer = [media[switch_at - 3]["seq"], media[switch_at - 1]["seq"]]
    nacked = [f_first["seq"], media[switch_at + 7]["seq"], media[-1]["seq"]]
    assert rig.fw.on_nack(old_layer + nacked) == 3
    rtx = rig.wire.rtx()
    assert [r["pt"] for r in rtx] == [SUB_RTX_PT] * 3
    assert [r["seq"] for r in rtx] == [(rtx[0]["seq"] + i) & 0xFFFF for i in range(3)]
    for r, seq in zip(rtx, nacked, strict=True):
        original = by_seq[seq]
        assert int.from_bytes(r["payload"][:2], "big") == seq  # RFC 4588 OSN
        assert r["payload"][2:] == original["payload"]  # incl. the rewritten picture id
        assert r["ts"] == original["ts"] and r["marker"] == original["marker"]
    assert rig.dt.retransmitted == 3
    # a sequence number never sent is not answered
    assert rig.fw.on_nack([(media[-1]["seq"] + 5) & 0xFFFF]) == 0


# -- bitrates, keyframe requests, sizes -----------------------------------------------------------


def test_layer_bitrates_per_temporal_layer_and_inactive_after_silence() -> None:
    rig = Rig()
    rig.warm_up(2.0)
    rates = rig.producer.layer_bitrates(rig.now)
    assert sorted(rates) == [0, 1, 2]
    for i, stream in enumerate(rig.streams):
        enc = rig.producer.layers[i]
        assert enc.rid == RIDS[i] and enc.spatial == i
        assert enc.temporal_layers == 3
        assert enc.bitrates(rig.now) == rates[i]
        # each frame carries frame_bytes of VP8 data plus a 6-byte descriptor per packet
        packets = -(-stream.frame_bytes // stream.mtu)
        total = (stream.frame_bytes + 6 * packets) * 8 * FPS
        t0, t1, t2 = rates[i]
        assert t0 < t1 < t2  # cumulative
        assert t2 == pytest.approx(total, rel=0.1)
        # L1T3: TID 0 and TID 1 are a quarter of the frames each, TID 2 half
        assert t0 == pytest.approx(total / 4, rel=0.2)
        assert t1 == pytest.approx(total / 2, rel=0.15)
    assert rates[0][-1] < rates[1][-1] < rates[2][-1]

    # f goes silent (the publisher paused it): inactive after INACTIVE_AFTER_S
    rig.run(int(INACTIVE_AFTER_S * FPS) - 6, layers=(0, 1))
    assert sorted(rig.producer.layer_bitrates(rig.now)) == [0, 1, 2]
    rig.run(12, layers=(0, 1))
    assert sorted(rig.producer.layer_bitrates(rig.now)) == [0, 1]
    assert rig.producer.layers[2].bitrates(rig.now) == []
    layers = {d["rid"]: d for d in rig.producer.layers_json(rig.now)}
    assert layers["f"]["active"] is False and layers["f"]["bitrate_bps"] == 0
    assert layers["h"]["active"] is True and layers["h"]["bitrate_bps"] > 0

    # a selector fed with these rates no longer offers f
    selector = LayerSelector(LayerConfig(probe_required=False, up_hold_s=0.0))
    feed_layer_bitrates(selector, rig.producer, rig.now)
    selector.update(10_000_000, rig.now)
    assert selector.target == Layer(1, 2)


def test_keyframe_requests_per_layer_hit_the_right_ssrc_and_are_throttled_per_layer() -> None:
    rig = Rig(pli_throttle_s=0.3)
    p = rig.producer
    assert p.request_keyframe(rig.now) is False  # no SSRC known yet: nobody to ask
    assert rig.requests == []
    rig.warm_up(0.2)
    q, h, f = (s.ssrc for s in rig.streams)
    assert [e.ssrc for e in p.layers] == [q, h, f]
    t = rig.now
    assert p.request_keyframe(t, 1) is True
    assert rig.requests == [h]
    assert p.request_keyframe(t + 0.1, 1) is False  # throttled
    assert p.request_keyframe(t + 0.1, 2) is True  # another layer: its own throttle
    assert rig.requests == [h, f]
    assert p.request_keyframe(t + 0.31, 1) is True
    assert rig.requests == [h, f, h]
    assert p.request_keyframe(t + 0.35) is True  # every layer not throttled: only q
    assert rig.requests == [h, f, h, q]
    assert [e.keyframe_requests for e in p.layers] == [1, 2, 1]
    assert p.keyframe_requests == 4
    assert p.request_keyframe(t + 0.36, 5) is False  # no such layer


def test_subscriber_pli_asks_for_the_forwarded_layer_only() -> None:
    rig = Rig(pli_throttle_s=0.0)
    rig.start_on(1, 600_000, frames=0)
    rig.requests.clear()
    rig.fw.on_keyframe_request()
    assert rig.requests == [rig.streams[1].ssrc]


def test_waiting_forwarder_does_not_forward_or_ask_for_other_layers() -> None:
    """Before the first keyframe nothing reaches the subscriber, and interframes of the
    layers it does not want make no keyframe requests of their own."""
    rig = Rig(pli_throttle_s=0.0)
    rig.warm_up()
    rig.bind(600_000)
    rig.requests.clear()
    rig.run(8)
    assert rig.wire.packets == []
    assert rig.streams[0].ssrc not in rig.requests and rig.streams[2].ssrc not in rig.requests


def test_keyframe_dimensions_are_read_per_layer() -> None:
    rig = Rig()
    rig.step(keyframes=(0, 1, 2))
    assert [(e.width, e.height) for e in rig.producer.layers] == [
        (320, 180),
        (640, 360),
        (1280, 720),
    ]
    # the bytes as RFC 6386 9.1 lays them out for 640x360: 9d 01 2a, 0x0280, 0x0168
    assert vp8_keyframe_header(640, 360)[3:] == bytes.fromhex("9d012a 8002 6801")


def test_keyframe_dimensions_ignore_scaling_bits_and_non_keyframes() -> None:
    codec = CodecInfo("video/VP8", 90000, PUB_VP8_PT)
    producer = Producer(
        TrackInfo(id="TR_x", kind="video", publisher="pub"),
        codec,
        send_keyframe_request=lambda ssrc: None,
        rids=RIDS,
    )
    enc = producer.layers[1]
    stream = LayerStream(
        tag=1, ssrc=77, rtx_ssrc=78, seq=1, ts=1, picture_id=1, tl0=1, width=640, height=360
    )
    key = stream.frame(keyframe=True, tid=0, pt=PUB_VP8_PT)[0]
    producer.on_rtp(key, RtpHeader.parse(key), 1.0, enc)
    assert (enc.width, enc.height) == (640, 360)
    # scaling bits set (upscale x5/4 both ways): the 14-bit sizes still read 640x360
    scaled = vp8_descriptor(2, 2, 0) + vp8_keyframe_header(640, 360, scale_bits=1) + bytes(20)
    packet = rtp_packet(pt=PUB_VP8_PT, seq=2, ts=3001, ssrc=77, payload=scaled, marker=True)
    producer.on_rtp(packet, RtpHeader.parse(packet), 1.1, enc)
    assert (enc.width, enc.height) == (640, 360)
    assert enc.last_keyframe_s == 1.1
    # an interframe whose bytes look like a start code changes nothing
    fake = vp8_descriptor(3, 2, 2) + b"\x01\x00\x00\x9d\x01\x2a\x10\x00\x10\x00" + bytes(20)
    packet = rtp_packet(pt=PUB_VP8_PT, seq=3, ts=6001, ssrc=77, payload=fake, marker=True)
    producer.on_rtp(packet, RtpHeader.parse(packet), 1.2, enc)
    assert (enc.width, enc.height) == (640, 360)
    assert enc.last_keyframe_s == 1.1
    # a keyframe too short to hold the sizes leaves them alone
    short = vp8_descriptor(4, 3, 0) + vp8_keyframe_header(100, 100)[:7]
    packet = rtp_packet(pt=PUB_VP8_PT, seq=4, ts=9001, ssrc=77, payload=short, marker=True)
    producer.on_rtp(packet, RtpHeader.parse(packet), 1.3, enc)
    assert (enc.width, enc.height) == (640, 360)
    assert producer.layers[0].width == 0 and producer.layers[2].width == 0


def test_a_spatial_move_up_gives_the_estimator_a_keyframe_burst_grace() -> None:
    """The keyframe that starts a higher layer is a burst: the subscriber's controller holds
    the estimate on overuse for KEYFRAME_BURST_GRACE_S + RTT after the move, not otherwise."""
    rig = Rig()
    rig.warm_up()
    rig.bind(200_000)  # q fits
    ctrl = BandwidthController([rig.dt])
    seq = 0

    def feedback(at: float) -> None:
        nonlocal seq
        base = seq
        for k in range(10):
            ctrl.sequencer.next_seq(1200, at - 0.2 + k * 0.01)
            seq += 1
        arrivals = [int((at - 0.18 + k * 0.01) * 1e6) for k in range(10)]
        packet = TwccFeedback.from_arrivals(1, seq & 0xFF, base, arrivals).serialize()
        ctrl.on_transport_feedback(packet, at)

    rig.until_tl0()
    rig.step(keyframes=(0,))
    assert rig.fw.layer is not None and rig.fw.layer[0] == 0
    feedback(rig.now)
    assert ctrl.estimator.overuse_grace_until < rig.now  # started, never moved up
    # the controller's 1 Mbit/s start estimate fits h: the selector (no hold, no probe in
    # this rig) moves there on h's keyframe
    assert rig.selector.target is not None and rig.selector.target.spatial == 1
    rig.until_tl0()
    rig.step(keyframes=(1,))
    assert rig.fw.layer is not None and rig.fw.layer[0] == 1
    up_at = rig.selector.spatial_up_at
    assert up_at > 0
    feedback(rig.now + 0.1)
    grace = bandwidth_module.KEYFRAME_BURST_GRACE_S + ctrl.estimator.rtt_s
    assert ctrl.estimator.overuse_grace_until == pytest.approx(up_at + grace)


def _rig_on_f(frames: int, keyframe_cache_s: float = 0.0) -> Rig:
    """A rig forwarding f (started on f's keyframe, `frames` frames since)."""
    rig = Rig(keyframe_cache_s=keyframe_cache_s)
    rig.start_on(2, 3_000_000, frames)
    assert rig.fw.layer == (2, 2)
    return rig


def _at_top_after_a_keyframe_on_every_layer(frames_after: int) -> Rig:
    """On f; then one request answered with keyframes on every layer (as Chrome does), and
    `frames_after` frames since."""
    rig = _rig_on_f(10, keyframe_cache_s=2.0)
    rig.until_tl0()
    rig.step(keyframes=(0, 1, 2))
    rig.run(frames_after)
    assert rig.fw.layer == (2, 2)
    return rig


def test_a_move_down_starts_on_a_keyframe_that_just_went_by() -> None:
    rig = _at_top_after_a_keyframe_on_every_layer(frames_after=2)
    mark = len(rig.wire.media())
    rig.update(200_000)  # the link fell: q, whose keyframe passed two frames ago
    assert rig.selector.target == Layer(0, 2) and rig.selector.switch_pending
    asked_before = len(rig.requests)
    assert rig.fw.switch_down_on_recent_keyframe(rig.now)
    assert rig.fw.layer == (0, 2) and not rig.selector.switch_pending
    assert rig.dt.recent_keyframe_switches == 1
    replayed = check_continuous(rig, start=mark)
    assert [fr.layer for fr in replayed] == [0, 0, 0]  # the keyframe and the two frames since
    assert replayed[0].tid == 0
    rig.run(6)  # and q goes on live, one continuous stream with what came before
    frames = check_continuous(rig)
    assert layers_of(frames) == [2, 0]
    assert len([fr for fr in frames if fr.layer == 0]) == 3 + 6
    assert rig.producer.layers[0].ssrc not in rig.requests[asked_before:]  # nothing to ask


def test_no_start_on_an_old_keyframe_nor_for_a_move_up() -> None:
    rig = _at_top_after_a_keyframe_on_every_layer(frames_after=15)  # 0.5 s ago
    rig.update(200_000)
    assert rig.selector.switch_pending
    assert not rig.fw.switch_down_on_recent_keyframe(rig.now)
    assert rig.fw.layer == (2, 0) and rig.dt.recent_keyframe_switches == 0
    # the normal way: q's next keyframe
    rig.until_tl0()
    rig.step(keyframes=(0,))
    assert rig.fw.layer == (0, 2)
    # up to h with h's keyframe just gone by: not this way (a move up waits for a fresh one)
    rig.until_tl0()
    rig.step(keyframes=(0, 1))
    rig.update(3_000_000)
    rig.step()
    rig.update(3_000_000)
    assert rig.selector.target is not None and rig.selector.target.spatial > 0
    assert not rig.fw.switch_down_on_recent_keyframe(rig.now)
    assert rig.fw.layer == (0, 2)


def test_a_layer_whose_base_exceeds_a_collapsed_link_is_drained_until_the_keyframe() -> None:
    """f, then 200 kbit/s: even f's base layer is beyond the link. Nothing of f goes out while
    q's keyframe is awaited (it would only fill the bottleneck queue the keyframe must pass);
    the stream then goes on with q, one continuous stream."""
    rig = _rig_on_f(6)
    rig.update(200_000)
    assert rig.selector.target == Layer(0, 2) and rig.selector.draining
    mark = len(rig.wire.media())
    rig.run(7)
    assert len(rig.wire.media()) == mark  # drained
    assert rig.fw.dropped_draining > 0
    rig.until_tl0()
    rig.step(keyframes=(0,))
    rig.run(4)
    assert not rig.selector.draining and rig.fw.layer == (0, 2)
    assert layers_of(check_continuous(rig)) == [2, 0]
