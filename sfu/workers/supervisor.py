"""Starts the workers of `serve --workers N`, restarts one that exits (with a bounded,
logged backoff), and stops them all on request: SIGTERM to each (each node drains as a lone
node does), a bounded wait, then SIGKILL for any that is still there."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time

import aiohttp

from .front import Backend
from .plan import SUPERVISOR_AGENT, WorkerSpec

logger = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 30.0  # a worker that ran this long starts again from the first backoff
READY_POLL_S = 0.2  # while a worker is not ready
HEALTH_POLL_S = 2.0  # while it is
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the worker before it runs: SIGTERM when the supervisor dies (Linux), so no worker
    outlives it. (Each worker has a session of its own: a terminal's Ctrl-C reaches the
    supervisor only, which then stops the workers in order.)"""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(
        self,
        specs: list[WorkerSpec],
        backends: list[Backend],
        argv: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        """`argv`: the arguments after `python -m sfu` that run one worker (`serve ...`)."""
        self.specs = specs
        self.backends = backends
        self.argv = argv
        self.env = dict(os.environ if env is None else env)
        self.procs: list[asyncio.subprocess.Process | None] = [None] * len(specs)
        self.stopping = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep(spec, backend), name=f"worker-{spec.index}")
            for spec, backend in zip(self.specs, self.backends, strict=True)
        ]

    async def _keep(self, spec: WorkerSpec, backend: Backend) -> None:
        """Run worker `spec` until stop(); start it again when it exits."""
        backoff = FIRST_BACKOFF_S
        while not self.stopping:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sfu",
                *self.argv,
                env={**self.env, **spec.env()},
                start_new_session=True,
                preexec_fn=_child_setup if sys.platform == "linux" else None,
            )
            self.procs[spec.index] = proc
            logger.info("worker %d (%s) started: pid %d", spec.index, spec.node_id, proc.pid)
            watch = asyncio.create_task(self._watch(proc, backend))
            code = await proc.wait()
            backend.ready = False
            watch.cancel()
            if self.stopping:
                logger.info("worker %d (%s) exited: %s", spec.index, spec.node_id, code)
                return
            if time.monotonic() - started >= STABLE_AFTER_S:
                backoff = FIRST_BACKOFF_S
            logger.warning(
                "worker %d (%s) exited with %s; starting it again in %.1f s",
                spec.index,
                spec.node_id,
                code,
                backoff,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            backend.restarts += 1

    async def _watch(self, proc: asyncio.subprocess.Process, backend: Backend) -> None:
        """Ready while its /healthz answers 200: the front sends it nothing before it is up,
        nor while it drains (503) or hangs (no answer within 2 s)."""
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=2), headers={"User-Agent": SUPERVISOR_AGENT}
        ) as http:
            while proc.returncode is None and not self.stopping:
                try:
                    async with http.get(f"{backend.url}/healthz") as response:
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if proc.returncode is None and not self.stopping:
                    backend.ready = ok
                await asyncio.sleep(READY_POLL_S if not ok else HEALTH_POLL_S)

    def signal_all(self, sig: int) -> None:
        """Stop restarting and pass `sig` on to every running worker."""
        self.stopping = True
        self._wake.set()
        for backend in self.backends:
            backend.ready = False
        for proc in self.procs:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def wait(self, timeout_s: float) -> bool:
        """Wait for every worker to end (after signal_all); True if they all did in time,
        else the rest are killed."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        if not pending:
            return True
        for spec, proc in zip(self.specs, self.procs, strict=True):
            if proc is not None and proc.returncode is None:
                logger.warning("worker %d (%s) still running: killed", spec.index, spec.node_id)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
        await asyncio.wait(pending, timeout=10)
        return False
