"""The capacity benchmark's harness: Janus and our node side by side, for real (needs root).

A short run brings up the namespace, our node and Janus (stock and `event_loops = 1`) with two
viewers each, single-layer and simulcast, and checks that packets flowed through every SFU and
that the JSON has the issue's shape. Without Janus or root it FAILS: it never skips.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import capacity
from benchmarks.netlab import LabError

ROOT = Path(__file__).resolve().parent.parent
ENTRY_KEYS = (
    "cpu_us_per_packet",
    "forward_delay_ms_p99",
    "loss_pct",
    "subscribers_per_core",
    "packets_forwarded",
    "viewer_packets_per_s",
)


def test_missing_janus_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capacity, "JANUS", "/nonexistent/janus")
    with pytest.raises(RuntimeError, match="janus is missing"):
        capacity.check_janus()


def test_namespace_without_root_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"), capacity.ServerNet():
        pass


def test_janus_config_loads_videoroom_and_http_only(tmp_path: Path) -> None:
    config = capacity.janus_config(tmp_path, "veth0", event_loops=1)
    text = config.read_text()
    assert "event_loops = 1" in text
    assert 'ice_enforce_list = "veth0"' in text
    assert sorted(p.name for p in (tmp_path / "plugins").iterdir()) == ["libjanus_videoroom.so"]
    assert sorted(p.name for p in (tmp_path / "transports").iterdir()) == ["libjanus_http.so"]
    assert not any((tmp_path / "events").iterdir())
    stock = tmp_path / "stock"
    stock.mkdir()
    assert "event_loops" not in capacity.janus_config(stock, "veth0", None).read_text()


def check_scenario(summary: dict) -> None:
    assert set(summary["janus_configs"]) == {"stock", "event_loops_1"}
    entries = [summary["ours"], *summary["janus_configs"].values()]
    for entry in entries:
        missing = [k for k in ENTRY_KEYS if k not in entry]
        assert not missing, (entry.get("config"), missing)
        assert entry["packets_forwarded"] > 0, entry["config"]
        assert entry["cpu_us_per_packet"] > 0, entry["config"]
        assert entry["subscribers_per_core"] > 0, entry["config"]
        assert entry["loss_pct"] < 5.0, entry["config"]
        # both viewers received media in the window
        rates = entry["viewer_packets_per_s"]
        assert len(rates) == 2 and min(rates.values()) > 20, (entry["config"], rates)
    best = max(summary["janus_configs"].values(), key=lambda e: e["subscribers_per_core"])
    assert summary["janus"]["config"] == best["config"]
    expected = summary["ours"]["subscribers_per_core"] / best["subscribers_per_core"]
    assert summary["ratio_subscribers_per_core"] == pytest.approx(expected, rel=0.01)


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_janus_and_ours_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "capacity.py"),
        "--sfu", "both", "--quick", "--subscribers", "2", "--seconds", "2",
        "--clip-seconds", "2", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "viewers per core, ours / best Janus" in done.stdout  # the table was printed
    result = json.loads(out.read_text())
    check_scenario(result)
    check_scenario(result["simulcast"])
    assert result["leftovers"] == []
    # the simulcast viewers got the layer each asked for, from every SFU: viewer000 the low
    # one, viewer001 the middle one (more packets per second)
    for entry in [result["simulcast"]["ours"], *result["simulcast"]["janus_configs"].values()]:
        rates = entry["viewer_packets_per_s"]
        assert rates["viewer000"] < rates["viewer001"], (entry["config"], rates)
