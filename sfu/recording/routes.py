"""HTTP: start/stop a room's recording, list its recordings, serve the files by signed link.

* `POST /api/rooms/{room}/recording` `{"action": "start"|"stop", "identity"?}` — admin token
  for the room (or node-wide). Start records `identity`'s tracks, by default the participant
  publishing VP8 video. Answers the recording (`state`, `file`, `tracks` ...); 409 when the
  room is already (or not) being recorded or nobody publishes, 507 when the disk is full.
* `GET /api/rooms/{room}/recordings` — an admin token, or a subscribe token of that room (a
  viewer may watch the replay of the room it may watch live). Each recording comes with
  signed links (`url`, `captions` {lang: url}) valid for `[recording] link_ttl_s`.
* `GET /recordings/{dir}/{file}?exp=&sig=` — the file itself (byte ranges: players seek).
* `POST /demo/recording {room, action}` — only with `server.demo_tokens`: the host page's
  button (the demo host holds no admin token).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..api.keys import NODE_KEY
from ..auth import require_grant
from . import links
from .recorder import Recorder, Recording, RecordingError, safe_name

if TYPE_CHECKING:
    from ..node import SfuNode

RECORDER_KEY: web.AppKey[Recorder] = web.AppKey("recorder", Recorder)
_FILE = re.compile(r"^[A-Za-z0-9_.-]{1,64}/[A-Za-z0-9_.-]{1,160}\.(webm|vtt)$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CONTENT_TYPES = {".webm": "video/webm", ".vtt": "text/vtt; charset=utf-8"}


def add_recording(app: web.Application, node: SfuNode) -> Recorder | None:
    """Wire recording into the app (after captions and webhooks, whose keys it reads)."""
    settings = node.config.recording
    if not settings.enabled:
        return None
    from ..api.captions import ARCHIVE_KEY
    from ..webhooks.events import WEBHOOKS_KEY

    def events(event: str, recording: Recording) -> None:
        notifier = app.get(WEBHOOKS_KEY)
        if notifier is not None:
            room = {"name": recording.room, "sid": recording.room_sid}
            notifier.notify(event, recording.room, {"room": room, "recording": recording.to_json()})

    async def captions(room: str, start: float, end: float) -> list[dict[str, Any]]:
        archive = app.get(ARCHIVE_KEY)
        if archive is None:
            return []

        def load() -> list[dict[str, Any]]:
            found = []
            for session in archive.sessions(room):
                if session["updated_at"] < start - 5 or session["started_at"] > end:
                    continue
                for entry in archive.captions(room, session["session"]):
                    if entry["end"] >= start and entry["start"] <= end:
                        found.append(entry)
            return sorted(found, key=lambda e: e["start"])

        return await asyncio.to_thread(load)

    recorder = Recorder(settings, events=events, captions=captions)
    app[RECORDER_KEY] = recorder
    app.router.add_post("/api/rooms/{room}/recording", _control)
    app.router.add_get("/api/rooms/{room}/recordings", _listing)
    app.router.add_get("/recordings/{dir}/{file}", _file)
    if node.config.server.demo_tokens:
        app.router.add_post("/demo/recording", _demo_control)

    async def close(app: web.Application) -> None:
        await recorder.close()

    app.on_shutdown.append(close)
    return recorder


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "bad_request", "body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "bad_request", "body must be a JSON object")
    return body


async def _act(request: web.Request, room_name: str, body: dict[str, Any]) -> web.Response:
    action, identity = body.get("action"), body.get("identity")
    if action not in ("start", "stop"):
        return _error(400, "bad_request", '\'action\' must be "start" or "stop"')
    if identity is not None and (not isinstance(identity, str) or not _ID.match(identity)):
        return _error(400, "bad_request", "'identity' must be a participant identity")
    recorder = request.app[RECORDER_KEY]
    node = request.app[NODE_KEY]
    try:
        if action == "start":
            room = node.rooms.rooms.get(room_name)
            if room is None:
                return _error(404, "not_found", f"no room {room_name!r} on this node")
            recording = recorder.start(room, identity)
            return web.json_response(recording.to_json(), status=201)
        recording = await recorder.stop(room_name)
        return web.json_response(recording.to_json())
    except RecordingError as exc:
        return _error(exc.status, exc.code, exc.message)


async def _control(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    require_grant(request, "admin", room=room)
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    return await _act(request, room, body)


async def _demo_control(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    room = body.get("room")
    if not isinstance(room, str) or not _ID.match(room):
        return _error(400, "bad_request", "'room' must be a room name")
    body.pop("identity", None)  # the demo button records the host, whoever asks
    return await _act(request, room, body)


async def _listing(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    require_grant(request, "admin", "subscribe", room=room)
    recorder = request.app[RECORDER_KEY]
    node = request.app[NODE_KEY]
    secret = next(iter(node.config.auth.api_keys.values()))
    ttl = recorder.settings.link_ttl_s
    prefix = request.path.rsplit("/api/rooms/", 1)[0]
    found = await asyncio.to_thread(recorder.listing, room)
    directory = safe_name(room)
    for info in found:
        base = info["file"][: -len(".webm")]
        info["url"] = links.signed_path(secret, prefix, f"{directory}/{info['file']}", ttl)
        info["captions"] = {
            lang: links.signed_path(secret, prefix, f"{directory}/{base}.{lang}.vtt", ttl)
            for lang in info.get("captions", [])
        }
    return web.json_response({"room": room, "recordings": found})


async def _file(request: web.Request) -> web.StreamResponse:
    name = f"{request.match_info['dir']}/{request.match_info['file']}"
    if not _FILE.match(name) or ".." in name:
        raise web.HTTPNotFound()
    node = request.app[NODE_KEY]
    recorder = request.app[RECORDER_KEY]
    exp, sig = request.query.get("exp"), request.query.get("sig")
    secrets_ = node.config.auth.api_keys.values()
    ttl = recorder.settings.link_ttl_s
    if not any(links.check(s, name, exp, sig, ttl) for s in secrets_):
        return _error(403, "forbidden", "missing, expired or invalid link signature")
    path = Path(recorder.settings.dir) / name
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(
        path,
        headers={
            "Content-Type": _CONTENT_TYPES[path.suffix],
            "Cache-Control": "private, max-age=60",
        },
    )
