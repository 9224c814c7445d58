"""SDP checks and look-ups the SFU needs beyond what aiortc negotiates for it."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCRtpTransceiver
from aiortc.codecs import get_capabilities
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription

from .producer import CodecInfo


class SdpError(ValueError):
    """An offer or answer we cannot use; the message is short enough to show a client."""


@dataclass
class OfferedMedia:
    mid: str
    kind: str
    direction: str
    ssrcs: list[int] = field(default_factory=list)
    rtx_pairs: dict[int, int] = field(default_factory=dict)  # rtx ssrc -> media ssrc


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
