"""The in-process fan-out benchmark: every copy goes out through the node's real send path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_fanout_path_benchmark_sends_every_copy_and_reports_it(tmp_path):
    out = tmp_path / "path.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "fanout_path.py"),
        "--subscribers",
        "3",
        "--packets",
        "200",
        "--prime",
        "--json",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert "fanout_path.py" in figures["command"]
    assert [r["mode"] for r in figures["results"]] == ["python", "srtp", "full"]
    for r in figures["results"]:
        assert r["copies"] == 3 * 200  # every packet reached every subscriber's send path
        assert r["prime"] is True
        assert r["cpu_us_per_copy"] > 0
    assert "CPU µs/copy" in result.stdout
