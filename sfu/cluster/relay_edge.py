"""The edge side of a relay: tracks published on another node, received here once.

A track published on another node appears in this node's room as a `RemoteProducer` (made
by `remote_rooms.py` from the room directory and the room's messages): a normal Producer that
local subscribers attach Forwarders to. It carries no media until a local subscriber wants it;
then `RelayEdge` opens one relay connection to the track's node for the room (or adds the
track to the one it has): it asks the origin over HTTP (`POST /internal/relay`, a node-wide
token minted from the shared API keys), answers the origin's offer with a `RelayReceiver` (a
PublisherSession that adopts the RemoteProducers instead of making new ones) and posts the
answer back. From then on the relay is a simulcast publisher like any other: every layer
arrives, NACKs and keyframe requests go back to the origin, sender reports come with it, and
each local viewer's Forwarder picks its own layer from its own estimate.

A relay carries the tracks local subscribers want; a sweep every `SWEEP_S` drops the others
and closes a relay nothing is wanted from (after one more sweep, so a viewer who switches
tracks does not tear it down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import aiohttp

from ..auth import Grants, mint_token
from ..media.ingress import NackGenerator
from ..media.producer import CodecInfo, Producer, TrackInfo
from ..media.publisher import KEYFRAME_CACHE_S, PublisherSession
from ..media.rtp import ExtensionIds
from ..media.sdp import extension_ids, negotiated_codec
from .errors import ClusterError
from .tasks import stop_task

if TYPE_CHECKING:
    from ..config import Config
    from ..media.peer import NetworkSettings
    from ..room import Room, RoomRegistry
    from .interface import NodeRegistry
    from .records import TrackRecord

logger = logging.getLogger(__name__)

SWEEP_S = 0.5
HTTP_TIMEOUT_S = 10.0
TOKEN_TTL_S = 600
DELETE_TIMEOUT_S = 2.0  # closing a relay never waits longer on its origin


class RemoteProducer(Producer):
    """A track published on `origin`; media arrives only while a relay carries it."""

    def __init__(self, record: TrackRecord, config: Config, on_demand) -> None:
        rtc = config.rtc
        codec = CodecInfo(
            mime_type=record.codec or ("video/VP8" if record.kind == "video" else "audio/opus"),
            clock_rate=90000 if record.kind == "video" else 48000,
            payload_type=0,
            channels=None if record.kind == "video" else 2,
        )
        layers = max(1, record.layers)
        rids = list(record.rids) if len(record.rids) == layers else [None] * layers
        super().__init__(
            TrackInfo(
                id=record.track_id,
                kind=record.kind,
                publisher=record.publisher,
                source=record.source,
                name=record.name,
                codec=codec.mime_type,
            ),
            codec,
            send_keyframe_request=_no_request,
            cache_size=rtc.packet_cache_size,
            pli_throttle_s=rtc.pli_throttle_ms / 1000,
            nack_factory=lambda: NackGenerator(
                max_age_s=rtc.nack_max_age_ms / 1000, retry_s=rtc.nack_retry_ms / 1000
            ),
            keyframe_cache_s=KEYFRAME_CACHE_S,
            rids=rids if layers > 1 else None,
        )
        self.origin = record.node_id
        self.room_name = record.room
        self._on_demand = on_demand

    def request_keyframe(self, now_s: float | None = None, spatial: int | None = None) -> bool:
        # a subscriber asks for a picture when it subscribes: the first sign it wants media
        self._on_demand(self)
        return super().request_keyframe(now_s, spatial)


def _no_request(ssrc: int) -> None:
    """Keyframe requests before a relay carries the track: nowhere to send them."""


class RelayReceiver(PublisherSession):
    """The edge's connection of one relay: a publisher whose tracks already exist here."""

    def __init__(self, *, producers: dict[str, RemoteProducer], **kwargs) -> None:
        super().__init__(**kwargs)
        self.adopt: dict[str, RemoteProducer] = {}  # mid -> producer, from the origin's map
        self._remote = producers  # track id -> producer (the room's remote tracks)

    def expect(self, mapping: dict[str, str]) -> None:
        for mid, track_id in mapping.items():
            producer = self._remote.get(track_id)
            if producer is not None:
                self.adopt[mid] = producer

    def _create_producers(self, requests) -> list[Producer]:
        uri_ids: dict[str, int] = {}
        added: list[Producer] = []
        for transceiver in self.peer.pc.getTransceivers():
            uri_ids.update(extension_ids(transceiver))
            mid = transceiver.mid
            producer = self.adopt.get(mid) if mid is not None else None
            if producer is None or mid in self.producers or producer.closed:
                continue
            codec = negotiated_codec(transceiver)
            if codec is None or codec.mime_type.lower() != producer.codec.mime_type.lower():
                continue
            producer.codec = codec
            producer._send_keyframe_request = self._send_pli
            self.producers[mid] = producer
            self._map_offered_ssrcs(producer, mid, self._simulcast.get(mid))
            added.append(producer)
        self._ext = ExtensionIds.from_map(uri_ids)
        return added

    def release(self, track_id: str) -> None:
        """Stop taking a track's packets (the producer stays in the room)."""
        for mid, producer in list(self.producers.items()):
            if producer.id == track_id:
                del self.producers[mid]
                self._by_ssrc = {s: e for s, e in self._by_ssrc.items() if e[0] is not producer}
                producer._send_keyframe_request = _no_request

    async def close(self) -> None:
        for producer in self.producers.values():  # the tracks stay; only the relay goes
            producer._send_keyframe_request = _no_request
        self.producers.clear()
        await super().close()


class RelayLink:
    """One relay from an origin node for one room, as the edge holds it."""

    def __init__(self, room: str, origin: str) -> None:
        self.room = room
        self.origin = origin
        self.url = ""
        self.relay_id = ""
        self.receiver: RelayReceiver | None = None
        self.tracks: frozenset[str] = frozenset()
        self.lock = asyncio.Lock()
        self.idle_sweeps = 0
        self.opened_at = time.monotonic()
        self.failed = False

    def stats(self) -> dict:
        receiver = self.receiver
        return {
            "id": self.relay_id,
            "room": self.room,
            "origin": self.origin,
            "state": receiver.peer.connection_state if receiver else "new",
            "tracks": sorted(self.tracks),
            "packets": sum(p.packets for p in receiver.producers.values()) if receiver else 0,
        }


class RelayEdge:
    """The relays this node receives (see the module doc)."""

    def __init__(
        self,
        node_id: str,
        config: Config,
        rooms: RoomRegistry,
        network: NetworkSettings,
        registry: NodeRegistry,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.rooms = rooms
        self.network = network
        self.registry = registry
        self.links: dict[tuple[str, str], RelayLink] = {}  # (room, origin) -> link
        self.opened = 0
        self._http: aiohttp.ClientSession | None = None
        self._token = ""
        self._token_until = 0.0
        self._sweep_task: asyncio.Task | None = None
        self._pending: set[tuple[str, str]] = set()
        self._closed = False
        # called at each sweep first (remote_rooms.py drops what nodes that died left)
        self.on_sweep: list = []

    # -- demand ----------------------------------------------------------------------------------

    def demand(self, producer: RemoteProducer) -> None:
        """A local subscriber wants `producer`: make sure a relay carries it (soon, not now)."""
        if self._closed or producer.closed:
            return
        key = (producer.room_name, producer.origin)
        link = self.links.get(key)
        if link is not None and producer.id in link.tracks and link.receiver is not None:
            return
        if key not in self._pending:
            self._pending.add(key)
            asyncio.get_running_loop().call_soon(self._start_sync, key)

    def _start_sync(self, key: tuple[str, str]) -> None:
        self._pending.discard(key)
        task = asyncio.ensure_future(self._sync(*key))
        task.add_done_callback(_log_failure)

    def wanted(self, room: Room, origin: str) -> frozenset[str]:
        """Tracks of `origin` in `room` that a local participant subscribes to."""
        result = set()
        for participant in room.participants.values():
            subscriber = participant.subscriber
            if subscriber is None:
                continue
            for track_id, producer in subscriber.subscriptions.items():
                if getattr(producer, "origin", None) == origin and not producer.closed:
                    result.add(track_id)
        return frozenset(result)

    async def _sync(self, room_name: str, origin: str) -> None:
        """Make the relay of (room, origin) carry exactly what is wanted now."""
        key = (room_name, origin)
        room = self.rooms.rooms.get(room_name)
        link = self.links.get(key)
        if link is None:
            if room is None or not self.wanted(room, origin):
                return
            link = self.links[key] = RelayLink(room_name, origin)
        async with link.lock:
            if self.links.get(key) is not link:
                return
            room = self.rooms.rooms.get(room_name)
            wanted = self.wanted(room, origin) if room is not None else frozenset()
            if not wanted:
                await self._close_link(link)
                return
            if wanted == link.tracks and link.receiver is not None:
                return
            try:
                await self._negotiate(link, room, wanted)
            except Exception as exc:
                logger.warning(
                    "relay from %s for room %s failed: %s", origin, room_name, exc or repr(exc)
                )
                await self._close_link(link)

    async def _negotiate(self, link: RelayLink, room: Room, wanted: frozenset[str]) -> None:
        remote = {t: p for t, p in room.producers.items() if isinstance(p, RemoteProducer)}
        if link.receiver is None:
            node = await self.registry.get_node(link.origin)
            if node is None:
                raise ClusterError(f"node {link.origin} is not live")
            link.url = (node.internal_url or node.public_url).rstrip("/")
            reply = await self._post(
                "/internal/relay",
                {"room": link.room, "node_id": self.node_id, "tracks": sorted(wanted)},
                link.url,
            )
            link.relay_id = reply["id"]
            link.receiver = RelayReceiver(
                producers=remote,
                identity=f"relay:{link.origin}",
                network=self.network,
                rtc=self.config.rtc,
                max_tracks=64,
                label=f"relay:{link.origin}:{link.room}",
            )
            link.receiver.peer.pc.on("connectionstatechange", lambda: self._on_state(link))
            self.opened += 1
        else:
            reply = await self._post(
                f"/internal/relay/{link.relay_id}/tracks", {"tracks": sorted(wanted)}, link.url
            )
        receiver = link.receiver
        receiver._remote = remote
        for track_id in link.tracks - wanted:
            receiver.release(track_id)
        link.tracks = wanted
        if reply.get("sdp"):
            receiver.expect(reply.get("tracks", {}))
            answer, _ = await receiver.negotiate(reply["sdp"])
            await self._post(f"/internal/relay/{link.relay_id}/answer", {"sdp": answer}, link.url)
        else:
            # tracks that were carried before and are wanted again: their m-lines are there
            receiver.expect(reply.get("tracks", {}))
            receiver._create_producers([])
        for producer in receiver.producers.values():
            producer.request_keyframe()

    def _on_state(self, link: RelayLink) -> None:
        receiver = link.receiver
        if receiver is not None and receiver.peer.connection_state == "failed":
            logger.info(
                "relay from %s for room %s failed; rebuilt on demand", link.origin, link.room
            )
            link.failed = True
            asyncio.ensure_future(self._close_link(link))

    async def _close_link(self, link: RelayLink) -> None:
        key = (link.room, link.origin)
        if self.links.get(key) is link:
            del self.links[key]
        receiver, link.receiver = link.receiver, None
        link.tracks = frozenset()
        if receiver is None:
            return
        await receiver.close()
        if link.relay_id and link.url:  # (the origin would notice a dead relay later anyway)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._request("DELETE", f"/internal/relay/{link.relay_id}", None, link.url),
                    DELETE_TIMEOUT_S,
                )
        logger.info("relay %s from %s (room %s) closed", link.relay_id, link.origin, link.room)

    # -- the sweep -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._sweep_task is None:
            self._sweep_task = asyncio.ensure_future(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(SWEEP_S)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("relay sweep failed")

    async def sweep(self) -> None:
        """Drop tracks nobody wants from their relays; close relays idle for two sweeps;
        open what is wanted but not carried (a relay that failed, a missed demand)."""
        for callback in self.on_sweep:
            callback()
        for key, link in list(self.links.items()):
            room = self.rooms.rooms.get(link.room)
            wanted = self.wanted(room, link.origin) if room is not None else frozenset()
            if not wanted:
                link.idle_sweeps += 1
                if link.idle_sweeps >= 2 and not link.lock.locked():
                    await self._sync(*key)
                continue
            link.idle_sweeps = 0
            if wanted != link.tracks and not link.lock.locked():
                await self._sync(*key)
        for room in list(self.rooms.rooms.values()):
            origins = {
                p.origin
                for p in room.producers.values()
                if isinstance(p, RemoteProducer) and not p.closed
            }
            for origin in origins:
                if (room.name, origin) not in self.links and self.wanted(room, origin):
                    await self._sync(room.name, origin)

    async def close_room(self, room_name: str) -> None:
        for key, link in list(self.links.items()):
            if key[0] == room_name:
                await self._close_link(link)

    # -- HTTP to the origin ------------------------------------------------------------------

    def _bearer(self) -> str:
        now = time.time()
        if not self._token or now > self._token_until:
            self._token = mint_token(
                self.config.auth,
                identity=f"node:{self.node_id}",
                room="*",
                grants=Grants(admin=True),
                ttl_s=TOKEN_TTL_S,
            )
            self._token_until = now + TOKEN_TTL_S / 2
        return self._token

    async def _post(self, path: str, body: dict, base: str) -> dict:
        return await self._request("POST", path, body, base)

    async def _request(self, method: str, path: str, body: dict | None, base: str) -> dict:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        headers = {"Authorization": f"Bearer {self._bearer()}"}
        async with self._http.request(method, base + path, json=body, headers=headers) as resp:
            if resp.status == 204:
                return {}
            reply = await resp.json(content_type=None)
            if resp.status >= 300:
                message = reply.get("message") if isinstance(reply, dict) else reply
                raise ClusterError(f"origin answered {resp.status}: {message}")
            if not isinstance(reply, dict):
                raise ClusterError("origin answered something other than an object")
            return reply

    def stats(self) -> list[dict]:
        return [link.stats() for link in self.links.values()]

    async def close(self) -> None:
        self._closed = True
        await stop_task(self._sweep_task, DELETE_TIMEOUT_S)
        for link in list(self.links.values()):  # (shutdown never waits long on a relay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._close_link(link), 2 * DELETE_TIMEOUT_S)
        if self._http is not None:
            await self._http.close()
            self._http = None


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("relay: %r", task.exception())
