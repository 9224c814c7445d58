"""The soak benchmark: its verdict, and a short real run (a few seconds of churn)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak import check_targets, new_fds

ROOT = Path(__file__).resolve().parent.parent
KEYS = (
    "rss_mb_start",
    "rss_mb_end",
    "fds_start",
    "fds_end",
    "errors",
    "joins",
    "observer_min_pkts_per_s",
)


def test_targets_rss_within_factor_and_slack_fds_back_no_errors() -> None:
    base = {"rss_mb_start": 100.0, "rss_mb_end": 140.0, "fds_start": 20, "fds_end": 20}
    ok = check_targets({**base, "errors": 0})
    assert ok["rss_mb_end_max"] == 140.0 and ok["met"]
    assert not check_targets({**base, "rss_mb_end": 140.2, "errors": 0})["met_each"]["rss"]
    assert not check_targets({**base, "fds_end": 21, "errors": 0})["met_each"]["fds"]
    assert not check_targets({**base, "errors": 1})["met"]
    assert not check_targets({**base, "errors": 0, "node": "hung"})["met"]
    # a node that died has no end figures: nothing is met
    dead = check_targets({**base, "rss_mb_end": None, "fds_end": None, "errors": 0})
    assert not dead["met_each"]["rss"] and not dead["met_each"]["fds"]


def test_new_fds_names_what_was_left_open() -> None:
    before = {0: "/dev/null", 5: "socket tcp :8080->:0 LISTEN", 7: "anon_inode:[eventpoll]"}
    after = {**before, 9: "socket udp :40001", 10: "socket udp :40002", 11: "pipe:[123]"}
    assert new_fds(before, after) == {"socket udp :40001": 1, "socket udp :40002": 1, "pipe": 1}
    assert new_fds(before, dict(before)) == {}
    # a descriptor number reused for something else counts as new
    assert new_fds(before, {**before, 0: "/tmp/x"}) == {"/tmp/x": 1}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_short_soak_reports_its_figures(tmp_path) -> None:
    out = tmp_path / "soak.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.1"]
    command += ["--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=130)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "node RSS end (MB)" in done.stdout  # the table was printed
    result = json.loads(out.read_text())
    missing = [k for k in KEYS if result.get(k) is None]
    assert not missing, missing
    churn = result["churn"]
    # the warm-up alone joins a graceful viewer, two vanishing ones, a WHEP and a WHIP session
    assert result["joins"] >= 3 and churn["graceful_leaves"] >= 1 and churn["vanished"] >= 2
    assert churn["whep_sessions"] >= 1 and churn["whip_sessions"] >= 1
    assert churn["data_messages"] > 0
    assert result["observer_min_pkts_per_s"] > 0 and result["rss_mb_start"] > 0
    assert result["targets"]["met"] == all(result["targets"]["met_each"].values())
