"""The HTTP join (docs/protocol.md, "Fast join"): `POST /rtc/join` joins without a socket and
answers `joined` plus a session id; the WebSocket `/rtc?session=ID` then attaches to that
participant (sfu/api/websocket.py). Until it does, events are queued for it and the
subscriber's answer may come by `POST /rtc/answer`; a session no socket attaches to within
ATTACH_TIMEOUT_S is removed.

An adapter: the request becomes a `join` message for a socketless SignallingConnection, which
takes it down the one join path (sfu/rooms/joins.py); its errors become HTTP statuses here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from ..auth import bearer_token
from ..node import SfuNode
from ..rooms.joins import JoinError
from .keys import NODE_KEY
from .protocol import SignallingError
from .signalling import SignallingConnection

logger = logging.getLogger(__name__)

ATTACH_TIMEOUT_S = 10.0  # an HTTP join's WebSocket must attach within this

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
    "draining": 503,
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


def _http_error(exc: JoinError) -> web.Response:
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
    connection = SignallingConnection(node, None, bearer_token(request))
    session = joins.open(connection)
    try:
        reply = await connection.join_over_http(msg, received)
    except JoinError as exc:
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
    except JoinError as exc:
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


HTTP_JOINS_KEY: web.AppKey[HttpJoins] = web.AppKey("sfu_http_joins", HttpJoins)
