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
from .media.sdp import SdpError, check_offer_size
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


def short_id(resource_id: str) -> str:
    """A resource id as logged: its start only (the whole id lets anyone DELETE the session)."""
    return resource_id[:6] + "…"


def whep_sessions(app: web.Application, token_identity: str) -> int:
    """WHEP players (started or being started) this node holds for one token identity."""
    started = sum(
        1
        for p in app[NODE_KEY].http_sessions.values()
        if p.kind == ParticipantKind.WHEP and p.token_identity == token_identity
    )
    return started + app[WHEP_STARTING_KEY].get(token_identity, 0)


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
    limits = node.config.limits
    try:  # before anything is allocated for it
        check_offer_size(
            offer, max_media=limits.max_media_per_offer, max_rids=limits.max_rids_per_media
        )
    except SdpError as exc:
        return _problem(400, str(exc))
    if kind != ParticipantKind.WHEP:
        return await _start_session(request, kind, access, room_name, offer)
    # Each WHEP player is its own participant: without a cap, one viewer token fills a room.
    held = whep_sessions(request.app, access.identity)
    if held >= limits.max_whep_sessions_per_identity:
        return _problem(
            429,
            f"too many WHEP sessions for {access.identity!r}: at most "
            f"{limits.max_whep_sessions_per_identity}; DELETE one first",
            {"Retry-After": "5", **CORS_HEADERS},
        )
    starting = request.app[WHEP_STARTING_KEY]  # (the answer takes a while: count them too)
    starting[access.identity] = starting.get(access.identity, 0) + 1
    try:
        return await _start_session(request, kind, access, room_name, offer)
    finally:
        left = starting.pop(access.identity) - 1
        if left:
            starting[access.identity] = left


async def _start_session(
    request: web.Request, kind: ParticipantKind, access: AccessToken, room_name: str, offer: str
) -> web.Response:
    node: SfuNode = request.app[NODE_KEY]
    limits = node.config.limits
    try:
        room = node.rooms.get_or_create(room_name)
    except TooManyRooms as exc:
        return _problem(503, str(exc))
    await node.remote_rooms.prepare(room)  # tracks on other nodes, for a WHEP player
    resource_id = node.new_resource_id()
    identity = access.identity
    if kind == ParticipantKind.WHEP:
        identity = f"{access.identity}#whep-{resource_id[:6]}"  # many players may share a token
    participant = Participant(
        identity=identity,
        name=access.name,
        kind=kind,
        grants=access.grants,
        room=room,
        token_identity=access.identity,
    )
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
    logger.info(
        "%s session %s for %s in %s", kind.value, short_id(resource_id), identity, room_name
    )
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
    logger.info("%s session %s deleted", kind.value, short_id(resource_id))
    return web.Response(status=200, headers=CORS_HEADERS)


async def session_patch(request: web.Request) -> web.Response:
    """Trickle ICE and ICE restarts are not supported: all candidates are in the answer."""
    return _problem(405, "trickle ICE is not supported", {"Allow": "DELETE", **CORS_HEADERS})


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": SDP_TYPE, **CORS_HEADERS})


# token identity -> WHEP sessions being answered right now
WHEP_STARTING_KEY: web.AppKey[dict[str, int]] = web.AppKey("sfu_whep_starting", dict)


def add_routes(app: web.Application) -> None:
    app[WHEP_STARTING_KEY] = {}
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
