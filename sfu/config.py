"""Node settings: one typed object, loaded from TOML, with safe defaults for local use.

Every setting has a default so `python -m sfu serve` runs with no file at all. The example
files in `configs/` list every key with its default value.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Development credentials shared by `serve` and `token` when no config is given, so a token
# minted by one is accepted by the other. The server logs a loud warning when they are in use.
DEV_API_KEY = "devkey"
DEV_API_SECRET = "dev-secret-do-not-use-in-production-0123456789"


class ConfigError(ValueError):
    """A configuration file that cannot be used, with a message naming the bad key."""


def _same_type(default: Any, value: Any) -> bool:
    """TOML value fits the default's type (ints fit floats; bools are never numbers)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    region: str = "local"
    node_id: str = ""  # empty: "<region>-<random>" at start
    # Serve the demo token endpoint (never in production: anyone may mint tokens).
    demo_tokens: bool = False
    # On SIGTERM the node drains: it refuses new joins, tells its clients to move to another
    # node, and waits at most this many seconds for them to leave before it exits.
    drain_timeout_s: float = 10.0
    # Node processes behind this one HTTP port (`serve --workers N`, sfu/workers/): each is a
    # node of the cluster with its own UDP ports, so N > 1 needs [cluster] redis_url.
    workers: int = 1


MAX_WORKERS = 64


@dataclass
class MediaSettings:
    # Local addresses that carry media (ICE host candidates). Empty: every non-loopback address.
    bind_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # Public address announced in candidates when the node sits behind a 1:1 NAT.
    announced_ip: str = ""
    udp_port_min: int = 40000
    udp_port_max: int = 49999
    # One UDP port for every peer of the node (a firewall then opens just that one); 0: each
    # peer gets its own port from udp_port_min..udp_port_max.
    udp_port: int = 0
    # STUN/TURN servers handed to clients at join, e.g.
    # {urls = ["turn:turn.example.com:3478"], username = "u", credential = "p"}
    ice_servers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AuthSettings:
    # API key -> secret. Tokens carry the key as `iss` and are signed (HS256) with its secret.
    api_keys: dict[str, str] = field(default_factory=lambda: {DEV_API_KEY: DEV_API_SECRET})
    default_ttl_s: int = 6 * 3600


@dataclass
class LimitSettings:
    max_rooms: int = 1000
    max_participants_per_room: int = 200
    max_tracks_per_participant: int = 4
    max_message_bytes: int = 64 * 1024
    # A peer that has not connected ICE+DTLS within this time is dropped.
    connect_timeout_s: float = 30.0
    # WHEP players one identity (one token) may hold at once on this node: each is its own
    # participant, so without a cap one viewer token could fill a room.
    max_whep_sessions_per_identity: int = 4
    # Media sections (m-lines) in one offer and rids (simulcast layers) per m-line: checked
    # before anything is allocated (each layer has its own packet cache).
    max_media_per_offer: int = 16
    max_rids_per_media: int = 4
    # Events waiting for one WebSocket client, in messages and (estimated) bytes: a client
    # that does not read them is dropped, once, and everything it held is freed.
    max_event_queue: int = 1000
    max_event_queue_bytes: int = 4 * 1024 * 1024
    # `data` messages one participant may send (a token bucket holding two seconds' worth;
    # the byte bucket always holds at least one max_message_bytes message). Excess is dropped
    # at the sender, never at the readers; the sender gets a `rate_limited` error.
    data_messages_per_s: float = 50.0
    data_bytes_per_s: int = 256 * 1024


@dataclass
class RtcSettings:
    # Slots in the per-video-track packet cache (a power of two; 1024 = ~3 s at 2.5 Mbps).
    packet_cache_size: int = 1024
    # At most one keyframe request per publisher track in this interval.
    pli_throttle_ms: int = 300
    # Bitrate advertised to publishers in REMB so their encoders keep a good rate (all three
    # simulcast layers of a 720p camera need about 3.5 Mbps).
    max_publish_bitrate: int = 4_000_000
    # Interval of receiver reports/REMB towards publishers and sender reports to subscribers.
    rtcp_interval_s: float = 1.0
    # NACK: how long a gap is worth asking for, and how often to ask again.
    nack_max_age_ms: int = 1000
    nack_retry_ms: int = 100
    # Bandwidth estimation toward subscribers (transport-cc, GCC-style) choosing each
    # subscriber's simulcast layer. Off: every subscriber gets the top layer it asks for.
    bwe: bool = True
    # Estimate a new subscriber starts from, before any feedback (bps).
    bwe_start_bitrate: int = 1_000_000
    # Send transport-cc feedback to publishers so their browser's own congestion control
    # (delay-based) drives its simulcast layers. Off: REMB at max_publish_bitrate plus the
    # browser's loss-based control. Our arrival times are taken in Python, so on a busy node
    # they jitter and a browser may then pause its top layer needlessly: off by default.
    publisher_transport_cc: bool = False
    # On a lossy, far link ask the viewer's browser to hold video a little longer (playout-delay
    # extension: about 1.5 RTT + 100 ms) so retransmissions arrive before the frame is due
    # instead of freezing the picture. Costs that much latency on such links only.
    adaptive_playout_delay: bool = True
    # What a subscriber whose link cannot carry the top layer keeps first: "frame-rate" (360p
    # at 30 fps rather than 720p at 15 fps; reduced frame rates only on the lowest layer) or
    # "resolution" (720p at 15 fps offered too).
    layer_preference: str = "frame-rate"
    # Audio redundancy (RED, RFC 2198) with Opus: accepted from publishers that offer it
    # (browsers do), forwarded to viewers that accept it and unwrapped to plain Opus, lost
    # packets rebuilt from the redundancy, for those that do not. Doubles the audio bitrate.
    audio_red: bool = True
    # Opus in-band FEC: `useinbandfec=1` in what we negotiate, and the receiver reports to a
    # publisher carry its viewers' worst audio loss (up to opus_fec_max_loss), which makes a
    # browser add FEC for them.
    opus_fec: bool = True
    # The most viewer loss (0-1) reported to a publisher for FEC: more would also make its
    # encoder spend much of its bitrate on FEC for one bad viewer.
    opus_fec_max_loss: float = 0.1


LAYER_PREFERENCES = ("frame-rate", "resolution")
MAX_RIDS = 4  # simulcast layers an m-line may offer (browsers send 3)


@dataclass
class AgentSettings:
    # Rooms that get an agent (a job for the agent workers) when the first buyer joins.
    auto_rooms: list[str] = field(default_factory=list)
    # A worker silent this long is dead: its jobs move to another worker.
    worker_timeout_s: float = 3.0
    # "": this node gives its auto_rooms' jobs to the agent workers connected to it. A URL:
    # another node does (serve --workers N sets it to worker 0's for the other workers, where
    # no agent worker connects); a buyer's join here asks that node for the room's job.
    dispatch_url: str = ""


@dataclass
class MetricsSettings:
    # GET /metrics in the Prometheus text format.
    enabled: bool = True
    # 0: on the main HTTP port; else a separate listener (a private port for the scraper).
    port: int = 0
    # Bind address of the separate metrics port; "" = server.host.
    host: str = ""
    # "auto": an admin token is required on the main port, none on a separate metrics port;
    # "always" / "never" force it either way.
    require_token: str = "auto"


METRICS_TOKEN_MODES = ("auto", "always", "never")


@dataclass
class WebhookSettings:
    # Endpoints that receive every event (POST, JSON, signed); [] turns webhooks off.
    urls: list[str] = field(default_factory=list)
    # The [auth] API key whose secret signs the webhooks; "" = the first key.
    api_key: str = ""
    # One delivery attempt may take this long.
    timeout_s: float = 5.0
    # An event is retried (with backoff) for at most this long, then dropped with a log line.
    retry_for_s: float = 60.0
    # Events waiting per room; when full, new events of that room are dropped (counted).
    queue_size: int = 500


@dataclass
class LoggingSettings:
    # "text" (human readable) or "json" (one JSON object per line, for log collectors).
    format: str = "text"
    # debug, info, warning or error (`--log-level` overrides it).
    level: str = "info"


@dataclass
class RecordingSettings:
    # Recording of live shows (POST /api/rooms/{room}/recording) and their replay links.
    enabled: bool = True
    # Where the files go (one folder per room), relative to the working directory.
    dir: str = "recordings"
    # Recordings running at once on this node.
    max_active: int = 4
    # A recording stops by itself after this long.
    max_duration_s: float = 6 * 3600.0
    # A recording does not start with less free disk than this (MB).
    min_free_mb: int = 200
    # Matroska cluster length (ms): a crash loses at most about this much of the end.
    cluster_ms: int = 1000
    # Lifetime of the signed file links the recordings listing hands out (seconds).
    link_ttl_s: int = 3600


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Environment variables that override the file (secrets stay out of it): name -> setting.
# SFU_API_KEY and SFU_API_SECRET go together and replace [auth] api_keys with that one pair.
ENV_SETTINGS: dict[str, tuple[str, str]] = {
    "SFU_HOST": ("server", "host"),
    "SFU_PORT": ("server", "port"),
    "SFU_REGION": ("server", "region"),
    "SFU_NODE_ID": ("server", "node_id"),
    "SFU_ANNOUNCED_IP": ("media", "announced_ip"),
    "SFU_UDP_PORT": ("media", "udp_port"),
    "SFU_UDP_PORT_MIN": ("media", "udp_port_min"),
    "SFU_UDP_PORT_MAX": ("media", "udp_port_max"),
    "SFU_WORKERS": ("server", "workers"),
    "SFU_PUBLIC_URL": ("cluster", "public_url"),
    "SFU_INTERNAL_URL": ("cluster", "internal_url"),
    "SFU_AGENTS_DISPATCH_URL": ("agents", "dispatch_url"),
    "SFU_REDIS_URL": ("cluster", "redis_url"),
    "SFU_METRICS_PORT": ("metrics", "port"),
    "SFU_LOG_FORMAT": ("logging", "format"),
    "SFU_LOG_LEVEL": ("logging", "level"),
}


@dataclass
class ClusterSettings:
    """Several nodes as one service (see docs/cluster.md). The node's id and region are
    [server] node_id and region."""

    # Redis holding the node registry, room directory and node-to-node messages, e.g.
    # "redis://:password@10.0.0.5:6379/0" or "rediss://..." (TLS). Empty: this node alone,
    # with the same interfaces kept in memory (no Redis at all).
    redis_url: str = ""
    # URL clients use to reach this node (joins are sent here by other nodes). Empty:
    # http://<server.host>:<server.port>.
    public_url: str = ""
    # URL other nodes use for node-to-node requests to this node (relay signalling). Empty:
    # public_url. `serve --workers N` sets it per worker (the front routes it to that worker).
    internal_url: str = ""
    # Seconds between heartbeats (load figures included) ...
    heartbeat_s: float = 2.0
    # ... and the age at which a node's last heartbeat means it is gone.
    node_ttl_s: float = 5.0
    # Prefix of every Redis key and channel, so one Redis can hold several clusters.
    key_prefix: str = "sfu"
    # Longest wait for one Redis call (connect or command) before it counts as a failure.
    redis_timeout_s: float = 2.0
    # Participants on this node at which it sends new joins to another node of its region
    # (the join answer names it; clients follow). 0: no limit (joins stay here).
    max_participants: int = 0


REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass
class Config:
    server: ServerSettings = field(default_factory=ServerSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    rtc: RtcSettings = field(default_factory=RtcSettings)
    agents: AgentSettings = field(default_factory=AgentSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)

    @property
    def uses_dev_credentials(self) -> bool:
        return self.auth.api_keys.get(DEV_API_KEY) == DEV_API_SECRET

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build settings from a parsed TOML document; unknown keys are errors, not ignored."""
        config = cls()
        for section in dataclasses.fields(cls):
            values = data.get(section.name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"[{section.name}] must be a table")
            target = getattr(config, section.name)
            known = {f.name: f for f in dataclasses.fields(target)}
            for key, value in values.items():
                if key not in known:
                    raise ConfigError(f"unknown setting {section.name}.{key}")
                default = getattr(target, key)
                if not _same_type(default, value):
                    raise ConfigError(
                        f"{section.name}.{key} must be {type(default).__name__}, got {value!r}"
                    )
                if isinstance(default, float):
                    value = float(value)
                setattr(target, key, value)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
        config.validate()
        return config

    @classmethod
    def load(cls, path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
        """Settings from `path` (None: the defaults), then the overrides found in `env`
        (the command line passes os.environ; see ENV_SETTINGS)."""
        if path is None:
            config = cls()
        else:
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            config = cls.from_dict(data)
        if env is not None:
            config.apply_env(env)
        return config

    def apply_env(self, env: Mapping[str, str]) -> None:
        """Override settings from environment variables (secrets, per-host values), then
        validate again; a bad value is a ConfigError naming the variable."""
        key, secret = env.get("SFU_API_KEY"), env.get("SFU_API_SECRET")
        if (key is None) != (secret is None):
            raise ConfigError("SFU_API_KEY and SFU_API_SECRET must be set together")
        if key is not None and secret is not None:
            if not key:
                raise ConfigError("SFU_API_KEY must not be empty")
            self.auth.api_keys = {key: secret}
        for name, (section, setting) in ENV_SETTINGS.items():
            raw = env.get(name)
            if raw is None:
                continue
            target = getattr(self, section, None)
            if target is None or not hasattr(target, setting):
                raise ConfigError(f"{name}: this build has no {section}.{setting} setting")
            setattr(target, setting, _env_value(name, getattr(target, setting), raw))
        try:
            self.validate()
        except ConfigError as exc:
            raise ConfigError(f"{exc} (after environment overrides)") from exc

    def validate(self) -> None:
        if not (0 <= self.server.port <= 65535):
            raise ConfigError("server.port must be within 0..65535")
        m = self.media
        if not all(isinstance(a, str) for a in m.bind_addresses):
            raise ConfigError("media.bind_addresses must be a list of address strings")
        if not (0 < m.udp_port_min <= m.udp_port_max <= 65535):
            raise ConfigError("media.udp_port_min/udp_port_max must be a range within 1..65535")
        if isinstance(m.udp_port, bool) or not 0 <= m.udp_port <= 65535:
            raise ConfigError("media.udp_port must be 0 (a port per peer) or a port 1..65535")
        size = self.rtc.packet_cache_size
        if size < 64 or size & (size - 1):
            raise ConfigError("rtc.packet_cache_size must be a power of two >= 64")
        if not 0.0 <= self.rtc.opus_fec_max_loss <= 0.5:
            raise ConfigError("rtc.opus_fec_max_loss must be between 0 and 0.5")
        if self.rtc.layer_preference not in LAYER_PREFERENCES:
            raise ConfigError(f"rtc.layer_preference must be one of {', '.join(LAYER_PREFERENCES)}")
        if not self.auth.api_keys:
            raise ConfigError("auth.api_keys must hold at least one key")
        for key, secret in self.auth.api_keys.items():
            if not isinstance(secret, str):
                raise ConfigError(f"auth.api_keys.{key}: secret must be a string")
            if len(secret) < 32:
                raise ConfigError(f"auth.api_keys.{key}: secret must be at least 32 characters")
        self._validate_limits()
        if not all(isinstance(r, str) and r for r in self.agents.auto_rooms):
            raise ConfigError("agents.auto_rooms must be a list of room names")
        if self.agents.worker_timeout_s <= 0:
            raise ConfigError("agents.worker_timeout_s must be positive")
        dispatch_url = self.agents.dispatch_url
        if not isinstance(dispatch_url, str) or (
            dispatch_url and not dispatch_url.startswith(("http://", "https://"))
        ):
            raise ConfigError("agents.dispatch_url must be empty or an http:// or https:// URL")
        self._validate_ops()
        self._validate_cluster()
        self._validate_recording()

    def _validate_recording(self) -> None:
        r = self.recording
        if not r.dir:
            raise ConfigError("recording.dir must name a directory")
        if r.max_active < 1 or r.max_duration_s <= 0 or r.min_free_mb < 0:
            raise ConfigError(
                "recording.max_active must be >= 1, max_duration_s > 0, min_free_mb >= 0"
            )
        if not 100 <= r.cluster_ms <= 10000:
            raise ConfigError("recording.cluster_ms must be within 100..10000")
        if not 10 <= r.link_ttl_s <= 7 * 86400:
            raise ConfigError("recording.link_ttl_s must be within 10 s .. 7 days")

    def _validate_ops(self) -> None:
        """[metrics], [webhooks], [logging]."""
        if not (0 <= self.metrics.port <= 65535):
            raise ConfigError("metrics.port must be within 0..65535 (0: the main HTTP port)")
        if self.metrics.port and self.metrics.port == self.server.port:
            raise ConfigError("metrics.port must differ from server.port (or be 0 to share it)")
        if self.metrics.require_token not in METRICS_TOKEN_MODES:
            raise ConfigError(
                f"metrics.require_token must be one of {', '.join(METRICS_TOKEN_MODES)}"
            )
        hooks = self.webhooks
        for url in hooks.urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"webhooks.urls: {url!r} is not an http(s) URL")
        if hooks.api_key and hooks.api_key not in self.auth.api_keys:
            raise ConfigError(f"webhooks.api_key {hooks.api_key!r} is not one of auth.api_keys")
        if hooks.timeout_s <= 0 or hooks.retry_for_s <= 0:
            raise ConfigError("webhooks.timeout_s and webhooks.retry_for_s must be positive")
        if hooks.queue_size < 1:
            raise ConfigError("webhooks.queue_size must be at least 1")
        if self.logging.format not in LOG_FORMATS:
            raise ConfigError(f"logging.format must be one of {', '.join(LOG_FORMATS)}")
        if self.logging.level.lower() not in LOG_LEVELS:
            raise ConfigError(f"logging.level must be one of {', '.join(LOG_LEVELS)}")

    def _validate_cluster(self) -> None:
        if not (0 <= self.server.drain_timeout_s <= 3600):
            raise ConfigError("server.drain_timeout_s must be within 0..3600 seconds")
        c = self.cluster
        if c.redis_url and not c.redis_url.startswith(REDIS_URL_SCHEMES):
            raise ConfigError(
                "cluster.redis_url must be empty or start with " + ", ".join(REDIS_URL_SCHEMES)
            )
        if c.public_url and not c.public_url.startswith(("http://", "https://")):
            raise ConfigError("cluster.public_url must be empty or an http:// or https:// URL")
        if c.internal_url and not c.internal_url.startswith(("http://", "https://")):
            raise ConfigError("cluster.internal_url must be empty or an http:// or https:// URL")
        if not 1 <= self.server.workers <= MAX_WORKERS:
            raise ConfigError(f"server.workers must be within 1..{MAX_WORKERS}")
        if self.server.workers > 1 and not c.redis_url:
            raise ConfigError(
                "server.workers > 1 needs cluster.redis_url: the worker processes are nodes "
                "of one cluster and share its Redis"
            )
        if c.heartbeat_s <= 0:
            raise ConfigError("cluster.heartbeat_s must be positive")
        if c.node_ttl_s < 2 * c.heartbeat_s:
            raise ConfigError("cluster.node_ttl_s must be at least twice cluster.heartbeat_s")
        if not c.key_prefix or not all(ch.isalnum() or ch in "_-.:" for ch in c.key_prefix):
            raise ConfigError("cluster.key_prefix must be letters, digits, _ - . or :")
        if c.redis_timeout_s <= 0:
            raise ConfigError("cluster.redis_timeout_s must be positive")
        if c.max_participants < 0:
            raise ConfigError("cluster.max_participants must be 0 (no limit) or positive")

    def _validate_limits(self) -> None:
        lim = self.limits
        if lim.max_message_bytes < 1024:
            raise ConfigError("limits.max_message_bytes must be at least 1024")
        for key in (
            "max_rooms",
            "max_participants_per_room",
            "max_tracks_per_participant",
            "max_whep_sessions_per_identity",
            "max_media_per_offer",
            "max_event_queue",
        ):
            if getattr(lim, key) < 1:
                raise ConfigError(f"limits.{key} must be at least 1")
        if lim.connect_timeout_s <= 0:
            raise ConfigError("limits.connect_timeout_s must be positive")
        if not 1 <= lim.max_rids_per_media <= MAX_RIDS:
            raise ConfigError(f"limits.max_rids_per_media must be within 1..{MAX_RIDS}")
        if lim.max_event_queue_bytes < lim.max_message_bytes:
            raise ConfigError("limits.max_event_queue_bytes must be at least max_message_bytes")
        if lim.data_messages_per_s <= 0 or lim.data_bytes_per_s <= 0:
            raise ConfigError("limits.data_messages_per_s and data_bytes_per_s must be positive")


def _env_value(name: str, default: Any, raw: str) -> Any:
    """An environment string as the type of the setting it overrides."""
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {type(default).__name__}, got {raw!r}") from None
    return raw
