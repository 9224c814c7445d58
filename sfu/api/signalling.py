"""The WebSocket signalling connection at /rtc (JSON messages; see docs/protocol.md).

One SignallingConnection per socket, an explicit state machine:
CONNECTED --join--> JOINED --leave/close--> CLOSED. Every request may carry a `request_id`,
echoed in the reply or error. Bad input gets an `error` message, never a dropped socket
(except a bad token, which closes it with code 4401).

This is an adapter: requests are decoded by sfu/api/protocol.py, done by the join path
(sfu/rooms/joins.py, node.join_service), and answered here. What stays here is what only a
signalling client has: the ordered event queue and its writer, the `joined` reply (with an
inline subscriber offer and a publish answer), renegotiation offers, rate limits on data.

The join can also be made over plain HTTP (sfu/api/http_join.py); such a connection has no
socket (`ws` is None) until its WebSocket attaches.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from ..auth import AccessToken
from ..media.publisher import TrackRequest
from ..media.sdp import SdpError
from ..node import SfuNode
from ..ratelimit import TokenBucket
from ..room import Room
from ..rooms.joins import JoinError
from ..rooms.participant import EVENT_COST, REPLACED, Participant, ParticipantKind
from ..rooms.timeline import JoinTimeline
from . import protocol
from .protocol import SignallingError

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 30.0
INLINE_OFFER_TIMEOUT_S = 5.0
# A dropped client's socket: this long for its writer to flush the `dropped` notice, then as
# long again for a clean close before the connection is aborted (a client that reads nothing
# would otherwise hold its socket and buffers for ever).
DROP_FLUSH_S = 1.0
RATE_LIMITED_NOTICE_S = 1.0  # at most one `rate_limited` error a second to a flooding sender


class State(enum.Enum):
    CONNECTED = "connected"
    JOINED = "joined"
    CLOSED = "closed"


class SignallingConnection:
    """One signalling client. `ws` is None for an HTTP join until its WebSocket attaches."""

    def __init__(
        self, node: SfuNode, ws: web.WebSocketResponse | None, query_token: str | None
    ) -> None:
        self.node = node
        self.joins = node.join_service
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
            asyncio.ensure_future(close_or_abort(self.ws, 4408, b"join timeout"))

    async def _dispatch(self, text: str) -> None:
        request_id = None
        try:
            msg = protocol.decode(text)
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
        except JoinError as exc:
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
        await self._send({**protocol.error_message(code, message, request_id), **(details or {})})

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
        request = protocol.JoinMessage.decode(msg, self.query_token)
        try:
            access = self.joins.authenticate(request.token)
        except JoinError as exc:
            if self.ws is None:  # an HTTP join: 401
                raise
            await self._send_error(exc.code, exc.message, msg.get("request_id"))
            await self.ws.close(code=4401, message=b"unauthorized")
            self.state = State.CLOSED
            return
        room_name = request.room_name(access.room)
        self.joins.authorize(access, room_name)
        publish = protocol.publish_offer(msg)
        await self._join(access, room_name, request, received, publish)

    async def _join(
        self,
        access: AccessToken,
        room_name: str,
        request: protocol.JoinMessage,
        received: float,
        publish: tuple[str, list[TrackRequest]] | None,
    ) -> None:
        """Join, then answer with one `joined` message.

        With `inline_offer`, the subscriber offer for the tracks already live rides inside
        `joined`; with `publish`, so does the answer to the client's publish offer: a client
        that both watches and publishes is connected after one round trip. Events others cause
        meanwhile are held back and follow `joined`.
        """
        timeline = JoinTimeline(access.identity, room_name, started=received)
        timeline.flags = {"inline_offer": request.inline_offer, "with_publish": publish is not None}

        async def hold_events(participant: Participant, room: Room) -> None:
            participant.hold_events()  # (`joined` must be its first event)

        name = request.name if request.name is not None else access.name
        participant = await self.joins.join(
            access,
            room_name,
            ParticipantKind.WEBSOCKET,
            name=name[: protocol.MAX_NAME],
            metadata=request.metadata,
            auto_subscribe=request.auto_subscribe,
            timeline=timeline,
            prepare=hold_events,
        )
        room = participant.room
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
            subscriber = self.joins.open_subscriber(
                participant, send_offer=self._send_subscriber_offer
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
                published = await self.joins.publish(participant, *publish)
                added = published.added
                publish_reply["publish_answer"] = published.answer
                timeline.mark("publish_answer")
            except JoinError as exc:
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
            **participant.route,  # the node serving it (sfu/cluster/routing.py)
            "grants": {
                "publish": access.grants.publish,
                "subscribe": access.grants.subscribe,
            },
            "fallbacks": node.fallbacks.urls(),  # other nodes, if this one fails
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
        self.joins.announce(participant, added)

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
            reason = b"replaced" if participant.dropped == REPLACED else b"dropped"
            await close_or_abort(self.ws, 4000, reason)

    async def _on_publish(self, msg: dict) -> None:
        participant = self._joined()
        sdp = protocol.require_str(msg, "sdp")
        requests = protocol.track_requests(msg.get("tracks"))
        published = await self.joins.publish(participant, sdp, requests)
        if participant.join_timeline is not None:
            participant.join_timeline.mark("publish_answer")
        await self._reply({"type": "publish_answer", **published.answer})
        self.joins.announce(participant, published.added)

    async def _on_unpublish(self, msg: dict) -> None:
        participant = self._joined()
        track_id = protocol.require_str(msg, "track_id", max_len=64)
        self.joins.unpublish(participant, track_id)
        await self._reply({"type": "unpublished", "track_id": track_id})

    async def _on_subscribe(self, msg: dict) -> None:
        participant = self._joined()
        if participant.subscriber is None:
            raise SignallingError("forbidden", "token lacks the 'subscribe' grant")
        track_ids = protocol.str_list(msg, "track_ids")
        self.joins.subscribe(participant, track_ids)
        await self._reply({"type": "subscribed", "track_ids": track_ids})

    async def _on_unsubscribe(self, msg: dict) -> None:
        participant = self._joined()
        track_ids = protocol.str_list(msg, "track_ids")
        if participant.subscriber is not None:
            for track_id in track_ids:
                participant.subscriber.unsubscribe(track_id)
        await self._reply({"type": "unsubscribed", "track_ids": track_ids})

    async def _on_answer(self, msg: dict) -> None:
        participant = self._joined()
        sdp = protocol.require_str(msg, "sdp")
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
        track_id, quality, max_width, max_height = protocol.quality_wish(msg)
        if participant.subscriber is None:
            raise SignallingError("forbidden", "token lacks the 'subscribe' grant")
        try:
            known = participant.subscriber.set_quality(track_id, quality, max_width, max_height)
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
        topic, payload, to = protocol.data_message(msg)
        size = self._message_bytes
        if not (self._data_messages.take() and self._data_bytes.take(size)):
            await self._rate_limited()
            return
        self.joins.relay_data(participant, topic, payload, to, size)

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
            await self.joins.leave(participant)

    # -- HTTP join: the socket attaches later ------------------------------------------------------

    async def join_over_http(self, msg: dict, received: float) -> dict:
        """Join without a socket; returns `joined`. Raises JoinError (nothing joined)."""
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


async def close_or_abort(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
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
