"""[cluster] settings: defaults mean one node without Redis, bad values are refused with a
message naming the key, and the two region examples form one cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfu import Config
from sfu.cluster import MemoryCluster, create_backend
from sfu.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_is_one_node_without_redis():
    settings = Config().cluster
    assert settings.redis_url == ""
    assert (settings.heartbeat_s, settings.node_ttl_s) == (2.0, 5.0)
    assert isinstance(create_backend(settings), MemoryCluster)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('redis_url = "http://redis:6379"', "cluster.redis_url must be empty or start with"),
        ('public_url = "sfu.example.com"', "cluster.public_url must be empty or an http"),
        ("heartbeat_s = 0", "cluster.heartbeat_s must be positive"),
        ("heartbeat_s = 3.0", "cluster.node_ttl_s must be at least twice"),
        ("node_ttl_s = 1", "cluster.node_ttl_s must be at least twice"),
        ('key_prefix = ""', "cluster.key_prefix must be"),
        ('key_prefix = "a b"', "cluster.key_prefix must be"),
        ("redis_timeout_s = -1", "cluster.redis_timeout_s must be positive"),
        ("max_participants = -1", "cluster.max_participants must be 0"),
        ('node_ttl_s = "5"', "cluster.node_ttl_s must be float"),
        ("redis = 1", "unknown setting cluster.redis"),
    ],
)
def test_bad_cluster_settings_are_refused(tmp_path: Path, text: str, message: str):
    path = tmp_path / "node.toml"
    path.write_text(f"[cluster]\n{text}\n")
    with pytest.raises(ConfigError, match=message):
        Config.load(path)


def test_a_redis_url_with_tls_or_a_socket_is_accepted(tmp_path: Path):
    for url in ("rediss://:pw@redis.example.com:6380/0", "unix:///run/redis/redis.sock"):
        path = tmp_path / "node.toml"
        path.write_text(f'[cluster]\nredis_url = "{url}"\n')
        assert Config.load(path).cluster.redis_url == url


def test_the_two_region_examples_form_one_cluster():
    sa = Config.load(ROOT / "configs" / "sa-east.toml")
    eu = Config.load(ROOT / "configs" / "eu-west.toml")
    assert sa.cluster.redis_url == eu.cluster.redis_url != ""  # one shared Redis
    assert sa.cluster.key_prefix == eu.cluster.key_prefix
    assert sa.server.node_id != eu.server.node_id
    assert sa.cluster.public_url != eu.cluster.public_url
    assert sa.cluster.public_url.startswith("https://")
