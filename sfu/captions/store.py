"""The caption archive's storage: final captions of each live session, per room, in SQLite.

One file, `SFU_CAPTIONS_DB` or `build/sfu/captions.sqlite3` (relative to the working
directory), opened at the first use. Every method blocks: the routes (sfu/api/captions.py)
call them from a thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_DB = "build/sfu/captions.sqlite3"

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
