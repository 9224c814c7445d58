"""SDP checks and look-ups the SFU needs beyond what aiortc negotiates for it."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCRtpTransceiver
from aiortc.codecs import get_capabilities
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription

from .producer import CodecInfo
from .rtp import EXT_REPAIRED_RID, EXT_RID, EXT_TRANSPORT_CC


class SdpError(ValueError):
    """An offer or answer we cannot use; the message is short enough to show a client."""


@dataclass
class OfferedMedia:
    mid: str
    kind: str
    direction: str
    ssrcs: list[int] = field(default_factory=list)
    rtx_pairs: dict[int, int] = field(default_factory=dict)  # rtx ssrc -> media ssrc


def check_offer_size(sdp: str, *, max_media: int, max_rids: int) -> None:
    """Refuse an offer with more m-lines or more simulcast layers per m-line than allowed.

    A plain scan of the text, before aiortc parses it or anything is allocated: each m-line
    costs a transceiver, each rid (or SIM group member) a layer with its own packet cache,
    so a 64 kB offer could otherwise cost tens of MB. Raises SdpError.
    """
    media = rids = 0
    for line in sdp.splitlines():
        if line.startswith("m="):
            media += 1
            rids = 0
            if media > max_media:
                raise SdpError(f"too many m-lines: at most {max_media} per offer")
        elif line.startswith("a=rid:"):
            rids += 1
            if rids > max_rids:
                raise SdpError(f"too many rids: at most {max_rids} per m-line")
        elif line.startswith("a=ssrc-group:SIM") and len(line.split()) - 1 > max_rids:
            raise SdpError(f"too many simulcast SSRCs: at most {max_rids} per m-line")


def parse_offer(sdp: str) -> list[OfferedMedia]:
    """Parse an offer well enough to reject junk early and learn the SSRCs it announces."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise SdpError("empty SDP")
    if not sdp.lstrip().startswith("v=0"):
        raise SdpError("SDP must start with v=0")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError...
        raise SdpError(f"unparseable SDP: {exc.__class__.__name__}") from exc
    media = []
    for m in description.media:
        if m.kind not in ("audio", "video", "application"):
            raise SdpError(f"unsupported media kind {m.kind!r}")
        if m.kind == "application":
            continue
        if m.dtls is None or m.ice is None:
            raise SdpError(f"m={m.kind} section lacks ICE or DTLS parameters")
        if not m.dtls.fingerprints:
            raise SdpError(f"m={m.kind} section has no a=fingerprint (DTLS cannot be verified)")
        if not m.ice.usernameFragment or not m.ice.password:
            raise SdpError(f"m={m.kind} section lacks a=ice-ufrag or a=ice-pwd")
        offered = OfferedMedia(
            mid=m.rtp.muxId or "", kind=m.kind, direction=m.direction or "sendrecv"
        )
        offered.ssrcs = sorted({s.ssrc for s in m.ssrc})
        for group in m.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                offered.rtx_pairs[int(group.items[1])] = int(group.items[0])
        media.append(offered)
    if not media:
        raise SdpError("SDP has no audio or video section")
    return media


def negotiated_codec(transceiver: RTCRtpTransceiver) -> CodecInfo | None:
    """The primary codec (and its RTX payload type) a transceiver settled on."""
    codecs = transceiver._codecs
    primary = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
    if primary is None:
        return None
    rtx = next(
        (
            c.payloadType
            for c in codecs
            if c.mimeType.lower().endswith("/rtx")
            and str(c.parameters.get("apt")) == str(primary.payloadType)
        ),
        None,
    )
    return CodecInfo(
        mime_type=primary.mimeType,
        clock_rate=primary.clockRate,
        payload_type=primary.payloadType,
        channels=primary.channels,
        parameters=dict(primary.parameters),
        rtx_payload_type=rtx,
    )


def extension_ids(transceiver: RTCRtpTransceiver) -> dict[str, int]:
    return {ext.uri: ext.id for ext in transceiver._headerExtensions}


def codec_preferences(kind: str, mime_type: str | None) -> list[RTCRtpCodecCapability]:
    """Capabilities that offer exactly one codec (plus RTX for video) on an m-line."""
    capabilities = get_capabilities(kind).codecs
    if mime_type is None:
        mime_type = "video/VP8" if kind == "video" else "audio/opus"
    chosen = [c for c in capabilities if c.mimeType.lower() == mime_type.lower()]
    if kind == "video":
        chosen += [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
    return chosen


# -- simulcast and extensions aiortc does not negotiate ------------------------------------------
#
# aiortc drops `a=rid`, `a=simulcast` and the rid/repaired-rid/transport-cc extensions when it
# parses an SDP and never writes them. The SFU reads them from the raw text and patches the
# SDP it sends: the answer to a publisher (so the browser turns simulcast on) and the offer to
# a subscriber (so the browser sends transport-cc feedback for our bandwidth estimate).


@dataclass
class SimulcastOffer:
    """What one offered m-section says about simulcast and the extensions we patch in."""

    mid: str
    kind: str
    rids: list[str] = field(default_factory=list)  # sending rids, in a=rid order
    simulcast_value: str = ""  # the a=simulcast:send value, e.g. "q;h;f"
    sim_ssrcs: list[int] = field(default_factory=list)  # a=ssrc-group:SIM, lowest first
    extmaps: dict[str, int] = field(default_factory=dict)  # uri -> id for the ones we patch
    payload_types: list[int] = field(default_factory=list)
    # audio: (RED payload type, Opus payload type) when RED with Opus is offered (RFC 2198)
    red: tuple[int, int] | None = None
    opus_payload_type: int | None = None

    @property
    def simulcast(self) -> bool:
        return len(self.rids) > 1 or len(self.sim_ssrcs) > 1


PATCHED_EXTENSIONS = (EXT_RID, EXT_REPAIRED_RID, EXT_TRANSPORT_CC)


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """Split an SDP into its session lines and its media sections (lines without CRLF)."""
    session: list[str] = []
    media: list[list[str]] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def _join(session: list[str], media: list[list[str]]) -> str:
    return "\r\n".join(session + [line for m in media for line in m]) + "\r\n"


def _mid_of(section: list[str]) -> str:
    for line in section:
        if line.startswith("a=mid:"):
            return line[6:].strip()
    return ""


def parse_simulcast(sdp: str) -> dict[str, SimulcastOffer]:
    """Per mid: rids, SIM groups and the ids of the extensions aiortc drops."""
    _, media = _sections(sdp)
    result: dict[str, SimulcastOffer] = {}
    for section in media:
        kind = section[0][2:].split(" ", 1)[0]
        if kind not in ("audio", "video"):
            continue
        offer = SimulcastOffer(mid=_mid_of(section), kind=kind)
        try:
            offer.payload_types = [int(p) for p in section[0].split()[3:]]
        except ValueError:
            offer.payload_types = []
        for line in section:
            if line.startswith("a=rid:"):
                parts = line[6:].split()
                if len(parts) >= 2 and parts[1] == "send":
                    offer.rids.append(parts[0])
            elif line.startswith("a=simulcast:"):
                value = line[12:].strip()
                if value.startswith("send "):
                    offer.simulcast_value = value[5:].strip()
            elif line.startswith("a=ssrc-group:SIM "):
                try:
                    offer.sim_ssrcs = [int(s) for s in line[17:].split()]
                except ValueError:
                    raise SdpError("malformed a=ssrc-group:SIM line") from None
            elif line.startswith("a=extmap:"):
                head, _, rest = line[9:].partition(" ")
                uri = rest.split()[0] if rest.split() else ""
                if uri in PATCHED_EXTENSIONS:
                    try:
                        ext_id = int(head.split("/")[0])
                    except ValueError:
                        raise SdpError("malformed a=extmap line") from None
                    if not 1 <= ext_id <= 255:
                        raise SdpError(f"header extension id {ext_id} out of range")
                    offer.extmaps[uri] = ext_id
        if offer.rids and not offer.simulcast_value:
            offer.rids = []  # rids without a=simulcast: not simulcast (RFC 8853)
        if kind == "audio":
            offer.opus_payload_type, offer.red = _red_and_opus(section, offer.payload_types)
        result[offer.mid] = offer
    return result


def rid_order(rids: list[str]) -> list[str]:
    """Rids from the lowest to the highest layer: q/h/f by name, otherwise as offered."""
    names = {"q": 0, "h": 1, "f": 2}
    if rids and all(r in names for r in rids):
        return sorted(rids, key=names.__getitem__)
    return list(rids)


def patch_publisher_answer(
    answer: str,
    offers: dict[str, SimulcastOffer],
    transport_cc: bool = False,
    *,
    red: bool = False,
    opus_fec: bool = False,
) -> str:
    """Accept the publisher's simulcast: rid/simulcast lines and the rid extensions; with
    `transport_cc`, also the transport-wide-cc extension and feedback the offer proposed;
    with `red`, RED with Opus where offered, listed first so the browser sends it; with
    `opus_fec`, `useinbandfec=1` on Opus (the browser then adds in-band FEC when the receiver
    reports loss).

    Only sections that are answered (port not 0) are touched.
    """
    session, media = _sections(answer)
    for section in media:
        offer = offers.get(_mid_of(section))
        if offer is None or section[0].split()[1] == "0":
            continue
        if offer.kind == "audio":
            _patch_audio(section, offer, red=red, red_first=True, opus_fec=opus_fec)
        present = {line.split()[1] for line in section if line.startswith("a=extmap:")}
        if transport_cc and EXT_TRANSPORT_CC in offer.extmaps and EXT_TRANSPORT_CC not in present:
            section.append(f"a=extmap:{offer.extmaps[EXT_TRANSPORT_CC]} {EXT_TRANSPORT_CC}")
            section.extend(f"a=rtcp-fb:{pt} transport-cc" for pt in section[0].split()[3:])
        if not offer.rids:
            continue
        extra = [
            f"a=extmap:{offer.extmaps[uri]} {uri}"
            for uri in (EXT_RID, EXT_REPAIRED_RID)
            if uri in offer.extmaps and uri not in present
        ]
        extra += [f"a=rid:{rid} recv" for rid in offer.rids]
        extra.append(f"a=simulcast:recv {offer.simulcast_value}")
        section.extend(extra)
    return _join(session, media)


def _red_and_opus(
    section: list[str], payload_types: list[int]
) -> tuple[int | None, tuple[int, int] | None]:
    """An audio section's Opus payload type, and (RED pt, Opus pt) if RED carries that Opus
    (its fmtp names only the Opus payload type, e.g. `111/111`)."""
    rtpmap: dict[int, str] = {}
    fmtp: dict[int, str] = {}
    for line in section:
        if line.startswith(("a=rtpmap:", "a=fmtp:")):
            head, _, value = line.partition(" ")
            try:
                pt = int(head.split(":", 1)[1])
            except ValueError:
                continue
            (rtpmap if line.startswith("a=rtpmap:") else fmtp)[pt] = value.strip()
    opus = next(
        (pt for pt in payload_types if rtpmap.get(pt, "").lower().startswith("opus/48000")), None
    )
    if opus is None:
        return None, None
    for pt in payload_types:
        if rtpmap.get(pt, "").lower().startswith("red/48000"):
            blocks = fmtp.get(pt, str(opus)).split("/")  # (an answer may leave it out)
            if all(b.strip() == str(opus) for b in blocks):
                return opus, (pt, opus)
    return opus, None


def _patch_audio(
    section: list[str], offer: SimulcastOffer, *, red: bool, red_first: bool, opus_fec: bool
) -> None:
    """Accept RED (if offered and answered Opus is its primary) and ask for Opus FEC."""
    answered = section[0].split()
    pts = answered[3:]
    opus = offer.opus_payload_type
    if opus is None or str(opus) not in pts:
        return
    if red and offer.red is not None and str(offer.red[0]) not in pts:
        red_pt = offer.red[0]
        pts = [str(red_pt), *pts] if red_first else [*pts, str(red_pt)]
        section[0] = " ".join(answered[:3] + pts)
        section.append(f"a=rtpmap:{red_pt} red/48000/2")
        section.append(f"a=fmtp:{red_pt} {opus}/{opus}")
    if opus_fec:
        _ask_opus_fec(section, opus)


def _ask_opus_fec(section: list[str], opus: int) -> None:
    prefix = f"a=fmtp:{opus} "
    for i, line in enumerate(section):
        if line.startswith(prefix):
            if "useinbandfec=" not in line:
                section[i] = line + ";useinbandfec=1"
            return
    section.append(f"{prefix}minptime=10;useinbandfec=1")


def accept_red(answer: str, offers: dict[str, SimulcastOffer], *, red: bool, opus_fec: bool) -> str:
    """Our answer to a player (the SFU sends): with `red`, accept the RED its offer proposed,
    after Opus, so the SFU may send either; with `opus_fec`, `useinbandfec=1` on Opus."""
    session, media = _sections(answer)
    for section in media:
        offer = offers.get(_mid_of(section))
        if offer is not None and offer.kind == "audio" and section[0].split()[1] != "0":
            _patch_audio(section, offer, red=red, red_first=False, opus_fec=opus_fec)
    return _join(session, media)


def offer_red(offer: str, *, red: bool, opus_fec: bool) -> str:
    """Offer RED with Opus (`red`) and ask for Opus FEC (`opus_fec`) on every active audio
    section of our own offer."""
    session, media = _sections(offer)
    for section in media:
        if not section[0].startswith("m=audio") or section[0].split()[1] == "0":
            continue
        parsed = section[0].split()
        try:
            pts = [int(p) for p in parsed[3:]]
        except ValueError:
            continue
        opus, offered = _red_and_opus(section, pts)
        if opus is None:
            continue
        if offered is None and red:
            used = set(pts)
            red_pt = next((p for p in (63, *range(96, 128)) if p not in used), None)
            if red_pt is not None:
                section[0] = " ".join([*parsed, str(red_pt)])
                section.append(f"a=rtpmap:{red_pt} red/48000/2")
                section.append(f"a=fmtp:{red_pt} {opus}/{opus}")
        if opus_fec:
            _ask_opus_fec(section, opus)
    return _join(session, media)


def answered_red(sdp: str) -> dict[str, tuple[int, int]]:
    """mid -> (RED pt, Opus pt) for each audio section of an SDP that carries RED with Opus
    (none for an SDP whose simulcast lines do not parse: it gets plain Opus)."""
    try:
        sections = parse_simulcast(sdp)
    except SdpError:
        return {}
    result = {}
    for mid, offer in sections.items():
        if offer.red is not None:
            result[mid] = offer.red
    return result


def add_transport_cc(offer: str, ext_id: int) -> str:
    """Offer transport-wide-cc (extension and rtcp-fb) on every audio/video section we send."""
    return add_extension(offer, EXT_TRANSPORT_CC, ext_id, feedback="transport-cc")


def add_extension(
    sdp: str,
    uri: str,
    ext_id: int,
    *,
    kinds: tuple[str, ...] = ("audio", "video"),
    feedback: str | None = None,
) -> str:
    """Add a header extension (and optionally an rtcp-fb value for every payload type) to
    each active section of the given kinds that does not have it yet."""
    session, media = _sections(sdp)
    for section in media:
        kind = section[0][2:].split(" ", 1)[0]
        if kind not in kinds or section[0].split()[1] == "0":
            continue
        if any(line.startswith("a=extmap:") and line.endswith(uri) for line in section):
            continue
        section.append(f"a=extmap:{ext_id} {uri}")
        if feedback:
            section.extend(f"a=rtcp-fb:{pt} {feedback}" for pt in section[0].split()[3:])
    return _join(session, media)


def answered_extension(answer: str, uri: str) -> dict[str, int]:
    """mid -> id of `uri` in a remote answer (sections that accepted it)."""
    _, media = _sections(answer)
    result: dict[str, int] = {}
    for section in media:
        for line in section:
            if line.startswith("a=extmap:") and line.endswith(uri):
                head = line[9:].split()[0]
                try:
                    result[_mid_of(section)] = int(head.split("/")[0])
                except ValueError:
                    pass
    return result


def free_extension_id(sdp: str) -> int:
    """The lowest one-byte header extension id (1-14) no extmap line of the SDP uses."""
    used = set()
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("a=extmap:"):
            try:
                used.add(int(line[9:].split()[0].split("/")[0]))
            except (ValueError, IndexError):
                pass
    for ext_id in range(1, 15):
        if ext_id not in used:
            return ext_id
    raise SdpError("no free header extension id")
