"""`python -m sfu nodes`, and what the cluster reads from the network: records and messages
from Redis are refused when malformed (property test), and garbage published on a room's
channel is dropped without stopping the messages after it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.cluster import ClusterError, ClusterMessage, MessageKind, NodeInfo, NodeLoad
from sfu.cluster.records import ParticipantRecord, RecordError
from sfu.cluster.redis_bus import MAX_MESSAGE_BYTES, RedisBus
from sfu.cluster.redis_cluster import RedisCluster
from sfu.cluster.redis_keys import RedisKeys
from sfu.cluster.redis_link import RedisLink, redact
from tests.conftest import free_port

from .conftest import RedisServer, unique_prefix

ROOT = Path(__file__).resolve().parents[2]


def run_nodes(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sfu", "nodes", "--config", str(config), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_config(tmp_path: Path, redis_url: str, prefix: str = "sfu") -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[cluster]\nredis_url = "{redis_url}"\nkey_prefix = "{prefix}"\n')
    return path


@pytest.mark.redis
async def test_nodes_lists_live_nodes_with_region_url_and_load(redis_server, tmp_path):
    prefix = unique_prefix()
    cluster = RedisCluster(redis_server.url, key_prefix=prefix)
    await cluster.start()
    try:
        await cluster.registry.heartbeat(
            NodeInfo(
                "sa-east-1",
                "sa-east",
                "https://sa-east-1.sfu.example.com",
                load=NodeLoad(
                    cpu_pct=37.5, rooms=2, participants=41, tracks=3, bitrate_bps=8_250_000
                ),
            )
        )
        await cluster.registry.heartbeat(NodeInfo("eu-west-1", "eu-west", "https://eu.example"))
        config = write_config(tmp_path, redis_server.url, prefix)
        result = await asyncio.to_thread(run_nodes, config)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == [
            "NODE",
            "REGION",
            "URL",
            "CPU%",
            "ROOMS",
            "PARTS",
            "TRACKS",
            "MBIT/S",
            "SEEN",
            "STATE",
        ]
        assert lines[1].split()[:3] == ["eu-west-1", "eu-west", "https://eu.example"]
        assert lines[2].split()[:8] == [
            "sa-east-1",
            "sa-east",
            "https://sa-east-1.sfu.example.com",
            "37.5",
            "2",
            "41",
            "3",
            "8.25",
        ]
        result = await asyncio.to_thread(run_nodes, config, "--json")
        assert result.returncode == 0, result.stderr
        listed = [NodeInfo.from_json(n) for n in json.loads(result.stdout)]
        assert [n.node_id for n in listed] == ["eu-west-1", "sa-east-1"]
        assert listed[1].load.participants == 41 and listed[1].heartbeat_at > 0
    finally:
        await cluster.close()


def test_nodes_without_redis_url_says_so(tmp_path):
    result = run_nodes(write_config(tmp_path, ""))
    assert result.returncode == 1
    assert "cluster.redis_url is empty" in result.stderr


def test_nodes_with_redis_down_fails_with_a_clear_error(tmp_path):
    config = write_config(tmp_path, f"redis://:secret-pw@127.0.0.1:{free_port()}/0")
    result = run_nodes(config)
    assert result.returncode == 1
    assert "cluster state unavailable" in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert "secret-pw" not in result.stderr  # the password is never printed


def test_redact_hides_only_the_password():
    assert redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("rediss://user:pw@h/1") == "rediss://user:***@h/1"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


# -- network input ---------------------------------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_message_decoding_accepts_or_refuses_never_crashes(data: bytes):
    bus = RedisBus.__new__(RedisBus)  # only the decoder: no connection needed
    bus.dropped = 0
    decoded = bus._decode(b"7 " + data)
    if decoded is None:
        assert bus.dropped == 1
    else:
        seq, message = decoded
        assert seq == 7 and isinstance(message, ClusterMessage)
        assert isinstance(message.kind, MessageKind) and isinstance(message.body, dict)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(MessageKind)),
    origin=st.text(max_size=20),
    room=st.text(max_size=20),
    body=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    seq=st.integers(min_value=1, max_value=2**53),
)
def test_every_valid_message_survives_the_wire(kind, origin, room, body, seq):
    bus = RedisBus.__new__(RedisBus)
    bus.dropped = 0
    message = ClusterMessage(kind, origin, room=room, body=body)
    decoded = bus._decode(f"{seq} ".encode() + message.dumps().encode())
    assert decoded == (seq, message)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["room", "identity", "sid", "node_id", "kind", "name", "joined_at", "x"]),
        json_values,
    )
)
def test_records_with_wrong_fields_or_types_are_refused(fields: dict):
    try:
        record = ParticipantRecord.from_json(fields)
    except RecordError:
        return
    for name in ("room", "identity", "sid", "node_id", "kind", "name"):
        assert isinstance(getattr(record, name), str)
    assert isinstance(record.joined_at, int | float) and not isinstance(record.joined_at, bool)


def test_an_oversized_message_is_refused_before_sending():
    bus = RedisBus(RedisLink("redis://127.0.0.1:1/0", 0.5), RedisKeys("t"))
    big = ClusterMessage(MessageKind.DATA, "n", room="r", body={"x": "y" * MAX_MESSAGE_BYTES})
    with pytest.raises(ClusterError, match="is over"):
        asyncio.run(bus.publish(big))


@pytest.mark.redis
async def test_garbage_on_a_room_channel_is_dropped_and_delivery_goes_on(
    redis_server: RedisServer,
):
    prefix = unique_prefix()
    node = RedisCluster(redis_server.url, key_prefix=prefix)
    await node.start()
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        got: list[ClusterMessage] = []
        await node.bus.subscribe_room("show", got.append)
        channel = node.keys.room_channel("show")
        for junk in (
            b"\xff\xfe not utf-8",
            b"12 {not json",
            b"x" * (MAX_MESSAGE_BYTES + 100),
            b'3 {"kind":"nope","origin":"a"}',
            b'4 {"kind":"data","origin":5}',
        ):
            await raw.publish(channel, junk)
        message = ClusterMessage(MessageKind.DATA, "eu-1", room="show", body={"text": "ok"})
        await node.bus.publish(message)
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.02)
        assert [m.body for m in got] == [{"text": "ok"}]
        assert node.bus.dropped == 5
    finally:
        await raw.aclose()
        await node.close()
