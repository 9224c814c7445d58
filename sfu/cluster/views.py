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


def local_rooms(node: SfuNode, only: str | None = None) -> list[dict[str, Any]]:
    """This node's rooms: its participants, and (`remote_participants`) those of other nodes
    in them, each participant and track with the id of the node that holds it."""
    rooms = []
    for live in node.rooms.rooms.values():
        if only is not None and live.name != only:
            continue
        room = live.info()
        for participant in room["participants"]:
            participant["node_id"] = node.node_id
            for track in participant["tracks"]:
                track["node_id"] = node.node_id
        # participants of other nodes in this room (relayed here), each with its node
        room["remote_participants"] = [
            {**remote, "tracks": [{**t, "node_id": remote["node_id"]} for t in remote["tracks"]]}
            for remote in live.remote.values()
        ]
        rooms.append(room)
    return rooms


async def cluster_rooms(directory: RoomDirectory, only: str | None = None) -> list[dict[str, Any]]:
    rooms = []
    names = [only] if only is not None else await directory.list_rooms()
    for name in names:
        record = await directory.get_room(name)
        if record is None:  # no such room, or it went while we were listing
            continue
        room = record.to_json()
        room["participants"] = [p.to_json() for p in await directory.participants(name)]
        room["tracks"] = [t.to_json() for t in await directory.tracks(name)]
        rooms.append(room)
    return rooms


async def rooms_response(node: SfuNode, scope: str, only: str | None = None) -> web.Response:
    """`only`: the one room a room admin may see (None: a node-wide admin sees all)."""
    if scope not in SCOPES:
        return web.json_response(
            {"error": "bad_request", "message": f"scope must be one of {', '.join(SCOPES)}"},
            status=400,
        )
    if scope == "local":
        return web.json_response({"rooms": local_rooms(node, only)})
    try:
        rooms = await cluster_rooms(node.cluster.backend.directory, only)
    except ClusterUnavailable as exc:
        return web.json_response({"error": "cluster_unavailable", "message": str(exc)}, status=503)
    return web.json_response({"node_id": node.node_id, "scope": "cluster", "rooms": rooms})
