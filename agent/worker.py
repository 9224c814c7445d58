"""`python -m agent worker`: takes jobs from an SFU node and runs one session per job.

The worker loads its models once (before it offers itself, so a job never waits for a model
load), connects to the node's worker socket (`/api/agent-workers/ws`, see sfu/agents/) with
a token it mints from the node's API key and secret (same config file, or the same built-in
development key), registers the job kinds it takes and how many at once, heartbeats, and runs
each assigned job until it ends or the node cancels it. If the node goes away it stops its
sessions (the node hands their jobs to other workers) and reconnects.

Job kinds are pluggable: `register_kind(kind, create, prepare)` adds one. Built in: "agent" (the
conversational agent, agent/session.py) and "captions" (live captions, agent/captions/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import aiohttp

from sfu.auth import Grants, mint_token
from sfu.config import Config
from sfu.media.peer import NetworkSettings

from .config import AgentConfig
from .session import JobSpec

logger = logging.getLogger(__name__)

WORKER_PATH = "/api/agent-workers/ws"
RECONNECT_MAX_S = 5.0


class JobRunner(Protocol):
    """One running job: `run()` returns why it ended (or raises), `stop()` ends it."""

    async def run(self) -> str: ...

    def stop(self, reason: str) -> None: ...


@dataclass
class JobKind:
    create: Callable[[JobSpec, AgentWorker], JobRunner]
    prepare: Callable[[AgentWorker], None] | None = None  # load models (runs in a thread)


KINDS: dict[str, JobKind] = {}


def register_kind(
    kind: str,
    create: Callable[[JobSpec, AgentWorker], JobRunner],
    prepare: Callable[[AgentWorker], None] | None = None,
) -> None:
    KINDS[kind] = JobKind(create, prepare)


def _prepare_agent(worker: AgentWorker) -> None:
    from .pipeline import VoicePipeline

    if "pipeline" not in worker.resources:
        pipeline = worker.resources["pipeline"] = VoicePipeline.from_config(worker.config)
        pipeline.start_preparing()


def _create_agent(job: JobSpec, worker: AgentWorker) -> JobRunner:
    from .session import AgentSession

    return AgentSession(
        job,
        worker.resources["pipeline"],
        worker.url,
        worker.network,
        on_started=lambda: worker.report({"type": "job_started", "job_id": job.job_id}),
    )


def _prepare_captions(worker: AgentWorker) -> None:
    from .captions.job import prepare_captions

    prepare_captions(worker)


def _create_captions(job: JobSpec, worker: AgentWorker) -> JobRunner:
    from .captions.job import create_captions_job

    return create_captions_job(job, worker)


register_kind("agent", _create_agent, _prepare_agent)
# live captions (issue 6, agent/captions/): imported only by a worker that takes the kind
register_kind("captions", _create_captions, _prepare_captions)


def network_for(url: str) -> NetworkSettings:
    """Media from a node on this machine stays on loopback; elsewhere, any interface."""
    host = urlparse(url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return NetworkSettings(addresses=("127.0.0.1",))
    return NetworkSettings(addresses=())


class AgentWorker:
    def __init__(
        self,
        url: str,
        node_config: Config,
        config: AgentConfig,
        *,
        kinds: list[str] | None = None,
        capacity: int | None = None,
        name: str | None = None,
        network: NetworkSettings | None = None,
        resources: dict[str, Any] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.node_config = node_config
        self.config = config
        self.kinds = list(kinds or config.worker.kinds)
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown job kind(s) {unknown}; known: {sorted(KINDS)}")
        self.capacity = capacity or config.worker.capacity
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.network = network or network_for(self.url)
        self.resources: dict[str, Any] = resources if resources is not None else {}
        self.jobs: dict[str, tuple[JobRunner, asyncio.Task]] = {}
        self.worker_id: str | None = None
        self.registered = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing = asyncio.Event()
        self._heartbeat_s = 1.0

    # -- setup -----------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Load what the job kinds need, off the event loop."""
        t0 = time.perf_counter()
        for kind in self.kinds:
            prepare = KINDS[kind].prepare
            if prepare is not None:
                await asyncio.to_thread(prepare, self)
        logger.info("worker %s ready in %.1f s", self.name, time.perf_counter() - t0)

    def token(self) -> str:
        return mint_token(
            self.node_config.auth,
            identity=f"worker-{self.name}"[:128],
            room="*",
            grants=Grants(agent=True),
            ttl_s=3600,
        )

    # -- the connection --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until close(): connect, take jobs, reconnect after the node goes away."""
        await self.prepare()
        delay = 0.2
        base = self.url.replace("http://", "ws://").replace("https://", "wss://")
        async with aiohttp.ClientSession() as http:
            while not self._closing.is_set():
                try:
                    async with http.ws_connect(
                        base + WORKER_PATH,
                        headers={"Authorization": f"Bearer {self.token()}"},
                        heartbeat=None,
                    ) as ws:
                        delay = 0.2
                        await self._serve(ws)
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status in (401, 403):
                        raise PermissionError(
                            f"the node refused the worker token ({exc.status}): give the "
                            "node's config (--config) so the API key and secret match"
                        ) from exc
                    logger.warning("worker: cannot connect to %s: %s", self.url, exc)
                except (aiohttp.ClientError, OSError) as exc:
                    logger.warning("worker: cannot reach %s: %s", self.url, exc)
                finally:
                    self._ws = None
                    self.registered.clear()
                    self._stop_all("lost the connection to the node")
                if self._closing.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
                delay = min(RECONNECT_MAX_S, delay * 2)
        await self._wait_jobs(5.0)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        await ws.send_json(
            {"type": "register", "kinds": self.kinds, "capacity": self.capacity, "name": self.name}
        )
        beat = asyncio.ensure_future(self._heartbeat(ws))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while True:
                receive = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({receive, closing}, return_when="FIRST_COMPLETED")
                if closing in done:
                    receive.cancel()
                    return
                raw = receive.result()
                if raw.type != aiohttp.WSMsgType.TEXT:
                    return
                try:
                    self._on_message(raw.json())
                except (ValueError, KeyError, TypeError) as exc:
                    logger.warning("worker: bad message from the node: %s", exc)
        finally:
            beat.cancel()
            closing.cancel()

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                await ws.send_json({"type": "heartbeat", "jobs": sorted(self.jobs)})
                await asyncio.sleep(self._heartbeat_s)

    def report(self, message: dict) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            asyncio.ensure_future(self._send(ws, message))

    @staticmethod
    async def _send(ws: aiohttp.ClientWebSocketResponse, message: dict) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(message)

    def _on_message(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "registered":
            self.worker_id = msg.get("worker_id")
            self._heartbeat_s = float(msg.get("heartbeat_interval_s", 1.0))
            self.registered.set()
            logger.info("worker %s registered as %s", self.name, self.worker_id)
        elif kind == "assign":
            self._start(JobSpec.from_json(msg["job"]))
        elif kind == "cancel":
            entry = self.jobs.get(msg.get("job_id", ""))
            if entry is not None:
                entry[0].stop(f"cancelled by the node: {msg.get('reason', '')}")
        elif kind == "error":
            logger.warning("worker: node says %s", msg.get("message"))

    # -- jobs ------------------------------------------------------------------------------------

    def _start(self, job: JobSpec) -> None:
        old = self.jobs.pop(job.job_id, None)
        if old is not None:
            old[0].stop("assigned again")
        try:
            runner = KINDS[job.kind].create(job, self)
        except Exception as exc:
            logger.exception("worker: cannot start job %s", job.job_id)
            self.report({"type": "job_failed", "job_id": job.job_id, "error": str(exc)})
            return
        task = asyncio.ensure_future(self._run_job(job, runner))
        self.jobs[job.job_id] = (runner, task)
        logger.info("worker %s: job %s (%s) in room %s", self.name, job.job_id, job.kind, job.room)

    async def _run_job(self, job: JobSpec, runner: JobRunner) -> None:
        try:
            reason = await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("worker: job %s failed", job.job_id)
            self.report({"type": "job_failed", "job_id": job.job_id, "error": repr(exc)[:200]})
        else:
            logger.info("worker: job %s ended: %s", job.job_id, reason)
            self.report({"type": "job_done", "job_id": job.job_id, "reason": reason})
        finally:
            entry = self.jobs.get(job.job_id)
            if entry is not None and entry[0] is runner:
                del self.jobs[job.job_id]

    def _stop_all(self, reason: str) -> None:
        for runner, _ in list(self.jobs.values()):
            runner.stop(reason)

    async def _wait_jobs(self, timeout: float) -> None:
        tasks = [task for _, task in self.jobs.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def close(self) -> None:
        """Leave every room and stop (run() returns)."""
        self._closing.set()
        self._stop_all("worker shutting down")


def run_worker(
    url: str | None,
    node_config_path: str | None,
    config: AgentConfig,
    kinds: list[str] | None = None,
    capacity: int | None = None,
    name: str | None = None,
) -> int:
    """The `python -m agent worker` entry point: runs until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    node_config = Config.load(node_config_path)
    worker = AgentWorker(
        url or config.worker.url,
        node_config,
        config,
        kinds=kinds,
        capacity=capacity,
        name=name,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.close)
        try:
            await worker.run()
        finally:
            pipeline = worker.resources.get("pipeline")
            if pipeline is not None:
                pipeline.close()

    try:
        asyncio.run(main())
    except PermissionError as exc:
        logger.error("%s", exc)
        return 2
    return 0
