"""The WebSocket signalling protocol at /rtc (JSON messages; see docs/protocol.md).

One SignallingConnection per socket, an explicit state machine:
CONNECTED --join--> JOINED --leave/close--> CLOSED. Every request may carry a `request_id`,
echoed in the reply or error. Bad input gets an `error` message, never a dropped socket
(except a bad token, which closes it with code 4401).

The join can also be made over plain HTTP (`POST /rtc/join`, see docs/protocol.md, "Fast join"):
the reply is `joined` plus a session id, and the WebSocket `/rtc?session=ID` then attaches to
that participant. Until it does, events are queued for it and the subscriber's answer may come
by `POST /rtc/answer`; a session no socket attaches to within ATTACH_TIMEOUT_S is removed.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from .auth import AccessToken, AuthError, PermissionDenied
from .joins import JoinTimeline
from .media.publisher import PublisherSession, TrackRequest
from .media.sdp import SdpError, check_offer_size
from .media.subscriber import SubscriberSession
from .node import SfuNode
from .participant import EVENT_COST, Participant, ParticipantKind
from .ratelimit import TokenBucket
from .room import Room, RoomFull, TooManyRooms

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 30.0
INLINE_OFFER_TIMEOUT_S = 5.0
ATTACH_TIMEOUT_S = 10.0  # an HTTP join's WebSocket must attach within this
# A dropped client's socket: this long for its writer to flush the `dropped` notice, then as
# long again for a clean close before the connection is aborted (a client that reads nothing
# would otherwise hold its socket and buffers for ever).
DROP_FLUSH_S = 1.0
RATE_LIMITED_NOTICE_S = 1.0  # at most one `rate_limited` error a second to a flooding sender


class State(enum.Enum):
    CONNECTED = "connected"
    JOINED = "joined"
    CLOSED = "closed"


class SignallingError(Exception):
    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}  # more fields of the error message (a redirect's node)


def _require_str(msg: dict, key: str, *, max_len: int = 1 << 20) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise SignallingError("bad_request", f"'{key}' must be a non-empty string")
    if len(value) > max_len:
        raise SignallingError("bad_request", f"'{key}' is too long")
    return value


def _str_list(msg: dict, key: str) -> list[str]:
    value = msg.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SignallingError("bad_request", f"'{key}' must be a non-empty list of strings")
    return value


class SignallingConnection:
    """One signalling client. `ws` is None for an HTTP join until its WebSocket attaches."""

    def __init__(
        self, node: SfuNode, ws: web.WebSocketResponse | None, query_token: str | None
    ) -> None:
        self.node = node
        self.ws = ws
        self.query_token = query_token
        self.state = State.CONNECTED
        self.participant: Participant | None = None
        self.room: Room | None = None
        self._writer: asyncio.Task | None = None
        self._inline_offer: asyncio.Future | None = None  # the first offer, for `joined`
        self.joined_reply: dict | None = None  # an HTTP join's `joined` (the HTTP response)
        self.on_leave: Callable[[], None] | None = None  # (the HTTP session's bookkeeping)
        self._message_bytes = 0  # length of the message being handled
        self._route: dict[str, Any] = {}  # the node serving this join and fallbacks (joined)
        limits = node.config.limits
        self._data_messages = TokenBucket(
            limits.data_messages_per_s, max(1.0, 2 * limits.data_messages_per_s)
        )
        self._data_bytes = TokenBucket(
            limits.data_bytes_per_s, max(2 * limits.data_bytes_per_s, limits.max_message_bytes)
        )
        self._rate_notice_at = -RATE_LIMITED_NOTICE_S
        self.data_dropped = 0  # data messages refused by the rate limit
        self._handlers: dict[str, Callable[[dict], Awaitable[None]]] = {
            "join": self._on_join,
            "publish": self._on_publish,
            "unpublish": self._on_unpublish,
            "subscribe": self._on_subscribe,
            "unsubscribe": self._on_unsubscribe,
            "answer": self._on_answer,
            "quality": self._on_quality,
            "data": self._on_data,
            "ping": self._on_ping,
            "leave": self._on_leave,
        }

    # -- socket loop ---------------------------------------------------------------------------

    async def run(self, url_join: dict | None = None) -> None:
        """Serve the socket; `url_join`: a join the upgrade request asked for, done first.

        A connection that joined over HTTP and has just attached its socket is JOINED already.
        """
        assert self.ws is not None
        join_deadline = asyncio.get_running_loop().call_later(JOIN_TIMEOUT_S, self._join_timeout)
        if self.state == State.JOINED:
            join_deadline.cancel()
        try:
            if url_join is not None:
                await self._dispatch(json.dumps(url_join))
                if self.state == State.JOINED:
                    join_deadline.cancel()
            async for raw in self.ws:
                if raw.type == WSMsgType.TEXT:
                    await self._dispatch(raw.data)
                elif raw.type == WSMsgType.BINARY:
                    await self._send_error("bad_request", "binary messages are not supported")
                elif raw.type == WSMsgType.ERROR:
                    break
                if self.state == State.JOINED:
                    join_deadline.cancel()
                if self.state == State.CLOSED:
                    break
        finally:
            join_deadline.cancel()
            await self._leave()

    def _join_timeout(self) -> None:
        if self.state == State.CONNECTED and self.ws is not None:
            asyncio.ensure_future(_close_or_abort(self.ws, 4408, b"join timeout"))

    async def _dispatch(self, text: str) -> None:
        request_id = None
        try:
            try:
                msg = json.loads(text)
            except (ValueError, RecursionError) as exc:  # junk, or nested too deep
                raise SignallingError("bad_request", "message is not valid JSON") from exc
            if not isinstance(msg, dict):
                raise SignallingError("bad_request", "message must be a JSON object")
            request_id = msg.get("request_id")
            kind = msg.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise SignallingError("unknown_type", f"unknown message type {kind!r}")
            if kind not in ("join", "ping") and self.state != State.JOINED:
                raise SignallingError("not_joined", "send 'join' first")
            self._request_id = request_id
            self._message_bytes = len(text)
            await handler(msg)
        except SignallingError as exc:
            await self._send_error(exc.code, exc.message, request_id, exc.details)
        except Exception:
            logger.exception("signalling: unexpected error")
            await self._send_error("internal", "internal server error", request_id)

    async def _send(self, message: dict) -> None:
        """Before join, write directly; after, through the participant's ordered event queue.
        Once dropped or left, nothing (a dropped client may not read: a direct write would
        wait on it)."""
        if self.participant is not None and self.state == State.JOINED:
            self.participant.send_event(message)
        elif self.participant is not None and self.state == State.CLOSED:
            return
        elif self.ws is not None and not self.ws.closed:
            await self.ws.send_json(message)

    async def _send_error(
        self, code: str, message: str, request_id: Any = None, details: dict | None = None
    ) -> None:
        error: dict[str, Any] = {
            "type": "error",
            "code": code,
            "message": message,
            **(details or {}),
        }
        if request_id is not None:
            error["request_id"] = request_id
        await self._send(error)

    async def _reply(self, message: dict) -> None:
        if getattr(self, "_request_id", None) is not None:
            message["request_id"] = self._request_id
        await self._send(message)

    async def _write_events(self, participant: Participant) -> None:
        try:
            while True:
                message = await participant.next_event()
                if self.ws.closed:
                    return
                await self.ws.send_json(message)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            logger.exception("signalling: event writer failed")

    # -- handlers ------------------------------------------------------------------------------

    async def _on_join(self, msg: dict, received: float | None = None) -> None:
        received = time.monotonic() if received is None else received
        if self.state != State.CONNECTED:
            raise SignallingError("already_joined", "this connection has already joined")
        token = msg.get("token") or self.query_token
        try:
            access = self.node.authenticate(token if isinstance(token, str) else None)
        except AuthError as exc:
            if self.ws is None:  # an HTTP join: 401
                raise SignallingError("unauthorized", str(exc)) from exc
            await self._send_error("unauthorized", str(exc), msg.get("request_id"))
            await self.ws.close(code=4401, message=b"unauthorized")
            self.state = State.CLOSED
            return
        room_name = msg.get("room") or access.room
        if not isinstance(room_name, str) or not room_name or len(room_name) > 128:
            raise SignallingError("bad_request", "a room name is required (in the token or 'room')")
        try:
            access.require_room(room_name)
        except PermissionDenied as exc:
            raise SignallingError("forbidden", str(exc)) from exc
        publish = msg.get("publish")
        if publish is not None:
            if not isinstance(publish, dict):
                raise SignallingError("bad_request", "'publish' must be an object {sdp, tracks}")
            publish = (_require_str(publish, "sdp"), _track_requests(publish.get("tracks")))
        await self._join(access, room_name, msg, received, publish)

    async def _join(
        self,
        access: AccessToken,
        room_name: str,
        msg: dict,
        received: float,
        publish: tuple[str, list[TrackRequest]] | None,
    ) -> None:
        """Join, then answer with one `joined` message.

        With `inline_offer`, the subscriber offer for the tracks already live rides inside
        `joined`; with `publish`, so does the answer to the client's publish offer: a client
        that both watches and publishes is connected after one round trip. Events others cause
        meanwhile are held back and follow `joined`.
        """
        node = self.node
        route = node.router.route()  # which node serves this join (docs/cluster.md, Routing)
        self._route = {"node": route.node, "fallbacks": route.fallbacks}
        if route.redirect:
            raise SignallingError(
                "redirect",
                f"this node is full or draining: join {route.node['url']}",
                {"node": route.node, "fallbacks": route.fallbacks},
            )
        auto_subscribe = msg.get("auto_subscribe", True) is not False
        name = msg.get("name") if isinstance(msg.get("name"), str) else access.name
        metadata = msg.get("metadata") if isinstance(msg.get("metadata"), dict) else {}
        try:
            room = node.rooms.get_or_create(room_name)
        except TooManyRooms as exc:
            raise SignallingError("node_full", str(exc)) from exc
        await node.remote_rooms.prepare(room)  # the room's other nodes, for `joined`
        participant = Participant(
            identity=access.identity,
            name=name[:128],
            kind=ParticipantKind.WEBSOCKET,
            grants=access.grants,
            room=room,
            auto_subscribe=auto_subscribe,
            metadata=metadata,
            limits=node.config.limits,
        )
        timeline = JoinTimeline(access.identity, room_name, started=received)
        timeline.flags = {
            "inline_offer": msg.get("inline_offer") is True,
            "with_publish": publish is not None,
        }
        participant.join_timeline = timeline
        participant.hold_events()
        try:
            await room.add(participant)
        except RoomFull as exc:
            node.rooms.discard(room)
            raise SignallingError("room_full", str(exc)) from exc
        node.joins.add(timeline)
        timeline.attach(participant.probe_join)
        participant.on_dropped = self._on_dropped
        self.participant, self.room = participant, room
        self.state = State.JOINED
        if self.ws is not None:  # (an HTTP join's writer starts when its socket attaches)
            self._writer = asyncio.ensure_future(self._write_events(participant))
        try:
            await self._answer_join(access, participant, room, timeline, publish)
        finally:
            participant.release_events()  # (whatever is still held if answering failed)

    async def _answer_join(
        self,
        access: AccessToken,
        participant: Participant,
        room: Room,
        timeline: JoinTimeline,
        publish: tuple[str, list[TrackRequest]] | None,
    ) -> None:
        node = self.node
        subscriber = None
        if access.grants.subscribe:
            subscriber = participant.subscriber = SubscriberSession(
                identity=access.identity,
                network=node.network,
                rtc=node.config.rtc,
                send_offer=self._send_subscriber_offer,
            )
            subscriber.on_negotiation_failed = self._on_negotiation_failed
            subscriber.on_layer_change = self._on_layer_change
        live = room.live_producers(exclude=participant)
        subscribe_now = subscriber is not None and participant.auto_subscribe
        inline = subscribe_now and bool(live) and timeline.flags["inline_offer"]
        if inline:
            # The offer is built while the publish offer (if any) is answered.
            self._inline_offer = asyncio.get_running_loop().create_future()
            for producer in live:
                subscriber.subscribe(producer)
        added: list = []
        publish_reply: dict[str, Any] = {}
        if publish is not None:
            try:
                answer, added = await self._publish(participant, *publish)
                publish_reply["publish_answer"] = answer
                timeline.mark("publish_answer")
            except SignallingError as exc:
                publish_reply["publish_error"] = {"code": exc.code, "message": exc.message}
        others = [p.info() for p in room.participants.values() if p is not participant]
        others += list(room.remote.values())  # on other nodes of the cluster
        reply: dict[str, Any] = {
            "type": "joined",
            "room": room.name,
            "participant": participant.info(),
            "participants": others,
            "tracks": [p.info.to_json() for p in room.live_producers(exclude=participant)],
            "ice_servers": node.ice_servers(),
            **self._route,
            "grants": {
                "publish": access.grants.publish,
                "subscribe": access.grants.subscribe,
            },
            **publish_reply,
        }
        if inline:
            try:  # None if building it failed (an error event follows)
                offer = await asyncio.wait_for(self._inline_offer, INLINE_OFFER_TIMEOUT_S)
            except TimeoutError:  # (e.g. the session closed meanwhile): an `offer` may follow
                offer = None
            self._inline_offer = None
            if offer is not None:
                reply["offer"] = offer
        if getattr(self, "_request_id", None) is not None:
            reply["request_id"] = self._request_id
        if self.ws is None:
            # An HTTP join: the reply is the HTTP response; what others caused meanwhile stays
            # queued for the WebSocket that attaches.
            self.joined_reply = reply
            participant.release_events()
        else:
            participant.release_events(reply)
        timeline.mark("joined")
        if "offer" in reply:
            timeline.mark("offer")
        if subscribe_now:
            # Without inline offers the first offer follows `joined`; either way this also
            # catches tracks published while the join was being answered.
            for producer in room.live_producers(exclude=participant):
                subscriber.subscribe(producer)
        for producer in added:
            room.publish(participant, producer)

    async def _send_subscriber_offer(self, sdp: str, tracks: dict[str, str]) -> None:
        participant = self.participant
        if participant is None:
            return
        subscriber = participant.subscriber
        if subscriber is not None and subscriber.negotiations == 1:
            participant.watch(subscriber.peer, self.node.config.limits.connect_timeout_s)
        pending = self._inline_offer
        if pending is not None and not pending.done():
            pending.set_result({"sdp": sdp, "tracks": tracks})  # goes out inside `joined`
            return
        participant.send_event(
            {"type": "offer", "sdp": sdp, "tracks": tracks}, EVENT_COST + len(sdp)
        )
        if participant.join_timeline is not None:
            participant.join_timeline.mark("offer")

    def _on_negotiation_failed(self, reason: str) -> None:
        pending = self._inline_offer
        if pending is not None and not pending.done():
            pending.set_result(None)
        if self.participant is not None:
            self.participant.send_event(
                {"type": "error", "code": "negotiation_failed", "message": reason}
            )

    def _on_dropped(self, reason: str) -> None:
        """The participant was dropped (it has queued its `dropped` notice): close the socket."""
        if self.participant is not None and self.state != State.CLOSED:
            self.state = State.CLOSED
            asyncio.ensure_future(self._close_dropped(self.participant))

    async def _close_dropped(self, participant: Participant) -> None:
        """Let the writer flush the notice, then close; abort a socket nobody reads."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DROP_FLUSH_S
        while self.ws is None or not participant.events.empty():
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # (the writer's last send)
        if self._writer is not None:
            self._writer.cancel()
        if self.ws is not None:  # (an HTTP join that never attached has nothing to close)
            await _close_or_abort(self.ws, 4000, b"dropped")

    async def _on_publish(self, msg: dict) -> None:
        participant = self._joined()
        sdp = _require_str(msg, "sdp")
        requests = _track_requests(msg.get("tracks"))
        answer, added = await self._publish(participant, sdp, requests)
        if participant.join_timeline is not None:
            participant.join_timeline.mark("publish_answer")
        await self._reply({"type": "publish_answer", **answer})
        for producer in added:
            self.room.publish(participant, producer)

    async def _publish(
        self, participant: Participant, sdp: str, requests: list[TrackRequest]
    ) -> tuple[dict, list]:
        """Answer a publish offer: ({sdp, tracks}, the producers it added, not yet announced)."""
        if not participant.grants.publish:
            raise SignallingError("forbidden", "token lacks the 'publish' grant")
        node = self.node
        limits = node.config.limits
        try:  # before anything is allocated for it
            check_offer_size(
                sdp, max_media=limits.max_media_per_offer, max_rids=limits.max_rids_per_media
            )
        except SdpError as exc:
            raise SignallingError("bad_sdp", str(exc)) from exc
        created = participant.publisher is None
        if created:
            participant.publisher = PublisherSession(
                identity=participant.identity,
                network=node.network,
                rtc=node.config.rtc,
                max_tracks=node.config.limits.max_tracks_per_participant,
            )
        try:
            answer, added = await participant.publisher.negotiate(sdp, requests)
        except SdpError as exc:
            if created and participant.publisher is not None:
                # Nothing was negotiated: drop the connection rather than let its connect
                # watchdog drop the whole participant later.
                publisher, participant.publisher = participant.publisher, None
                await publisher.close()
            raise SignallingError("bad_sdp", str(exc)) from exc
        if created:
            participant.watch(participant.publisher.peer, node.config.limits.connect_timeout_s)
        mids = {p.id: mid for mid, p in participant.publisher.producers.items()}
        tracks = [{**p.info.to_json(), "mid": mids.get(p.id)} for p in added]
        return {"sdp": answer, "tracks": tracks}, added

    async def _on_unpublish(self, msg: dict) -> None:
        participant = self._joined()
        track_id = _require_str(msg, "track_id", max_len=64)
        if participant.publisher is None or participant.publisher.unpublish(track_id) is None:
            raise SignallingError("not_found", f"you publish no track {track_id!r}")
        await self._reply({"type": "unpublished", "track_id": track_id})

    async def _on_subscribe(self, msg: dict) -> None:
        participant = self._joined()
        if participant.subscriber is None:
            raise SignallingError("forbidden", "token lacks the 'subscribe' grant")
        track_ids = _str_list(msg, "track_ids")
        missing = [t for t in track_ids if t not in self.room.producers]
        if missing:
            raise SignallingError("not_found", f"no such track(s): {', '.join(missing)}")
        for track_id in track_ids:
            producer = self.room.producers[track_id]
            if producer.info.publisher == participant.identity:
                raise SignallingError("bad_request", "cannot subscribe to your own track")
            participant.subscriber.subscribe(producer)
        await self._reply({"type": "subscribed", "track_ids": track_ids})

    async def _on_unsubscribe(self, msg: dict) -> None:
        participant = self._joined()
        track_ids = _str_list(msg, "track_ids")
        if participant.subscriber is not None:
            for track_id in track_ids:
                participant.subscriber.unsubscribe(track_id)
        await self._reply({"type": "unsubscribed", "track_ids": track_ids})

    async def _on_answer(self, msg: dict) -> None:
        participant = self._joined()
        sdp = _require_str(msg, "sdp")
        if participant.subscriber is None:
            raise SignallingError("bad_request", "no subscriber connection")
        try:
            participant.subscriber.on_answer(sdp)
        except SdpError as exc:
            raise SignallingError("bad_sdp", str(exc)) from exc
        if participant.join_timeline is not None:
            participant.join_timeline.mark("answer")

    async def _on_quality(self, msg: dict) -> None:
        """Per-track quality wish: `quality` (auto|low|medium|high) and/or max_width/height."""
        participant = self._joined()
        track_id = _require_str(msg, "track_id", max_len=64)
        quality = msg.get("quality", "auto")
        dims = []
        for key in ("max_width", "max_height"):
            value = msg.get(key, 0) or 0
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 16384:
                raise SignallingError("bad_request", f"'{key}' must be an integer 0..16384")
            dims.append(value)
        if participant.subscriber is None:
            raise SignallingError("forbidden", "token lacks the 'subscribe' grant")
        try:
            known = participant.subscriber.set_quality(track_id, quality, *dims)
        except ValueError as exc:
            raise SignallingError("bad_request", str(exc)) from exc
        if not known:
            raise SignallingError("not_found", f"not subscribed to a track {track_id!r}")
        await self._reply({"type": "quality_set", "track_id": track_id, "quality": quality})

    def _on_layer_change(self, track_id: str, layer: dict) -> None:
        if self.participant is not None and self.state == State.JOINED:
            self.participant.send_event({"type": "layer_changed", "track_id": track_id, **layer})

    async def _on_data(self, msg: dict) -> None:
        participant = self._joined()
        if "payload" not in msg:
            raise SignallingError("bad_request", "'payload' is required")
        topic = msg.get("topic", "")
        if not isinstance(topic, str) or len(topic) > 64:
            raise SignallingError("bad_request", "'topic' must be a string of at most 64 chars")
        to = msg.get("to")
        if to is not None and not (isinstance(to, list) and all(isinstance(t, str) for t in to)):
            raise SignallingError("bad_request", "'to' must be a list of identities")
        size = self._message_bytes
        if not (self._data_messages.take() and self._data_bytes.take(size)):
            await self._rate_limited()
            return
        event = {
            "type": "data",
            "from": participant.identity,
            "topic": topic,
            "payload": msg["payload"],
        }
        for other in list(self.room.participants.values()):
            if other is not participant and (to is None or other.identity in to):
                other.send_event(event, size)
        self.room.data_relayed(participant, topic, msg["payload"], to)

    async def _rate_limited(self) -> None:
        """A data message over the sender's rate: dropped here, before any reader pays for it.
        The sender hears of it at most once a second (one error per message would let a
        flood fill its own queue just as fast)."""
        self.data_dropped += 1
        now = time.monotonic()
        if now - self._rate_notice_at < RATE_LIMITED_NOTICE_S:
            return
        self._rate_notice_at = now
        limits = self.node.config.limits
        await self._send_error(
            "rate_limited",
            f"data messages over {limits.data_messages_per_s:g}/s or "
            f"{limits.data_bytes_per_s} bytes/s are dropped ({self.data_dropped} so far)",
            self._request_id,
        )

    async def _on_ping(self, msg: dict) -> None:
        await self._reply({"type": "pong", "ts": msg.get("ts")})

    async def _on_leave(self, msg: dict) -> None:
        await self._reply({"type": "left"})
        await self._leave()
        if self.ws is not None:
            await self.ws.close()

    # -- helpers ---------------------------------------------------------------------------------

    def _joined(self) -> Participant:
        assert self.participant is not None
        return self.participant

    async def _leave(self) -> None:
        participant, room = self.participant, self.room
        self.state = State.CLOSED
        if self.on_leave is not None:
            self.on_leave()
        if participant is not None and room is not None:
            self.participant = None
            # Let the writer flush what is queued (e.g. the 'left' reply), then stop it.
            if self._writer is not None and participant.events is not None:
                for _ in range(50):
                    if participant.events.empty() or self.ws is None or self.ws.closed:
                        break
                    await asyncio.sleep(0.01)
                self._writer.cancel()
            await room.remove(participant)

    # -- HTTP join: the socket attaches later ------------------------------------------------------

    async def join_over_http(self, msg: dict, received: float) -> dict:
        """Join without a socket; returns `joined`. Raises SignallingError (nothing joined)."""
        self._request_id = None
        try:
            await self._on_join(msg, received)
            if self.state != State.JOINED or self.joined_reply is None:
                raise SignallingError("internal", "the join did not complete")
        except BaseException:
            if self.participant is not None:  # failed after joining: leave again
                await self._leave()
            raise
        return self.joined_reply

    @property
    def ended(self) -> bool:
        participant = self.participant
        return self.state == State.CLOSED or participant is None or participant.closed

    def queued_errors(self) -> list[dict]:
        """The `error` events still queued (why a detached participant ended, e.g. replaced)."""
        participant = self.participant
        if participant is None:
            return []
        return [e for e in participant.take_events() if e.get("type") == "error"]

    async def attach(self, ws: web.WebSocketResponse) -> None:
        """The HTTP-joined participant's WebSocket: `attached`, then every queued event."""
        participant = self.participant
        assert participant is not None and self.ws is None
        self.ws = ws
        if participant.join_timeline is not None:
            participant.join_timeline.mark("attached")
        await ws.send_json(
            {"type": "attached", "participant": participant.sid, "request_id": "attach"}
        )
        self._writer = asyncio.ensure_future(self._write_events(participant))


def _track_requests(value: Any) -> list[TrackRequest]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SignallingError("bad_request", "'tracks' must be a list")
    result = []
    for item in value:
        if not isinstance(item, dict):
            raise SignallingError("bad_request", "each entry of 'tracks' must be an object")
        mid, kind = item.get("mid"), item.get("kind")
        if kind is not None and kind not in ("audio", "video"):
            raise SignallingError("bad_request", "track 'kind' must be 'audio' or 'video'")
        result.append(
            TrackRequest(
                mid=str(mid) if mid is not None else None,
                kind=kind,
                source=str(item.get("source", ""))[:32],
                name=str(item.get("name", ""))[:128],
            )
        )
    return result


async def _close_or_abort(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
    """Close the socket cleanly if the client lets us within DROP_FLUSH_S, else abort it."""
    clean = False
    try:
        await asyncio.wait_for(ws.close(code=code, message=message), DROP_FLUSH_S)
        clean = True
    except (TimeoutError, ConnectionError):
        pass
    transport = getattr(ws, "tcp_transport", None)
    if transport is not None and (not clean or transport.get_write_buffer_size() > 0):
        transport.abort()  # (what it never read goes with it)


class SignallingSocket(web.WebSocketResponse):
    """A WebSocketResponse that keeps its TCP transport, to abort a connection whose client
    reads nothing (a clean close would wait for ever behind the unread data)."""

    tcp_transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest):
        self.tcp_transport = request.transport
        return await super().prepare(request)


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    node: SfuNode = request.app[NODE_KEY]
    ws = SignallingSocket(
        max_msg_size=node.config.limits.max_message_bytes, heartbeat=20.0, autoping=True
    )
    await ws.prepare(request)
    node.websockets.add(ws)
    try:
        session_id = request.query.get("session")
        if session_id is not None:
            await _attach(request.app[HTTP_JOINS_KEY], ws, session_id)
        else:
            connection = SignallingConnection(node, ws, request.query.get("access_token"))
            await connection.run(url_join(request.query))
    finally:
        node.websockets.discard(ws)
    return ws


async def _attach(joins: HttpJoins, ws: web.WebSocketResponse, session_id: str) -> None:
    """`/rtc?session=ID`: the socket of an HTTP join. Refused (an `error` with request id
    "attach", then close) for an unknown, expired or ended session, or a second socket."""
    session = joins.get(session_id)
    if session is None or session.connection.ended:
        errors = session.connection.queued_errors() if session is not None else []
        for event in errors:  # why it ended (replaced, dropped), if it was queued
            await ws.send_json(event)
        await ws.send_json(_attach_error("not_found", NO_SESSION))
        await ws.close(code=4404, message=b"no such session")
        return
    if session.attached:
        await ws.send_json(_attach_error("already_attached", "a WebSocket is attached already"))
        await ws.close(code=4409, message=b"already attached")
        return
    joins.attached(session)
    connection = session.connection
    try:
        await connection.attach(ws)
    except BaseException:  # (the socket went away at once: leave, as when it closes later)
        await connection._leave()
        raise
    await connection.run()


def _attach_error(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message, "request_id": "attach"}


def url_join(query) -> dict | None:
    """The `join` that `/rtc?access_token=JWT&join=1[&...]` asks for, or None.

    Joining in the upgrade request saves the client a round trip: `joined` (with the first
    offer, `inline_offer=1`) follows the 101 response at once. Its `request_id` is "join".
    """
    if query.get("join") not in ("1", "true"):
        return None
    message: dict[str, Any] = {"type": "join", "request_id": "join"}
    for key in ("room", "name"):
        if key in query:
            message[key] = query[key]
    if query.get("auto_subscribe") in ("0", "false"):
        message["auto_subscribe"] = False
    if query.get("inline_offer") in ("1", "true"):
        message["inline_offer"] = True
    if "metadata" in query:
        try:
            metadata = json.loads(query["metadata"])
        except ValueError:
            metadata = None
        if isinstance(metadata, dict):
            message["metadata"] = metadata
    return message


# -- HTTP join ---------------------------------------------------------------------------------

NO_SESSION = "no such session (unknown, expired or ended)"

CORS_HEADERS = {"Access-Control-Allow-Origin": "*"}
CORS_PREFLIGHT = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}
HTTP_STATUS = {
    "bad_request": 400,
    "bad_sdp": 400,
    "negotiation_failed": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "already_attached": 409,
    "room_full": 503,
    "node_full": 503,
    "redirect": 421,  # this node sends the join to another one (the body names it)
}


class HttpSession:
    """An HTTP join: its connection (socketless until attached) and the attach deadline."""

    def __init__(self, session_id: str, connection: SignallingConnection) -> None:
        self.id = session_id
        self.connection = connection
        self.attached = False
        self.timer: asyncio.TimerHandle | None = None


class HttpJoins:
    """The sessions of HTTP joins on one node, by session id (a 192-bit random secret).

    A session lives until its participant leaves. A WebSocket may attach to it once, within
    ATTACH_TIMEOUT_S of the join; otherwise the participant is removed.
    """

    def __init__(self, attach_timeout_s: float = ATTACH_TIMEOUT_S) -> None:
        self.attach_timeout_s = attach_timeout_s
        self.sessions: dict[str, HttpSession] = {}

    def open(self, connection: SignallingConnection) -> HttpSession:
        session = HttpSession(secrets.token_urlsafe(24), connection)
        session.timer = asyncio.get_running_loop().call_later(
            self.attach_timeout_s, self._expire, session
        )
        self.sessions[session.id] = session
        connection.on_leave = lambda: self.discard(session)
        return session

    def get(self, session_id: Any) -> HttpSession | None:
        return self.sessions.get(session_id) if isinstance(session_id, str) else None

    def attached(self, session: HttpSession) -> None:
        session.attached = True
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None

    def discard(self, session: HttpSession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None

    def _expire(self, session: HttpSession) -> None:
        session.timer = None
        if session.attached:
            return
        self.discard(session)
        participant = session.connection.participant
        if participant is not None and not participant.closed:
            participant.drop(f"no WebSocket attached within {self.attach_timeout_s:g} s")

    async def close(self, app: web.Application | None = None) -> None:
        """(app shutdown) Stop the timers; the rooms close their participants."""
        for session in list(self.sessions.values()):
            self.discard(session)


def _http_error(exc: SignallingError) -> web.Response:
    body = {"type": "error", "code": exc.code, "message": exc.message, **exc.details}
    status = HTTP_STATUS.get(exc.code, 500)
    headers = dict(CORS_HEADERS)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response(body, status=status, headers=headers)


async def _json_body(request: web.Request) -> dict:
    """The request's JSON object, whatever its Content-Type (text/plain avoids a preflight)."""
    try:
        body = json.loads(await request.text())
    except (ValueError, RecursionError) as exc:
        raise SignallingError("bad_request", "the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise SignallingError("bad_request", "the body must be a JSON object")
    return body


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def http_join_handler(request: web.Request) -> web.Response:
    """`POST /rtc/join`: join without a WebSocket; the reply is `joined` plus `session`.

    Body (JSON, any Content-Type): `token` (or `Authorization: Bearer`), and as in `join`:
    `room`, `name`, `metadata`, `auto_subscribe`, `inline_offer` (default true here),
    `publish`. The WebSocket `/rtc?session=ID` then attaches for events and renegotiation.
    """
    received = time.monotonic()
    node: SfuNode = request.app[NODE_KEY]
    joins = request.app[HTTP_JOINS_KEY]
    try:
        body = await _json_body(request)
    except SignallingError as exc:
        return _http_error(exc)
    msg: dict[str, Any] = {"type": "join"}
    for key in ("token", "room", "name", "metadata", "publish"):
        if key in body:
            msg[key] = body[key]
    msg["auto_subscribe"] = body.get("auto_subscribe", True) is not False
    msg["inline_offer"] = body.get("inline_offer", True) is not False
    connection = SignallingConnection(node, None, _bearer(request))
    session = joins.open(connection)
    try:
        reply = await connection.join_over_http(msg, received)
    except SignallingError as exc:
        joins.discard(session)
        return _http_error(exc)
    except Exception:
        joins.discard(session)
        logger.exception("signalling: HTTP join failed")
        return _http_error(SignallingError("internal", "internal server error"))
    if connection.participant is not None and connection.participant.join_timeline is not None:
        connection.participant.join_timeline.flags["http_join"] = True
    reply = {**reply, "session": session.id, "attach_within_s": joins.attach_timeout_s}
    return web.json_response(reply, headers=CORS_HEADERS)


async def http_answer_handler(request: web.Request) -> web.Response:
    """`POST /rtc/answer` `{session, sdp}`: the subscriber's answer, before its socket is open."""
    joins = request.app[HTTP_JOINS_KEY]
    try:
        body = await _json_body(request)
        session = joins.get(body.get("session"))
        if session is None or session.connection.ended:
            raise SignallingError("not_found", NO_SESSION)
        await session.connection._on_answer(body)
    except SignallingError as exc:
        return _http_error(exc)
    return web.Response(status=204, headers=CORS_HEADERS)


async def http_leave_handler(request: web.Request) -> web.Response:
    """`POST /rtc/leave` `{session}`: leave, with or without an attached socket."""
    joins = request.app[HTTP_JOINS_KEY]
    try:
        body = await _json_body(request)
        session = joins.get(body.get("session"))
        if session is None:
            raise SignallingError("not_found", NO_SESSION)
    except SignallingError as exc:
        return _http_error(exc)
    joins.discard(session)
    connection = session.connection
    await connection._leave()
    if connection.ws is not None and not connection.ws.closed:
        await connection.ws.close()
    return web.Response(status=204, headers=CORS_HEADERS)


async def http_preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS_PREFLIGHT)


def add_http_join_routes(app: web.Application) -> None:
    """`POST /rtc/join`, `/rtc/answer`, `/rtc/leave` (and their CORS preflights)."""
    app[HTTP_JOINS_KEY] = joins = HttpJoins()
    app.router.add_post("/rtc/join", http_join_handler)
    app.router.add_post("/rtc/answer", http_answer_handler)
    app.router.add_post("/rtc/leave", http_leave_handler)
    for path in ("/rtc/join", "/rtc/answer", "/rtc/leave"):
        app.router.add_route("OPTIONS", path, http_preflight)
    app.on_shutdown.append(joins.close)


NODE_KEY: web.AppKey[SfuNode] = web.AppKey("sfu_node", SfuNode)
HTTP_JOINS_KEY: web.AppKey[HttpJoins] = web.AppKey("sfu_http_joins", HttpJoins)
