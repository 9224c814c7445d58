"""One timer for every periodic job of the same period on an event loop.

Each subscriber ran its own loops (bandwidth estimation every 100 ms while simulcast flows,
sender reports every second): at 20 viewers that is some 220 wake-ups a second, each costing
more than the work it wakes for. Jobs registered here share one timer per period, so the
process wakes once per tick for all of them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import weakref
from collections.abc import Callable

logger = logging.getLogger(__name__)

Job = Callable[[float], None]

_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, SharedTicker]] = (
    weakref.WeakKeyDictionary()
)


class SharedTicker:
    """Calls every job with `time.monotonic()` once per period, from one loop timer; the
    timer runs only while there are jobs. A job that raises is logged and kept."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float) -> None:
        self.loop = loop
        self.period_s = period_s
        self._jobs: dict[int, tuple[Job, str]] = {}
        self._keys = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    def add(self, job: Job, label: str = "job") -> Callable[[], None]:
        """Run `job(now)` every period from the next tick on; returns what removes it."""
        key = next(self._keys)
        self._jobs[key] = (job, label)
        if self._handle is None:
            self._next = self.loop.time() + self.period_s
            self._handle = self.loop.call_at(self._next, self._tick)

        def remove() -> None:
            self._jobs.pop(key, None)
            if not self._jobs and self._handle is not None:
                self._handle.cancel()
                self._handle = None

        return remove

    def __len__(self) -> int:
        return len(self._jobs)

    def _tick(self) -> None:
        now = time.monotonic()
        for job, label in list(self._jobs.values()):
            try:
                job(now)
            except Exception:
                logger.exception("%s failed", label)
        if not self._jobs:
            self._handle = None
            return
        # on schedule, without drift; after a stall, the next period from now
        self._next = max(self._next + self.period_s, self.loop.time())
        self._handle = self.loop.call_at(self._next, self._tick)


def shared_ticker(period_s: float) -> SharedTicker:
    """The running loop's ticker for `period_s`."""
    loop = asyncio.get_running_loop()
    by_period = _tickers.setdefault(loop, {})
    ticker = by_period.get(period_s)
    if ticker is None:
        ticker = by_period[period_s] = SharedTicker(loop, period_s)
    return ticker


__all__ = ["SharedTicker", "shared_ticker"]
