"""The fan-out benchmark runs end to end: SFU, publisher and subscribers in their own processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fanout import payload_key
from sfu.media.rtp import ExtensionIds, RtpHeader
from sfu.media.vp8 import parse_vp8, rewrite_vp8

from .simulcast_packets import three_layers

ROOT = Path(__file__).resolve().parent.parent
KEYS = (
    "subscribers",
    "seconds",
    "packets_forwarded",
    "sfu_packets_sent",
    "cpu_us_per_packet",
    "forward_delay_ms_p50",
    "forward_delay_ms_p99",
    "loss_pct",
    "sfu_cpu_pct",
    "packets_per_s",
)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_quick_fanout_benchmark_reports_its_figures(tmp_path):
    out = tmp_path / "fanout.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "fanout.py"),
        "--quick",
        "--subscribers",
        "3",
        "--seconds",
        "3",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=40)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "forward delay p99" in done.stdout  # the table was printed
    result = json.loads(out.read_text())
    missing = [k for k in KEYS if k not in result]
    assert not missing, missing
    assert result["subscribers"] == 3
    assert result["packets_forwarded"] > 0
    assert result["sfu_packets_sent"] > 0
    # every subscriber got (nearly) everything the SFU says it sent in the window
    assert result["packets_forwarded"] >= 0.95 * result["sfu_packets_sent"]
    assert result["loss_pct"] < 2.0
    assert result["cpu_us_per_packet"] > 0
    assert 0 < result["forward_delay_ms_p50"] <= result["forward_delay_ms_p99"]
    assert result["delay_samples"] > 0.9 * result["packets_forwarded"]


def test_payload_key_survives_the_picture_id_rewrite() -> None:
    """The benchmark matches what subscribers receive with what the publisher sent by a key
    over the payload; the SFU may continue VP8 picture ids in the descriptor (a subscriber
    started on the cached keyframe), so the key must not cover those bytes."""
    packets = three_layers()[2].frame(keyframe=True, tid=0, pt=96)
    for packet in packets:
        h = RtpHeader.parse(packet, ExtensionIds())
        payload = bytearray(packet[h.payload_offset :])
        info = parse_vp8(payload)
        assert info is not None and info.picture_id >= 0
        pid, tl0 = (info.picture_id + 1234) & 0x7FFF, (info.tl0picidx + 9) & 0xFF
        rewrite_vp8(payload, 0, info, pid, tl0)
        rewritten = packet[: h.payload_offset] + bytes(payload)
        assert rewritten != packet
        assert payload_key(rewritten) == payload_key(packet)
        other = packet[:-1] + bytes([packet[-1] ^ 0xFF])  # other media data: another key
        assert payload_key(other) != payload_key(packet)
