"""GET /metrics: scraped and parsed during real sessions (aiortc publisher and viewers)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfu import Config
from sfu.client import RoomClient
from sfu.metrics.totals import Totals

from .conftest import LOOPBACK, free_port, start_node
from .media_sources import ColorVideoTrack, ToneAudioTrack
from .test_loss import Dropper, video_media_payload_types

ROOT = Path(__file__).resolve().parent.parent


class Scrape:
    """One parsed exposition: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def value(self, name: str, **labels: str) -> float:
        """The sum over the samples of `name` whose labels include `labels`."""
        found = [v for lab, v in self.samples.get(name, []) if labels.items() <= lab.items()]
        assert found, f"no sample {name}{labels}"
        return sum(found)

    def bucket(self, name: str, le: str, **labels: str) -> float:
        return self.value(f"{name}_bucket", le=le, **labels)


def admin_headers(node) -> dict[str, str]:
    return {"Authorization": "Bearer " + node.token("prometheus", room="*", admin=True)}


async def scrape(node, url: str | None = None, headers: dict | None = None) -> Scrape:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            url or f"{node.url}/metrics",
            headers=admin_headers(node) if headers is None else headers,
        ) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return Scrape(await r.text())


async def until(node, check, timeout: float = 10.0) -> Scrape:
    """Scrape until `check(scrape)` holds (values that need RTCP to come round)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await scrape(node)
        if check(result):
            return result
        assert time.monotonic() < deadline, "metric never reached the expected value"
        await asyncio.sleep(0.3)


async def test_metrics_follow_a_live_session(sfu_node):
    node_id = sfu_node.node.node_id
    before = await scrape(sfu_node)
    assert before.value("sfu_rooms") == 0
    assert before.value("sfu_node_info", node_id=node_id, region="local") == 1

    host = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    clients = [host]
    try:
        await host.publish([ColorVideoTrack((200, 40, 40)), ToneAudioTrack(440.0)])
        viewer = await RoomClient.connect(sfu_node.url, sfu_node.token("viewer"), network=LOOPBACK)
        clients.append(viewer)
        video = await viewer.next_track(kind="video", timeout=15)
        await asyncio.wait_for(video.track.recv(), 10)

        first = await scrape(sfu_node)
        assert first.value("sfu_rooms") == 1
        assert first.value("sfu_participants", kind="websocket") == 2
        assert first.value("sfu_published_tracks", kind="video") == 1
        assert first.value("sfu_published_tracks", kind="audio") == 1
        assert first.value("sfu_subscribed_tracks", kind="video") == 1
        assert first.value("sfu_subscribed_tracks", kind="audio") == 1
        assert first.value("sfu_joins_total") == 2
        # every sample carries the node and region labels
        for name, samples in first.samples.items():
            if name.startswith("sfu_"):
                assert all(lab.get("node_id") == node_id for lab, _ in samples), name
        # the viewer's join reached its first video packet; the phase histogram has it
        assert first.value("sfu_join_phase_seconds_count", phase="first_video_packet") >= 1
        assert first.bucket("sfu_join_phase_seconds", "+Inf", phase="joined") == 2
        assert first.value("sfu_join_phase_seconds_sum", phase="subscriber_dtls") > 0

        # packets flow: the counters move between two scrapes
        await asyncio.sleep(1.5)
        second = await until(
            sfu_node, lambda s: s.value("sfu_subscriber_rtt_seconds_gcount") >= 1, timeout=10
        )
        for name, labels in (
            ("sfu_packets_received_total", {"kind": "video"}),
            ("sfu_packets_received_total", {"kind": "audio"}),
            ("sfu_bytes_received_total", {"kind": "video"}),
            ("sfu_packets_sent_total", {"kind": "video", "type": "media"}),
            ("sfu_bytes_sent_total", {"kind": "audio", "type": "media"}),
        ):
            assert second.value(name, **labels) > first.value(name, **labels) > 0, (name, labels)
        # 30 fps of 320x240 VP8 for > 1.5 s: far more than 45 packets, bytes >> packets
        assert second.value("sfu_packets_received_total", kind="video") > 45
        assert second.value("sfu_bytes_received_total", kind="video") > 20 * second.value(
            "sfu_packets_received_total", kind="video"
        )
        # RTT from the viewer's receiver reports: loopback, so far under 0.5 s even on a
        # loaded machine; and (next to) no loss
        rtt_tracks = second.value("sfu_subscriber_rtt_seconds_gcount")
        assert second.bucket("sfu_subscriber_rtt_seconds", "0.5") == rtt_tracks
        assert 0 < second.value("sfu_subscriber_rtt_seconds_gsum") < 0.5 * rtt_tracks
        assert second.value("sfu_subscriber_loss_ratio_gcount") == rtt_tracks
        assert second.bucket("sfu_subscriber_loss_ratio", "0.05") == rtt_tracks
        assert second.value("sfu_event_loop_lag_seconds_count") >= 2
        assert second.value("process_resident_memory_bytes") > 0
        sent_before_leaving = second.value("sfu_packets_sent_total", kind="video")
    finally:
        for client in clients:
            await client.leave()

    # counters keep what departed participants counted; gauges go back to zero
    after = await until(sfu_node, lambda s: s.value("sfu_rooms") == 0)
    assert after.value("sfu_participants") == 0
    assert after.value("sfu_published_tracks") == 0
    assert after.value("sfu_subscribed_tracks") == 0
    assert after.value("sfu_packets_sent_total", kind="video") >= sent_before_leaving
    assert after.value("sfu_joins_total") == 2


async def test_metrics_need_an_admin_token_on_the_main_port(sfu_node):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sfu_node.url}/metrics") as r:
            assert r.status == 401
        viewer = {"Authorization": "Bearer " + sfu_node.token("v", subscribe=True)}
        async with http.get(f"{sfu_node.url}/metrics", headers=viewer) as r:
            assert r.status == 403
        # a room admin sees its room in /api/stats, but not the whole node's metrics
        room_admin = {"Authorization": "Bearer " + sfu_node.token("a", room="shop", admin=True)}
        async with http.get(f"{sfu_node.url}/metrics", headers=room_admin) as r:
            assert r.status == 403
    assert (await scrape(sfu_node)).value("sfu_rooms") == 0


async def test_metrics_on_their_own_port_need_no_token():
    config = Config()
    config.metrics.port = free_port()
    node = await start_node(config)
    try:
        url = f"http://127.0.0.1:{config.metrics.port}/metrics"
        metrics = await scrape(node, url=url, headers={})
        assert metrics.value("sfu_rooms") == 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.url}/metrics", headers=admin_headers(node)) as r:
                assert r.status == 404  # not on the public port any more
    finally:
        await node.runner.cleanup()
    with pytest.raises(aiohttp.ClientConnectionError):  # the listener went with the app
        await scrape(node, url=url, headers={})


async def test_metrics_can_be_switched_off():
    config = Config()
    config.metrics.enabled = False
    node = await start_node(config)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.url}/metrics", headers=admin_headers(node)) as r:
                assert r.status == 404
    finally:
        await node.runner.cleanup()


@pytest.mark.slow
async def test_nacks_and_retransmissions_are_counted(sfu_node):
    """~5 % of video packets toward one viewer are lost: its NACKs and the node's
    retransmissions show up in the counters."""
    host = await RoomClient.connect(sfu_node.url, sfu_node.token("host"), network=LOOPBACK)
    clients = [host]
    try:
        await host.publish([ColorVideoTrack((40, 60, 200))])
        viewer = await RoomClient.connect(sfu_node.url, sfu_node.token("lossy"), network=LOOPBACK)
        clients.append(viewer)
        video = await viewer.next_track(kind="video", timeout=15)
        await asyncio.wait_for(video.track.recv(), 10)
        before = await scrape(sfu_node)
        pc = viewer.subscriber.pc
        dropper = Dropper(video_media_payload_types(pc).__contains__, seed=99)
        transport = pc.getTransceivers()[0].receiver.transport
        original = transport._handle_rtp_data

        async def lossy(data: bytes, arrival_time_ms: int) -> None:
            if not dropper.drop(data):
                await original(data, arrival_time_ms)

        transport._handle_rtp_data = lossy
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # keep the decoder fed so it NACKs
            await asyncio.wait_for(video.track.recv(), 5)
            if dropper.dropped >= 5:
                break
        await asyncio.sleep(1.0)
        after = await until(
            sfu_node,
            lambda s: (
                s.value("sfu_packets_sent_total", type="retransmission")
                > before.value("sfu_packets_sent_total", type="retransmission")
            ),
        )
        assert dropper.dropped >= 3
        assert after.value("sfu_subscriber_nacks_total") > before.value(
            "sfu_subscriber_nacks_total"
        )
        assert after.value("sfu_bytes_sent_total", type="retransmission") > 0
        # nothing was lost on the publisher's leg
        assert after.value("sfu_publisher_nack_packets_total") == 0
    finally:
        for client in clients:
            await client.leave()


async def test_agent_turns_and_caption_delay_from_relayed_messages(sfu_node):
    agent = await RoomClient.connect(sfu_node.url, sfu_node.token("agent-job1"), network=LOOPBACK)
    buyer = await RoomClient.connect(sfu_node.url, sfu_node.token("buyer"), network=LOOPBACK)
    try:
        timings = {"endpointing": 300.0, "stt": 420.0, "answer": 15.0, "tts_first_audio": 180.0}
        timings["reply"] = 650.0
        line = {"speaker": "agent", "final": True, "text": "hi", "timings_ms": timings}
        await agent.send_data(line, topic="transcript")
        await agent.send_data(
            line | {"timings_ms": {"stt": "slow", "reply": -5}}, topic="transcript"
        )
        await agent.send_data(
            {"speaker": "user", "final": True, "timings_ms": timings}, "transcript"
        )
        await agent.send_data({"kind": "barge_in", "voiced_ms": 300}, topic="interruption")
        caption = {"final": True, "text": "olá", "end": time.time() - 1.2}
        await agent.send_data(caption, topic="captions/pt")
        await agent.send_data(caption | {"final": False}, topic="captions/pt")
        # a buyer cannot fake agent figures
        await buyer.send_data(line, topic="transcript")
        await buyer.send_data(caption, topic="captions/pt")
        got = await until(sfu_node, lambda s: s.value("sfu_captions_total") >= 1, timeout=5)
        await asyncio.sleep(0.3)
        got = await scrape(sfu_node)
        assert got.value("sfu_agent_turns_total") == 2  # the buyer's line did not count
        assert got.value("sfu_agent_voice_to_voice_seconds_count") == 1
        assert got.value("sfu_agent_voice_to_voice_seconds_sum") == pytest.approx(0.95)
        assert got.bucket("sfu_agent_voice_to_voice_seconds", "1.0") == 1
        assert got.value("sfu_agent_stage_seconds_count", stage="stt") == 1  # "slow" ignored
        assert got.value("sfu_agent_stage_seconds_sum", stage="stt") == pytest.approx(0.42)
        assert got.value("sfu_agent_stage_seconds_sum", stage="tts_first_audio") == pytest.approx(
            0.18
        )
        assert got.value("sfu_agent_interruptions_total", kind="barge_in") == 1
        assert got.value("sfu_captions_total") == 1
        assert 1.2 <= got.value("sfu_caption_delay_seconds_sum") < 10
    finally:
        await buyer.leave()
        await agent.leave()


def test_totals_never_go_down():
    class Counter:
        def __init__(self, value: int) -> None:
            self.value = value

    totals = Totals()
    a, b = Counter(10), Counter(5)

    def readings(*objs):
        return [("packets", ("video",), o, "n", o.value) for o in objs]

    totals.scrape(readings(a, b))
    assert totals.get("packets", ("video",)) == 15
    a.value, b.value = 12, 4  # b went down (e.g. RFC 3550 loss after a late packet)
    totals.scrape(readings(a, b))
    assert totals.get("packets", ("video",)) == 17
    b.value = 9
    totals.retire(readings(b))  # b leaves with its last count
    totals.scrape(readings(a))
    assert totals.get("packets", ("video",)) == 21
    c = Counter(3)  # a new object (a restarted stream) counts from zero
    totals.scrape(readings(a, c))
    assert totals.get("packets", ("video",)) == 24
    totals.scrape(readings(a, c))  # reading again adds nothing
    assert totals.get("packets", ("video",)) == 24


async def test_dashboard_uses_only_metrics_the_node_exposes():
    """docs/grafana-dashboard.json: every series a panel queries exists on a node (with
    webhooks configured), so no panel stays empty because of a typo."""
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\b(?:sfu|process)_[a-z_]+", expr)}
    assert len(used) > 30
    config = Config()
    config.webhooks.urls = [f"http://127.0.0.1:{free_port()}/unused"]
    node = await start_node(config)
    try:
        exposed = set((await scrape(node)).samples)
    finally:
        await node.runner.cleanup()
    assert used <= exposed, sorted(used - exposed)
