"""The scale benchmark runs end to end: one node, then `serve --workers 2` on a real
redis-server, each with a publisher and subscribers through the one port (a small run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(150)
def test_scale_benchmark_measures_one_and_two_workers(tmp_path):
    out = tmp_path / "scale.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick"]
    command += ["--subscribers", "4", "--seconds", "3", "--client-procs", "2", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    one, two = result["runs"]
    assert (one["workers"], two["workers"], one["subscribers"]) == (1, 2, 4)
    # the front spread the subscribers: both workers sent media to them
    assert len(two["packets_sent_per_worker"]) == 2 and min(two["packets_sent_per_worker"]) > 0
    assert two["subscribers"] == 8 and two["downtracks_per_worker"] == [8, 8]  # 4 + 4 viewers
    for run in (one, two):
        assert run["packets_delivered"] > 0 and run["loss_pct"] < 5, run
    assert len(two["cpu_pct_per_process"]) == 3  # the front and two workers
    assert result["subscribers_per_core_1_worker"] > 0
    assert result["subscribers_per_core_2_workers"] > 0
    assert result["per_core_ratio_2_to_1"] == pytest.approx(
        result["subscribers_per_core_2_workers"] / result["subscribers_per_core_1_worker"],
        abs=0.01,
    )
    assert "subscribers per core" in done.stdout
