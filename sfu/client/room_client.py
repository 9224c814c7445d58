"""RoomClient: one participant's signalling socket plus its publish and subscribe connections.

With `reconnect=Reconnect(...)` it also survives its node: when the socket closes unexpectedly,
ICE fails, or nothing arrives on the tracks it receives while the node does not answer, and
when the node says `move` (it is draining), it joins again (the same node or a fallback; see
resume.py) with the same identity, publishes its tracks again and takes up what it received
(docs/cluster.md, "Failures").
"""

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
from .resume import FINAL_ERRORS, ConnectionHealth, Reconnect, fallback_urls, next_targets

logger = logging.getLogger(__name__)

ANY_INTERFACE = NetworkSettings(addresses=())
WATCH_INTERVAL_S = 0.5  # how often a reconnecting client looks at its connections' health
SOCKET_HEARTBEAT_S = 5.0  # WebSocket pings of a reconnecting client (a silent dead node)


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


@dataclass
class _Local:
    """A track we publish: published again (under a new track id) after a resume."""

    track: MediaStreamTrack
    source: str
    track_id: str = ""


class RoomClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse | None,
        network: NetworkSettings,
        *,
        reconnect: Reconnect | None = None,
    ) -> None:
        self._session = session
        self._ws = ws
        self.network = network
        self.identity = ""
        self.room = ""
        self.url = ""  # the node this client is on
        self.participants: dict[str, dict] = {}
        self.tracks: dict[str, dict] = {}  # published track infos in the room, by id
        self.remote_tracks: dict[str, RemoteTrack] = {}
        self.published: list[dict] = []
        self.node: dict = {}  # the node serving this client: node_id, region, url
        self.ice_servers: list[dict] = []
        self.fallbacks: list[str] = []  # other nodes, as the node said (join answer, `move`)
        self.publisher: MediaPeer | None = None
        self.subscriber: MediaPeer | None = None
        self.reconnect = reconnect
        self.resumes = 0  # successful resumes so far
        self._token = ""
        self._join_options: dict[str, Any] = {}
        self._local: list[_Local] = []  # what we publish (published again on a resume)
        self._wanted: set[tuple[str, str, str]] = set()  # subscribe(): (publisher, source, kind)
        self._final_error: str | None = None  # an error after which we must not come back
        self._leaving = False  # leave() called
        self._resume_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._ended = asyncio.Event()
        self._mid_to_track: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future] = {}
        self._history: list[dict] = []
        self._waiters: list[tuple[Callable[[dict], bool], asyncio.Future]] = []
        self._track_waiters: list[tuple[Callable[[RemoteTrack], bool], asyncio.Future]] = []
        self._handlers: dict[str, list[Callable[[dict], Any]]] = {}
        self._offers: asyncio.Queue[dict] = asyncio.Queue()
        self._reader: asyncio.Task | None = (
            asyncio.ensure_future(self._read(ws)) if ws is not None else None
        )
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
        reconnect: Reconnect | None = None,
        redirects: int = 3,
    ) -> RoomClient:
        """Open the signalling socket at `url` (http(s) base of the node) and join.

        `publish`: tracks to publish as part of the join (their offer rides in `join`, the
        answer in `joined`: one round trip); `client.published` then holds their infos.
        `inline_offer`: ask for the first subscriber offer inside `joined` (see protocol.md).
        `reconnect`: resume on this or another node when the connection dies (off by
        default: a client the server dropped then stays dropped).
        `redirects`: how many times to follow a full node that sends the join to another node
        of its region (docs/cluster.md, "Routing"); `client.node` is the node serving it.
        """
        client = cls(aiohttp.ClientSession(), None, network, reconnect=reconnect)
        client._token = token
        client._join_options = {"auto_subscribe": auto_subscribe, "inline_offer": inline_offer}
        if name:
            client._join_options["name"] = name
        if metadata:
            client._join_options["metadata"] = metadata
        for i, track in enumerate(publish or []):
            source = sources[i] if sources and i < len(sources) else ""
            client._local.append(_Local(track, source))
        try:
            for hop in range(redirects + 1):
                try:
                    await client._join(url, timeout)
                    break
                except SignallingError as exc:
                    target = exc.details.get("node") if exc.code == "redirect" else None
                    if hop == redirects or not isinstance(target, dict) or not target.get("url"):
                        raise
                    await client._drop_connection()
                    url = target["url"]
        except BaseException:
            await client.close()
            raise
        if reconnect is not None:
            client._watch_task = asyncio.ensure_future(client._watch())
        return client

    async def _join(self, url: str, timeout: float) -> dict:
        """Open a socket to `url` and join on it, publishing every track of `self._local` in
        the join (a new publisher connection). Returns `joined`."""
        base = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        publisher: MediaPeer | None = None
        transceivers: list = []
        if self._local:
            publisher = MediaPeer(self.network, label="client-pub")
            transceivers = [
                publisher.pc.addTransceiver(local.track, direction="sendonly")
                for local in self._local
            ]
        heartbeat = SOCKET_HEARTBEAT_S if self.reconnect is not None else None
        try:
            # the publish offer is built while the socket connects
            connecting = self._session.ws_connect(
                f"{base}/rtc", timeout=aiohttp.ClientWSTimeout(ws_close=5), heartbeat=heartbeat
            )
            if publisher is not None:
                ws, offer = await asyncio.gather(connecting, publisher.offer())
            else:
                ws, offer = await connecting, None
        except BaseException:
            if publisher is not None:
                await publisher.close()
            raise
        self.url = url.rstrip("/")
        self._ws = ws
        self.publisher = publisher
        self._reader = asyncio.ensure_future(self._read(ws))
        join: dict[str, Any] = {"type": "join", "token": self._token, **self._join_options}
        if not join.get("inline_offer"):
            join.pop("inline_offer", None)
        if offer is not None:
            join["publish"] = {
                "sdp": offer,
                "tracks": [
                    {"mid": tr.mid, "kind": tr.kind, "source": local.source}
                    for tr, local in zip(transceivers, self._local, strict=True)
                ],
            }
        joined = await self.request(join, timeout=timeout)
        self.node = joined.get("node") or {}
        if "publish_error" in joined:
            error = joined["publish_error"]
            raise SignallingError(error.get("code", "internal"), error.get("message", ""))
        if publisher is not None and "publish_answer" in joined:
            await publisher.accept_answer(joined["publish_answer"]["sdp"])
            infos = joined["publish_answer"]["tracks"]
            self.published = list(infos)
            by_mid = {info.get("mid"): info for info in infos}
            for tr, local in zip(transceivers, self._local, strict=True):
                info = by_mid.get(tr.mid)
                local.track_id = info["id"] if info else ""
        return joined

    # -- requests and events -----------------------------------------------------------------------

    async def request(self, message: dict, timeout: float = 10.0) -> dict:
        """Send a message and wait for the reply carrying the same request_id."""
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionError("not connected (the client is reconnecting or closed)")
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            await ws.send_json({**message, "request_id": request_id})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._replies.pop(request_id, None)

    async def send(self, message: dict) -> None:
        if self._ws is None:
            raise ConnectionError("not connected (the client is reconnecting or closed)")
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

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for raw in ws:
                if raw.type != aiohttp.WSMsgType.TEXT:
                    break
                self._handle(raw.json())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("client: reader failed")
        finally:
            if ws is self._ws:  # (not a socket given up already by a resume)
                self._fail_replies()
                self._socket_lost(ws)

    def _fail_replies(self) -> None:
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ConnectionError("signalling socket closed"))

    def _socket_lost(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The current socket closed without our closing it: resume, or end."""
        if self.closed or self._leaving:
            self._ended.set()
            return
        if ws.close_code == 4401:
            self._final_error = self._final_error or "unauthorized"
        if self.reconnect is not None and self._final_error is None:
            silent = isinstance(ws.exception(), aiohttp.ServerTimeoutError)  # no pong
            reason = "the node stopped answering pings" if silent else "signalling socket closed"
            self._start_resume(f"{reason} (code {ws.close_code})", silent=silent)
        elif self._resume_task is None or self._resume_task.done():
            self._ended.set()

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
            if "fallbacks" in message:
                self.fallbacks = fallback_urls(message["fallbacks"])
            if "offer" in message:
                self._offers.put_nowait({"type": "offer", **message["offer"]})
        elif kind == "participant_joined":
            self.participants[message["participant"]["identity"]] = message["participant"]
        elif kind == "participant_left":
            self.participants.pop(message["identity"], None)
        elif kind == "track_published":
            self.tracks[message["track"]["id"]] = message["track"]
            self._resubscribe([message["track"]])
        elif kind == "track_unpublished":
            self.tracks.pop(message["track_id"], None)
            self.remote_tracks.pop(message["track_id"], None)
        elif kind == "offer":
            self._offers.put_nowait(message)
        elif kind == "move":
            self.fallbacks = fallback_urls(message.get("fallbacks")) or self.fallbacks
            if self.reconnect is not None:
                self._start_resume(f"moved: {message.get('reason', '')}", moving=self.fallbacks)
        elif kind == "error" and request_id is None and message.get("code") in FINAL_ERRORS:
            self._final_error = message["code"]
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
        by_mid = {info.get("mid"): info for info in reply["tracks"]}
        for i, transceiver in enumerate(new):
            info = by_mid.get(transceiver.mid)
            self._local.append(_Local(tracks[i], requests[i]["source"], info["id"] if info else ""))
        return reply["tracks"]

    async def unpublish(self, track_id: str) -> None:
        """Stop sending a published track; its m-line stays, inactive (no renegotiation)."""
        await self.request({"type": "unpublish", "track_id": track_id})
        mid = next((t.get("mid") for t in self.published if t["id"] == track_id), None)
        self.published = [t for t in self.published if t["id"] != track_id]
        self._local = [local for local in self._local if local.track_id != track_id]
        if self.publisher is not None and mid is not None:
            for transceiver in self.publisher.pc.getTransceivers():
                if transceiver.mid == mid:
                    transceiver.sender.replaceTrack(None)
                    transceiver.direction = "inactive"

    # -- subscribing -------------------------------------------------------------------------------

    async def subscribe(self, track_ids: list[str]) -> None:
        await self.request({"type": "subscribe", "track_ids": track_ids})
        for track_id in track_ids:  # (taken up again by publisher and source after a resume)
            key = _track_key(self.tracks.get(track_id))
            if key is not None:
                self._wanted.add(key)

    async def unsubscribe(self, track_ids: list[str]) -> None:
        await self.request({"type": "unsubscribe", "track_ids": track_ids})
        for track_id in track_ids:
            self._wanted.discard(_track_key(self.tracks.get(track_id)))  # type: ignore[arg-type]

    def _resubscribe(self, infos: list[dict]) -> None:
        """After a resume without auto_subscribe: subscribe again to the tracks that match
        what we subscribed to before (same publisher, source and kind; ids are new)."""
        if not self._wanted or self.resumes == 0 or self._join_options.get("auto_subscribe"):
            return
        ids = [info["id"] for info in infos if _track_key(info) in self._wanted]
        if ids:
            task = asyncio.ensure_future(self.request({"type": "subscribe", "track_ids": ids}))
            task.add_done_callback(_consume)

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
        """Return when the client is done: the signalling socket closed (server gone, dropped,
        or close()) and, with `reconnect`, no resume is under way or possible any more."""
        await self._ended.wait()

    async def leave(self) -> None:
        self._leaving = True  # (the socket the node closes now is no failure)
        ws = self._ws
        if ws is not None and not ws.closed:
            try:
                await self.request({"type": "leave"}, timeout=3)
            except Exception:
                pass
        await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self._watch_task, self._resume_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._offer_task.cancel()
        for peer in (self.publisher, self.subscriber):
            if peer is not None:
                await peer.close()
        if self._ws is not None:
            await self._ws.close()
        await self._session.close()
        if self._reader is not None:
            self._reader.cancel()
        self._ended.set()

    # -- resuming after a failure (with `reconnect`) ------------------------------------------

    def _start_resume(
        self, reason: str, moving: list[str] | None = None, *, silent: bool = False
    ) -> None:
        if self.closed or self._leaving or self.reconnect is None:
            return
        if self._resume_task is not None and not self._resume_task.done():
            return  # one resume at a time
        self._resume_task = asyncio.ensure_future(self._resume(reason, moving, silent))

    async def _resume(self, reason: str, moving: list[str] | None, silent: bool = False) -> None:
        """Leave the dead (or draining) connection, then join again on the targets in turn.
        `silent`: the node does not answer at all (hung, or its host gone): try it last, as
        each try costs a whole attempt timeout."""
        policy = self.reconnect
        assert policy is not None
        logger.info("client %s: resuming (%s)", self.identity, reason)
        old_url, old_ids = self.url, [local.track_id for local in self._local]
        await self._drop_connection()
        targets = next_targets(
            old_url, self.fallbacks, policy.fallbacks, moving=moving if moving is not None else ()
        )
        if moving is not None and not moving and not self.fallbacks and not policy.fallbacks:
            targets = [old_url]  # nowhere else to go: come back when the node is back
        elif silent and len(targets) > 1 and targets[0] == old_url:
            targets = [*targets[1:], old_url]
        last_error = ""
        for attempt in range(policy.max_attempts):
            if self.closed:
                return
            url = targets[attempt % len(targets)]
            self._handle(
                {"type": "reconnecting", "reason": reason, "attempt": attempt + 1, "url": url}
            )
            await asyncio.sleep(policy.delay(attempt))
            try:
                if policy.token is not None:
                    self._token = await policy.token()
                await asyncio.wait_for(
                    self._join(url, policy.attempt_timeout_s), policy.attempt_timeout_s + 1
                )
            except asyncio.CancelledError:
                raise
            except SignallingError as exc:
                last_error = str(exc)
                await self._drop_connection()
                if exc.code in FINAL_ERRORS:
                    break
                continue
            except Exception as exc:  # refused, unreachable, timed out, closed meanwhile
                last_error = f"{type(exc).__name__}: {exc}"
                await self._drop_connection()
                continue
            self.resumes += 1
            self._resubscribe(list(self.tracks.values()))
            renamed = {
                old: local.track_id
                for old, local in zip(old_ids, self._local, strict=False)
                if old and local.track_id
            }
            logger.info("client %s: resumed on %s (%s)", self.identity, url, reason)
            self._handle(
                {
                    "type": "resumed",
                    "url": url,
                    "reason": reason,
                    "attempts": attempt + 1,
                    "tracks": renamed,
                }
            )
            return
        logger.warning("client %s: could not resume (%s): %s", self.identity, reason, last_error)
        self._handle({"type": "reconnect_failed", "reason": reason, "error": last_error})
        self._ended.set()

    async def _drop_connection(self) -> None:
        """Give up the current socket and peer connections (leaving first if the socket still
        works: a node that is alive must not keep us as a second participant)."""
        ws, self._ws = self._ws, None
        reader, self._reader = self._reader, None
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.send_json({"type": "leave"}), 1.0)
            except Exception:
                pass
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 1.0)
            except Exception:
                pass
        if reader is not None:
            reader.cancel()
        self._fail_replies()
        self._offer_task.cancel()  # (an offer of the old connection may be in hand)
        publisher, subscriber = self.publisher, self.subscriber
        self.publisher = self.subscriber = None
        for peer in (publisher, subscriber):
            if peer is not None:  # (before a new connection reads the same local tracks)
                try:
                    await asyncio.wait_for(peer.close(), 2.0)
                except Exception:
                    pass
        self._offers = asyncio.Queue()
        self._offer_task = asyncio.ensure_future(self._answer_offers())
        self._mid_to_track.clear()
        self.remote_tracks.clear()
        self.participants.clear()
        self.tracks.clear()

    async def _watch(self) -> None:
        """Look at the connections' health about twice a second (only with `reconnect`)."""
        assert self.reconnect is not None
        health = ConnectionHealth(self.reconnect.dead_after_s)
        while not self.closed:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self._ws is None or (self._resume_task is not None and not self._resume_task.done()):
                health.reset()
                continue
            peers = [p for p in (self.publisher, self.subscriber) if p is not None]
            states = [p.pc.iceConnectionState for p in peers]
            try:
                packets = await self._packets_received()
            except Exception:  # (a connection closing under us: look again next time)
                logger.debug("client: reading receive stats failed", exc_info=True)
                continue
            why = health.check(states, packets)
            if why.startswith("no media"):
                # the node may be fine and the publisher just quiet or gone: ask the node
                try:
                    await self.request({"type": "ping"}, timeout=self.reconnect.dead_after_s)
                    health.reset()
                    continue
                except Exception:
                    self._start_resume(f"{why}, and the node does not answer", silent=True)
                    continue
            if why:
                self._start_resume(why)

    async def _packets_received(self) -> int | None:
        """RTP packets received so far on the tracks we receive; None if none (or the
        subscriber connection is not up yet)."""
        subscriber = self.subscriber
        if subscriber is None or not self.remote_tracks:
            return None
        if subscriber.pc.connectionState != "connected":
            return None
        total = 0
        for transceiver in subscriber.pc.getTransceivers():
            if self._mid_to_track.get(transceiver.mid) not in self.remote_tracks:
                continue
            report = await transceiver.receiver.getStats()
            for stats in report.values():
                if getattr(stats, "type", "") == "inbound-rtp":
                    total += getattr(stats, "packetsReceived", 0)
        return total


def _track_key(info: dict | None) -> tuple[str, str, str] | None:
    if not info:
        return None
    return (info.get("publisher", ""), info.get("source", ""), info.get("kind", ""))


def _consume(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.info("client: re-subscribing failed: %s", task.exception())
