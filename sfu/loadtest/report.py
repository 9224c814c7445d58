"""The load-test report: a summary (joins, join time p50/p95, bitrate, loss, freezes,
errors), one row per viewer, printed as a table and written as JSON."""

from __future__ import annotations

import argparse
import math
from typing import Any


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 1)


def build_report(
    args: argparse.Namespace,
    publishers: dict[str, Any] | None,
    viewer_results: list[dict[str, Any] | None],
    elapsed_s: float,
) -> dict[str, Any]:
    viewers = [v for result in viewer_results if result for v in result["viewers"]]
    viewers.sort(key=lambda v: int(v["identity"].rsplit("view", 1)[-1] or 0))
    missing = sum(1 for result in viewer_results if result is None)
    joins = [v["join_ms"] for v in viewers if v["join_ms"] is not None]
    first = [v["first_video_ms"] for v in viewers if v["first_video_ms"] is not None]
    errors = [v["error"] for v in viewers if v["error"]]
    if publishers is not None:
        errors += publishers["errors"]
    failed_workers = (publishers is None) + missing  # their stderr is added by the runner
    received = [v for v in viewers if v["packets"]]
    summary = {
        "publishers": publishers["publishers"] if publishers else 0,
        "viewers": args.viewers,
        "joined": len(joins),
        "join_ms_p50": quantile(joins, 0.5),
        "join_ms_p95": quantile(joins, 0.95),
        "first_video_ms_p50": quantile(first, 0.5),
        "first_video_ms_p95": quantile(first, 0.95),
        "video_kbps_mean": (
            round(sum(v["video_kbps"] for v in received) / len(received), 1) if received else 0
        ),
        "loss_pct_mean": (
            round(sum(v["loss_pct"] for v in received) / len(received), 2) if received else 0
        ),
        "freezes": sum(v["freezes"] for v in viewers),
        "errors": len(errors) + failed_workers,
    }
    return {
        "command": {
            "url": args.url,
            "room": args.room,
            "publishers": args.publishers,
            "viewers": args.viewers,
            "duration_s": args.duration,
            "video_bitrate": args.video_bitrate,
            "video_size": args.video_size,
            "simulcast": args.simulcast,
            "processes": args.processes,
            "batch": args.batch,
        },
        "elapsed_s": round(elapsed_s, 1),
        "summary": summary,
        "publisher_join_ms": publishers["join_ms"] if publishers else [],
        "viewers": viewers,
        "errors": errors[:100],
    }


def _fmt(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def print_table(report: dict[str, Any]) -> None:
    s = report["summary"]
    print(
        f"\nload test: {s['publishers']} publisher(s), {s['joined']}/{s['viewers']} viewers "
        f"joined, {report['command']['duration_s']:g} s measured ({report['elapsed_s']} s run)"
    )
    print(f"join time ms       p50 {_fmt(s['join_ms_p50'])}  p95 {_fmt(s['join_ms_p95'])}")
    print(
        f"first video ms     p50 {_fmt(s['first_video_ms_p50'])}  "
        f"p95 {_fmt(s['first_video_ms_p95'])}"
    )
    print(
        f"video kbps (mean)  {s['video_kbps_mean']}   loss % (mean) {s['loss_pct_mean']}   "
        f"freezes {s['freezes']}   errors {s['errors']}"
    )
    header = (
        "viewer",
        "join ms",
        "1st video ms",
        "video kbps",
        "audio kbps",
        "layer",
        "loss %",
        "freezes",
        "error",
    )
    rows = [
        (
            v["identity"].rsplit("-", 1)[-1],
            _fmt(v["join_ms"]),
            _fmt(v["first_video_ms"]),
            _fmt(v["video_kbps"]),
            _fmt(v["audio_kbps"]),
            _fmt(v["layer"]),
            _fmt(v["loss_pct"]),
            _fmt(v["freezes"]),
            _fmt(v["error"])[:40],
        )
        for v in report["viewers"]
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    for error in report["errors"][:10]:
        print(f"error: {error}")
