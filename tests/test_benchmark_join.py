"""The join-time benchmark runs end to end: SFU process, publisher, Chromium viewers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
KEYS = (
    "joins",
    "join_ms_p50",
    "join_ms_p95",
    "signalling_ms_p50",
    "ice_ms_p50",
    "dtls_ms_p50",
    "first_frame_ms_p50",
    "websocket_ms_p50",
    "first_packet_ms_p50",
)


@pytest.mark.timeout(90)
def test_quick_join_benchmark_reports_its_figures(tmp_path):
    out = tmp_path / "join.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "join_time.py"),
        "--quick",
        "--joins",
        "3",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "connect() -> first frame" in done.stdout  # the table was printed
    result = json.loads(out.read_text())
    missing = [k for k in KEYS if result.get(k) is None]
    assert not missing, missing
    assert result["joins"] == 3 and len(result["per_join"]) == 3
    assert 0 < result["join_ms_p50"] <= result["join_ms_p95"] < 10000
    # fast connect: the SFU offers setup:active, so the browser is the DTLS server
    assert result["browser_dtls_roles"] == {"server": 3}, result["browser_dtls_roles"]
    for join in result["per_join"]:
        phases = join["phases"]
        assert all(phases[k] is not None for k in ("signalling_ms", "ice_ms", "dtls_ms")), join
        # the phases, lined up between the page's clock and the server's, add up to the total
        total = sum(v for k, v in phases.items() if k != "server_joined_ms")
        assert abs(total - join["join_ms"]) < 5, join
        assert all(v > -5 for v in phases.values()), join  # (clock alignment: ~1 ms)
        assert join["video_width"] > 0
    # the 1-to-1 page: the buyer joined a running call, the assistant saw the buyer go live
    consult = result["consult"]
    assert consult["calls"] == 1 and 0 < consult["join_ms_p50"] < 10000
    assert consult["per_call"][0]["buyer_join_kind"] == "connect"
    assert consult["per_call"][0]["assistant_kind"] == "remote_live"
