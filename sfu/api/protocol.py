"""The signalling protocol's wire format (docs/protocol.md): decoding requests, encoding
errors. No state and no I/O: sfu/api/signalling.py runs the connection, sfu/rooms/joins.py does
what the requests ask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..media.publisher import TrackRequest
from ..rooms.joins import JoinError

MAX_ROOM_NAME = 128
MAX_NAME = 128


class SignallingError(JoinError):
    """A request refused by the protocol layer itself (bad field, wrong state, ...); the
    connection answers it, as any JoinError, with an `error` message carrying its code."""


def decode(text: str) -> dict:
    """One text frame as a request object; SignallingError for anything else."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:  # junk, or nested too deep
        raise SignallingError("bad_request", "message is not valid JSON") from exc
    if not isinstance(msg, dict):
        raise SignallingError("bad_request", "message must be a JSON object")
    return msg


def error_message(code: str, message: str, request_id: Any = None) -> dict:
    error: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        error["request_id"] = request_id
    return error


def require_str(msg: dict, key: str, *, max_len: int = 1 << 20) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise SignallingError("bad_request", f"'{key}' must be a non-empty string")
    if len(value) > max_len:
        raise SignallingError("bad_request", f"'{key}' is too long")
    return value


def str_list(msg: dict, key: str) -> list[str]:
    value = msg.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SignallingError("bad_request", f"'{key}' must be a non-empty list of strings")
    return value


def track_requests(value: Any) -> list[TrackRequest]:
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


# -- join ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinMessage:
    """A `join` request's fields that cannot be wrong (the others are checked in order, after
    the token: room_name(), publish_offer())."""

    token: str | None
    room: Any
    name: str | None
    metadata: dict
    auto_subscribe: bool
    inline_offer: bool

    @classmethod
    def decode(cls, msg: dict, query_token: str | None) -> JoinMessage:
        token = msg.get("token") or query_token
        name = msg.get("name")
        metadata = msg.get("metadata")
        return cls(
            token=token if isinstance(token, str) else None,
            room=msg.get("room"),
            name=name if isinstance(name, str) else None,
            metadata=metadata if isinstance(metadata, dict) else {},
            auto_subscribe=msg.get("auto_subscribe", True) is not False,
            inline_offer=msg.get("inline_offer") is True,
        )

    def room_name(self, token_room: str) -> str:
        """The room asked for, else the token's."""
        room = self.room or token_room
        if not isinstance(room, str) or not room or len(room) > MAX_ROOM_NAME:
            raise SignallingError("bad_request", "a room name is required (in the token or 'room')")
        return room


def publish_offer(msg: dict) -> tuple[str, list[TrackRequest]] | None:
    """A join's `publish: {sdp, tracks}` (None without one)."""
    publish = msg.get("publish")
    if publish is None:
        return None
    if not isinstance(publish, dict):
        raise SignallingError("bad_request", "'publish' must be an object {sdp, tracks}")
    return require_str(publish, "sdp"), track_requests(publish.get("tracks"))


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


# -- other requests ----------------------------------------------------------------------------


def quality_wish(msg: dict) -> tuple[str, Any, int, int]:
    """`quality`: (track id, quality, max_width, max_height); the quality name is checked by
    the subscriber."""
    track_id = require_str(msg, "track_id", max_len=64)
    quality = msg.get("quality", "auto")
    dims = []
    for key in ("max_width", "max_height"):
        value = msg.get(key, 0) or 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 16384:
            raise SignallingError("bad_request", f"'{key}' must be an integer 0..16384")
        dims.append(value)
    return track_id, quality, dims[0], dims[1]


def data_message(msg: dict) -> tuple[str, Any, list[str] | None]:
    """`data`: (topic, payload, to)."""
    if "payload" not in msg:
        raise SignallingError("bad_request", "'payload' is required")
    topic = msg.get("topic", "")
    if not isinstance(topic, str) or len(topic) > 64:
        raise SignallingError("bad_request", "'topic' must be a string of at most 64 chars")
    to = msg.get("to")
    if to is not None and not (isinstance(to, list) and all(isinstance(t, str) for t in to)):
        raise SignallingError("bad_request", "'to' must be a list of identities")
    return topic, msg["payload"], to
