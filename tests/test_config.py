"""Settings files: the examples in configs/ load, and bad files fail with a clear message."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sfu import Config, create_app
from sfu.config import DEV_API_SECRET, ConfigError

ROOT = Path(__file__).resolve().parent.parent
# Node settings files; agent.toml configures the agent worker and is tested with it.
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.toml") if p.name != "agent.toml")
PYTHON = ROOT / ".venv" / "bin" / "python"
if not PYTHON.exists():  # a venv elsewhere: the interpreter running the tests has sfu installed
    PYTHON = Path(sys.executable)


def _load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return Config.load(path)


def test_the_expected_examples_exist():
    names = {p.name for p in CONFIGS}
    assert {"local.toml", "demo.toml", "eu-west.toml", "sa-east.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_loads_and_lists_every_setting(path: Path):
    config = Config.load(path)
    create_app(config)  # the whole server accepts it (nothing is bound until it runs)
    with open(path, "rb") as f:
        data = tomllib.load(f)
    for section in dataclasses.fields(Config):
        listed = set(data.get(section.name, {}))
        expected = {f.name for f in dataclasses.fields(getattr(config, section.name))}
        assert listed == expected, f"{path.name} [{section.name}] misses {expected - listed}"


def test_local_example_is_exactly_the_defaults():
    assert Config.load(ROOT / "configs" / "local.toml") == Config()
    assert Config.load(None) == Config()


def test_demo_example_is_the_defaults_plus_demo_tokens_and_the_agent_room():
    demo = Config.load(ROOT / "configs" / "demo.toml")
    assert demo.server.demo_tokens is True
    assert demo.agents.auto_rooms == ["agent-demo"]  # the "talk to the agent" page's room
    demo.server.demo_tokens = False
    demo.agents.auto_rooms = []
    assert demo == Config()


@pytest.mark.parametrize("region", ["eu-west", "sa-east"])
def test_region_examples_use_their_region_and_no_dev_secret(region: str):
    config = Config.load(ROOT / "configs" / f"{region}.toml")
    assert config.server.region == region
    assert config.media.bind_addresses == []  # every interface
    assert not config.uses_dev_credentials
    for secret in config.auth.api_keys.values():
        assert secret != DEV_API_SECRET
        assert secret.startswith("CHANGE-ME"), "the placeholder must obviously need replacing"
        assert len(secret) >= 32


def test_region_examples_share_their_api_keys_so_a_token_works_on_every_node():
    sa = Config.load(ROOT / "configs" / "sa-east.toml")
    eu = Config.load(ROOT / "configs" / "eu-west.toml")
    assert sa.auth.api_keys == eu.auth.api_keys
    assert sa.cluster.redis_url and sa.cluster.redis_url == eu.cluster.redis_url
    assert sa.server.node_id != eu.server.node_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 8080\n", "unknown setting server.prot"),
        ("[sever]\nport = 8080\n", "unknown section(s): sever"),
        ("server = 5\n", "[server] must be a table"),
        ('[server]\nport = "8080"\n', "server.port must be int"),
        ("[server]\nport = 8080.5\n", "server.port must be int"),
        ("[server]\nport = 70000\n", "server.port must be within 0..65535"),
        ("[server]\nhost = 5\n", "server.host must be str"),
        ('[server]\ndemo_tokens = "yes"\n', "server.demo_tokens must be bool"),
        ("[limits]\nmax_rooms = true\n", "limits.max_rooms must be int"),
        ('[media]\nbind_addresses = "0.0.0.0"\n', "media.bind_addresses must be list"),
        ("[media]\nbind_addresses = [1]\n", "media.bind_addresses must be a list of address"),
        ("[media]\nudp_port_min = 50000\nudp_port_max = 40000\n", "udp_port_max must be a range"),
        ("[media]\nudp_port_min = 0\n", "udp_port_max must be a range"),
        ("[media]\nudp_port_max = 70000\n", "udp_port_max must be a range"),
        ('[auth.api_keys]\nprod = "short"\n', "auth.api_keys.prod: secret must be at least 32"),
        ("[auth.api_keys]\nprod = 5\n", "auth.api_keys.prod: secret must be a string"),
        ("[auth]\napi_keys = {}\n", "auth.api_keys must hold at least one key"),
        ("[rtc]\npacket_cache_size = 1000\n", "rtc.packet_cache_size must be a power of two"),
        ('[rtc]\nlayer_preference = "sharp"\n', "rtc.layer_preference must be one of frame-rate"),
        ("[limits]\nmax_message_bytes = 10\n", "limits.max_message_bytes must be at least 1024"),
        ("[server\nport = 1\n", "node.toml"),  # TOML syntax error names the file
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, text)
    assert message in str(info.value)


def test_integers_are_accepted_for_float_settings(tmp_path: Path):
    config = _load_text(tmp_path, "[limits]\nconnect_timeout_s = 5\n")
    assert config.limits.connect_timeout_s == 5.0
    assert isinstance(config.limits.connect_timeout_s, float)


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 8080\n", "unknown setting server.prot"),
        ('[auth.api_keys]\nprod = "short"\n', "secret must be at least 32 characters"),
    ],
)
def test_serve_with_a_bad_file_exits_2_with_a_message(tmp_path: Path, text: str, message: str):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = subprocess.run(
        [str(PYTHON), "-m", "sfu", "serve", "--config", str(bad), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_token_with_a_bad_file_exits_2(tmp_path: Path):
    result = subprocess.run(
        [str(PYTHON), "-m", "sfu", "token", "--room", "r", "--identity", "i"]
        + ["--config", str(tmp_path / "absent.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "configuration error: cannot read" in result.stderr
    assert result.stdout == ""
