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
  the agent workers when one of them takes that kind (sfu/agents.py), else a
  `python -m agent.captions` process beside the demo server.

Storage: one SQLite file, `SFU_CAPTIONS_DB` or `build/sfu/captions.sqlite3` (relative to the
working directory), opened at the first request. Writes and reads run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from .auth import Grants, mint_token, require_grant
from .node import SfuNode

logger = logging.getLogger(__name__)

DEFAULT_DB = "build/sfu/captions.sqlite3"
MAX_ENTRIES = 200
MAX_TEXT = 4000
_SESSION = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_LANG = re.compile(r"^[a-z]{2,3}$")
_ROOM = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS caption_sessions (
    room TEXT NOT NULL, session TEXT NOT NULL, started_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (room, session)
);
CREATE TABLE IF NOT EXISTS captions (
    room TEXT NOT NULL, session TEXT NOT NULL, track TEXT NOT NULL, seq INTEGER NOT NULL,
    speaker TEXT NOT NULL, start REAL NOT NULL, "end" REAL NOT NULL, lang TEXT NOT NULL,
    text TEXT NOT NULL, translations TEXT NOT NULL,
    PRIMARY KEY (room, session, track, seq)
);
"""


class CaptionArchive:
    """SQLite storage of final captions; every method blocks (call it from a thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    def store(self, room: str, session: str, started_at: float, entries: list[dict]) -> int:
        with self._lock:
            db = self._conn()
            with db:
                db.execute(
                    "INSERT INTO caption_sessions VALUES (?, ?, ?, ?) ON CONFLICT(room, session)"
                    " DO UPDATE SET updated_at = excluded.updated_at",
                    (room, session, started_at, time.time()),
                )
                db.executemany(
                    "INSERT OR REPLACE INTO captions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            room,
                            session,
                            e["track"],
                            e["seq"],
                            e["speaker"],
                            e["start"],
                            e["end"],
                            e["lang"],
                            e["text"],
                            json.dumps(e["translations"], ensure_ascii=False),
                        )
                        for e in entries
                    ],
                )
        return len(entries)

    def sessions(self, room: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT s.session, s.started_at, s.updated_at, COUNT(c.seq) FROM"
                    " caption_sessions s LEFT JOIN captions c ON c.room = s.room AND"
                    " c.session = s.session WHERE s.room = ? GROUP BY s.session"
                    " ORDER BY s.started_at",
                    (room,),
                )
                .fetchall()
            )
        return [
            {"session": r[0], "started_at": r[1], "updated_at": r[2], "captions": r[3]}
            for r in rows
        ]

    def captions(self, room: str, session: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    'SELECT track, seq, speaker, start, "end", lang, text, translations FROM'
                    " captions WHERE room = ? AND session = ? ORDER BY start, track, seq",
                    (room, session),
                )
                .fetchall()
            )
        return [
            {
                "track": r[0],
                "seq": r[1],
                "speaker": r[2],
                "start": r[3],
                "end": r[4],
                "lang": r[5],
                "text": r[6],
                "translations": json.loads(r[7]),
            }
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# -- formats ---------------------------------------------------------------------------------------


def caption_in(entry: dict[str, Any], lang: str | None) -> tuple[str, bool]:
    """The entry's text in `lang` (None: the source) and whether it had to stay untranslated."""
    if not lang or lang == entry["lang"]:
        return entry["text"], False
    translated = entry["translations"].get(lang)
    return (translated, False) if translated else (entry["text"], True)


def vtt_time(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    h, rest = divmod(millis, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def _vtt_text(text: str) -> str:
    text = " ".join(text.split())  # no blank lines (they end a cue) and no stray newlines
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("-->", "--&gt;")


def to_vtt(
    captions: list[dict[str, Any]], started_at: float, lang: str | None, title: str = ""
) -> str:
    """WebVTT of the captions, times from `started_at`; cues never overlap backwards."""
    header = "WEBVTT" + (f" - {title}" if title else "")
    lines = [header, ""]
    untranslated_any = False
    cues: list[str] = []
    for i, entry in enumerate(captions, 1):
        start = max(0.0, entry["start"] - started_at)
        end = max(start + 0.5, entry["end"] - started_at)
        text, untranslated = caption_in(entry, lang)
        body = _vtt_text(text)
        if untranslated:
            untranslated_any = True
            body = f"<c.untranslated>{body}</c>"
        cues += [str(i), f"{vtt_time(start)} --> {vtt_time(end)}", body, ""]
    if untranslated_any:
        lines += [
            f"NOTE cues marked untranslated stay in the spoken language: no offline model "
            f"translates them into {lang}",
            "",
        ]
    return "\n".join(lines + cues)


# -- HTTP ------------------------------------------------------------------------------------------

ARCHIVE_KEY = web.AppKey("captions_archive", CaptionArchive)


class CaptionsLauncher(Protocol):
    """Starts and stops the captioner of a room (the demo switch)."""

    async def start(self, room: str) -> dict[str, Any]: ...

    async def stop(self, room: str) -> dict[str, Any]: ...


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
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "bad_request", "body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "bad_request", "body must be a JSON object")
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
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "bad_request", "body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "bad_request", "body must be a JSON object")
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


CAPTIONS_KIND = "captions"


class DemoLauncher:
    """A "captions" job when a registered worker takes the kind, else a local subprocess."""

    def __init__(self, app: web.Application, node: SfuNode) -> None:
        self.app = app
        self.local = SubprocessLauncher(node)

    def _dispatcher(self):
        try:
            from .agents import AGENTS_KEY
        except ImportError:
            return None
        return self.app.get(AGENTS_KEY)

    async def start(self, room: str) -> dict[str, Any]:
        dispatcher = self._dispatcher()
        if dispatcher is not None and any(
            w.registered and not w.gone and CAPTIONS_KIND in w.kinds
            for w in dispatcher.workers.values()
        ):
            running = dispatcher.active_jobs(room, CAPTIONS_KIND)
            job = running[0] if running else dispatcher.create_job(room, CAPTIONS_KIND, "demo")
            return {"via": "worker", "job_id": job.id, "started": not running}
        return {"via": "subprocess", **await self.local.start(room)}

    async def stop(self, room: str) -> dict[str, Any]:
        stopped = False
        dispatcher = self._dispatcher()
        if dispatcher is not None:
            for job in dispatcher.active_jobs(room, CAPTIONS_KIND):
                dispatcher.end_job(job, "captions switched off")
                stopped = True
        local = await self.local.stop(room)
        return {"stopped": stopped or local["stopped"]}

    async def close(self) -> None:
        await self.local.close()


class SubprocessLauncher:
    """Demo launcher: one `python -m agent.captions` process per room, on this machine, at
    most `max_rooms` at once (each holds a Whisper model: ~300 MB)."""

    def __init__(self, node: SfuNode, idle_exit_s: float = 120.0, max_rooms: int = 3) -> None:
        self.node = node
        self.idle_exit_s = idle_exit_s
        self.max_rooms = max_rooms
        self.processes: dict[str, tuple[asyncio.subprocess.Process, str]] = {}

    def _base_url(self) -> str:
        server = self.node.config.server
        host = server.host if server.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{server.port}"

    async def start(self, room: str) -> dict[str, Any]:
        running = self.processes.get(room)
        if running is not None and running[0].returncode is None:
            return {"identity": running[1], "started": False}
        alive = [r for r, (p, _) in self.processes.items() if p.returncode is None]
        if len(alive) >= self.max_rooms:
            raise RuntimeError(f"{len(alive)} rooms already have demo captions")
        identity = f"captioner-{secrets.token_hex(4)}"
        token = mint_token(
            self.node.config.auth,
            identity=identity,
            room=room,
            grants=Grants(subscribe=True, agent=True),
            ttl_s=6 * 3600,
        )
        env = {**os.environ, "CAPTIONS_TOKEN": token}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.captions",
            "--url",
            self._base_url(),
            "--room",
            room,
            "--idle-exit-s",
            str(self.idle_exit_s),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        self.processes[room] = (process, identity)
        logger.info("captions: started a captioner for %s (pid %d)", room, process.pid)
        return {"identity": identity, "started": True}

    async def stop(self, room: str) -> dict[str, Any]:
        running = self.processes.pop(room, None)
        if running is None or running[0].returncode is not None:
            return {"stopped": False}
        process = running[0]
        process.terminate()  # the captioner leaves the room and flushes its archive posts
        try:
            await asyncio.wait_for(process.wait(), 8)
        except TimeoutError:
            process.kill()
            await process.wait()
        return {"stopped": True}

    async def close(self) -> None:
        for room in list(self.processes):
            with contextlib.suppress(Exception):
                await self.stop(room)
