"""Running a node as a service: environment overrides for secrets, JSON logs, check-config,
and the shipped systemd unit and Dockerfile."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sfu.auth import Grants, mint_token, verify_token
from sfu.config import Config, ConfigError
from sfu.logs import JsonFormatter

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
if not PYTHON.exists():
    PYTHON = Path(sys.executable)
SECRET = "s3cret-from-the-environment-0123456789abcdef"
# the test process's own SFU_* variables must not leak into the children
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), "-m", "sfu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**CLEAN_ENV, **(env or {})},
    )


# -- environment overrides -----------------------------------------------------------------------


def test_secrets_and_host_values_come_from_the_environment():
    env = {
        "SFU_API_KEY": "prod",
        "SFU_API_SECRET": SECRET,
        "SFU_NODE_ID": "eu-west-7",
        "SFU_PORT": "9443",
        "SFU_ANNOUNCED_IP": "203.0.113.10",
        "SFU_LOG_FORMAT": "json",
        "SFU_METRICS_PORT": "9100",
    }
    config = Config.load(ROOT / "configs" / "eu-west.toml", env=env)
    # the file's placeholder key is replaced by the pair from the environment
    assert config.auth.api_keys == {"prod": SECRET}
    assert not config.uses_dev_credentials
    assert config.server.node_id == "eu-west-7"
    assert config.server.region == "eu-west"  # not overridden: the file's value
    assert config.server.port == 9443 and isinstance(config.server.port, int)
    assert config.media.announced_ip == "203.0.113.10"
    assert config.logging.format == "json"
    assert config.metrics.port == 9100
    # without env the file's values stand
    plain = Config.load(ROOT / "configs" / "eu-west.toml")
    assert "cluster" in plain.auth.api_keys and plain.server.port == 8080


def test_defaults_can_take_overrides_too():
    config = Config.load(None, env={"SFU_API_KEY": "k", "SFU_API_SECRET": SECRET})
    assert config.auth.api_keys == {"k": SECRET}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SFU_API_KEY": "prod"}, "SFU_API_KEY and SFU_API_SECRET must be set together"),
        ({"SFU_API_SECRET": SECRET}, "must be set together"),
        ({"SFU_API_KEY": "prod", "SFU_API_SECRET": "short"}, "auth.api_keys.prod: secret must"),
        ({"SFU_PORT": "eighty"}, "SFU_PORT must be int, got 'eighty'"),
        ({"SFU_PORT": "70000"}, "server.port must be within 0..65535"),
        ({"SFU_LOG_FORMAT": "xml"}, "logging.format must be one of text, json"),
    ],
)
def test_bad_environment_values_name_the_variable_or_setting(env, message):
    with pytest.raises(ConfigError) as info:
        Config.load(None, env=env)
    assert message in str(info.value)


def test_serve_and_token_agree_on_the_environment_key(tmp_path: Path):
    """A token minted with the env pair is accepted by a node started with the same env, and
    the node refuses the dev key the file alone would have used."""
    env = {"SFU_API_KEY": "prod", "SFU_API_SECRET": SECRET}
    result = run_cli("token", "--room", "r", "--identity", "ops", "--admin", env=env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    access = verify_token(Config.load(None, env=env).auth, token)
    assert access.api_key == "prod" and access.grants.admin


# -- JSON logs -----------------------------------------------------------------------------------


def test_json_formatter_writes_one_object_per_record():
    formatter = JsonFormatter({"node_id": "n1", "region": "eu-west"})
    record = logging.LogRecord(
        "sfu.room", logging.INFO, __file__, 1, "%s joined %s", ("a", "b"), None
    )
    record.room = "shop"  # an `extra=` field
    entry = json.loads(formatter.format(record))
    assert entry["msg"] == "a joined b" and entry["level"] == "info"
    assert entry["logger"] == "sfu.room" and entry["room"] == "shop"
    assert entry["node_id"] == "n1" and entry["region"] == "eu-west"
    assert entry["ts"].endswith("+00:00")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = formatter.format(record)
    assert "\n" not in line  # one line, even with a multi-line traceback
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_a_regional_node_runs_from_its_file_and_the_environment(tmp_path: Path):
    """What the systemd unit and the container do: SFU_CONFIG names the file, secrets and
    per-host values come from the environment; the region file asks for JSON logs and a
    private metrics port."""
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    env = {
        **CLEAN_ENV,
        "PYTHONUNBUFFERED": "1",
        "SFU_CONFIG": str(ROOT / "configs" / "eu-west.toml"),
        "SFU_API_KEY": "prod",
        "SFU_API_SECRET": SECRET,
        "SFU_NODE_ID": "eu-west-test",
        "SFU_PORT": str(port),
        "SFU_METRICS_PORT": str(metrics_port),
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(PYTHON), "-m", "sfu", "serve"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    assert json.load(r) == {
                        "status": "ok",
                        "node_id": "eu-west-test",
                        "region": "eu-west",
                    }
                    break
            except OSError:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        # the secret from the environment signs admin tokens; the file's placeholder does not
        good = mint_token(
            Config.load(None, env=env).auth, identity="ops", room="*", grants=Grants(admin=True)
        )
        assert _get(f"{base}/api/stats", good)[0] == 200
        placeholder = mint_token(
            Config.load(ROOT / "configs" / "eu-west.toml").auth,
            identity="ops",
            room="*",
            grants=Grants(admin=True),
        )
        assert _get(f"{base}/api/stats", placeholder)[0] == 401
        # metrics on the private port, without a token
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and 'sfu_node_info{node_id="eu-west-test",region="eu-west"' in text
    finally:
        proc.terminate()
        proc.wait(10)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON (logging.format)
    ready = [e for e in entries if "ready" in e["msg"]]
    assert ready, lines
    assert ready[0]["node_id"] == "eu-west-test" and ready[0]["region"] == "eu-west"
    assert not any("DEVELOPMENT" in e["msg"] for e in entries)
    assert any("closed" in e["msg"] for e in entries)  # SIGTERM: a graceful shutdown


def test_log_format_flag_overrides_the_file(tmp_path: Path):
    """local.toml says text; `--log-format json` wins, and the dev-key warning is JSON too."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(PYTHON), "-m", "sfu", "--log-format", "json", "serve", "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**CLEAN_ENV, "SFU_CONFIG": str(ROOT / "configs" / "local.toml")},
        )
    try:
        deadline = time.monotonic() + 20
        while _get_status(f"http://127.0.0.1:{port}/healthz") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(e["level"] == "warning" and "DEVELOPMENT" in e["msg"] for e in entries)
    assert all(e["region"] == "local" for e in entries)


def _get_status(url: str) -> int:
    try:
        return _get(url)[0]
    except OSError:
        return 0


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


# -- check-config --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["local.toml", "demo.toml", "eu-west.toml", "sa-east.toml"])
def test_check_config_accepts_the_examples(name: str):
    result = run_cli("check-config", str(ROOT / "configs" / name))
    assert result.returncode == 0, result.stderr
    assert f"{name}: ok" in result.stdout


def test_check_config_warns_about_placeholders_and_strict_fails():
    path = str(ROOT / "configs" / "eu-west.toml")
    result = run_cli("check-config", path)
    assert result.returncode == 0
    assert "auth.api_keys.cluster is still the example placeholder secret" in result.stderr
    strict = run_cli("check-config", "--strict", path)
    assert strict.returncode == 1
    # with the real secret from the environment there is nothing left to warn about
    fixed = run_cli(
        "check-config", "--strict", path, env={"SFU_API_KEY": "prod", "SFU_API_SECRET": SECRET}
    )
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stderr == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[metrics]\nprot = 9100\n", "unknown setting metrics.prot"),
        ("[metrics]\nport = 70000\n", "metrics.port must be within 0..65535"),
        ("[server]\nport = 9000\n[metrics]\nport = 9000\n", "metrics.port must differ"),
        ('[metrics]\nrequire_token = "yes"\n', "metrics.require_token must be one of"),
        ('[webhooks]\nurls = ["ftp://x"]\n', "webhooks.urls: 'ftp://x' is not an http(s) URL"),
        ('[webhooks]\nurls = "https://x"\n', "webhooks.urls must be list"),
        ('[webhooks]\napi_key = "nope"\n', "webhooks.api_key 'nope' is not one of auth.api_keys"),
        ("[webhooks]\nretry_for_s = 0\n", "webhooks.timeout_s and webhooks.retry_for_s must be"),
        ("[webhooks]\nqueue_size = 0\n", "webhooks.queue_size must be at least 1"),
        ('[logging]\nformat = "xml"\n', "logging.format must be one of text, json"),
        ('[logging]\nlevel = "loud"\n', "logging.level must be one of"),
        ("[loging]\nformat = 1\n", "unknown section(s): loging"),
        ("[server\n", "bad.toml"),
    ],
)
def test_check_config_names_what_is_wrong(tmp_path: Path, text: str, message: str):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert str(bad) in result.stderr  # which file
    assert "Traceback" not in result.stderr


def test_check_config_of_a_missing_file_fails(tmp_path: Path):
    result = run_cli("check-config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_check_config_applies_environment_overrides_unless_told_not_to(tmp_path: Path):
    path = str(ROOT / "configs" / "local.toml")
    bad_env = {"SFU_PORT": "not-a-port"}
    assert run_cli("check-config", path, env=bad_env).returncode == 2
    assert run_cli("check-config", "--no-env", path, env=bad_env).returncode == 0


# -- the service files ---------------------------------------------------------------------------


def _dockerfile_requirements() -> list[str]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    install = text[text.index("RUN pip install") : text.index("COPY pyproject.toml")]
    return re.findall(r'"([^"]+)"', install)


def _pyproject_dependencies() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!;\[ ]", requirement, maxsplit=1)[0].lower()


def test_dockerfile_pins_the_node_dependencies_as_pyproject_does():
    pinned = {_dist_name(r): r for r in _pyproject_dependencies()}
    requirements = _dockerfile_requirements()
    assert len(requirements) >= 7
    for requirement in requirements:
        assert pinned.get(_dist_name(requirement)) == requirement, requirement


# modules sfu/ imports -> the distribution (in the Dockerfile) that provides them
PROVIDED_BY = {
    "aiohttp": "aiohttp",
    "aioice": "aioice",
    "aiortc": "aiortc",
    "av": "av",
    "jwt": "pyjwt",
    "numpy": "numpy",
    "prometheus_client": "prometheus-client",
    "redis": "redis",
    "uvloop": "uvloop",
    # aiohttp's own dependency (header dictionaries)
    "multidict": "aiohttp",
    # aiortc's own dependencies
    "OpenSSL": "aiortc",
    "pylibsrtp": "aiortc",
    "cryptography": "aiortc",
    "pyee": "aiortc",
}


def test_dockerfile_installs_everything_the_node_imports():
    imported: set[str] = set()
    for path in (ROOT / "sfu").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"sfu", "__future__"}
    installed = {_dist_name(r) for r in _dockerfile_requirements()}
    missing = {m for m in third_party if PROVIDED_BY.get(m) not in installed}
    assert not missing, f"sfu/ imports {sorted(missing)}: add them to deploy/Dockerfile"


def test_dockerfile_runs_the_node_from_sfu_config():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "sfu"]' in text and 'CMD ["serve"]' in text
    assert "ENV SFU_CONFIG=/etc/crossborder-sfu/node.toml" in text
    assert "USER sfu" in text  # not root
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    for copied in re.findall(r"^COPY (\S+)", text, flags=re.M):
        assert f"!{copied.rstrip('/')}/" in ignore or f"!{copied}" in ignore, copied


def test_systemd_unit_reads_the_instance_files_and_checks_them_first():
    unit = (ROOT / "deploy" / "sfu@.service").read_text()
    keys = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    assert keys["Environment"] == ["PYTHONUNBUFFERED=1", "SFU_CONFIG=/etc/crossborder-sfu/%i.toml"]
    assert keys["EnvironmentFile"] == ["-/etc/crossborder-sfu/%i.env"]
    assert keys["ExecStartPre"][0].endswith("-m sfu check-config ${SFU_CONFIG}")
    assert keys["ExecStart"][0].endswith("-m sfu serve")
    assert keys["User"] == ["sfu"] and keys["Restart"] == ["on-failure"]
    assert keys["WantedBy"] == ["multi-user.target"]
