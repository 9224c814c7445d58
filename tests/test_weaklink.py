"""The weak-link benchmark: its figures on synthetic timelines, and one real lab run.

The figures (benchmarks/weaklink_metrics.py) need no browser. The lab run (netns, browser,
slow) plays drop-recover shortened (`weaklink.py --quick`) with a Chromium simulcast publisher
and a Chromium viewer behind the lab's link, and checks that the viewer's layer goes down after
the drop and back up after the recovery. It needs root and Chromium: without them it FAILS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import weaklink_metrics as wm
from benchmarks.netlab import PROFILES, LabError, lab_leftovers, require_root

ROOT = Path(__file__).resolve().parent.parent
BITRATES = {0: 150_000, 1: 500_000, 2: 1_500_000}
RUN_KEYS = (
    "adapt_down_s",
    "adapt_up_s",
    "freeze_pct",
    "layer_switches",
    "mean_kbps",
    "frames_decoded",
    "audio_loss_pct",
    "audio_concealed_pct",
    "adapt_down_decoded_s",
    "adapt_up_decoded_s",
    "layer_before_drop",
    "min_layer_during_drop",
    "top_layer",
    "targets",
    "timeline",
)


# ---------------------------------------------------------------------- synthetic timelines


def drop_recover_timeline(
    down_at: float = 11.0,
    up_at: float = 36.0,
    freeze: tuple[float, float] | None = (10.5, 11.5),
    end: float = 50.0,
    frames_stop_at: float | None = None,
) -> dict:
    """drop-recover as the benchmark would record it: a layer that goes 2 -> 0 at `down_at`
    and 0 -> 2 at `up_at` (via 1, one sample), one WebRTC freeze over `freeze`, 30 fps video,
    a byte counter at the layer's rate and 50 audio packets/s with 2 % lost."""
    sfu, sub = [], []
    t = -3.0
    switches = 0
    previous = None
    frames = bytes_ = 0.0
    freezes_s = 0.0
    while t <= end + 0.3:
        if t < down_at:
            layer = 2
        elif t < up_at:
            layer = 0
        elif t < up_at + 0.25:
            layer = 1
        else:
            layer = 2
        if previous is not None and layer != previous:
            switches += 1
        previous = layer
        sfu.append(
            {
                "t": round(t, 3),
                "spatial": layer,
                "switches": switches,
                "estimate_bps": 2_500_000 if layer == 2 else 250_000,
                "layers": {str(k): v for k, v in BITRATES.items()},
            }
        )
        frozen = freeze is not None and freeze[0] <= t < freeze[1]
        stopped = frames_stop_at is not None and t >= frames_stop_at
        if not frozen and not stopped:
            frames += 7.5
            bytes_ += BITRATES[layer] / 8 * 0.25
        if freeze is not None and freeze[1] <= t < freeze[1] + 0.25:
            freezes_s = freeze[1] - freeze[0]  # counted when the freeze ends
        sub.append(
            {
                "t": round(t, 3),
                "frames_decoded": int(frames),
                "width": 1280 >> (2 - layer),
                "freezes_s": freezes_s,
                "freeze_count": 1 if freezes_s else 0,
                "bytes": int(bytes_),
                "audio_received": int((t + 3) * 49),
                "audio_lost": int((t + 3) * 1),
                "audio_samples": int((t + 3) * 48_000),
                "audio_concealed": int((t + 3) * 240),  # 0.5 % concealed
            }
        )
        t += 0.25
    capacity = [(-5.0, 3000), (0.0, 3000), (10.0, 300), (30.0, 3000)]
    return {"sfu": sfu, "subscriber": sub, "capacity": capacity, "link": []}


def test_capacity_events_find_the_drop_and_the_recovery() -> None:
    timeline = PROFILES["drop-recover"].capacity_timeline()
    assert wm.capacity_events(timeline) == {
        "t_drop": 10.0,
        "low_kbps": 300,
        "t_recover": 30.0,
        "high_kbps": 3000,
    }
    assert wm.capacity_events(PROFILES["cross-border"].capacity_timeline())["t_drop"] is None
    # the lab applies phase 0 twice (start, then the schedule): no drop there
    assert wm.capacity_events([(-4, 3000), (0, 3000)])["t_drop"] is None
    # unlimited -> limited is a drop
    assert wm.capacity_events([(0, None), (5, 1000), (9, None)])["t_recover"] == 9


def test_adapt_down_counts_from_the_drop_to_a_layer_that_fits() -> None:
    layers = [(-1.0, 2), (9.75, 2), (10.25, 2), (10.5, 1), (11.25, 0), (20.0, 0)]
    # 300 kbit/s: h (500 k) does not fit, q (150 k x 1.15) does
    assert wm.adapt_down_s(layers, BITRATES, 10.0, 300) == 1.25
    # 1.5 Mbit/s: h fits already at 10.5
    assert wm.adapt_down_s(layers, BITRATES, 10.0, 1500) == 0.5
    # already on a layer that fits at the drop
    assert wm.adapt_down_s([(0.0, 0), (12.0, 0)], BITRATES, 10.0, 300) == 0.0
    # never fits (the bwe-off baseline), or only after the link recovered
    assert wm.adapt_down_s([(0.0, 2), (40.0, 2)], BITRATES, 10.0, 300) is None
    assert wm.adapt_down_s([(0.0, 2), (31.0, 0)], BITRATES, 10.0, 300, t_until=30.0) is None
    # the headroom: a layer at exactly the link rate does not fit
    assert not wm.fits(300_000, 300) and wm.fits(260_000, 300)


def test_adapt_up_counts_from_the_recovery_to_the_top_layer() -> None:
    layers = [(0.0, 0), (33.0, 1), (36.5, 2)]
    assert wm.adapt_up_s(layers, 2, 30.0) == 6.5
    assert wm.adapt_up_s([(0.0, 0), (45.0, 1)], 2, 30.0) is None  # never back on top
    assert wm.adapt_up_s([(0.0, 2)], 2, 30.0) == 0.0  # never left it (bwe off)
    assert wm.adapt_up_s(layers, None, 30.0) is None


def test_freeze_pct_uses_webrtc_freezes_and_an_open_freeze_at_the_end() -> None:
    timeline = drop_recover_timeline(freeze=(10.5, 11.5))
    assert wm.freeze_pct(timeline["subscriber"], 0.0, 50.0) == 2.0  # 1 s of 50
    # freezes before the run started do not count
    early = drop_recover_timeline(freeze=(-2.5, -1.5))
    assert wm.freeze_pct(early["subscriber"], 0.0, 50.0) == 0.0
    # frames stopped at 45 s and never resumed: WebRTC has not counted it, we do
    stuck = drop_recover_timeline(freeze=None, frames_stop_at=45.0)
    assert wm.freeze_pct(stuck["subscriber"], 0.0, 50.0) == pytest.approx(10.0, abs=0.6)
    assert wm.freeze_pct([], 0.0, 50.0) is None


def test_switch_counting_and_time_on_layers() -> None:
    layers = [(0.0, 1), (5.0, 2), (6.0, 1), (30.0, 1), (45.0, 0)]
    assert wm.changes(layers, 0.0, 60.0) == 3
    assert wm.changes(layers, 10.0, 60.0) == 1
    held = wm.time_on(layers, 0.0, 60.0)
    assert held == {1: pytest.approx(44.0), 2: pytest.approx(1.0), 0: pytest.approx(15.0)}


def test_counters_across_restarts() -> None:
    samples = [{"t": 0.0, "d": 5}, {"t": 1.0, "d": 9}, {"t": 2.0, "d": 2}, {"t": 3.0, "d": 4}]
    assert wm.counter_delta(samples, "d", 0.0, 1.0) == 4
    assert wm.counter_increase(samples, "d", 0.0, 3.0) == 4 + 2 + 2


def test_layer_from_width_and_the_fallback_to_decoded_widths() -> None:
    assert [wm.layer_from_width(w, 1280) for w in (320, 640, 1280, 960, None)] == [
        0,
        1,
        2,
        2,
        None,
    ]
    sub = [{"t": 0.0, "width": 1280}, {"t": 1.0, "width": 320}]
    layers, source = wm.layer_series([{"t": 0.0, "estimate_bps": 1}], sub, 1280)
    assert (layers, source) == ([(0.0, 2), (1.0, 0)], "frame_width")
    layers, source = wm.layer_series([{"t": 0.5, "spatial": 1}], sub, 1280)
    assert (layers, source) == ([(0.5, 1)], "sfu")


def test_decoded_layers_skip_a_frozen_picture() -> None:
    sub = [
        {"t": 0.0, "frames_decoded": 10, "width": 1280},
        {"t": 0.25, "frames_decoded": 17, "width": 1280},
        {"t": 0.5, "frames_decoded": 17, "width": 1280},  # frozen: not on a layer
        {"t": 0.75, "frames_decoded": 20, "width": 320},
    ]
    assert wm.decoded_layers(sub, 1280) == [(0.25, 2), (0.75, 0)]


def test_run_figures_of_a_synthetic_drop_recover() -> None:
    figures = wm.run_figures(drop_recover_timeline(), 50.0)
    assert figures["layer_source"] == "sfu"
    assert figures["layer_bitrates_source"] == "sfu"
    assert figures["top_layer"] == 2
    assert figures["adapt_down_s"] == 1.0  # the drop at 10, q at 11
    assert figures["adapt_up_s"] == 6.25  # h at 36, f at 36.25
    assert figures["adapt_down_decoded_s"] == 1.5  # 11.0 and 11.25 were frozen
    assert figures["adapt_up_decoded_s"] == 6.25
    assert figures["layer_before_drop"] == 2 and figures["min_layer_during_drop"] == 0
    assert figures["layer_at_end"] == 2
    assert figures["freeze_pct"] == 2.0
    assert figures["layer_switches"] == 3 and figures["layer_switches_source"] == "sfu"
    assert figures["spatial_switches"] == 3
    assert figures["frames_decoded"] == pytest.approx(49 * 30, abs=10)
    # f for 11 - 1 (frozen) + 14 s, q for 25 s: bytes at each layer's rate
    expected = (1500 * 24 + 150 * 25 + 500 * 0.25) / 50
    assert figures["mean_kbps"] == pytest.approx(expected, rel=0.03)
    assert figures["audio_loss_pct"] == pytest.approx(2.0, abs=0.1)
    assert figures["audio_concealed_pct"] == pytest.approx(0.5, abs=0.01)
    assert figures["settled_layer"] is None  # no settling on a profile with a drop
    checks = wm.check_targets("drop-recover", figures)
    assert {k: c["met"] for k, c in checks.items()} == {
        "adapt_down_s": True,
        "adapt_up_s": True,
        "freeze_pct": True,
    }
    slow = wm.run_figures(drop_recover_timeline(down_at=13.0, up_at=48.0), 50.0)
    assert slow["adapt_down_s"] == 3.0 and slow["adapt_up_s"] == 18.25
    met = {k: c["met"] for k, c in wm.check_targets("drop-recover", slow).items()}
    assert met == {"adapt_down_s": False, "adapt_up_s": False, "freeze_pct": True}


def test_the_top_layer_is_the_publishers_even_when_it_is_paused() -> None:
    timeline = drop_recover_timeline()
    for sample in timeline["sfu"]:  # the publisher's browser paused f for the whole run
        sample["layers"] = {"0": 150_000, "1": 500_000, "2": 0}
        sample["spatial"] = min(sample["spatial"], 1)
    assert wm.configured_top(timeline["sfu"]) == 2
    figures = wm.run_figures(timeline, 50.0)
    assert figures["top_layer"] == 2
    assert figures["layer_bitrates_bps"] == {"0": 150_000, "1": 500_000}
    assert figures["adapt_down_s"] == 1.0 and figures["adapt_up_s"] is None


def test_run_figures_without_the_sfu_layer_keys_use_nominal_rates_and_widths() -> None:
    timeline = drop_recover_timeline()
    for sample in timeline["sfu"]:
        for key in ("spatial", "switches", "layers"):
            sample.pop(key)
    figures = wm.run_figures(timeline, 50.0)
    assert figures["layer_source"] == "frame_width"
    assert figures["layer_bitrates_source"] == "nominal"
    assert figures["layer_switches_source"] == "samples"
    assert figures["adapt_down_s"] == 1.0 and figures["adapt_up_s"] == 6.25


def settled_timeline(layer_at: list[tuple[float, int]], kbps: float = 1500) -> dict:
    sfu = []
    switches = 0
    previous = None
    t = 0.0
    while t <= 60.25:
        layer = wm.value_at(layer_at, t)
        if previous is not None and layer != previous:
            switches += 1
        previous = layer
        sfu.append(
            {"t": t, "spatial": layer, "switches": switches, "layers": {0: 150e3, 1: 5e5, 2: 1.5e6}}
        )
        t += 0.25
    return {"sfu": sfu, "subscriber": [], "capacity": [(-1.0, kbps), (0.0, kbps)]}


def test_cross_border_settled_layer_and_switch_rate() -> None:
    # climbs to h by 8 s, once up to f (which does not fit) and back before it settles
    steady = settled_timeline([(0.0, 0), (8.0, 1), (11.0, 2), (13.0, 1)])
    figures = wm.run_figures(steady, 60.0)
    assert figures["expected_layer"] == 1  # f (1.5 M x 1.15) does not fit 1.5 Mbit/s
    assert figures["settle_from_s"] == 15.0
    assert figures["settled_layer"] == 1 and figures["settled_share"] == 1.0
    assert figures["switches_per_min_settled"] == 0.0
    assert figures["layer_switches"] == 3
    checks = wm.check_targets("cross-border", {**figures, "freeze_pct": 0.5})
    assert all(c["met"] for c in checks.values()), checks
    # settled on h with one dip to q for 2 s: two switches in 45 s
    dip = wm.run_figures(settled_timeline([(0.0, 0), (8.0, 1), (40.0, 0), (42.0, 1)]), 60.0)
    assert dip["settled_layer"] == 1
    assert dip["settled_share"] == pytest.approx(43 / 45, abs=0.01)
    assert dip["switches_per_min_settled"] == pytest.approx(2 * 60 / 45, abs=0.01)
    # flapping between h and f every 3 s
    flapping = settled_timeline([(float(t), 1 + (t // 3) % 2) for t in range(0, 63, 3)])
    figures = wm.run_figures(flapping, 60.0)
    assert figures["switches_per_min_settled"] >= 19
    checks = wm.check_targets("cross-border", {**figures, "freeze_pct": 0.5})
    assert not checks["switches_per_min_settled"]["met"]
    assert not checks["settled_share"]["met"]
    # stuck on f, which does not fit
    stuck = wm.run_figures(settled_timeline([(0.0, 2)]), 60.0)
    assert stuck["settled_layer"] == 2 and stuck["settled_on_expected_layer"] == 0.0


def test_table_and_plot(tmp_path: Path) -> None:
    figures = wm.run_figures(drop_recover_timeline(), 50.0)
    run = {
        **figures,
        "profile": "drop-recover",
        "bwe": "on",
        "duration_s": 50.0,
        "timeline": drop_recover_timeline(),
        "targets": wm.check_targets("drop-recover", figures),
    }
    off = {**run, "bwe": "off", "targets": {}}
    table = wm.format_table({"drop-recover": run, "drop-recover/bwe-off": off})
    lines = table.splitlines()
    assert lines[2].startswith("drop-recover ") and lines[2].endswith("met")
    assert "(baseline)" in lines[3]
    path = wm.plot_runs([run, off], str(tmp_path / "plot.png"))
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sfu_sample_reads_the_stats_contract_and_tolerates_missing_keys() -> None:
    from benchmarks.weaklink import HOST_ID, VIEWER_ID, sfu_sample

    viewer = {
        "identity": VIEWER_ID,
        "bandwidth": {"estimate_bps": 900_000, "source": "transport-cc", "probing": False},
        "downtracks": [
            {"kind": "audio", "track_id": "TR_a", "packets_sent": 500},
            {"kind": "video", "track_id": None, "packets_sent": 9},  # a retired m-line
            {
                "kind": "video",
                "track_id": "TR_v",
                "packets_sent": 800,
                "octets_sent": 900_000,
                "spatial_layer": 1,
                "temporal_layer": 2,
                "target_spatial": 2,
                "target_temporal": 2,
                "layer_switches": 3,
                "bitrate_bps": 480_000,
            },
        ],
    }
    host = {
        "identity": HOST_ID,
        "producers": [
            {"kind": "audio"},
            {
                "kind": "video",
                "layers": [
                    {"rid": "q", "spatial": 0, "ssrc": 1, "bitrate_bps": 150_000},
                    {"rid": "h", "spatial": 1, "ssrc": 2, "bitrate_bps": 490_000},
                ],
            },
        ],
    }
    stats = {"rooms": [{"name": "weaklink", "participants": [host, viewer]}]}
    sample, seen = sfu_sample(stats)
    assert sample["spatial"] == 1 and sample["target_spatial"] == 2
    assert sample["switches"] == 3 and sample["sent_bps"] == 480_000
    assert sample["estimate_bps"] == 900_000 and sample["source"] == "transport-cc"
    assert sample["layers"] == {0: 150_000, 1: 490_000}
    assert sample["octets_sent"] == 900_000
    assert set(seen) == {
        "bandwidth",
        "spatial_layer",
        "temporal_layer",
        "target_spatial",
        "target_temporal",
        "layer_switches",
        "bitrate_bps",
        "layers",
    }
    # an SFU without the new keys: nothing but what it has
    old_viewer = {
        "identity": VIEWER_ID,
        "downtracks": [{"kind": "video", "track_id": "TR_v", "octets_sent": 5}],
    }
    sample, seen = sfu_sample({"rooms": [{"participants": [old_viewer]}]})
    assert seen == set() and sample["octets_sent"] == 5 and "spatial" not in sample
    assert sfu_sample({}) == ({}, set())


def test_quick_profile_is_a_time_scaled_drop_recover() -> None:
    from benchmarks.weaklink import parse_args

    args = parse_args(["--quick", "--json", "x.json"])
    (profile,) = args.profiles
    full = PROFILES["drop-recover"]
    assert profile.name == "drop-recover"
    assert [p for _, p in profile.phases] == [p for _, p in full.phases]
    events = wm.capacity_events(profile.capacity_timeline())
    assert events["t_recover"] - events["t_drop"] >= 8
    assert profile.duration_s - events["t_recover"] > wm.TARGETS["drop-recover"]["adapt_up_s"][1]
    assert args.warmup + profile.duration_s < 40  # with ~10 s of set-up: under a minute
    both = parse_args(["--profile", "all", "--compare"])
    assert [p.name for p in both.profiles] == list(PROFILES) and both.compare


# ---------------------------------------------------------------------- the real thing


def _require_lab_and_browser() -> None:
    from benchmarks.browser import BrowserMissing, chromium_path

    try:
        require_root()
    except LabError as exc:
        pytest.fail(f"the weak-link lab test needs root: {exc}", pytrace=False)
    try:
        chromium_path()
    except BrowserMissing as exc:
        pytest.fail(f"the weak-link lab test needs Chromium: {exc}", pytrace=False)


@pytest.mark.netns
@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_drop_recover_goes_down_and_comes_back_up(tmp_path: Path) -> None:
    _require_lab_and_browser()
    out = tmp_path / "weaklink.json"
    plot = tmp_path / "weaklink.png"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "weaklink.py"),
        "--quick",
        "--json",
        str(out),
        "--plot",
        str(plot),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "drop-recover" in done.stdout  # the table
    run = json.loads(out.read_text())["drop-recover"]
    missing = [k for k in RUN_KEYS if k not in run]
    assert not missing, missing
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert lab_leftovers(run["run_id"]) == []
    context = (
        f"layers {run['layer_before_drop']} -> {run['min_layer_during_drop']} -> "
        f"{run['layer_at_end']} (top {run['top_layer']}); down {run['adapt_down_s']} s, "
        f"up {run['adapt_up_s']} s; SFU stats lacking {run['sfu_keys_missing']}"
    )
    # the SFU reports the forwarded layer, and the publisher sent more than one layer
    assert run["layer_source"] == "sfu", context
    assert run["layer_bitrates_source"] == "sfu" and run["top_layer"] >= 1, context
    # down after the drop: onto a layer that fits 300 kbit/s, and the viewer decoded it
    assert run["layer_before_drop"] is not None, context
    assert run["min_layer_during_drop"] < run["layer_before_drop"], context
    assert run["adapt_down_s"] is not None, context
    decoded = wm.decoded_layers(run["timeline"]["subscriber"], run["top_width"])
    assert any(t >= run["t_drop_s"] and layer < run["top_layer"] for t, layer in decoded), context
    # back up after the recovery: the top layer again, decoded by the viewer
    assert run["adapt_up_s"] is not None, context
    assert run["adapt_up_decoded_s"] is not None, context
    assert run["frames_decoded"] > 0 and run["mean_kbps"] > 0
