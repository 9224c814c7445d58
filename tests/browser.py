"""Headless Debian Chromium driven by playwright, and a tiny server for the test pages.

The browser is the system's /usr/bin/chromium (never a playwright download). A missing browser
or playwright makes the test FAIL with a message that says what to install: the browser interop
tests are part of the issue's acceptance, so they must not silently skip.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from benchmarks.browser import CHROMIUM_FLAGS as BENCH_FLAGS
from benchmarks.browser import LOOPBACK_FLAG, BrowserMissing, chromium_path

from .conftest import free_port

PAGES = Path(__file__).parent / "pages"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"

# The SFU gathers on 127.0.0.1 only: Chromium must use loopback too, so traffic stays here.
CHROMIUM_FLAGS = [*BENCH_FLAGS, LOOPBACK_FLAG]


def _require_chromium() -> str:
    try:
        return chromium_path()
    except BrowserMissing as exc:
        pytest.fail(f"{exc} (`make test` installs it; or set SFU_TEST_CHROMIUM)", pytrace=False)


@dataclass
class Browser:
    """One Chromium with a fresh profile; collects console errors and uncaught page errors."""

    context: Any
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    async def open(self, url: str):
        page = await self.context.new_page()
        page.on(
            "console",
            lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        await page.goto(url)
        return page

    def problems(self) -> str:
        return "\n".join(self.page_errors + self.console_errors) or "(none)"


@asynccontextmanager
async def launch_chromium(extra_args: list[str] | None = None) -> AsyncIterator[Browser]:
    """Start headless Chromium (fake camera and microphone); close it afterwards.

    `extra_args`: more flags, e.g. `--use-file-for-fake-audio-capture=question.wav`."""
    executable = _require_chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail(
            "playwright is not installed: `.venv/bin/pip install playwright` "
            "(it drives /usr/bin/chromium; no browser download is needed)",
            pytrace=False,
        )
    with tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=executable,
                headless=True,
                args=CHROMIUM_FLAGS + list(extra_args or []),
                viewport={"width": 720, "height": 420},
            )
            try:
                yield Browser(context)
            finally:
                await context.close()


@dataclass
class PageServer:
    base: str

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@asynccontextmanager
async def serve_pages() -> AsyncIterator[PageServer]:
    """Serve tests/pages on its own loopback port (another origin than the SFU's, like a
    real shop page using WHIP/WHEP, so CORS is exercised too)."""

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/", PAGES)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield PageServer(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def save_frame(frame, name: str) -> Path:
    """Save a decoded av.VideoFrame as PNG under test-output/ (what an aiortc peer saw)."""
    import av

    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.width, frame.height, "rgb24"
    packets = [*codec.encode(frame.reformat(format="rgb24")), *codec.encode(None)]
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    path.write_bytes(b"".join(bytes(p) for p in packets))
    return path


async def screenshot(page, name: str) -> Path:
    """Save a screenshot for a reviewer under test-output/ (git-ignored)."""
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    await page.screenshot(path=str(path))
    return path
