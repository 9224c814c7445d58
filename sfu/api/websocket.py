"""`GET /rtc`: the signalling WebSocket. A new socket gets a SignallingConnection
(sfu/api/signalling.py); `/rtc?session=ID` attaches the socket of an HTTP join
(sfu/api/http_join.py) to its participant instead.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..node import SfuNode
from .http_join import HTTP_JOINS_KEY, NO_SESSION, HttpJoins
from .keys import NODE_KEY
from .protocol import url_join
from .signalling import SignallingConnection


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
