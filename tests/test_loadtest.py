"""`python -m sfu loadtest` against a node this test starts (loopback, small numbers)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from sfu import Config

from .conftest import start_node

KEY, SECRET = "lt-key", "lt-secret-0123456789-0123456789-0123456789"


async def run_loadtest(url: str, secret: str, json_path: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfu",
        "loadtest",
        "--url",
        url,
        "--api-key",
        KEY,
        "--api-secret",
        secret,
        "--room",
        "lt",
        "--json",
        str(json_path),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode, out.decode()


async def test_loadtest_against_a_local_node_reports_every_viewer(tmp_path: Path):
    config = Config()
    config.auth.api_keys = {KEY: SECRET}
    node = await start_node(config)
    try:
        rc, out = await run_loadtest(
            node.url,
            SECRET,
            tmp_path / "lt.json",
            "--publishers", "1", "--viewers", "3", "--duration", "5", "--processes", "2",
            "--video-size", "320x180", "--video-bitrate", "300000",
        )  # fmt: skip
        assert rc == 0, out
        report = json.loads((tmp_path / "lt.json").read_text())
        s = report["summary"]
        assert s["publishers"] == 1 and s["joined"] == 3 and s["errors"] == 0, report
        assert s["join_ms_p50"] is not None and s["join_ms_p95"] >= s["join_ms_p50"]
        assert len(report["viewers"]) == 3
        for viewer in report["viewers"]:
            assert viewer["layer"] == "320x180", viewer
            assert 100 < viewer["video_kbps"] < 1500, viewer
            assert viewer["audio_kbps"] > 20, viewer
            assert viewer["loss_pct"] < 5 and viewer["error"] is None, viewer
        assert "join time ms" in out and "| viewer" in out and "viewers joined" in out
        # the node saw them: one publisher, three viewers in the room while it ran
        assert report["command"]["viewers"] == 3
    finally:
        await node.runner.cleanup()


async def test_loadtest_with_a_wrong_secret_reports_the_failed_joins(tmp_path: Path):
    config = Config()
    config.auth.api_keys = {KEY: SECRET}
    node = await start_node(config)
    try:
        rc, out = await run_loadtest(
            node.url,
            "wrong-secret-0123456789-0123456789-012345",
            tmp_path / "lt.json",
            "--viewers", "2", "--duration", "1", "--processes", "1",
            "--video-size", "160x96", "--join-window", "10",
        )  # fmt: skip
        assert rc == 1, out
        report = json.loads((tmp_path / "lt.json").read_text())
        assert report["summary"]["joined"] == 0 and report["summary"]["errors"] >= 3, report
        assert all(v["error"].startswith("join:") for v in report["viewers"])
    finally:
        await node.runner.cleanup()


async def test_loadtest_simulcast_publisher_layers_reach_the_viewers(tmp_path: Path):
    config = Config()
    config.auth.api_keys = {KEY: SECRET}
    node = await start_node(config)
    try:
        run = asyncio.ensure_future(run_loadtest(
            node.url,
            SECRET,
            tmp_path / "lt.json",
            "--simulcast", "--publishers", "2", "--viewers", "2", "--duration", "4",
            "--video-size", "640x360", "--video-bitrate", "900000",
        ))  # fmt: skip
        widths: list[int] = []
        while not run.done() and not widths:
            await asyncio.sleep(0.2)
            for room in node.node.stats()["rooms"]:
                for participant in room["participants"]:
                    for producer in participant.get("producers", []):
                        layers = producer["layers"]
                        if producer["simulcast"] and all(x.get("width") for x in layers):
                            widths = [x["width"] for x in layers]
        rc, out = await run
        assert rc == 0, out
        assert widths == [160, 320, 640]  # the node received all three layers
        report = json.loads((tmp_path / "lt.json").read_text())
        s = report["summary"]
        assert s["joined"] == 2 and s["publishers"] == 2 and report["command"]["simulcast"], s
        for viewer in report["viewers"]:
            # one of the three layers (1/4, 1/2, full size), picked by the node per viewer
            assert viewer["layer"] in ("160x90", "320x180", "640x360"), viewer
            assert viewer["video_kbps"] > 50 and viewer["loss_pct"] < 5, viewer
        assert report["publisher_join_ms"] and report["summary"]["errors"] == 0
    finally:
        await node.runner.cleanup()
