"""The attack benchmark: its packet and offer builders, its verdicts, and one short real run."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.attack import (
    STUN_MAGIC,
    largest_fitting,
    malformed_stun,
    offer_with_mlines,
    offer_with_rids,
    summarise,
    twcc_bomb,
    without_lines,
    ws_frame,
)
from benchmarks.livenode import min_rate, rate_between, scan_log
from sfu.media.rtp import is_rtcp
from sfu.media.sdp import parse_offer
from sfu.media.twcc import TwccFeedback

ROOT = Path(__file__).resolve().parent.parent

# an aiortc offer, trimmed: one video and one audio m-section, BUNDLEd
TEMPLATE = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "a=msid-semantic:WMS *\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP4 127.0.0.1\r\na=sendonly\r\na=mid:0\r\n"
    "a=rtcp-mux\r\na=ssrc:11 cname:x\r\na=rtpmap:97 VP8/90000\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na=sendonly\r\na=mid:1\r\n"
    "a=rtcp-mux\r\na=rtpmap:96 opus/48000/2\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
)


def test_malformed_stun_is_a_binding_request_whose_priority_is_two_bytes() -> None:
    txid = bytes(range(12))
    packet = malformed_stun(txid)
    kind, length, cookie = struct.unpack_from("!HHI", packet)
    assert (kind, cookie) == (0x0001, STUN_MAGIC)
    assert packet[8:20] == txid
    assert length == len(packet) - 20 and length % 4 == 0  # the header's length is honest
    attribute, attr_length = struct.unpack_from("!HH", packet, 20)
    assert (attribute, attr_length) == (0x0024, 2)  # PRIORITY, 2 bytes instead of 4


def test_twcc_bomb_is_40_bytes_of_valid_feedback_claiming_65535_statuses() -> None:
    packet = twcc_bomb(0x1234, 0xABCD, base_seq=7, fb_count=3)
    assert len(packet) == 40
    assert is_rtcp(packet)
    feedback = TwccFeedback.parse(packet)  # well formed: the parser accepts it
    assert len(feedback.statuses) == 65535
    assert feedback.media_ssrc == 0xABCD and feedback.base_seq == 7 and feedback.fb_count == 3


def test_ws_frame_masks_and_sizes_its_payload() -> None:
    for size in (5, 200, 70_000):  # 7-bit, 16-bit and 64-bit length forms
        payload = bytes(i % 251 for i in range(size))
        frame = ws_frame(payload, mask=b"\x01\x02\x03\x04")
        assert frame[0] == 0x81 and frame[1] & 0x80
        n = frame[1] & 0x7F
        offset = 2
        if n == 126:
            n, offset = int.from_bytes(frame[2:4], "big"), 4
        elif n == 127:
            n, offset = int.from_bytes(frame[2:10], "big"), 10
        assert n == size
        mask, body = frame[offset : offset + 4], frame[offset + 4 :]
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == payload


def test_oversized_offers_have_what_they_claim() -> None:
    rids = parse_offer(offer_with_rids(TEMPLATE, 300, mlines=4))
    assert len(rids) == 4 and all(m.kind == "video" for m in rids)
    assert len({m.mid for m in rids}) == 4
    text = offer_with_rids(TEMPLATE, 300, mlines=4)
    assert text.count("a=rid:") == 1200 and "a=ssrc" not in text
    assert "a=group:BUNDLE 0 1 2 3\r\n" in text
    many = offer_with_mlines(TEMPLATE, 50)
    parsed = parse_offer(many)
    assert len(parsed) == 50 and len({m.mid for m in parsed}) == 50
    assert "\n" not in many.replace("\r\n", "")  # CRLF throughout


def test_largest_fitting_finds_the_limit() -> None:
    n = largest_fitting(lambda k: offer_with_rids(TEMPLATE, k), 64 * 1024)
    assert len(offer_with_rids(TEMPLATE, n).encode()) <= 64 * 1024
    assert len(offer_with_rids(TEMPLATE, n + 1).encode()) > 64 * 1024


def test_without_lines_drops_the_fingerprint() -> None:
    stripped = without_lines(TEMPLATE, "a=fingerprint")
    assert "fingerprint" not in stripped and stripped.count("m=") == 2


def test_summary_takes_the_worst_attack_and_counts_tracebacks() -> None:
    def attack(ratio, tracebacks, node="ok"):
        return {"observer_rate_ratio": ratio, "tracebacks": tracebacks, "node": node}

    good = summarise({"a": attack(0.98, 0), "b": attack(1.01, 0)}, quick=True)
    assert good["observer_rate_ratio_min"] == 0.98 and good["tracebacks"] == 0
    assert good["targets"]["met"]
    bad = summarise({"a": attack(0.95, 2), "b": attack(0.5, 0), "c": attack(1.0, 0)}, True)
    assert bad["observer_rate_ratio_min"] == 0.5 and bad["tracebacks"] == 2
    assert not bad["targets"]["met"]
    # no ratio at all (the observer got nothing) is the worst case, a dead node fails too
    dead = summarise({"a": attack(None, 0, "died")}, True)
    assert dead["observer_rate_ratio_min"] == 0.0 and dead["nodes_down"] == ["a"]
    assert set(dead) >= {"observer_rate_ratio_min", "tracebacks", "attacks", "targets"}


def test_scan_log_counts_error_records_and_tracebacks_once() -> None:
    log = "\n".join(
        [
            "2026-01-01 10:00:00,001 WARNING sfu.app: development key",
            "2026-01-01 10:00:01,002 ERROR asyncio: Task exception was never retrieved",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in f',
            "ValueError: first",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            '  File "x.py", line 2, in g',
            "AssertionError",
            "2026-01-01 10:00:02,003 INFO sfu.room: fine",
            "Traceback (most recent call last):",  # printed outside any record (a thread)
            '  File "y.py", line 3, in h',
            "KeyError: 1",
            "2026-01-01 10:00:03,004 CRITICAL sfu.node: gone",
        ]
    )
    found = scan_log(log)
    assert found.tracebacks == 2  # the chained one counts once
    assert found.errors == 3  # ERROR, the bare traceback, CRITICAL
    assert found.samples[0].startswith("ERROR asyncio")
    assert scan_log("2026-01-01 10:00:00,001 WARNING x: y\n").errors == 0


def test_observer_rates_from_running_counts() -> None:
    samples = [{"t": 10 + 0.5 * i, "packets": 80 * i, "ready": True} for i in range(21)]
    assert rate_between(samples, 10.0, 20.0) == pytest.approx(160.0)
    assert rate_between(samples, 5.0, 6.0) is None  # before the first sample
    assert min_rate(samples, 10.0, 20.0) == pytest.approx(160.0)
    # the observer stalls: no new samples after t=14 -> the rest of the window counts as 0
    stalled = samples[:9]
    assert rate_between(stalled, 10.0, 20.0) == pytest.approx(80 * 8 / 10.0)
    assert min_rate(stalled, 10.0, 20.0) == 0.0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_one_attack_runs_against_a_live_node(tmp_path) -> None:
    out = tmp_path / "attack.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "attack.py"), "--quick"]
    command += ["--only", "token_matrix", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "obs pkt/s before" in done.stdout  # the table was printed
    result = json.loads(out.read_text())
    assert set(result["attacks"]) == {"token_matrix"}
    attack = result["attacks"]["token_matrix"]
    assert attack["observer_pkts_per_s_before"] > 50  # the observer received the stream
    assert attack["observer_rate_ratio"] == result["observer_rate_ratio_min"] > 0
    assert attack["node"] == "ok" and attack["requests"] > 0 and attack["unanswered"] == 0
    assert isinstance(result["tracebacks"], int)
    # every case got an answer (a status or a WebSocket reply), none hung
    assert all(sum(answers.values()) > 0 for answers in attack["answers"].values())
