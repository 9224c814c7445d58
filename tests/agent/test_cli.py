"""`python -m agent ask/tickets/eval` as a shop would run them."""

import json
import os
import subprocess
import sys


def run(*args, db):
    env = {**os.environ, "AGENT_TICKETS_DB": str(db)}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout


def test_ask_json_and_tickets(tmp_path):
    db = tmp_path / "t.sqlite3"
    out = json.loads(run("ask", "Mi reloj del pedido 10025 llegó roto", "--json", db=db))
    assert out["language"] == "es" and out["intent"] == "returns.damaged"
    assert [c["name"] for c in out["tool_calls"]] == ["open_ticket"]
    ref = out["tool_calls"][0]["result"]["ref"]
    again = json.loads(run("ask", "Mi reloj del pedido 10025 llegó roto", "--json", db=db))
    assert again["tool_calls"][0]["result"]["ref"] == ref  # same ticket after a restart
    listing = run("tickets", db=db)
    assert ref in listing and "refund" in listing and listing.count("\n") == 1
    tickets = json.loads(run("tickets", "--json", db=db))
    assert len(tickets) == 1 and tickets[0]["order_id"] == "10025"


def test_ask_plain_with_language(tmp_path):
    text = run("ask", "how much is the dress", "--lang", "en", db=tmp_path / "t.sqlite3")
    assert text.strip() == "The linen wrap dress costs 89 dollars."


def test_eval_reports_accuracy(tmp_path):
    out = json.loads(run("eval", "--json", db=tmp_path / "t.sqlite3"))
    assert out["questions"] >= 60 and out["accuracy"] >= 0.8
