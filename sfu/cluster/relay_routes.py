"""The relay endpoints an origin node offers to edge nodes (docs/cluster.md, "Relays").

Only nodes call them: each request carries a node-wide admin token minted from the API keys
the cluster shares. The edge asks, the origin offers (it is the sender), the edge answers:

* `POST /internal/relay` `{room, node_id, tracks}` → `{id, sdp, tracks: {mid: track id}}`
* `POST /internal/relay/{id}/tracks` `{tracks}` → the same, `sdp` only if new m-lines need an
  offer/answer round (tracks no longer listed stop flowing; their m-lines stay idle)
* `POST /internal/relay/{id}/answer` `{sdp}` → 204
* `DELETE /internal/relay/{id}` → 204
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..auth import require_grant
from .relay_origin import MAX_TRACKS_PER_RELAY, RelayError, RelayOrigin

RELAY_ORIGIN_KEY: web.AppKey[RelayOrigin] = web.AppKey("sfu_relay_origin", RelayOrigin)
MAX_NAME = 256
MAX_SDP = 64 * 1024


def _refuse(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise RelayError(400, "bad_request", "body must be JSON") from None
    if not isinstance(body, dict):
        raise RelayError(400, "bad_request", "body must be a JSON object")
    return body


def _string(body: dict, key: str, limit: int = MAX_NAME) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RelayError(400, "bad_request", f"{key} must be a string of 1 to {limit} chars")
    return value


def _tracks(body: dict) -> list[str]:
    tracks = body.get("tracks")
    if (
        not isinstance(tracks, list)
        or len(tracks) > MAX_TRACKS_PER_RELAY
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_NAME for t in tracks)
    ):
        raise RelayError(
            400, "bad_request", f"tracks must be a list of at most {MAX_TRACKS_PER_RELAY} track ids"
        )
    return list(dict.fromkeys(tracks))


def _handler(inner):
    async def handler(request: web.Request) -> web.StreamResponse:
        require_grant(request, "admin", node_wide=True)
        try:
            return await inner(request, request.app[RELAY_ORIGIN_KEY])
        except RelayError as exc:
            return _refuse(exc.status, exc.code, str(exc))

    return handler


async def open_relay(request: web.Request, origin: RelayOrigin) -> web.Response:
    body = await _body(request)
    room, edge, tracks = _string(body, "room"), _string(body, "node_id"), _tracks(body)
    relay = await origin.open(room, edge, tracks)
    try:
        sdp = await origin.offer(relay)
    except Exception:
        await origin.close(relay.relay_id)
        raise
    return web.json_response({"id": relay.relay_id, "sdp": sdp, "tracks": relay.mapping()})


async def update_relay(request: web.Request, origin: RelayOrigin) -> web.Response:
    body = await _body(request)
    relay, renegotiate = await origin.update(request.match_info["relay_id"], _tracks(body))
    reply: dict[str, Any] = {"id": relay.relay_id}
    if renegotiate:
        reply["sdp"] = await origin.offer(relay)
    reply["tracks"] = relay.mapping()
    return web.json_response(reply)


async def answer_relay(request: web.Request, origin: RelayOrigin) -> web.Response:
    body = await _body(request)
    await origin.accept_answer(request.match_info["relay_id"], _string(body, "sdp", MAX_SDP))
    return web.Response(status=204)


async def close_relay(request: web.Request, origin: RelayOrigin) -> web.Response:
    if not await origin.close(request.match_info["relay_id"]):
        return _refuse(404, "not_found", "no such relay")
    return web.Response(status=204)


def add_relay_routes(app: web.Application, origin: RelayOrigin) -> None:
    app[RELAY_ORIGIN_KEY] = origin
    app.router.add_post("/internal/relay", _handler(open_relay))
    app.router.add_post("/internal/relay/{relay_id}/tracks", _handler(update_relay))
    app.router.add_post("/internal/relay/{relay_id}/answer", _handler(answer_relay))
    app.router.add_delete("/internal/relay/{relay_id}", _handler(close_relay))
