"""SDP from clients (sfu/media/sdp.py): offers, simulcast attributes, answered extensions.

`parse_offer`, `parse_simulcast` and `free_extension_id` raise SdpError (a ValueError) and
nothing else; what they return is bounded by the text (one entry per m-line, one rid per
a=rid line), and patching our answer with what an offer said never adds m-lines to it.
Inputs are mutations of a real Chromium simulcast offer (lines dropped, repeated, garbled,
and lines of the kinds the SFU reads inserted), plus arbitrary text.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.media.rtp import EXT_RID, EXT_TRANSPORT_CC
from sfu.media.sdp import (
    SdpError,
    accept_red,
    answered_extension,
    answered_red,
    free_extension_id,
    offer_red,
    parse_offer,
    parse_simulcast,
    patch_publisher_answer,
    rid_order,
)

from ..test_sdp_simulcast import CHROME_OFFER, aiortc_answer
from .budget import fuzz
from .corpus import corpus

pytestmark = pytest.mark.fuzz

SEED_LINES = CHROME_OFFER.split("\r\n")[:-1]
ANSWER = aiortc_answer()
junk = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("0123456789abcqhf:;/ =,~-*\t\r\x00\x0b\x85\u2028")),
        st.characters(codec="utf-8"),
    ),
    max_size=24,
)
templates = st.sampled_from(
    [
        "m=video {} UDP/TLS/RTP/SAVPF {}",
        "m=audio 9 UDP/TLS/RTP/SAVPF {}{}",
        "m={} 9 {}",
        "a=rid:{} send{}",
        "a=rid:{} {}",
        "a=simulcast:send {};{}",
        "a=simulcast:{} {}",
        "a=ssrc-group:SIM {} {}",
        "a=ssrc-group:FID {} {}",
        "a=ssrc:{} cname:{}",
        "a=extmap:{} " + EXT_RID + "{}",
        "a=extmap:{} " + EXT_TRANSPORT_CC + "{}",
        "a=extmap:{}/sendonly {}",
        "a=mid:{}{}",
        "a=fingerprint:sha-256 {}{}",
        "a=setup:{}{}",
        "a=ice-ufrag:{}{}",
        "a=rtpmap:{} {}",
        "a=fmtp:{} {}",
        "c=IN IP4 {}{}",
        "a=candidate:{} 1 udp {}",
    ]
)


@st.composite
def offer_like(draw) -> str:
    lines = list(SEED_LINES)
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["drop", "repeat", "garble", "insert", "insert"]))
        at = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if op == "drop" and lines:
            del lines[at]
        elif op == "repeat" and lines:
            lines[at:at] = [lines[at]] * draw(st.integers(1, 20))
        elif op == "garble" and lines:
            line = lines[at]
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + draw(junk) + line[cut + draw(st.integers(0, 8)) :]
        else:
            lines.insert(at, draw(templates).format(draw(junk), draw(junk)))
    newline = draw(st.sampled_from(["\r\n", "\n"]))
    return newline.join(lines) + newline


def check_sdp(text: str) -> None:
    m_lines = text.count("m=")
    try:
        media = parse_offer(text)
    except SdpError:
        pass
    else:
        assert 1 <= len(media) <= m_lines
        for m in media:
            assert len(m.ssrcs) <= text.count("a=ssrc")
            assert len(m.rtx_pairs) <= text.count("a=ssrc-group")
    try:
        offers = parse_simulcast(text)
    except SdpError:
        pass
    else:
        assert len(offers) <= m_lines
        for offer in offers.values():
            assert len(offer.rids) <= text.count("a=rid:")
            assert sorted(rid_order(offer.rids)) == sorted(offer.rids)
            assert all(1 <= i <= 255 for i in offer.extmaps.values())
        patched = patch_publisher_answer(ANSWER, offers, transport_cc=True)
        # nothing injected as a section (as the SFU splits lines: aiortc's splitlines() also
        # breaks at a lone CR, U+2028..., which an a=simulcast value may carry back)
        assert patched.count("\nm=") == ANSWER.count("\nm=")
        # RED and Opus FEC patches (issue 15): the same, and RED only with an Opus primary
        for patched in (
            patch_publisher_answer(ANSWER, offers, red=True, opus_fec=True),
            accept_red(ANSWER, offers, red=True, opus_fec=True),
        ):
            assert patched.count("\nm=") == ANSWER.count("\nm=")
        for offer in offers.values():
            if offer.red is not None:
                assert offer.red[1] == offer.opus_payload_type
                assert offer.red[0] in offer.payload_types
    offered = offer_red(text, red=True, opus_fec=True) if text.startswith("v=0") else text
    assert offered.count("\nm=") == text.replace("\r\n", "\n").count("\nm=")
    assert all(isinstance(pt, int) for pair in answered_red(text).values() for pt in pair)
    ids = answered_extension(text, EXT_TRANSPORT_CC)
    assert len(ids) <= m_lines and all(isinstance(i, int) for i in ids.values())
    try:
        assert 1 <= free_extension_id(text) <= 14
    except SdpError:
        pass


@fuzz(150)
@given(offer_like())
def test_sdp_mutated_offers(text: str) -> None:
    check_sdp(text)


@fuzz(150)
@given(st.one_of(junk.map(lambda s: "v=0\r\n" + s), st.text(max_size=200)))
def test_sdp_arbitrary_text(text: str) -> None:
    check_sdp(text)


@pytest.mark.parametrize("data", corpus("sdp"))
def test_sdp_corpus(data: bytes) -> None:
    check_sdp(data.decode("utf-8"))
