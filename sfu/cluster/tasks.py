"""Stopping a node's background loops for sure.

A single `task.cancel(); await task` is not enough for a loop that talks to Redis: on Python
3.11, `asyncio.wait_for` drops a cancellation that arrives as the call it waits for finishes
(CPython gh-86296, fixed in 3.12), and redis-py puts every socket write inside one. A loop
cancelled in the middle of a Redis call then carries on as if nothing happened, and whoever
awaits it waits forever: a node whose shutdown never ends (`python -m sfu serve` ignoring
SIGTERM, an app's cleanup hanging). `stop_task` cancels again until the task has ended,
bounded in time.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)

RECANCEL_S = 0.05  # a cancellation that was dropped is repeated this often
STOP_TIMEOUT_S = 5.0


async def stop_task(task: asyncio.Task | None, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Cancel `task` and wait until it has ended (at most `timeout_s`); True if it has.

    For loops with nothing to clean up on the way out: a task still running after
    RECANCEL_S is cancelled again, wherever it is."""
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            logger.warning("task %s did not stop within %g s", task.get_name(), timeout_s)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_S, left))
    if not task.cancelled() and task.exception() is not None:
        logger.warning("task %s had failed: %r", task.get_name(), task.exception())
    return True
