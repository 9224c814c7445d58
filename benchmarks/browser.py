"""Headless Debian Chromium for the benchmarks, driven by Playwright (no browser download).

The same flags as the browser tests (fake camera and microphone, loopback candidates with real
addresses instead of mDNS names), but no pytest: a missing browser or Playwright raises
BrowserMissing with what to install. `executable` may be a wrapper script, e.g. one that runs
Chromium inside the weak-link lab's client network namespace (NetLab.wrapper_script).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

CHROMIUM = os.environ.get(
    "SFU_BENCH_CHROMIUM", os.environ.get("SFU_TEST_CHROMIUM", "/usr/bin/chromium")
)

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    # real addresses (not mDNS names) in Chromium's candidates
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # background tabs must not be throttled while another page is measured
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


class BrowserMissing(RuntimeError):
    """Chromium or Playwright is not installed."""


def chromium_path() -> str:
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not path or not os.access(path, os.X_OK):
        raise BrowserMissing(
            f"Chromium not found at {CHROMIUM!r}: `apt-get install -y chromium` "
            "(or set SFU_BENCH_CHROMIUM)"
        )
    return path


def chromium_version(path: str | None = None) -> str:
    try:
        out = subprocess.run(
            [path or chromium_path(), "--version"], capture_output=True, text=True, timeout=20
        )
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired, BrowserMissing):
        return "unknown"


# With the SFU on 127.0.0.1, Chromium must gather on loopback too. Not behind the weak-link
# lab: there a loopback candidate (which cannot reach the SFU) would only delay ICE checks.
LOOPBACK_FLAG = "--allow-loopback-in-peer-connection"


@asynccontextmanager
async def launch(
    executable: str | None = None, extra_args: Sequence[str] = (), loopback: bool = True
) -> AsyncIterator[Any]:
    """A headless Chromium with a fresh profile; yields its Playwright BrowserContext."""
    path = executable or chromium_path()
    flags = [*CHROMIUM_FLAGS, *([LOOPBACK_FLAG] if loopback else []), *extra_args]
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        raise BrowserMissing(
            "playwright is not installed: `.venv/bin/pip install playwright` "
            "(it drives /usr/bin/chromium; no browser download is needed)"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="sfu-bench-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=path,
                headless=True,
                args=flags,
                viewport={"width": 640, "height": 400},
            )
            try:
                yield context
            finally:
                await context.close()
