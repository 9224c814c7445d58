"""WHIP (RFC 9725) ingest and WHEP playback: standard clients without our SDK.

POST /whip/{room} with an SDP offer publishes; POST /whep/{room} with a recvonly offer plays
what the room publishes (now and later). Both answer 201 with the SDP answer and a Location
header; DELETE on that location ends the session.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .auth import AccessToken, AuthError, PermissionDenied
from .media.publisher import PublisherSession
from .media.sdp import SdpError
from .media.subscriber import QUALITY_LAYERS, SubscriberSession
from .node import SfuNode
from .participant import Participant, ParticipantKind
from .room import RoomFull, TooManyRooms
from .signalling import NODE_KEY

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS, PATCH",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag",
}


def _problem(status: int, reason: str, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status, text=reason + "\n", content_type="text/plain", headers=headers
    )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _authorize(request: web.Request, grant: str) -> tuple[AccessToken, str] | web.Response:
    node: SfuNode = request.app[NODE_KEY]
    room = request.match_info["room"]
    try:
        access = node.authenticate(_bearer(request))
    except AuthError as exc:
        return _problem(401, str(exc), {"WWW-Authenticate": "Bearer"})
    try:
        access.require_room(room)
        access.require(grant)
    except PermissionDenied as exc:
        return _problem(403, str(exc))
    return access, room


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


async def _start(request: web.Request, kind: ParticipantKind) -> web.Response:
    node: SfuNode = request.app[NODE_KEY]
    grant = "publish" if kind == ParticipantKind.WHIP else "subscribe"
    auth = await _authorize(request, grant)
    if isinstance(auth, web.Response):
        return auth
    access, room_name = auth
    offer = await _read_offer(request)
    if isinstance(offer, web.Response):
        return offer
    try:
        room = node.rooms.get_or_create(room_name)
    except TooManyRooms as exc:
        return _problem(503, str(exc))
    resource_id = node.new_resource_id()
    identity = access.identity
    if kind == ParticipantKind.WHEP:
        identity = f"{access.identity}#whep-{resource_id[:6]}"  # many players may share a token
    participant = Participant(
        identity=identity, name=access.name, kind=kind, grants=access.grants, room=room
    )
    limits = node.config.limits
    try:
        if kind == ParticipantKind.WHIP:
            session = PublisherSession(
                identity=identity,
                network=node.network,
                rtc=node.config.rtc,
                max_tracks=limits.max_tracks_per_participant,
                label=f"whip:{identity}",
            )
            participant.publisher = session
            answer, added = await session.negotiate(offer)
            if not added:
                raise SdpError("the offer sends no audio or video")
        else:
            subscriber = SubscriberSession(
                identity=identity,
                network=node.network,
                rtc=node.config.rtc,
                label=f"whep:{identity}",
            )
            participant.subscriber = subscriber
            subscriber.set_default_quality(*_quality_query(request))
            answer = await subscriber.answer(offer, room.live_producers())
            if not subscriber.downtracks:
                raise SdpError("the offer receives no audio or video we can send")
        await room.add(participant)
    except SdpError as exc:
        await participant.close()
        node.rooms.discard(room)
        return _problem(400, str(exc))
    except RoomFull as exc:
        await participant.close()
        return _problem(503, str(exc))
    if kind == ParticipantKind.WHIP:
        for producer in added:
            room.publish(participant, producer)
    node.http_sessions[resource_id] = participant
    peer = participant.publisher.peer if participant.publisher else participant.subscriber.peer
    participant.watch(peer, limits.connect_timeout_s)
    participant.on_dropped = lambda reason: node.http_sessions.pop(resource_id, None)
    # Built from the request's own path so it keeps any prefix the app is mounted under.
    location = f"{request.rel_url.raw_path.rstrip('/')}/{resource_id}"
    logger.info("%s session %s for %s in %s", kind.value, resource_id, identity, room_name)
    return web.Response(
        status=201,
        text=answer,
        content_type=SDP_TYPE,
        headers={"Location": location, "ETag": f'"{resource_id}"', **CORS_HEADERS},
    )


async def whip_post(request: web.Request) -> web.Response:
    return await _start(request, ParticipantKind.WHIP)


async def whep_post(request: web.Request) -> web.Response:
    return await _start(request, ParticipantKind.WHEP)


async def session_delete(request: web.Request) -> web.Response:
    node: SfuNode = request.app[NODE_KEY]
    resource_id = request.match_info["resource"]
    participant = node.http_sessions.get(resource_id)
    if participant is None or participant.room.name != request.match_info["room"]:
        return _problem(404, "no such session", CORS_HEADERS)
    token = _bearer(request)
    if token is not None:  # clients usually send the token again; if they do, it must be good
        try:
            node.authenticate(token).require_room(participant.room.name)
        except AuthError as exc:
            return _problem(401, str(exc), CORS_HEADERS)
        except PermissionDenied as exc:
            return _problem(403, str(exc), CORS_HEADERS)
    del node.http_sessions[resource_id]
    await participant.room.remove(participant)
    return web.Response(status=200, headers=CORS_HEADERS)


async def session_patch(request: web.Request) -> web.Response:
    """Trickle ICE and ICE restarts are not supported: all candidates are in the answer."""
    return _problem(405, "trickle ICE is not supported", {"Allow": "DELETE", **CORS_HEADERS})


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": SDP_TYPE, **CORS_HEADERS})


def add_routes(app: web.Application) -> None:
    for kind in ("whip", "whep"):
        handler = whip_post if kind == "whip" else whep_post
        app.router.add_post(f"/{kind}/{{room}}", handler)
        app.router.add_route("OPTIONS", f"/{kind}/{{room}}", options)
        app.router.add_delete(f"/{kind}/{{room}}/{{resource}}", session_delete)
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
