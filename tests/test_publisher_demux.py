"""PublisherSession with a simulcast offer: the answer accepts it, and incoming packets are
routed to the right layer by MID + RID (RTX by repaired RID), or by the SIM/FID groups.

The offer comes from a real aiortc RTCPeerConnection (sendonly video) and is edited the way
Chromium's simulcast offer differs from it: a=rid / a=simulcast lines, the rid and repaired-rid
extmaps, and no a=ssrc lines (browsers announce no SSRCs for rid simulcast). No media flows
over the network: decrypted packets are handed to the session's receive hook directly.
"""

from __future__ import annotations

import re

import pytest

from sfu.config import RtcSettings
from sfu.media.publisher import PublisherSession
from sfu.media.rtp import EXT_MID, EXT_REPAIRED_RID, EXT_RID, ExtensionIds

from .conftest import LOOPBACK
from .simulcast_packets import (
    RID_ID,
    RIDS,
    RRID_ID,
    LayerStream,
    aiortc_video_offer,
    payload_types,
    rtp_fields,
    rtp_packet,
    three_layers,
    to_rid_simulcast,
    to_sim_group,
)


def rtx_of(packet: bytes, stream: LayerStream, rtx_seq: int, pt: int, ext) -> bytes:
    """RFC 4588: the original sequence number leads the original payload."""
    f = rtp_fields(packet)
    return rtp_packet(
        pt=pt,
        seq=rtx_seq,
        ts=f["ts"],
        ssrc=stream.rtx_ssrc,
        payload=f["seq"].to_bytes(2, "big") + f["payload"],
        marker=f["marker"],
        extensions=ext,
    )


@pytest.fixture
async def session():
    s = PublisherSession(identity="pub", network=LOOPBACK, rtc=RtcSettings(), max_tracks=4)
    try:
        yield s
    finally:
        await s.close()


async def test_rid_simulcast_offer_is_answered_and_routed_by_mid_and_rid(session) -> None:
    offer = to_rid_simulcast(await aiortc_video_offer())
    assert "a=ssrc" not in offer
    answer, added = await session.negotiate(offer)

    assert "a=simulcast:recv q;h;f\r\n" in answer
    for rid in RIDS:
        assert f"a=rid:{rid} recv\r\n" in answer
    assert f"a=extmap:{RID_ID} {EXT_RID}\r\n" in answer
    assert f"a=extmap:{RRID_ID} {EXT_REPAIRED_RID}\r\n" in answer

    assert len(added) == 1
    producer = added[0]
    mid = next(m for m, p in session.producers.items() if p is producer)
    assert producer.simulcast and [e.rid for e in producer.layers] == RIDS
    assert all(e.ssrc is None for e in producer.layers)
    mid_id = int(re.search(rf"a=extmap:(\d+) {re.escape(EXT_MID)}", answer).group(1))
    vp8_pt, rtx_pt = payload_types(answer)
    assert (producer.codec.payload_type, producer.codec.rtx_payload_type) == (vp8_pt, rtx_pt)

    streams = three_layers()
    pub_ext = ExtensionIds(mid=mid_id, rid=RID_ID, repaired_rid=RRID_ID)

    def ext(rid: str, *, repaired: bool = False) -> list[tuple[int, bytes]]:
        return [(mid_id, mid.encode()), (RRID_ID if repaired else RID_ID, rid.encode())]

    # a packet without a rid on a new SSRC cannot be placed: dropped, nothing learned
    early = streams[1].frame(keyframe=True, tid=0, pt=vp8_pt, ext=[(mid_id, mid.encode())])
    for p in early:
        session._on_rtp(p, 0)
    assert producer.packets == 0 and producer.layers[1].ssrc is None

    # a few frames on every layer, each packet with MID and RID (as Chromium's first packets)
    sent = {i: [] for i in range(3)}
    for n in range(4):
        for i, stream in enumerate(streams):
            packets = stream.frame(keyframe=n == 0, tid=0, pt=vp8_pt, ext=ext(RIDS[i]))
            sent[i] += packets
            for p in packets:
                session._on_rtp(p, 0)
    for i, stream in enumerate(streams):
        enc = producer.layers[i]
        assert enc.ssrc == stream.ssrc, RIDS[i]
        assert enc.packets == len(sent[i])
        # the layer's cache has the publisher's packets, by sequence number
        for p in sent[i]:
            data, h = enc.cache.get(rtp_fields(p)["seq"])
            assert data == p and h.rid == RIDS[i].encode()
    assert producer.packets == sum(len(v) for v in sent.values())
    assert (producer.layers[1].width, producer.layers[2].width) == (640, 1280)

    # later packets carry no rid (the browser stops sending it): routed by SSRC now
    for i, stream in enumerate(streams):
        for p in stream.frame(keyframe=False, tid=0, pt=vp8_pt):
            session._on_rtp(p, 0)
            sent[i].append(p)
            assert producer.layers[i].packets == len(sent[i])

    # h loses a packet; its RTX (repaired rid, on the RTX SSRC) repairs it
    h = streams[1]
    lost_frame = h.frame(keyframe=False, tid=0, pt=vp8_pt)
    lost, kept = lost_frame[0], lost_frame[1:]
    for p in kept:
        session._on_rtp(p, 0)
    enc = producer.layers[1]
    lost_seq = rtp_fields(lost)["seq"]
    assert lost_seq in enc.nack.missing
    before = enc.packets
    session._on_rtp(rtx_of(lost, h, 500, rtx_pt, ext("h", repaired=True)), 0)
    assert enc.rtx_ssrc == h.rtx_ssrc
    assert enc.packets == before + 1
    assert lost_seq not in enc.nack.missing
    data, header = enc.cache.get(lost_seq)
    assert header.ssrc == h.ssrc and header.payload_type == vp8_pt
    assert data[header.payload_offset :] == rtp_fields(lost)["payload"]
    # the same repair again (a browser's RTX probe re-sends cached packets): not counted twice
    session._on_rtp(rtx_of(lost, h, 501, rtx_pt, None), 0)
    assert enc.packets == before + 1
    # other layers untouched by the RTX
    assert producer.layers[0].rtx_ssrc is None and producer.layers[2].rtx_ssrc is None
    assert session._ext == ExtensionIds(
        mid=pub_ext.mid,
        rid=RID_ID,
        repaired_rid=RRID_ID,
        abs_send_time=session._ext.abs_send_time,
    )


async def test_unknown_rid_is_ignored_and_rid_learned_after_a_rid_less_packet(session) -> None:
    answer, (producer,) = await session.negotiate(to_rid_simulcast(await aiortc_video_offer()))
    mid = next(iter(session.producers))
    mid_id = int(re.search(rf"a=extmap:(\d+) {re.escape(EXT_MID)}", answer).group(1))
    vp8_pt, rtx_pt = payload_types(answer)
    streams = three_layers()

    stranger = LayerStream(
        tag=0xEE, ssrc=0x0BAD0BAD, rtx_ssrc=0x0BAD0BAE, seq=1, ts=1, picture_id=1, tl0=1,
        width=160, height=90,
    )  # fmt: skip
    for p in stranger.frame(
        keyframe=True, tid=0, pt=vp8_pt, ext=[(mid_id, mid.encode()), (RID_ID, b"x")]
    ):
        session._on_rtp(p, 0)
    assert producer.packets == 0
    assert all(e.ssrc is None for e in producer.layers)
    # the SSRC stays ignored even if it later claimed a known rid
    for p in stranger.frame(
        keyframe=False, tid=0, pt=vp8_pt, ext=[(mid_id, mid.encode()), (RID_ID, b"q")]
    ):
        session._on_rtp(p, 0)
    assert producer.packets == 0 and producer.layers[0].ssrc is None

    # f: first packets without rid (dropped), then one with it: from then on by SSRC
    f = streams[2]
    for p in f.frame(keyframe=True, tid=0, pt=vp8_pt, ext=[(mid_id, mid.encode())]):
        session._on_rtp(p, 0)
    assert producer.layers[2].packets == 0 and producer.layers[2].ssrc is None
    with_rid = f.frame(
        keyframe=False, tid=0, pt=vp8_pt, ext=[(mid_id, mid.encode()), (RID_ID, b"f")]
    )
    for p in with_rid:
        session._on_rtp(p, 0)
    assert producer.layers[2].ssrc == f.ssrc
    assert producer.layers[2].packets == len(with_rid)
    bare = f.frame(keyframe=False, tid=0, pt=vp8_pt)
    for p in bare:
        session._on_rtp(p, 0)
    assert producer.layers[2].packets == len(with_rid) + len(bare)
    assert producer.layers[0].packets == producer.layers[1].packets == 0

    # RTX that arrives before its layer's media SSRC is known is dropped without harm
    q = streams[0]
    early = q.frame(keyframe=True, tid=0, pt=vp8_pt)[0]
    session._on_rtp(rtx_of(early, q, 9, rtx_pt, [(mid_id, mid.encode()), (RRID_ID, b"q")]), 0)
    assert producer.layers[0].packets == 0 and producer.layers[0].ssrc is None


async def test_sim_group_offer_routes_by_announced_ssrcs(session) -> None:
    streams = three_layers()
    offer = to_sim_group(await aiortc_video_offer(), streams)
    answer, (producer,) = await session.negotiate(offer)
    assert "a=simulcast" not in answer  # nothing to accept: the SSRCs were announced
    assert producer.simulcast and [e.rid for e in producer.layers] == [None, None, None]
    assert [e.rtx_ssrc for e in producer.layers] == [s.rtx_ssrc for s in streams]
    vp8_pt, rtx_pt = payload_types(answer)
    sent = {}
    for i, stream in enumerate(streams):
        sent[i] = stream.frame(keyframe=True, tid=0, pt=vp8_pt)  # no extensions at all
        for p in sent[i]:
            session._on_rtp(p, 0)
    assert [e.ssrc for e in producer.layers] == [s.ssrc for s in streams]
    assert [e.packets for e in producer.layers] == [len(sent[i]) for i in range(3)]
    # RTX found by its FID group, for the right layer
    f = streams[2]
    nxt = f.frame(keyframe=False, tid=0, pt=vp8_pt)
    session._on_rtp(nxt[1], 0)
    assert rtp_fields(nxt[0])["seq"] in producer.layers[2].nack.missing
    session._on_rtp(rtx_of(nxt[0], f, 77, rtx_pt, None), 0)
    assert producer.layers[2].cache.get(rtp_fields(nxt[0])["seq"]) is not None
    assert producer.layers[2].packets == len(sent[2]) + 2
    assert producer.layers[1].packets == len(sent[1])
