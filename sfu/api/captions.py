"""The caption archive: final captions of each live session, kept per room, fetched afterwards.

Routes (added by `add_routes(app, node)`):

* `POST /api/rooms/{room}/captions` — the captioner posts its finals here, with its own job token
  (grant `agent`, or `admin`; the token must allow the room). Body:
  `{session, started_at, entries: [{track, seq, speaker, start, end, lang, text, translations}]}`
  with unix times in seconds. Entries are keyed by (session, track, seq): a retry never doubles.
* `GET /api/rooms/{room}/captions.json[?lang=xx][&session=ID]` — admin token. The newest session
  unless `session` names one; `sessions` lists them all.
* `GET /api/rooms/{room}/captions.vtt?lang=xx[&session=ID]` — admin token. WebVTT, cue times from
  the session's start. Without `lang`, the source language. A cue with no translation into
  `lang` carries the source text inside `<c.untranslated>…</c>`.
* `POST /demo/captions {room, enabled}` — only with `server.demo_tokens`: the host page's
  captions switch. It starts (or stops) a captioner for the room: a job of kind "captions" for
  the agent workers when one of them takes that kind, else a `python -m agent.captions`
  process beside the demo server (sfu/captions/launcher.py).

Storage: sfu/captions/store.py (SQLite; writes and reads run in a thread); formats:
sfu/captions/vtt.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from ..auth import require_grant
from ..captions.launcher import CaptionsLauncher, DemoLauncher
from ..captions.store import DEFAULT_DB, CaptionArchive
from ..captions.vtt import caption_in, to_vtt
from ..node import SfuNode

logger = logging.getLogger(__name__)

MAX_ENTRIES = 200
MAX_TEXT = 4000
_SESSION = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_LANG = re.compile(r"^[a-z]{2,3}$")
_ROOM = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

ARCHIVE_KEY = web.AppKey("captions_archive", CaptionArchive)
LAUNCHER_KEY = web.AppKey("captions_launcher", object)


def add_routes(
    app: web.Application,
    node: SfuNode,
    *,
    db_path: str | Path | None = None,
    launcher: CaptionsLauncher | None = None,
) -> None:
    archive = CaptionArchive(db_path or os.environ.get("SFU_CAPTIONS_DB") or DEFAULT_DB)
    app[ARCHIVE_KEY] = archive
    app.router.add_post("/api/rooms/{room}/captions", _post_captions)
    app.router.add_get("/api/rooms/{room}/captions.json", _get_json)
    app.router.add_get("/api/rooms/{room}/captions.vtt", _get_vtt)
    if node.config.server.demo_tokens:
        app[LAUNCHER_KEY] = launcher or DemoLauncher(app, node)
        app.router.add_post("/demo/captions", _demo_captions)

    async def cleanup(app: web.Application) -> None:
        if LAUNCHER_KEY in app and hasattr(app[LAUNCHER_KEY], "close"):
            await app[LAUNCHER_KEY].close()
        await asyncio.to_thread(archive.close)

    app.on_cleanup.append(cleanup)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def _json_object(request: web.Request) -> dict | web.Response:
    """The request's JSON object body, or the 400 to answer."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "bad_request", "body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "bad_request", "body must be a JSON object")
    return body


def _valid_entry(e: Any) -> str | None:
    """Why `e` is not a caption entry (None if it is)."""
    if not isinstance(e, dict):
        return "each entry must be an object"
    for key, limit in (("track", 64), ("speaker", 128), ("text", MAX_TEXT)):
        if not isinstance(e.get(key), str) or len(e[key]) > limit:
            return f"'{key}' must be a string of at most {limit} characters"
    if not isinstance(e.get("seq"), int) or isinstance(e["seq"], bool) or e["seq"] < 0:
        return "'seq' must be a non-negative integer"
    for key in ("start", "end"):
        if not isinstance(e.get(key), int | float) or isinstance(e[key], bool):
            return f"'{key}' must be a number (unix seconds)"
    if not isinstance(e.get("lang"), str) or not _LANG.match(e["lang"]):
        return "'lang' must be a language code"
    translations = e.get("translations", {})
    if not isinstance(translations, dict) or len(translations) > 16:
        return "'translations' must be an object {lang: text}"
    for lang, text in translations.items():
        if not _LANG.match(lang) or not isinstance(text, str) or len(text) > MAX_TEXT:
            return "'translations' must map language codes to texts"
    e.setdefault("translations", {})
    return None


async def _post_captions(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    require_grant(request, "agent", "admin", room=room)
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    session, started_at, entries = body.get("session"), body.get("started_at"), body.get("entries")
    if not isinstance(session, str) or not _SESSION.match(session):
        return _error(400, "bad_request", "'session' must be 1-64 characters: A-Z a-z 0-9 _ . : -")
    if not isinstance(started_at, int | float) or isinstance(started_at, bool):
        return _error(400, "bad_request", "'started_at' must be unix seconds")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        return _error(400, "bad_request", f"'entries' must be a list of at most {MAX_ENTRIES}")
    for entry in entries:
        if (problem := _valid_entry(entry)) is not None:
            return _error(400, "bad_request", problem)
    archive = request.app[ARCHIVE_KEY]
    stored = await asyncio.to_thread(archive.store, room, session, float(started_at), entries)
    return web.json_response({"stored": stored}, status=201)


async def _load(request: web.Request) -> tuple[dict[str, Any], list[dict]] | web.Response:
    room = request.match_info["room"]
    require_grant(request, "admin", room=room)
    lang = request.query.get("lang")
    if lang is not None and not _LANG.match(lang.split("-")[0].lower()):
        return _error(400, "bad_request", "'lang' must be a language code such as pt or en")
    archive = request.app[ARCHIVE_KEY]
    sessions = await asyncio.to_thread(archive.sessions, room)
    wanted = request.query.get("session")
    chosen = next((s for s in sessions if s["session"] == wanted), None) if wanted else None
    if wanted and chosen is None:
        return _error(404, "not_found", f"no caption session {wanted!r} in room {room!r}")
    chosen = chosen or (sessions[-1] if sessions else None)
    if chosen is None:
        return _error(404, "not_found", f"no captions archived for room {room!r}")
    captions = await asyncio.to_thread(archive.captions, room, chosen["session"])
    meta = {
        "room": room,
        "session": chosen["session"],
        "started_at": chosen["started_at"],
        "lang": lang.split("-")[0].lower() if lang else None,
        "sessions": sessions,
    }
    return meta, captions


async def _get_json(request: web.Request) -> web.Response:
    loaded = await _load(request)
    if isinstance(loaded, web.Response):
        return loaded
    meta, captions = loaded
    out = []
    for entry in captions:
        item = {
            "start": round(entry["start"] - meta["started_at"], 3),
            "end": round(entry["end"] - meta["started_at"], 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["start"])),
            "speaker": entry["speaker"],
            "track": entry["track"],
            "seq": entry["seq"],
            "source_lang": entry["lang"],
            "source_text": entry["text"],
            "translations": entry["translations"],
        }
        if meta["lang"]:
            text, untranslated = caption_in(entry, meta["lang"])
            item.update(lang=meta["lang"], text=text, untranslated=untranslated)
        out.append(item)
    return web.json_response({**meta, "captions": out})


async def _get_vtt(request: web.Request) -> web.Response:
    loaded = await _load(request)
    if isinstance(loaded, web.Response):
        return loaded
    meta, captions = loaded
    title = f"room {meta['room']}, session {meta['session']}"
    if meta["lang"]:
        title += f", {meta['lang']}"
    body = to_vtt(captions, meta["started_at"], meta["lang"], title)
    name = f"{meta['room']}-{meta['session']}{'-' + meta['lang'] if meta['lang'] else ''}"
    filename = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120] + ".vtt"
    return web.Response(
        text=body,
        content_type="text/vtt",
        charset="utf-8",
        headers={"Content-Disposition": f'inline; filename="{filename}"'},
    )


# -- the demo switch -------------------------------------------------------------------------------


async def _demo_captions(request: web.Request) -> web.Response:
    """{room, enabled} -> {room, enabled, ...}: the host page's captions switch (demo only)."""
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    room, enabled = body.get("room"), body.get("enabled")
    if not isinstance(room, str) or not _ROOM.match(room):
        return _error(
            400, "bad_request", "'room' must be 1-64 characters: letters, digits, _ . : -"
        )
    if not isinstance(enabled, bool):
        return _error(400, "bad_request", "'enabled' must be true or false")
    launcher = request.app[LAUNCHER_KEY]
    try:
        result = await (launcher.start(room) if enabled else launcher.stop(room))
    except Exception as exc:
        logger.exception("captions: the launcher failed")
        return _error(503, "unavailable", f"could not switch captions: {exc}")
    return web.json_response({"room": room, "enabled": enabled, **result})
