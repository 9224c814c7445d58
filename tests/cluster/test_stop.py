"""A node's background loops stop when the node does, even when the cancellation lands in the
middle of a Redis call: on Python 3.11, redis-py's socket writes sit inside asyncio.wait_for,
which can drop the cancellation (CPython gh-86296), and a loop that carried on made the node's
shutdown wait forever (sfu/cluster/tasks.py). Seen as two relay tests hanging in their cleanup
after a full cluster run, and as a SIGTERM'd node that never exited."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sfu.cluster.errors import ClusterError
from sfu.cluster.redis_cluster import RedisCluster
from sfu.cluster.tasks import stop_task
from tests.conftest import start_node

from .conftest import RedisServer, unique_prefix
from .test_nodes import cluster_config

pytestmark = pytest.mark.redis


async def ends(call, within_s: float):
    """The result of `call` if it ends within `within_s`; fails otherwise (without cancelling
    it: a cancellation could be what ends a call that would not end by itself)."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=within_s)
    if task not in done:
        for _ in range(100):  # (so that a failure does not hang the test's teardown as well)
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        raise AssertionError(f"did not end within {within_s} s")
    return task.result()


async def test_a_task_that_drops_a_cancellation_is_still_stopped():
    dropped = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if dropped:
                    raise
                dropped.append(True)  # as wait_for may do, once

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    assert await ends(stop_task(task, timeout_s=5), 10) is True
    assert dropped and task.cancelled()


async def test_a_task_that_never_stops_is_given_up_on_in_time():
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.ensure_future(deaf())
    await asyncio.sleep(0)
    assert await ends(stop_task(task, timeout_s=0.3), 5) is False
    assert not task.done()
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done()


async def test_a_redis_loop_cancelled_mid_call_stops(redis_server: RedisServer):
    """The loop shape of the node's own (FallbackNodes, the heartbeat): each cancellation is
    sent while the loop is inside a Redis call."""
    cluster = RedisCluster(redis_server.url, node_ttl_s=1.0, key_prefix=unique_prefix())
    await cluster.start()
    in_call = asyncio.Event()
    try:
        for _ in range(40):

            async def busy() -> None:
                while True:
                    with contextlib.suppress(ClusterError):
                        in_call.set()
                        await cluster.registry.live_nodes()
                    await asyncio.sleep(0.05)

            in_call.clear()
            task = asyncio.ensure_future(busy())
            await in_call.wait()
            assert await ends(stop_task(task, timeout_s=5), 10) is True
            assert task.done()
    finally:
        await cluster.close()


async def test_nodes_whose_loops_talk_to_redis_all_the_time_shut_down(redis_server: RedisServer):
    """Nodes with a very short heartbeat (their loops are nearly always in a Redis call), shut
    down again and again: each shutdown ends, in bounded time."""
    prefix = unique_prefix()
    for i in range(8):
        config = cluster_config(redis_server.url, prefix, "test", f"node-{i}")
        config.cluster.heartbeat_s = 0.005
        node = await start_node(config)
        await asyncio.sleep(0.2)
        await ends(node.runner.cleanup(), 30)
