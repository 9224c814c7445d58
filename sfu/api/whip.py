"""WHIP (RFC 9725) ingest and WHEP playback: standard clients without our SDK.

POST /whip/{room} with an SDP offer publishes; POST /whep/{room} with a recvonly offer plays
what the room publishes (now and later). Both answer 201 with the SDP answer and a Location
header; DELETE on that location ends the session.

An adapter: each request goes down the one join path (sfu/rooms/joins.py); here are only the
HTTP side (bodies, statuses, Location, CORS) and the resource ids of the sessions.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..auth import AccessToken, bearer_token
from ..media.sdp import SdpError
from ..media.subscriber import QUALITY_LAYERS
from ..node import SfuNode
from ..room import Room
from ..rooms.joins import JoinError
from ..rooms.participant import Participant, ParticipantKind
from .keys import NODE_KEY

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS, PATCH",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag",
}
# a refused join's status (401 and 429 carry headers of their own: see _refused)
# ("redirect": this node is full; WHIP/WHEP clients retry or use another URL)
WHIP_STATUS = {
    "forbidden": 403,
    "bad_sdp": 400,
    "node_full": 503,
    "room_full": 503,
    "redirect": 503,
    "draining": 503,
}


def _problem(status: int, reason: str, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status, text=reason + "\n", content_type="text/plain", headers=headers
    )


async def _read_offer(request: web.Request) -> str | web.Response:
    node: SfuNode = request.app[NODE_KEY]
    if request.content_type != SDP_TYPE:
        return _problem(415, f"Content-Type must be {SDP_TYPE}")
    if (request.content_length or 0) > node.config.limits.max_message_bytes:
        return _problem(413, "offer too large")
    try:
        body = await request.read()
        if len(body) > node.config.limits.max_message_bytes:
            return _problem(413, "offer too large")
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return _problem(400, "offer is not UTF-8 text")


def short_id(resource_id: str) -> str:
    """A resource id as logged: its start only (the whole id lets anyone DELETE the session)."""
    return resource_id[:6] + "…"


async def _start(request: web.Request, kind: ParticipantKind) -> web.Response:
    """Authorize, read and check the offer, then join: the session's media is negotiated
    before it enters the room, so a bad offer never shows up there."""
    node: SfuNode = request.app[NODE_KEY]
    joins = node.join_service
    room_name = request.match_info["room"]
    try:
        access = joins.authenticate(bearer_token(request))
        joins.authorize(
            access, room_name, "publish" if kind == ParticipantKind.WHIP else "subscribe"
        )
    except JoinError as exc:
        return _refused(exc)
    offer = await _read_offer(request)
    if isinstance(offer, web.Response):
        return offer
    try:
        joins.check_offer(offer)  # before anything is allocated for it
        if kind != ParticipantKind.WHEP:
            return await _start_session(request, kind, access, room_name, offer)
        with joins.whep_slot(access.identity):
            return await _start_session(request, kind, access, room_name, offer)
    except JoinError as exc:
        return _refused(exc)


async def _start_session(
    request: web.Request, kind: ParticipantKind, access: AccessToken, room_name: str, offer: str
) -> web.Response:
    node: SfuNode = request.app[NODE_KEY]
    joins = node.join_service
    resource_id = node.new_resource_id()
    identity = access.identity
    if kind == ParticipantKind.WHEP:
        identity = f"{access.identity}#whep-{resource_id[:6]}"  # many players may share a token
    answer = ""
    added: list = []

    async def negotiate(participant: Participant, room: Room) -> None:
        nonlocal answer, added
        label = f"{kind.value}:{identity}"
        if kind == ParticipantKind.WHIP:
            published = await joins.publish(participant, offer, label=label, checked=True)
            answer, added = published.answer["sdp"], published.added
            if not added:
                raise JoinError("bad_sdp", "the offer sends no audio or video")
            return
        subscriber = joins.open_subscriber(participant, label=label)
        try:
            subscriber.set_default_quality(*_quality_query(request))
            answer = await subscriber.answer(offer, room.live_producers())
        except SdpError as exc:
            raise JoinError("bad_sdp", str(exc)) from exc
        if not subscriber.downtracks:
            raise JoinError("bad_sdp", "the offer receives no audio or video we can send")

    participant = await joins.join(access, room_name, kind, identity=identity, prepare=negotiate)
    joins.announce(participant, added)
    node.http_sessions[resource_id] = participant
    if participant.subscriber is not None:  # (a publisher's connection is watched already)
        participant.watch(participant.subscriber.peer, node.config.limits.connect_timeout_s)
    participant.on_dropped = lambda reason: node.http_sessions.pop(resource_id, None)
    # Built from the request's own path so it keeps any prefix the app is mounted under.
    location = f"{request.rel_url.raw_path.rstrip('/')}/{resource_id}"
    logger.info(
        "%s session %s for %s in %s", kind.value, short_id(resource_id), identity, room_name
    )
    return web.Response(
        status=201,
        text=answer,
        content_type=SDP_TYPE,
        headers={"Location": location, "ETag": f'"{resource_id}"', **CORS_HEADERS},
    )


def _refused(exc: JoinError) -> web.Response:
    """A refused WHIP/WHEP request in the form these clients expect (text/plain)."""
    if exc.code == "unauthorized":
        return _problem(401, exc.message, {"WWW-Authenticate": "Bearer"})
    if exc.code == "too_many":
        return _problem(429, exc.message, {"Retry-After": "5", **CORS_HEADERS})
    return _problem(WHIP_STATUS.get(exc.code, 500), exc.message)


async def whip_post(request: web.Request) -> web.Response:
    return await _start(request, ParticipantKind.WHIP)


async def whep_post(request: web.Request) -> web.Response:
    return await _start(request, ParticipantKind.WHEP)


async def whip_delete(request: web.Request) -> web.Response:
    return await _delete(request, ParticipantKind.WHIP)


async def whep_delete(request: web.Request) -> web.Response:
    return await _delete(request, ParticipantKind.WHEP)


async def _delete(request: web.Request, kind: ParticipantKind) -> web.Response:
    """DELETE the session at its own Location only (not a WHIP one under /whep/, or another
    room's)."""
    node: SfuNode = request.app[NODE_KEY]
    resource_id = request.match_info["resource"]
    participant = node.http_sessions.get(resource_id)
    if (
        participant is None
        or participant.kind != kind
        or participant.room.name != request.match_info["room"]
    ):
        return _problem(404, "no such session", CORS_HEADERS)
    token = bearer_token(request)
    if token is not None:  # clients usually send the token again; if they do, it must be good
        joins = node.join_service
        try:
            joins.authorize(joins.authenticate(token), participant.room.name)
        except JoinError as exc:
            return _problem(401 if exc.code == "unauthorized" else 403, exc.message, CORS_HEADERS)
    del node.http_sessions[resource_id]
    await node.join_service.leave(participant)
    logger.info("%s session %s deleted", kind.value, short_id(resource_id))
    return web.Response(status=200, headers=CORS_HEADERS)


async def session_patch(request: web.Request) -> web.Response:
    """Trickle ICE and ICE restarts are not supported: all candidates are in the answer."""
    return _problem(405, "trickle ICE is not supported", {"Allow": "DELETE", **CORS_HEADERS})


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": SDP_TYPE, **CORS_HEADERS})


def add_routes(app: web.Application) -> None:
    for kind, post, delete in (("whip", whip_post, whip_delete), ("whep", whep_post, whep_delete)):
        app.router.add_post(f"/{kind}/{{room}}", post)
        app.router.add_route("OPTIONS", f"/{kind}/{{room}}", options)
        app.router.add_delete(f"/{kind}/{{room}}/{{resource}}", delete)
        app.router.add_patch(f"/{kind}/{{room}}/{{resource}}", session_patch)
        app.router.add_route("OPTIONS", f"/{kind}/{{room}}/{{resource}}", options)


def _quality_query(request: web.Request) -> tuple[str, int, int]:
    """A WHEP player's quality wish: `?quality=auto|low|medium|high&max_width=&max_height=`.

    Raises SdpError (answered 400) for values we do not understand.
    """
    quality = request.query.get("quality", "auto")
    if quality not in QUALITY_LAYERS:
        raise SdpError(f"quality must be one of {', '.join(QUALITY_LAYERS)}")
    dims = []
    for key in ("max_width", "max_height"):
        raw = request.query.get(key, "0")
        if not raw.isdigit() or int(raw) > 16384:
            raise SdpError(f"{key} must be an integer 0..16384")
        dims.append(int(raw))
    return quality, dims[0], dims[1]
