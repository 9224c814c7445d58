"""The shared clock (sfu/media/ticker.py): many periodic jobs, one timer on the loop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sfu.media.ticker import shared_ticker


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "the ticker never ran the jobs"
        await asyncio.sleep(0.01)


async def test_jobs_share_one_timer_and_it_stops_with_the_last(caplog: pytest.LogCaptureFixture):
    ticker = shared_ticker(0.02)
    assert shared_ticker(0.02) is ticker and shared_ticker(0.05) is not ticker
    seen: dict[str, list[float]] = {"a": [], "b": []}

    def broken(now: float) -> None:
        raise RuntimeError("boom")

    removes = [
        ticker.add(seen["a"].append, "a"),
        ticker.add(broken, "broken"),
        ticker.add(seen["b"].append, "b"),
    ]
    handle = ticker._handle
    assert handle is not None and len(ticker) == 3
    with caplog.at_level(logging.ERROR, logger="sfu.media.ticker"):
        await _until(lambda: len(seen["a"]) >= 3 and len(seen["b"]) >= 3)
    # both got the same clock reading at each tick: one timer, not one each
    assert seen["a"][:3] == seen["b"][:3]
    assert "broken failed" in caplog.text  # logged, and the others went on
    for remove in removes:
        remove()
    assert ticker._handle is None and len(ticker) == 0
    count = len(seen["a"])
    await asyncio.sleep(0.06)
    assert len(seen["a"]) == count  # removed: never called again
    removes[0]()  # removing twice is harmless
