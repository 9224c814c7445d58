"""RoomClient: one participant's signalling socket plus its publish and subscribe connections."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack

from ..media.peer import MediaPeer, NetworkSettings

logger = logging.getLogger(__name__)

ANY_INTERFACE = NetworkSettings(addresses=())


class SignallingError(Exception):
    """An `error` message from the server, raised where a request awaited its reply."""

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}  # the whole error message (a redirect names its node)


@dataclass
class RemoteTrack:
    track_id: str
    kind: str
    publisher: str
    track: MediaStreamTrack


class RoomClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        network: NetworkSettings,
    ) -> None:
        self._session = session
        self._ws = ws
        self.network = network
        self.identity = ""
        self.room = ""
        self.participants: dict[str, dict] = {}
        self.tracks: dict[str, dict] = {}  # published track infos in the room, by id
        self.remote_tracks: dict[str, RemoteTrack] = {}
        self.published: list[dict] = []
        self.node: dict = {}  # the node serving this client: node_id, region, url
        self.fallbacks: list[dict] = []  # other nodes to try if it goes away
        self.ice_servers: list[dict] = []
        self.publisher: MediaPeer | None = None
        self.subscriber: MediaPeer | None = None
        self._mid_to_track: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future] = {}
        self._history: list[dict] = []
        self._waiters: list[tuple[Callable[[dict], bool], asyncio.Future]] = []
        self._track_waiters: list[tuple[Callable[[RemoteTrack], bool], asyncio.Future]] = []
        self._handlers: dict[str, list[Callable[[dict], Any]]] = {}
        self._offers: asyncio.Queue[dict] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())
        self._offer_task = asyncio.ensure_future(self._answer_offers())
        self.closed = False

    # -- connecting ------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str,
        *,
        name: str | None = None,
        auto_subscribe: bool = True,
        network: NetworkSettings = ANY_INTERFACE,
        metadata: dict | None = None,
        timeout: float = 10.0,
        publish: list[MediaStreamTrack] | None = None,
        sources: list[str] | None = None,
        inline_offer: bool = True,
        redirects: int = 3,
    ) -> RoomClient:
        """Open the signalling socket at `url` (http(s) base of the node) and join.

        `publish`: tracks to publish as part of the join (their offer rides in `join`, the
        answer in `joined`: one round trip); `client.published` then holds their infos.
        `inline_offer`: ask for the first subscriber offer inside `joined` (see protocol.md).
        `redirects`: how many times to follow a node that sends the join to another one
        (docs/cluster.md, "Routing"); `client.node` is the node that serves it, and
        `client.fallbacks` the nodes to try when that one goes away.
        """
        base = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        publisher: MediaPeer | None = None
        transceivers: list = []
        if publish:
            publisher = MediaPeer(network, label="client-pub")
            transceivers = [publisher.pc.addTransceiver(t, direction="sendonly") for t in publish]
        session = aiohttp.ClientSession()
        try:
            # the publish offer is built while the socket connects
            connecting = session.ws_connect(
                f"{base}/rtc", timeout=aiohttp.ClientWSTimeout(ws_close=5)
            )
            if publisher is not None:
                ws, offer = await asyncio.gather(connecting, publisher.offer())
            else:
                ws, offer = await connecting, None
        except BaseException:
            await session.close()
            if publisher is not None:
                await publisher.close()
            raise
        client = cls(session, ws, network)
        client.publisher = publisher
        join: dict[str, Any] = {"type": "join", "token": token, "auto_subscribe": auto_subscribe}
        if inline_offer:
            join["inline_offer"] = True
        if name:
            join["name"] = name
        if metadata:
            join["metadata"] = metadata
        if offer is not None:
            join["publish"] = {
                "sdp": offer,
                "tracks": [
                    {
                        "mid": tr.mid,
                        "kind": tr.kind,
                        "source": sources[i] if sources and i < len(sources) else "",
                    }
                    for i, tr in enumerate(transceivers)
                ],
            }
        try:
            joined = await client.request(join, timeout=timeout)
            if "publish_error" in joined:
                error = joined["publish_error"]
                raise SignallingError(error.get("code", "internal"), error.get("message", ""))
            if publisher is not None and "publish_answer" in joined:
                await publisher.accept_answer(joined["publish_answer"]["sdp"])
                client.published.extend(joined["publish_answer"]["tracks"])
        except SignallingError as exc:
            await client.close()
            target = exc.details.get("node") if exc.code == "redirect" else None
            if not redirects or not isinstance(target, dict) or not target.get("url"):
                raise
            return await cls.connect(
                target["url"], token, name=name, auto_subscribe=auto_subscribe,
                network=network, metadata=metadata, timeout=timeout, publish=publish,
                sources=sources, inline_offer=inline_offer, redirects=redirects - 1,
            )  # fmt: skip
        except BaseException:
            await client.close()
            raise
        client.node = joined.get("node") or {}
        client.fallbacks = joined.get("fallbacks") or []
        return client

    # -- requests and events -----------------------------------------------------------------------

    async def request(self, message: dict, timeout: float = 10.0) -> dict:
        """Send a message and wait for the reply carrying the same request_id."""
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            await self._ws.send_json({**message, "request_id": request_id})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._replies.pop(request_id, None)

    async def send(self, message: dict) -> None:
        await self._ws.send_json(message)

    def on(self, event_type: str, handler: Callable[[dict], Any]) -> None:
        self._handlers.setdefault(event_type, []).append(handler)

    async def wait_for(
        self,
        event_type: str,
        predicate: Callable[[dict], bool] | None = None,
        timeout: float = 10.0,
        *,
        past: bool = True,
    ) -> dict:
        """The first event of this type (already received if `past`) matching `predicate`."""

        def match(m: dict) -> bool:
            return m.get("type") == event_type and (predicate is None or predicate(m))

        if past:
            for m in self._history:
                if match(m):
                    return m
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((match, future))
        return await asyncio.wait_for(future, timeout)

    async def next_track(
        self,
        *,
        kind: str | None = None,
        publisher: str | None = None,
        track_id: str | None = None,
        timeout: float = 10.0,
    ) -> RemoteTrack:
        """A received track (already arrived, or the next to arrive) matching the filters."""

        def match(t: RemoteTrack) -> bool:
            return (
                (kind is None or t.kind == kind)
                and (publisher is None or t.publisher == publisher)
                and (track_id is None or t.track_id == track_id)
            )

        for t in self.remote_tracks.values():
            if match(t):
                return t
        future = asyncio.get_running_loop().create_future()
        self._track_waiters.append((match, future))
        return await asyncio.wait_for(future, timeout)

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                if raw.type != aiohttp.WSMsgType.TEXT:
                    break
                self._handle(raw.json())
        except Exception:
            logger.exception("client: reader failed")
        finally:
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError("signalling socket closed"))

    def _handle(self, message: dict) -> None:
        kind = message.get("type")
        request_id = message.get("request_id")
        future = self._replies.get(request_id) if request_id is not None else None
        if future is not None and not future.done():
            if kind == "error":
                future.set_exception(SignallingError(message["code"], message["message"], message))
            else:
                future.set_result(message)
        if kind == "joined":
            # room state first: the inline offer is answered from it
            self.identity = message["participant"]["identity"]
            self.room = message["room"]
            self.ice_servers = message.get("ice_servers", [])
            for p in message.get("participants", []):
                self.participants[p["identity"]] = p
            for t in message.get("tracks", []):
                self.tracks[t["id"]] = t
            if "offer" in message:
                self._offers.put_nowait({"type": "offer", **message["offer"]})
        elif kind == "participant_joined":
            self.participants[message["participant"]["identity"]] = message["participant"]
        elif kind == "participant_left":
            self.participants.pop(message["identity"], None)
        elif kind == "track_published":
            self.tracks[message["track"]["id"]] = message["track"]
        elif kind == "track_unpublished":
            self.tracks.pop(message["track_id"], None)
            self.remote_tracks.pop(message["track_id"], None)
        elif kind == "offer":
            self._offers.put_nowait(message)
        self._history.append(message)
        if len(self._history) > 1000:
            del self._history[:500]
        for match, waiter in list(self._waiters):
            if not waiter.done() and match(message):
                waiter.set_result(message)
                self._waiters.remove((match, waiter))
        for handler in self._handlers.get(kind, []):
            try:
                handler(message)
            except Exception:
                logger.exception("client: handler for %s failed", kind)

    # -- publishing --------------------------------------------------------------------------------

    async def publish(
        self, tracks: list[MediaStreamTrack], sources: list[str] | None = None
    ) -> list[dict]:
        """Send tracks to the room; returns their track infos (with ids) from the server."""
        first = self.publisher is None
        if first:
            self.publisher = MediaPeer(self.network, label=f"client-pub:{self.identity}")
        pc = self.publisher.pc
        new = [pc.addTransceiver(t, direction="sendonly") for t in tracks]
        offer = await self.publisher.offer()
        requests = []
        for i, transceiver in enumerate(new):
            source = sources[i] if sources and i < len(sources) else ""
            requests.append({"mid": transceiver.mid, "kind": transceiver.kind, "source": source})
        reply = await self.request({"type": "publish", "sdp": offer, "tracks": requests})
        await self.publisher.accept_answer(reply["sdp"])
        self.published.extend(reply["tracks"])
        return reply["tracks"]

    async def unpublish(self, track_id: str) -> None:
        """Stop sending a published track; its m-line stays, inactive (no renegotiation)."""
        await self.request({"type": "unpublish", "track_id": track_id})
        mid = next((t.get("mid") for t in self.published if t["id"] == track_id), None)
        self.published = [t for t in self.published if t["id"] != track_id]
        if self.publisher is not None and mid is not None:
            for transceiver in self.publisher.pc.getTransceivers():
                if transceiver.mid == mid:
                    transceiver.sender.replaceTrack(None)
                    transceiver.direction = "inactive"

    # -- subscribing -------------------------------------------------------------------------------

    async def subscribe(self, track_ids: list[str]) -> None:
        await self.request({"type": "subscribe", "track_ids": track_ids})

    async def unsubscribe(self, track_ids: list[str]) -> None:
        await self.request({"type": "unsubscribe", "track_ids": track_ids})

    async def _answer_offers(self) -> None:
        while True:
            message = await self._offers.get()
            try:
                await self._answer(message)
            except Exception:
                logger.exception("client: could not answer the subscriber offer")

    async def _answer(self, message: dict) -> None:
        if self.subscriber is None:
            self.subscriber = MediaPeer(self.network, label=f"client-sub:{self.identity}")
            self.subscriber.pc.on("track", self._on_track)
        self._mid_to_track.update(message.get("tracks", {}))
        answer = await self.subscriber.answer(message["sdp"])
        await self.send({"type": "answer", "sdp": answer})
        # m-lines reused for another track fire no new 'track' event: announce them here
        for transceiver in self.subscriber.pc.getTransceivers():
            track_id = message.get("tracks", {}).get(transceiver.mid)
            if track_id and track_id not in self.remote_tracks and transceiver.receiver.track:
                self._announce(track_id, transceiver.kind, transceiver.receiver.track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        for transceiver in self.subscriber.pc.getTransceivers():
            if transceiver.receiver.track is track:
                track_id = self._mid_to_track.get(transceiver.mid)
                if track_id:
                    self._announce(track_id, track.kind, track)

    def _announce(self, track_id: str, kind: str, track: MediaStreamTrack) -> None:
        info = self.tracks.get(track_id, {})
        remote = RemoteTrack(track_id, kind, info.get("publisher", ""), track)
        self.remote_tracks[track_id] = remote
        for match, waiter in list(self._track_waiters):
            if not waiter.done() and match(remote):
                waiter.set_result(remote)
                self._track_waiters.remove((match, waiter))

    # -- data and leaving --------------------------------------------------------------------------

    async def send_data(self, payload: Any, topic: str = "", to: list[str] | None = None) -> None:
        message: dict[str, Any] = {"type": "data", "payload": payload, "topic": topic}
        if to is not None:
            message["to"] = to
        await self.send(message)

    async def wait_closed(self) -> None:
        """Return when the signalling socket has closed (server gone, dropped, or close())."""
        await asyncio.wait({self._reader})

    async def leave(self) -> None:
        if not self._ws.closed:
            try:
                await self.request({"type": "leave"}, timeout=3)
            except Exception:
                pass
        await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._offer_task.cancel()
        for peer in (self.publisher, self.subscriber):
            if peer is not None:
                await peer.close()
        await self._ws.close()
        await self._session.close()
        self._reader.cancel()
