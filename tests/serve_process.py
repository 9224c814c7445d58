"""Waiting for a `python -m sfu serve` child process to answer, shared by the tests that run
the node as a real process (the CLI test, the cluster failover rig)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable

import aiohttp


async def wait_healthy(
    proc: subprocess.Popen, url: str, log: Callable[[], str], name: str, timeout: float
) -> dict:
    """/healthz's JSON once it answers 200; fails with the process's log if it exits first or
    never answers within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited early:\n{log()}")
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return await response.json()
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{name}: /healthz never answered 200:\n{log()}")
