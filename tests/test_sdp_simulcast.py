"""Simulcast SDP handling that aiortc lacks: reading a=rid / a=simulcast / SIM groups and the
rid/repaired-rid/transport-cc extmaps of an offer, patching the publisher's answer, and adding
transport-cc to the SFU's own offers.

The offers are modelled on what Chromium sends for `addTransceiver(track, {sendEncodings:
[{rid: "q"}, {rid: "h"}, {rid: "f"}]})`: rids without SSRC lines, mid on extmap 9, rid on 10,
repaired rid on 11, transport-cc on 4; and on the older SDP-munging variant with
`a=ssrc-group:SIM` plus one FID group per layer.
"""

from __future__ import annotations

import re

import pytest

from sfu.media.rtp import (
    EXT_ABS_SEND_TIME,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TRANSPORT_CC,
)
from sfu.media.sdp import (
    SdpError,
    add_transport_cc,
    answered_extension,
    free_extension_id,
    parse_simulcast,
    patch_publisher_answer,
    rid_order,
)

FINGERPRINT = "sha-256 " + ":".join(["AB"] * 32)

SESSION = [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1 2",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 5f1d",
]


def _transport(mid: str) -> list[str]:
    return [
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:Xk2p",
        "a=ice-pwd:7zPq0mW3vJ8sLx1nQ4rT6yUb",
        "a=ice-options:trickle",
        f"a=fingerprint:{FINGERPRINT}",
        "a=setup:actpass",
        f"a=mid:{mid}",
    ]


CHROME_AUDIO = [
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    *_transport("0"),
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    f"a=extmap:4 {EXT_TRANSPORT_CC}",
    f"a=extmap:9 {EXT_MID}",
    "a=sendonly",
    "a=msid:5f1d 8a3c",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:1001 cname:Qm9vQ2hyb21l",
    "a=ssrc:1001 msid:5f1d 8a3c",
]

CHROME_VIDEO_RID = [
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
    *_transport("1"),
    "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:13 urn:3gpp:video-orientation",
    f"a=extmap:4 {EXT_TRANSPORT_CC}",
    "a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
    "a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing",
    "a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space",
    f"a=extmap:9 {EXT_MID}",
    f"a=extmap:10 {EXT_RID}",
    f"a=extmap:11 {EXT_REPAIRED_RID}",
    "a=sendonly",
    "a=msid:5f1d 77e2",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000",
    "a=rtcp-fb:102 goog-remb",
    "a=rtcp-fb:102 transport-cc",
    "a=rtcp-fb:102 ccm fir",
    "a=rtcp-fb:102 nack",
    "a=rtcp-fb:102 nack pli",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:103 rtx/90000",
    "a=fmtp:103 apt=102",
    "a=rid:q send",
    "a=rid:h send",
    "a=rid:f send",
    "a=simulcast:send q;h;f",
]

# The SDP-munging variant (no rids): one SIM group, one FID (RTX) group per layer.
SIM_SSRCS = [2222, 3333, 4444]
RTX_SSRCS = [5555, 6666, 7777]
CHROME_VIDEO_SIM = [
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    *_transport("2"),
    f"a=extmap:4 {EXT_TRANSPORT_CC}",
    f"a=extmap:9 {EXT_MID}",
    "a=sendonly",
    "a=msid:5f1d 9b0e",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    f"a=ssrc-group:SIM {' '.join(map(str, SIM_SSRCS))}",
    *[f"a=ssrc-group:FID {m} {r}" for m, r in zip(SIM_SSRCS, RTX_SSRCS, strict=True)],
    *[f"a=ssrc:{s} cname:Qm9vQ2hyb21l" for s in SIM_SSRCS + RTX_SSRCS],
]

DATA_CHANNEL = [
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    *_transport("3"),
    "a=sctp-port:5000",
    "a=max-message-size:262144",
]


def sdp(*sections: list[str], session: list[str] = SESSION) -> str:
    return "\r\n".join([*session, *(line for s in sections for line in s)]) + "\r\n"


CHROME_OFFER = sdp(CHROME_AUDIO, CHROME_VIDEO_RID, CHROME_VIDEO_SIM, DATA_CHANNEL)


def answer_section(kind: str, mid: str, pts: str, *, port: int = 9, extra=()) -> list[str]:
    """An m-section as aiortc writes it in an answer (rid/simulcast lines are never there)."""
    lines = [
        f"m={kind} {port} UDP/TLS/RTP/SAVPF {pts}",
        "c=IN IP4 127.0.0.1",
        "a=recvonly",
        f"a=extmap:9 {EXT_MID}",
        f"a=extmap:2 {EXT_ABS_SEND_TIME}",
        f"a=mid:{mid}",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
    ]
    lines += [f"a=rtpmap:{pt} X/90000" for pt in pts.split()]
    lines += list(extra)
    lines += [
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789abcdef012345",
        f"a=fingerprint:{FINGERPRINT}",
        "a=setup:active",
    ]
    return lines


AIORTC_SESSION = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2"]


def sections_of(text: str) -> dict[str, list[str]]:
    """mid -> lines of that m-section (without CRLF)."""
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\r\n"):
        if line.startswith("m="):
            current = [line]
            result[f"#{len(result)}"] = current
        elif current is not None and line:
            current.append(line)
    return {
        next((x[6:] for x in lines if x.startswith("a=mid:")), key): lines
        for key, lines in result.items()
    }


# -- parse_simulcast ---------------------------------------------------------------------------


def test_parse_simulcast_reads_chromium_rid_offer() -> None:
    offers = parse_simulcast(CHROME_OFFER)
    assert set(offers) == {"0", "1", "2"}  # the data channel section is not audio/video
    video = offers["1"]
    assert video.kind == "video"
    assert video.rids == ["q", "h", "f"]
    assert video.simulcast_value == "q;h;f"
    assert video.sim_ssrcs == []
    assert video.simulcast
    assert video.payload_types == [96, 97, 102, 103]
    # only the three extensions the SFU patches, with the offer's ids
    assert video.extmaps == {EXT_TRANSPORT_CC: 4, EXT_RID: 10, EXT_REPAIRED_RID: 11}

    audio = offers["0"]
    assert audio.kind == "audio"
    assert audio.rids == [] and audio.sim_ssrcs == [] and not audio.simulcast
    assert audio.extmaps == {EXT_TRANSPORT_CC: 4}
    assert audio.payload_types == [111, 63, 9, 0, 8, 13, 110, 126]


def test_parse_simulcast_reads_sim_group_variant() -> None:
    sim = parse_simulcast(CHROME_OFFER)["2"]
    assert sim.rids == [] and sim.simulcast_value == ""
    assert sim.sim_ssrcs == SIM_SSRCS  # lowest layer first, as listed
    assert sim.simulcast
    assert sim.extmaps == {EXT_TRANSPORT_CC: 4}


def test_rids_without_simulcast_attribute_are_not_simulcast() -> None:
    video = [line for line in CHROME_VIDEO_RID if not line.startswith("a=simulcast")]
    offer = parse_simulcast(sdp(video))["1"]
    assert offer.rids == [] and not offer.simulcast


def test_recv_rids_and_a_single_send_rid_are_not_simulcast() -> None:
    video = [line for line in CHROME_VIDEO_RID if not line.startswith(("a=rid", "a=simulcast"))]
    recv = parse_simulcast(sdp([*video, "a=rid:q recv", "a=rid:h recv", "a=simulcast:recv q;h"]))
    assert recv["1"].rids == [] and not recv["1"].simulcast
    single = parse_simulcast(sdp([*video, "a=rid:f send", "a=simulcast:send f"]))
    assert single["1"].rids == ["f"] and not single["1"].simulcast


def test_rid_lines_with_restrictions_are_read() -> None:
    video = [line for line in CHROME_VIDEO_RID if not line.startswith(("a=rid", "a=simulcast"))]
    video += [
        "a=rid:lo send pt=96;max-width=320;max-height=180",
        "a=rid:hi send pt=96;max-width=1280",
        "a=simulcast:send lo;hi",
    ]
    offer = parse_simulcast(sdp(video))["1"]
    assert offer.rids == ["lo", "hi"] and offer.simulcast_value == "lo;hi"


# -- rid_order ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rids", "expected"),
    [
        (["q", "h", "f"], ["q", "h", "f"]),
        (["f", "h", "q"], ["q", "h", "f"]),  # Firefox lists the highest first
        (["h", "q"], ["q", "h"]),
        (["f", "q"], ["q", "f"]),
        (["hi", "lo"], ["hi", "lo"]),  # unknown names: as offered
        (["f", "x", "q"], ["f", "x", "q"]),  # any unknown name: as offered
        ([], []),
    ],
)
def test_rid_order(rids: list[str], expected: list[str]) -> None:
    before = list(rids)
    assert rid_order(rids) == expected
    assert rids == before  # the argument is not sorted in place


# -- patch_publisher_answer --------------------------------------------------------------------


def aiortc_answer(*, rejected_video: bool = False, extra_video=()) -> str:
    return sdp(
        answer_section("audio", "0", "111"),
        answer_section("video", "1", "96 97", extra=extra_video),
        answer_section("video", "2", "96 97", port=0 if rejected_video else 9),
        session=AIORTC_SESSION,
    )


def test_patch_answer_accepts_rid_simulcast() -> None:
    offers = parse_simulcast(CHROME_OFFER)
    original = aiortc_answer()
    patched = patch_publisher_answer(original, offers)
    before, after = sections_of(original), sections_of(patched)
    assert set(after) == {"0", "1", "2"}

    added = [line for line in after["1"] if line not in before["1"]]
    assert sorted(added) == sorted(
        [
            f"a=extmap:10 {EXT_RID}",
            f"a=extmap:11 {EXT_REPAIRED_RID}",
            "a=rid:q recv",
            "a=rid:h recv",
            "a=rid:f recv",
            "a=simulcast:recv q;h;f",
        ]
    )
    assert after["1"][: len(before["1"])] == before["1"]  # nothing removed or reordered
    # rid lines keep the offer's order (RFC 8853: the answer mirrors the offered rids)
    rids = [line for line in after["1"] if line.startswith("a=rid:")]
    assert rids == ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv"]
    # the audio section and the SIM variant (no rids) are untouched
    assert after["0"] == before["0"]
    assert after["2"] == before["2"]
    # no transport-cc is answered to a publisher: the SFU does not send it feedback
    assert EXT_TRANSPORT_CC not in patched
    assert patched.endswith("\r\n") and "\r\n\r\n" not in patched
    assert patched.startswith("v=0\r\n")


def test_patch_answer_skips_rejected_section() -> None:
    offer_video = ["a=mid:2" if line == "a=mid:1" else line for line in CHROME_VIDEO_RID]
    offers = parse_simulcast(sdp(CHROME_AUDIO, offer_video))
    assert offers["2"].rids == ["q", "h", "f"]
    original = aiortc_answer(rejected_video=True)
    patched = patch_publisher_answer(original, offers)
    assert sections_of(patched)["2"] == sections_of(original)["2"]
    assert "a=simulcast" not in patched and "a=rid:" not in patched


def test_patch_answer_does_not_duplicate_extmaps_already_answered() -> None:
    offers = parse_simulcast(CHROME_OFFER)
    original = aiortc_answer(extra_video=[f"a=extmap:10 {EXT_RID}"])
    patched = patch_publisher_answer(original, offers)
    video = sections_of(patched)["1"]
    assert sum(1 for line in video if EXT_RID in line and "repaired" not in line) == 1
    assert video.count(f"a=extmap:11 {EXT_REPAIRED_RID}") == 1
    assert video.count("a=simulcast:recv q;h;f") == 1


def test_patch_answer_without_simulcast_offer_is_unchanged() -> None:
    no_sim = [line for line in CHROME_VIDEO_RID if not line.startswith(("a=rid", "a=simulcast"))]
    offers = parse_simulcast(sdp(CHROME_AUDIO, no_sim))
    original = aiortc_answer()
    assert patch_publisher_answer(original, offers) == original
    assert patch_publisher_answer(original, {}) == original


def test_patch_answer_leaves_out_rid_extmaps_the_offer_lacked() -> None:
    video = [line for line in CHROME_VIDEO_RID if EXT_REPAIRED_RID not in line]
    offers = parse_simulcast(sdp(CHROME_AUDIO, video))
    patched = sections_of(patch_publisher_answer(aiortc_answer(), offers))["1"]
    assert f"a=extmap:10 {EXT_RID}" in patched
    assert not any(EXT_REPAIRED_RID in line for line in patched)


# -- add_transport_cc --------------------------------------------------------------------------


def aiortc_subscriber_offer() -> str:
    """An offer as the SFU's aiortc subscriber connection writes it: audio, video, a rejected
    (stopped) video m-line and a data channel."""
    return sdp(
        answer_section("audio", "0", "111 0"),
        answer_section("video", "1", "97 98"),
        answer_section("video", "2", "97 98", port=0),
        DATA_CHANNEL,
        session=AIORTC_SESSION,
    )


def test_add_transport_cc_to_audio_and_video_sections() -> None:
    original = aiortc_subscriber_offer()
    patched = add_transport_cc(original, 5)
    before, after = sections_of(original), sections_of(patched)
    for mid, pts in (("0", ["111", "0"]), ("1", ["97", "98"])):
        added = [line for line in after[mid] if line not in before[mid]]
        assert sorted(added) == sorted(
            [f"a=extmap:5 {EXT_TRANSPORT_CC}"] + [f"a=rtcp-fb:{pt} transport-cc" for pt in pts]
        ), mid
    assert after["2"] == before["2"]  # port 0
    assert after["3"] == before["3"]  # application
    assert answered_extension(patched, EXT_TRANSPORT_CC) == {"0": 5, "1": 5}


def test_add_transport_cc_is_idempotent() -> None:
    once = add_transport_cc(aiortc_subscriber_offer(), 5)
    assert add_transport_cc(once, 6) == once
    assert "a=extmap:6" not in once


# -- answered_extension / free_extension_id ----------------------------------------------------


def test_answered_extension() -> None:
    answer = sdp(
        answer_section("audio", "0", "111", extra=[f"a=extmap:3 {EXT_TRANSPORT_CC}"]),
        answer_section("video", "1", "97", extra=[f"a=extmap:7/recvonly {EXT_TRANSPORT_CC}"]),
        answer_section("video", "2", "97"),
        session=AIORTC_SESSION,
    )
    assert answered_extension(answer, EXT_TRANSPORT_CC) == {"0": 3, "1": 7}
    assert answered_extension(answer, EXT_MID) == {"0": 9, "1": 9, "2": 9}
    assert answered_extension(answer, EXT_RID) == {}
    # repaired-rtp-stream-id must not be taken for rtp-stream-id (nor the other way round)
    only_repaired = sdp(
        answer_section("video", "1", "97", extra=[f"a=extmap:11 {EXT_REPAIRED_RID}"]),
        session=AIORTC_SESSION,
    )
    assert answered_extension(only_repaired, EXT_RID) == {}
    assert answered_extension(only_repaired, EXT_REPAIRED_RID) == {"1": 11}


def test_free_extension_id() -> None:
    assert free_extension_id(sdp(answer_section("video", "1", "97"))) == 1  # 2 and 9 used
    # Chromium's offer uses 1, 2, 4..11, 13, 14 (across sections): 3 is the lowest free
    assert free_extension_id(CHROME_OFFER) == 3
    assert free_extension_id("v=0\r\n") == 1
    # a direction suffix still marks the id as used
    assert free_extension_id("v=0\r\na=extmap:1/sendonly urn:x\r\n") == 2


def test_free_extension_id_when_all_one_byte_ids_are_used() -> None:
    lines = [f"a=extmap:{i} urn:example:{i}" for i in range(1, 15)]
    text = sdp(["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0", *lines])
    with pytest.raises(SdpError):
        free_extension_id(text)
    # two-byte ids do not use up one-byte ids
    assert free_extension_id(text.replace("a=extmap:7 ", "a=extmap:77 ")) == 7


# -- malformed input ---------------------------------------------------------------------------

MALFORMED_LINES = [
    "a=ssrc-group:SIM 2222 x 4444",
    "a=ssrc-group:SIM 2222 3333.5",
    f"a=extmap:ten {EXT_RID}",
    f"a=extmap:/sendonly {EXT_REPAIRED_RID}",
    f"a=extmap: {EXT_TRANSPORT_CC}",
    f"a=extmap:0x4 {EXT_TRANSPORT_CC}",
]


@pytest.mark.parametrize("bad", MALFORMED_LINES)
def test_malformed_lines_raise_sdp_error(bad: str) -> None:
    text = sdp(CHROME_AUDIO, [*CHROME_VIDEO_RID, bad])
    with pytest.raises(SdpError):
        parse_simulcast(text)


@pytest.mark.parametrize("ext_id", ["0", "-1", "256"])
def test_extension_ids_out_of_range_raise_sdp_error(ext_id: str) -> None:
    """RFC 8285: ids are 1..14 (one-byte) or 1..255 (two-byte); 0 would read as 'absent'."""
    video = [re.sub(r"^a=extmap:10 ", f"a=extmap:{ext_id} ", line) for line in CHROME_VIDEO_RID]
    with pytest.raises(SdpError):
        parse_simulcast(sdp(video))


GARBAGE = [
    "",
    "\r\n",
    "v=0",
    "m=",
    "m=video",
    "m=video 9",
    "m=video x y z w\r\na=rid:\r\na=simulcast:\r\na=extmap:\r\na=ssrc-group:SIM\r\n",
    "m=audio 9 RTP/AVP abc\r\na=mid:\r\na=rid:q\r\na=simulcast:send\r\n",
    "a=extmap:1\r\nm=video 9 RTP 96\r\na=extmap:2\r\na=extmap:3 \r\n",
    "\x00\xff\r\nm=video 9 RTP 96\r\n\x00",
]


@pytest.mark.parametrize("text", GARBAGE)
@pytest.mark.parametrize(
    "function",
    [
        parse_simulcast,
        lambda text: answered_extension(text, EXT_TRANSPORT_CC),
        free_extension_id,
    ],
    ids=["parse_simulcast", "answered_extension", "free_extension_id"],
)
def test_junk_never_raises_anything_but_sdp_error(function, text: str) -> None:
    try:
        function(text)
    except SdpError:
        pass


def test_fuzzed_lines_never_raise_anything_but_sdp_error() -> None:
    import random

    rng = random.Random(8853)
    lines = CHROME_VIDEO_RID + CHROME_VIDEO_SIM
    alphabet = "0123456789 :;/-=abcqhfSIMa\t~"
    for _ in range(400):
        video = list(lines)
        for _ in range(3):
            i = rng.randrange(len(video))
            line = video[i]
            j = rng.randrange(len(line) + 1)
            video[i] = line[:j] + "".join(rng.choice(alphabet) for _ in range(rng.randrange(4)))
        text = sdp(CHROME_AUDIO, video)
        try:
            offers = parse_simulcast(text)
        except SdpError:
            continue
        patch_publisher_answer(aiortc_answer(), offers)
