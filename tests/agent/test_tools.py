"""Tickets in SQLite: idempotent, persistent, shared between processes."""

import multiprocessing
import time

import pytest

from agent.answer import TicketStore


def test_same_request_twice_gives_the_same_open_ticket(store):
    first = store.open_ticket("10024", "exchange", "wrong colour", customer="a")
    again = store.open_ticket("10024", "exchange", "wrong colour, again", customer="b")
    assert first.created and not again.created
    assert again.id == first.id and again.ref == first.ref
    assert len(store.list()) == 1


def test_other_kind_or_closed_ticket_opens_a_new_one(store):
    first = store.open_ticket("10024", "exchange", "wrong colour")
    refund = store.open_ticket("10024", "refund", "changed my mind")
    assert refund.id != first.id
    store.close_ticket(first.id)
    reopened = store.open_ticket("10024", "exchange", "still wrong")
    assert reopened.created and reopened.id not in (first.id, refund.id)
    assert [t.status for t in store.list()] == ["closed", "open", "open"]


def test_callbacks_without_order_are_per_customer(store):
    a = store.open_ticket(None, "callback", "call me", customer="alice")
    a2 = store.open_ticket(None, "callback", "call me please", customer="alice")
    b = store.open_ticket(None, "callback", "call me", customer="bob")
    assert a.id == a2.id != b.id


def test_tickets_survive_a_restart(tmp_path):
    path = tmp_path / "t.sqlite3"
    s = TicketStore(path)
    ticket = s.open_ticket("10023", "refund", "never arrived")
    s.close()
    s = TicketStore(path)
    try:
        assert [t.ref for t in s.list("open")] == [ticket.ref]
        assert not s.open_ticket("10023", "refund", "never arrived").created
    finally:
        s.close()


def test_unknown_kind_is_refused(store):
    with pytest.raises(ValueError):
        store.open_ticket("10023", "discount", "please")


def _open_many(path: str, n: int) -> None:
    s = TicketStore(path)
    for _ in range(n):
        s.open_ticket("10025", "refund", "broken")
    s.close()


def test_no_duplicate_from_concurrent_processes(tmp_path):
    path = str(tmp_path / "shared.sqlite3")
    TicketStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_open_many, args=(path, 20)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    s = TicketStore(path)
    try:
        assert len(s.list()) == 1
    finally:
        s.close()


def _open_once(path: str, start: float) -> None:
    while time.time() < start:  # all processes open the new file at the same moment
        time.sleep(0.0005)
    TicketStore(path).close()


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Agent workers started together create one tickets file: none may die of "database is
    locked" while another switches it to WAL (before the fix: ~6 % of such openings)."""
    ctx = multiprocessing.get_context("fork")  # (quick to start: many rounds)
    exit_codes = []
    for attempt in range(20):
        path = str(tmp_path / f"new-{attempt}.sqlite3")
        start = time.time() + 0.3
        procs = [ctx.Process(target=_open_once, args=(path, start)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        exit_codes += [p.exitcode for p in procs]
    assert exit_codes == [0] * 80
