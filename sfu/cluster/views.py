"""`/api/rooms`: the rooms of this node, or (`?scope=cluster`) of every node, each participant
and track with the id of the node that holds it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import ClusterUnavailable
from .interface import RoomDirectory

if TYPE_CHECKING:
    from ..node import SfuNode

SCOPES = ("local", "cluster")


def local_rooms(node: SfuNode) -> list[dict[str, Any]]:
    rooms = [room.info() for room in node.rooms.rooms.values()]
    for room in rooms:
        for participant in room["participants"]:
            participant["node_id"] = node.node_id
            for track in participant["tracks"]:
                track["node_id"] = node.node_id
    return rooms


async def cluster_rooms(directory: RoomDirectory) -> list[dict[str, Any]]:
    rooms = []
    for name in await directory.list_rooms():
        record = await directory.get_room(name)
        if record is None:  # went while we were listing
            continue
        room = record.to_json()
        room["participants"] = [p.to_json() for p in await directory.participants(name)]
        room["tracks"] = [t.to_json() for t in await directory.tracks(name)]
        rooms.append(room)
    return rooms


async def rooms_response(node: SfuNode, scope: str) -> web.Response:
    if scope not in SCOPES:
        return web.json_response(
            {"error": "bad_request", "message": f"scope must be one of {', '.join(SCOPES)}"},
            status=400,
        )
    if scope == "local":
        return web.json_response({"rooms": local_rooms(node)})
    try:
        rooms = await cluster_rooms(node.cluster.backend.directory)
    except ClusterUnavailable as exc:
        return web.json_response({"error": "cluster_unavailable", "message": str(exc)}, status=503)
    return web.json_response({"node_id": node.node_id, "scope": "cluster", "rooms": rooms})
