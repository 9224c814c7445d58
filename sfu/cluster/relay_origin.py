"""The origin side of a relay: this node sends tracks published here to another node.

An edge node (one with local viewers of a track published here) asks for a relay over HTTP
(`relay_routes.py`); the origin answers with an offer from a `RelaySender`: one MediaPeer
(ICE, DTLS, SRTP like any client connection) with one sendonly m-line per requested track.
A simulcast track's m-line declares every layer as its own SSRC (`a=ssrc-group:SIM`, lowest
first), so the edge's PublisherSession sees a simulcast publisher and keeps every layer.

Every packet of a relayed track is handed to a `RelayTap` (attached to the Producer like a
subscriber's Forwarder) and goes out with only its header changed: the layer's relay SSRC,
the relay's payload type and MID (plus the audio level). Sequence numbers and timestamps are
the publisher's own, so the edge's NACKs name packets of this node's cache, and the
publisher's sender reports (carried forward by the time elapsed, as for subscribers) keep
audio and video in sync on the edge. Keyframe requests (PLI/FIR) from the edge become
throttled requests to the publisher of that layer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..media.peer import MediaPeer, NetworkSettings
from ..media.rtcp import Fir, Nack, Pli, ReceiverReport, SenderReport, parse_compound
from ..media.rtp import EXT_AUDIO_LEVEL, EXT_MID, RTP_FIXED, build_extension_block
from ..media.sdp import (
    _join,
    _mid_of,
    _sections,
    codec_preferences,
    extension_ids,
    negotiated_codec,
)
from ..media.subscriber import IdleTrack, _discard_rtcp

if TYPE_CHECKING:
    from ..media.encoding import Encoding
    from ..media.producer import Producer
    from ..media.rtp import RtpHeader
    from ..media.vp8 import Vp8Info
    from ..room import RoomRegistry

logger = logging.getLogger(__name__)

NTP_FRACTION = 1 << 32
RELAY_CONNECT_TIMEOUT_S = 20.0
MAX_RELAYS = 256  # per origin node: every edge node and room costs one
MAX_TRACKS_PER_RELAY = 64
# A packet is resent to an edge at most once per this interval, whatever its NACKs list, so
# the work a NACK causes is bounded (the edge asks again every nack_retry_ms until it arrives:
# across a 250 ms link most of those asks cross the retransmission already on its way).
RESEND_SPACING_S = 0.2
RESEND_SLOTS = 1024  # resend times kept per layer (by sequence number modulo this)


class RelayError(Exception):
    """A relay request the origin refuses; `status` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RelayTap:
    """Sends one track's packets, every layer, on a relay connection (see the module doc)."""

    # RED audio: the relay carries plain Opus (the Producer's unwrapped packets, recovered ones
    # included); the edge offers its own viewers RED or not as for any publisher
    red_source_pt: int = -1

    def __init__(self, producer: Producer, peer: MediaPeer, mid: str, ssrcs: list[int]) -> None:
        self.producer = producer
        self.peer = peer
        self.mid = mid
        self.ssrcs = ssrcs  # relay SSRC per layer, lowest first
        self.payload_type = producer.codec.payload_type
        self._mid_ext = b""
        self._audio_level_id = 0
        self._mid_id = 0
        self.packets_sent = [0] * len(ssrcs)
        self.octets_sent = [0] * len(ssrcs)
        self.retransmitted = 0
        self.resends_skipped = 0
        # the edge's reported loss (its own viewers' worst, as its receiver reports say): the
        # publisher's audio block carries it, so its Opus FEC covers the viewers at the edge
        self.fraction_lost = 0
        self._resent_at = [[0.0] * RESEND_SLOTS for _ in ssrcs]
        self.closed = False

    @property
    def downtrack(self):  # (Producer's error log names a forwarder's downtrack mid)
        return self

    def configure(self, payload_type: int, ext_ids: dict[str, int]) -> None:
        self.payload_type = payload_type
        self._mid_id = ext_ids.get(EXT_MID, 0)
        self._audio_level_id = ext_ids.get(EXT_AUDIO_LEVEL, 0)
        if self._mid_id:
            self._mid_ext = build_extension_block([(self._mid_id, self.mid.encode())])

    def _packet(self, data: bytes, h: RtpHeader, ssrc: int) -> bytes:
        ext = self._mid_ext
        if self._audio_level_id and h.audio_level >= 0:
            elements = [(self._audio_level_id, bytes((h.audio_level,)))]
            if self._mid_id:
                elements.append((self._mid_id, self.mid.encode()))
            ext = build_extension_block(elements)
        b0 = 0x80 | (data[0] & 0x20) | (0x10 if ext else 0)
        b1 = (data[1] & 0x80) | self.payload_type
        header = RTP_FIXED.pack(b0, b1, h.sequence_number, h.timestamp, ssrc)
        return header + ext + data[h.payload_offset :]

    def forward(
        self,
        data: bytes,
        h: RtpHeader,
        keyframe: bool,
        now_s: float,
        enc: Encoding,
        vp8: Vp8Info | None = None,
    ) -> None:
        spatial = enc.spatial
        if spatial >= len(self.ssrcs):
            return
        if self.peer.send_rtp(self._packet(data, h, self.ssrcs[spatial])):
            self.packets_sent[spatial] += 1
            self.octets_sent[spatial] += len(data) - h.payload_offset

    def resend(self, spatial: int, seqs: list[int]) -> int:
        """Answer the edge's NACK from the layer's packet cache (the same packet again)."""
        cache = self.producer.layers[spatial].cache
        if cache is None:
            return 0
        sent = 0
        now = time.monotonic()
        resent_at = self._resent_at[spatial]
        for seq in seqs:
            slot = seq % RESEND_SLOTS
            if now - resent_at[slot] < RESEND_SPACING_S:
                self.resends_skipped += 1
                continue
            resent_at[slot] = now
            entry = cache.get(seq)
            if entry is not None and self.peer.send_rtp(
                self._packet(entry[0], entry[1], self.ssrcs[spatial])
            ):
                sent += 1
        self.retransmitted += sent
        return sent

    def sender_reports(self, now_s: float) -> bytes:
        """One SR per layer with the publisher's NTP/RTP pair carried forward to now."""
        out = b""
        clock = self.producer.codec.clock_rate
        for spatial, ssrc in enumerate(self.ssrcs):
            stats = self.producer.layers[spatial].stats
            if stats is None or not stats.last_sr_arrival or not self.packets_sent[spatial]:
                continue
            elapsed = now_s - stats.last_sr_arrival
            ntp = stats.last_sr_ntp + int(elapsed * NTP_FRACTION)
            rtp_ts = stats.last_sr_rtp + int(elapsed * clock)
            out += SenderReport(
                ssrc, ntp, rtp_ts, self.packets_sent[spatial], self.octets_sent[spatial]
            ).serialize()
        return out

    def close(self) -> None:
        """(Producer.close calls this when the track is unpublished.)"""
        if not self.closed:
            self.closed = True
            self.producer.detach(self)


@dataclass
class RelaySender:
    """One relay connection from this node to an edge node, for one room."""

    relay_id: str
    room: str
    edge_node: str
    peer: MediaPeer
    taps: dict[str, RelayTap] = field(default_factory=dict)  # track id -> tap
    by_ssrc: dict[int, tuple[RelayTap, int]] = field(default_factory=dict)  # -> (tap, spatial)
    created_at: float = field(default_factory=time.monotonic)
    answered: bool = False
    closed: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)
    rtcp_ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    nacks: int = 0
    keyframe_requests: int = 0

    def mapping(self) -> dict[str, str]:
        """mid -> track id of every m-line that carries a track."""
        return {tap.mid: track_id for track_id, tap in self.taps.items() if not tap.closed}

    def stats(self) -> dict:
        return {
            "id": self.relay_id,
            "room": self.room,
            "edge_node": self.edge_node,
            "state": self.peer.connection_state,
            "tracks": sorted(self.mapping().values()),
            "packets_sent": sum(sum(t.packets_sent) for t in self.taps.values()),
            "retransmitted": sum(t.retransmitted for t in self.taps.values()),
            "nacks": self.nacks,
            "keyframe_requests": self.keyframe_requests,
        }


class RelayOrigin:
    """The relays this node serves (see the module doc), created on the edges' requests."""

    def __init__(
        self, rooms: RoomRegistry, network: NetworkSettings, rtcp_interval_s: float = 1.0
    ) -> None:
        self.rooms = rooms
        self.network = network
        self.rtcp_interval_s = rtcp_interval_s
        self.relays: dict[str, RelaySender] = {}

    # -- requests from edges -----------------------------------------------------------------

    def _producers(self, room_name: str, track_ids: list[str]) -> list[Producer]:
        room = self.rooms.rooms.get(room_name)
        if room is None:
            raise RelayError(404, "not_found", f"no room {room_name!r} on this node")
        producers = []
        for track_id in track_ids:
            producer = room.producers.get(track_id)
            # only tracks published here: a relayed track is never relayed on (no chains)
            if producer is None or producer.closed or track_id in room.remote_tracks:
                raise RelayError(404, "not_found", f"no track {track_id!r} published here")
            producers.append(producer)
        return producers

    async def open(self, room: str, edge_node: str, track_ids: list[str]) -> RelaySender:
        """A new relay for `track_ids` (published here); its offer is in `relay.peer`."""
        if len(self.relays) >= MAX_RELAYS:
            raise RelayError(503, "node_full", "this node serves its maximum number of relays")
        if not track_ids or len(track_ids) > MAX_TRACKS_PER_RELAY:
            raise RelayError(400, "bad_request", f"1 to {MAX_TRACKS_PER_RELAY} tracks per relay")
        producers = self._producers(room, track_ids)
        relay_id = "RL_" + secrets.token_hex(8)
        relay = RelaySender(relay_id, room, edge_node, MediaPeer(self.network, label=relay_id))
        relay.peer._on_rtcp = lambda data, r=relay: self._on_rtcp(r, data)
        relay.peer._on_rtp = _ignore_rtp
        self.relays[relay_id] = relay
        relay.peer.pc.on("connectionstatechange", lambda r=relay: self._on_state(r))
        relay.tasks.append(asyncio.ensure_future(self._watch(relay)))
        self._add_taps(relay, producers)
        return relay

    async def offer(self, relay: RelaySender) -> str:
        """An offer for the relay's m-lines, with every layer's SSRC declared."""
        sdp = await relay.peer.offer()
        return _declare_layers(sdp, relay)

    async def update(self, relay_id: str, track_ids: list[str]) -> tuple[RelaySender, bool]:
        """Carry exactly `track_ids` now; True if new m-lines need an offer/answer round."""
        relay = self.get(relay_id)
        if len(track_ids) > MAX_TRACKS_PER_RELAY:
            raise RelayError(400, "bad_request", f"at most {MAX_TRACKS_PER_RELAY} tracks")
        wanted = set(track_ids)
        for track_id, tap in list(relay.taps.items()):
            if track_id not in wanted:
                tap.close()
                del relay.taps[track_id]
                # the m-line stays (aiortc cannot remove one); it just carries nothing
                for ssrc in tap.ssrcs:
                    relay.by_ssrc.pop(ssrc, None)
        new = [t for t in track_ids if t not in relay.taps]
        if new:
            self._add_taps(relay, self._producers(relay.room, new))
        return relay, bool(new)

    async def accept_answer(self, relay_id: str, sdp: str) -> None:
        relay = self.get(relay_id)
        try:
            await relay.peer.accept_answer(sdp)
        except Exception as exc:
            raise RelayError(400, "bad_sdp", f"cannot use the answer: {exc}") from exc
        relay.answered = True
        transceivers = {t.mid: t for t in relay.peer.pc.getTransceivers()}
        for tap in relay.taps.values():
            transceiver = transceivers.get(tap.mid)
            codec = negotiated_codec(transceiver) if transceiver is not None else None
            if codec is None:
                continue
            tap.configure(codec.payload_type, extension_ids(transceiver))
            tap.producer.attach(tap)
            tap.producer.request_keyframe()  # the edge's viewers want a picture soon

    def get(self, relay_id: str) -> RelaySender:
        relay = self.relays.get(relay_id)
        if relay is None or relay.closed:
            raise RelayError(404, "not_found", f"no relay {relay_id!r}")
        return relay

    async def close(self, relay_id: str) -> bool:
        relay = self.relays.pop(relay_id, None)
        if relay is None:
            return False
        await self._close(relay)
        return True

    async def close_all(self) -> None:
        for relay_id in list(self.relays):
            await self.close(relay_id)

    # -- inside --------------------------------------------------------------------------------

    def _add_taps(self, relay: RelaySender, producers: list[Producer]) -> None:
        pc = relay.peer.pc
        for producer in producers:
            transceiver = pc.addTransceiver(IdleTrack(producer.kind), direction="sendonly")
            transceiver.setCodecPreferences(
                codec_preferences(producer.kind, producer.codec.mime_type)
            )
            sender = transceiver.sender
            sender._send_rtcp = _discard_rtcp  # our sender reports carry the publisher's clock
            ssrcs = [sender._ssrc] + [random.getrandbits(32) for _ in producer.layers[1:]]
            tap = RelayTap(producer, relay.peer, "", ssrcs)
            tap.transceiver = transceiver  # type: ignore[attr-defined]
            relay.taps[producer.id] = tap
            for spatial, ssrc in enumerate(ssrcs):
                relay.by_ssrc[ssrc] = (tap, spatial)

    def _on_rtcp(self, relay: RelaySender, data: bytes) -> None:
        for packet in parse_compound(data):
            if isinstance(packet, Nack):
                entry = relay.by_ssrc.get(packet.media_ssrc)
                if entry is not None:
                    relay.nacks += 1
                    entry[0].resend(entry[1], packet.lost)
            elif isinstance(packet, Pli):
                self._keyframe(relay, packet.media_ssrc)
            elif isinstance(packet, Fir):
                for ssrc, _ in packet.entries:
                    self._keyframe(relay, ssrc)
            elif isinstance(packet, ReceiverReport | SenderReport):
                for block in packet.reports:
                    entry = relay.by_ssrc.get(block.ssrc)
                    if entry is not None and entry[1] == 0:
                        entry[0].fraction_lost = block.fraction_lost

    @staticmethod
    def _keyframe(relay: RelaySender, ssrc: int) -> None:
        entry = relay.by_ssrc.get(ssrc)
        if entry is not None:
            relay.keyframe_requests += 1
            entry[0].producer.request_keyframe(spatial=entry[1])

    async def _watch(self, relay: RelaySender) -> None:
        """Close a relay that does not connect in time; send sender reports while it lives."""
        try:
            await asyncio.wait_for(relay.peer.connected.wait(), RELAY_CONNECT_TIMEOUT_S)
            while not relay.closed:
                await asyncio.sleep(self.rtcp_interval_s)
                now = time.monotonic()
                for tap in list(relay.taps.values()):
                    report = tap.sender_reports(now)
                    if report:
                        relay.peer.send_rtcp(report)
        except TimeoutError:
            logger.info("relay %s to %s did not connect: closed", relay.relay_id, relay.edge_node)
            await self.close(relay.relay_id)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("relay %s: sender reports failed", relay.relay_id)

    def _on_state(self, relay: RelaySender) -> None:
        if relay.peer.connection_state in ("failed", "closed") and not relay.closed:
            logger.info(
                "relay %s to %s: connection %s",
                relay.relay_id,
                relay.edge_node,
                relay.peer.connection_state,
            )
            asyncio.ensure_future(self.close(relay.relay_id))

    async def _close(self, relay: RelaySender) -> None:
        if relay.closed:
            return
        relay.closed = True
        current = asyncio.current_task()
        for task in relay.tasks:
            if task is not current:
                task.cancel()
        for tap in relay.taps.values():
            tap.close()
        await relay.peer.close()
        logger.info("relay %s to %s (room %s) closed", relay.relay_id, relay.edge_node, relay.room)

    def stats(self) -> list[dict]:
        return [relay.stats() for relay in self.relays.values()]


def _declare_layers(sdp: str, relay: RelaySender) -> str:
    """Name each tap's m-line and add the SSRCs of its upper layers with a SIM group."""
    transceivers = {id(t.transceiver): t for t in relay.taps.values()}  # type: ignore[attr-defined]
    for transceiver in relay.peer.pc.getTransceivers():
        tap = transceivers.get(id(transceiver))
        if tap is not None and transceiver.mid is not None:
            tap.mid = transceiver.mid
    by_mid = {tap.mid: tap for tap in relay.taps.values() if tap.mid}
    session, media = _sections(sdp)
    for section in media:
        tap = by_mid.get(_mid_of(section))
        if tap is None or len(tap.ssrcs) < 2:
            continue
        cname = next((line.split("cname:", 1)[1] for line in section if " cname:" in line), "relay")
        section.extend(f"a=ssrc:{ssrc} cname:{cname}" for ssrc in tap.ssrcs[1:])
        section.append("a=ssrc-group:SIM " + " ".join(str(s) for s in tap.ssrcs))
    return _join(session, media)


def _ignore_rtp(data: bytes, arrival_ms: int) -> None:
    """The edge sends no media on a relay."""
