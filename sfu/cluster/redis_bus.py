"""Messages between nodes over Redis pub/sub: one channel per room, one inbox per node.

A Lua script numbers each message (INCR of the channel's counter) and publishes it in the
same step, so the numbers follow the order in which Redis delivers the channel: every
subscriber sees a room's messages in one order, and a receiver whose numbers jump knows it
missed some (while its connection was down: pub/sub keeps nothing for absent subscribers; the
directory is the state to re-read after an outage).

Publishing goes through one writer task that sends whatever is queued as one pipeline: Redis
runs a pipeline's commands in order, so a node's messages keep the order in which it
published them, and a far Redis costs one round trip per batch, not per message.

One reader task owns the pub/sub connection. When Redis goes away it reconnects every
`retry_s` and subscribes again to every channel this node wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio.client import PubSub

from . import redis_scripts as lua
from .errors import ClusterError, ClusterUnavailable
from .interface import MessageHandler
from .records import ClusterMessage, RecordError
from .redis_keys import RedisKeys
from .redis_link import UNREACHABLE, RedisLink
from .tasks import stop_task

logger = logging.getLogger(__name__)

# Largest message (JSON) a node sends or accepts: data messages are chat lines, captions,
# product pins; media never travels here.
MAX_MESSAGE_BYTES = 64 * 1024
# A channel's counter outlives its last message by this long (then numbering restarts at 1,
# which receivers take as a restart, not as a gap).
SEQ_TTL_MS = 24 * 3600 * 1000
# Messages waiting to be sent at most (then publish fails rather than queue without end), and
# messages per pipeline.
OUTBOX_LIMIT = 10_000
BATCH_LIMIT = 256

_Outgoing = tuple[str, str, "asyncio.Future[int]"]


class RedisBus:
    def __init__(self, link: RedisLink, keys: RedisKeys, retry_s: float = 0.5) -> None:
        self.link = link
        self.keys = keys
        self.retry_s = retry_s
        self._publish = link.client.register_script(lua.PUBLISH)
        self._handlers: dict[str, MessageHandler] = {}  # channel -> handler
        self._last_seq: dict[str, int] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue(OUTBOX_LIMIT)
        self._writer: asyncio.Task | None = None
        self._gap_reported = False
        self.missed = 0  # messages known to be lost (numbering gaps)
        self.dropped = 0  # messages refused: too large or not decodable

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop(), name="cluster-bus-reader")

    async def close(self) -> None:
        for task in (self._task, self._writer):  # (a plain cancel can be lost: tasks.py)
            await stop_task(task)
        self._task = self._writer = None
        while not self._outbox.empty():
            _, _, sent = self._outbox.get_nowait()
            if not sent.done():
                sent.set_exception(ClusterError("the message bus is closed"))
        await self._reset()

    # -- the contract ---------------------------------------------------------------------------

    async def publish(self, message: ClusterMessage) -> int:
        payload = message.dumps()
        if len(payload.encode()) > MAX_MESSAGE_BYTES:
            raise ClusterError(f"message of {len(payload)} bytes is over {MAX_MESSAGE_BYTES}")
        channel = (
            self.keys.node_channel(message.target)
            if message.target
            else self.keys.room_channel(message.room)
        )
        sent: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            self._outbox.put_nowait((channel, payload, sent))
        except asyncio.QueueFull:
            raise ClusterError(f"{OUTBOX_LIMIT} messages already wait for Redis") from None
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="cluster-bus-writer")
        return await sent

    async def subscribe_room(self, room: str, handler: MessageHandler) -> None:
        await self._subscribe(self.keys.room_channel(room), handler)

    async def unsubscribe_room(self, room: str) -> None:
        channel = self.keys.room_channel(room)
        if self._handlers.pop(channel, None) is None:
            return
        self._last_seq.pop(channel, None)
        self._confirmations.pop(channel, None)
        if self._pubsub is not None:
            await self.link.run("unsubscribe", self._pubsub.unsubscribe(channel))

    async def subscribe_node(self, node_id: str, handler: MessageHandler) -> None:
        await self._subscribe(self.keys.node_channel(node_id), handler)

    async def _subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Returns once Redis confirmed the subscription, so a message published after it
        returns is delivered. The wish is kept even when this fails: the reader subscribes
        to every wanted channel whenever it (re)connects."""
        self._handlers[channel] = handler
        loop = asyncio.get_running_loop()
        confirmed = self._confirmations.get(channel)
        if confirmed is None or confirmed.done():
            confirmed = self._confirmations[channel] = loop.create_future()
        if self._pubsub is not None:
            await self.link.run("subscribe", self._pubsub.subscribe(channel))
        else:
            self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), self.link.timeout_s)
        except TimeoutError as exc:
            raise ClusterUnavailable(
                f"cluster state unavailable: subscribing to {channel} was not confirmed "
                f"by Redis at {self.link.description} within {self.link.timeout_s:g} s"
            ) from exc

    # -- the writer -----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < BATCH_LIMIT and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                seqs = await self.link.run("publish", self._send(batch))
                if len(seqs) != len(batch):
                    raise ClusterError(f"publish: {len(seqs)} replies to {len(batch)} messages")
            except Exception as exc:  # every waiting publisher gets the error, none hangs
                if not isinstance(exc, ClusterError):
                    logger.exception("cluster: publishing failed")
                for _, _, sent in batch:
                    if not sent.done():
                        sent.set_exception(exc)
                continue
            for (_, _, sent), seq in zip(batch, seqs, strict=True):
                if not sent.done():
                    sent.set_result(int(seq))

    async def _send(self, batch: list[_Outgoing]) -> list[int]:
        async with self.link.client.pipeline(transaction=False) as pipe:
            for channel, payload, _ in batch:
                await self._publish(  # queues on the pipeline
                    keys=[self.keys.seq(channel)],
                    args=[channel, payload, SEQ_TTL_MS],
                    client=pipe,
                )
            return await pipe.execute()

    # -- the reader -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                if self._pubsub is None:
                    if not self._handlers:
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                    pubsub = self.link.raw_client.pubsub()
                    self._pubsub = pubsub
                    await pubsub.subscribe(*self._handlers)
                    self._gap_reported = False
                    self.link.succeeded()
                message = await self._pubsub.get_message(timeout=1.0)
            except UNREACHABLE as exc:
                self.link.failed(exc)
                await self._reset()
                await asyncio.sleep(self.retry_s)
                continue
            except Exception:  # a bug or an odd reply: start over rather than stop reading
                logger.exception("cluster: pub/sub reader failed; reconnecting")
                await self._reset()
                await asyncio.sleep(self.retry_s)
                continue
            if message is not None:
                self._on_message(message)

    async def _reset(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel"))
        if kind == "subscribe":
            confirmed = self._confirmations.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "message":
            return
        handler = self._handlers.get(channel)
        if handler is None:
            return
        decoded = self._decode(message.get("data"))
        if decoded is None:
            return
        seq, msg = decoded
        self._check_order(channel, seq)
        try:
            handler(msg.with_seq(seq))
        except Exception:  # one bad handler must not stop the reader
            logger.exception("cluster message handler failed on %s", msg.kind)

    def _decode(self, data: Any) -> tuple[int, ClusterMessage] | None:
        try:
            if not isinstance(data, bytes) or len(data) > MAX_MESSAGE_BYTES + 32:
                raise RecordError("not a message, or too large")
            head, _, payload = data.partition(b" ")
            seq = int(head)
            return seq, ClusterMessage.loads(payload)
        except (ValueError, RecordError) as exc:
            self.dropped += 1
            if self.dropped <= 5 or self.dropped % 1000 == 0:
                logger.warning("cluster: dropped a bad message (%d so far): %s", self.dropped, exc)
            return None

    def _check_order(self, channel: str, seq: int) -> None:
        last = self._last_seq.get(channel)
        self._last_seq[channel] = seq
        if last is None or seq <= last:  # first message here, or numbering restarted
            return
        if seq > last + 1:
            self.missed += seq - last - 1
            if not self._gap_reported:  # once per connection, not per room
                self._gap_reported = True
                logger.warning(
                    "cluster: messages were missed while the connection to Redis was down "
                    "(%d on %s so far)",
                    seq - last - 1,
                    channel,
                )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
