"""The agent's tools: order lookup and support tickets kept in SQLite.

Tickets are idempotent: an open ticket is identified by (order, kind) -- or (customer, kind) when
there is no order -- and asking again returns the same ticket instead of a duplicate, even from
another process (a UNIQUE index on the open tickets' key does the work). The file survives restarts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .shop import Shop

TICKET_KINDS = ("refund", "exchange", "callback")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id    TEXT,
    kind        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    reason_en   TEXT,
    language    TEXT,
    customer    TEXT,
    status      TEXT NOT NULL DEFAULT 'open',
    dedupe_key  TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tickets_one_open ON tickets(dedupe_key) WHERE status = 'open';
"""


@dataclass
class Ticket:
    id: int
    order_id: str | None
    kind: str
    reason: str
    reason_en: str | None
    language: str | None
    customer: str | None
    status: str
    created_at: float
    created: bool = False  # True when this call opened it, False when it already existed

    @property
    def ref(self) -> str:
        return f"T-{self.id:04d}"

    def to_dict(self) -> dict:
        return {"ref": self.ref, **asdict(self)}


SETUP_WAIT_S = 15.0  # how long opening the store waits for another process setting it up


class TicketStore:
    """SQLite-backed tickets; safe to share between threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._set_up(time.monotonic() + SETUP_WAIT_S)

    def _set_up(self, deadline: float) -> None:
        """WAL mode and the schema. Workers started together open one new file at once, and
        SQLite answers "database is locked" to the WAL switch without waiting for the other
        connection (its busy timeout does not cover that step): try again, bounded."""
        delay = 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)  # (at start-up, in the worker's preparation thread)
                delay = min(delay * 2, 0.2)

    def open_ticket(
        self,
        order_id: str | None,
        kind: str,
        reason: str,
        *,
        reason_en: str | None = None,
        language: str | None = None,
        customer: str | None = None,
    ) -> Ticket:
        if kind not in TICKET_KINDS:
            raise ValueError(f"ticket kind must be one of {TICKET_KINDS}, not {kind!r}")
        key = f"order:{order_id}:{kind}" if order_id else f"customer:{customer or '-'}:{kind}"
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO tickets (order_id, kind, reason, reason_en, language,"
                " customer, dedupe_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (order_id, kind, reason, reason_en, language, customer, key, time.time()),
            )
            created = cur.rowcount == 1
            row = self._db.execute(
                "SELECT * FROM tickets WHERE dedupe_key = ? AND status = 'open'", (key,)
            ).fetchone()
        return self._ticket(row, created)

    def close_ticket(self, ticket_id: int) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE tickets SET status = 'closed' WHERE id = ?", (ticket_id,))

    def list(self, status: str | None = None) -> list[Ticket]:
        query, args = "SELECT * FROM tickets", ()
        if status:
            query, args = query + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [self._ticket(r) for r in rows]

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _ticket(row: sqlite3.Row, created: bool = False) -> Ticket:
        return Ticket(
            id=row["id"],
            order_id=row["order_id"],
            kind=row["kind"],
            reason=row["reason"],
            reason_en=row["reason_en"],
            language=row["language"],
            customer=row["customer"],
            status=row["status"],
            created_at=row["created_at"],
            created=created,
        )


class ShopTools:
    """The tool functions the answer engine (or an LLM backend) may call."""

    def __init__(self, shop: Shop, tickets: TicketStore) -> None:
        self.shop = shop
        self.tickets = tickets

    def order_status(self, order_id: str) -> dict:
        order = self.shop.orders.get(str(order_id))
        if order is None:
            return {"found": False, "order_id": str(order_id)}
        return {"found": True, **asdict(order)}

    def open_ticket(
        self,
        order_id: str | None,
        kind: str,
        reason: str,
        *,
        reason_en: str | None = None,
        language: str | None = None,
        customer: str | None = None,
    ) -> dict:
        ticket = self.tickets.open_ticket(
            order_id, kind, reason, reason_en=reason_en, language=language, customer=customer
        )
        return ticket.to_dict()
