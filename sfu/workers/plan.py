"""What each worker of `serve --workers N` is: a node of the cluster with its own id, a
private HTTP port on loopback and its own slice of the UDP ports, told to the worker through
the SFU_* environment overrides (sfu/config.py ENV_SETTINGS) so it runs as a plain node.

Clients reach every worker through the front's URL (`public_url`); other nodes send relay
requests to `internal_url` = that URL + `/_worker/<i>`, which the front passes to worker i, so
relays work between the workers of one machine and from other machines alike.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ..config import Config, ConfigError

WORKER_PREFIX = "/_worker/"  # the front passes /_worker/<i>/<path> to worker i as /<path>
MIN_UDP_SLICE = 2
# the supervisor's health checks' User-Agent: a worker's access log leaves them out (cli.py)
SUPERVISOR_AGENT = "sfu-workers-supervisor"


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    node_id: str
    port: int  # HTTP, on 127.0.0.1
    udp_port: int  # 0: a port per peer from udp_port_min..udp_port_max
    udp_port_min: int
    udp_port_max: int
    public_url: str
    internal_url: str
    metrics_port: int  # 0: /metrics on the worker's own HTTP port
    # where this worker's agent jobs are made: "" for worker 0 (the agent workers' socket goes
    # there), worker 0's private URL for the others
    dispatch_url: str = ""

    @property
    def url(self) -> str:
        """Where the front reaches this worker."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The overrides that make a plain `serve` this worker."""
        env = {
            "SFU_NODE_ID": self.node_id,
            "SFU_HOST": "127.0.0.1",
            "SFU_PORT": str(self.port),
            "SFU_WORKERS": "1",
            "SFU_UDP_PORT": str(self.udp_port),
            "SFU_UDP_PORT_MIN": str(self.udp_port_min),
            "SFU_UDP_PORT_MAX": str(self.udp_port_max),
            "SFU_PUBLIC_URL": self.public_url,
            "SFU_INTERNAL_URL": self.internal_url,
        }
        if self.metrics_port:
            env["SFU_METRICS_PORT"] = str(self.metrics_port)
        if self.dispatch_url:
            env["SFU_AGENTS_DISPATCH_URL"] = self.dispatch_url
        return env


def front_url(config: Config) -> str:
    """The URL clients use: [cluster] public_url, else the front's own host:port."""
    server = config.server
    return (config.cluster.public_url or f"http://{server.host}:{server.port}").rstrip("/")


def plan_workers(config: Config, workers: int, ports: list[int]) -> list[WorkerSpec]:
    """One spec per worker; `ports` are their private HTTP ports. The UDP range is split
    into `workers` slices (or a single udp_port becomes udp_port + i)."""
    if workers < 1 or len(ports) != workers:
        raise ValueError("one private port per worker")
    server, media = config.server, config.media
    if not server.port and not config.cluster.public_url:
        raise ConfigError("serve --workers needs a fixed server.port (or cluster.public_url)")
    base_id = server.node_id or f"{server.region}-{uuid.uuid4().hex[:6]}"
    public = front_url(config)
    internal = (config.cluster.internal_url or public).rstrip("/")
    if media.udp_port and media.udp_port + workers - 1 > 65535:
        raise ConfigError(f"media.udp_port + {workers - 1} workers goes past port 65535")
    span = media.udp_port_max - media.udp_port_min + 1
    size = span // workers
    if not media.udp_port and size < MIN_UDP_SLICE:
        raise ConfigError(
            f"media.udp_port_min..udp_port_max ({span} ports) is too small for {workers} workers"
        )
    if config.metrics.port and config.metrics.port + workers - 1 > 65535:
        raise ConfigError(f"metrics.port + {workers - 1} workers goes past port 65535")
    specs = []
    for i, port in enumerate(ports):
        low = media.udp_port_min + i * size
        high = media.udp_port_max if i == workers - 1 else low + size - 1
        specs.append(
            WorkerSpec(
                index=i,
                node_id=f"{base_id}-w{i}",
                port=port,
                udp_port=media.udp_port + i if media.udp_port else 0,
                udp_port_min=low,
                udp_port_max=high,
                public_url=public,
                internal_url=f"{internal}{WORKER_PREFIX}{i}",
                metrics_port=config.metrics.port + i if config.metrics.port else 0,
                dispatch_url=f"http://127.0.0.1:{ports[0]}" if i else "",
            )
        )
    return specs
