"""A node's membership of the cluster: register, heartbeat with its load, keep its directory
entries in step with its rooms, follow its rooms' messages, leave on shutdown.

Room events reach it through the room registry's observers (synchronous, from the join and
publish paths); they are queued and applied in order by one task, so a join never waits for
Redis. When Redis is unreachable the node keeps serving its own rooms: the queued changes are
dropped and the node is marked out of step; when Redis answers again one catch-up re-registers
the node, replaces its directory entries with a snapshot of what it holds now (one atomic
script) and re-subscribes its channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import ClusterError, ClusterUnavailable
from .interface import ClusterBackend, MessageHandler
from .load import LoadSampler
from .records import (
    ClusterMessage,
    DirectoryChange,
    MessageKind,
    NodeInfo,
    NodeLoad,
    NodeSnapshot,
    ParticipantLeft,
    ParticipantRecord,
    TrackRecord,
    TrackRemoved,
)
from .tasks import stop_task

if TYPE_CHECKING:
    from ..config import Config
    from ..media.producer import Producer
    from ..room import Room, RoomRegistry
    from ..rooms.participant import Participant

logger = logging.getLogger(__name__)

# Room changes waiting for Redis at most; past that the node re-synchronises from a snapshot.
QUEUE_LIMIT = 10_000


# Room changes applied in one round trip at most.
BATCH_LIMIT = 256


class _Resync:
    """Queue marker: replace this node's directory entries with a snapshot."""


_RESYNC = _Resync()
_Op = DirectoryChange | _Resync


def participant_record(room: str, participant: Participant, node_id: str) -> ParticipantRecord:
    return ParticipantRecord(
        room=room,
        identity=participant.identity,
        sid=participant.sid,
        node_id=node_id,
        kind=participant.kind.value,
        name=participant.name or "",
        joined_at=participant.joined_at,
    )


def track_record(room: str, producer: Producer, node_id: str) -> TrackRecord:
    return TrackRecord(
        room=room,
        track_id=producer.id,
        publisher=producer.info.publisher,
        node_id=node_id,
        kind=producer.kind,
        source=producer.info.source,
        simulcast=producer.simulcast,
        name=producer.info.name,
        codec=producer.codec.mime_type,
        layers=len(producer.layers),
        rids=[e.rid for e in producer.layers] if all(e.rid for e in producer.layers) else [],
    )


class ClusterMembership:
    def __init__(
        self, node_id: str, config: Config, rooms: RoomRegistry, backend: ClusterBackend
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.settings = config.cluster
        self.rooms = rooms
        self.backend = backend
        self.load = LoadSampler(rooms)
        self.last_load = NodeLoad()
        self.started_at = time.time()
        # Messages from other nodes, for what plugs in later (relays, routing).
        self.listeners: list[MessageHandler] = []
        # called once this node follows a room's channel (remote_rooms.py reads the room's
        # other nodes from the directory then: nothing published after it is missed)
        self.on_follow: list[Callable[[str], Awaitable[None]]] = []
        self.received = 0
        # the live nodes as of the last heartbeat (join routing reads it: joins never wait
        # for Redis)
        self.nodes: list[NodeInfo] = []
        self._ops: asyncio.Queue[_Op] = asyncio.Queue(QUEUE_LIMIT)
        self._out_of_step = False  # changes were lost: a resync must come before others
        self._resync_queued = False
        self._following: set[str] = set()  # rooms whose channel this node subscribes to
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self.draining = False  # set by the drain (sfu/cluster/drain.py); goes out in heartbeats

    @property
    def public_url(self) -> str:
        server = self.config.server
        return self.settings.public_url or f"http://{server.host}:{server.port}"

    @property
    def following(self) -> frozenset[str]:
        """Rooms whose messages this node receives (those it has participants in)."""
        return frozenset(self._following)

    def info(self) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id,
            region=self.config.server.region,
            public_url=self.public_url,
            internal_url=self.settings.internal_url,
            started_at=self.started_at,
            load=self.last_load,
            draining=self.draining,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        await self.backend.start()
        self.backend.on_recovered(self._request_resync)
        self.rooms.observers.append(self._on_room_event)
        try:  # registered before the node takes joins, when Redis is there
            await self._warn_if_id_taken()
            await self._heartbeat()
            await self._catch_up(quiet=True)
        except ClusterError:  # logged once by the link; the loops retry
            self._out_of_step = True
        self._tasks = [
            asyncio.create_task(self._apply_loop(), name="cluster-apply"),
            asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeat"),
        ]
        logger.info(
            "cluster: node %s (%s) on %s", self.node_id, self.public_url, self.backend.description
        )

    async def stop(self) -> None:
        """Leave: let queued changes go out (bounded), deregister, remove this node's entries."""
        with contextlib.suppress(ValueError):
            self.rooms.observers.remove(self._on_room_event)
        timeout = self.settings.redis_timeout_s
        if self.backend.available and self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ops.join(), timeout)
        for task in self._tasks:  # (a plain cancel can be lost in a Redis call: tasks.py)
            await stop_task(task)
        self._tasks = []
        if self._started and self.backend.available:
            try:
                await asyncio.wait_for(self._leave(), 2 * timeout)
            except (ClusterError, TimeoutError) as exc:
                logger.warning("cluster: node %s could not deregister: %s", self.node_id, exc)
        await self.backend.close()

    async def _warn_if_id_taken(self) -> None:
        other = await self.backend.registry.get_node(self.node_id)
        if other is not None:
            logger.warning(
                "cluster: node id %s is already live (%s, heartbeat %.1f s ago): this is a quick "
                "restart, or another node has the same [server] node_id; ids must be unique",
                self.node_id,
                other.public_url,
                max(0.0, time.time() - other.heartbeat_at),
            )

    async def _leave(self) -> None:
        await self.backend.registry.deregister(self.node_id)
        await self.backend.directory.prune_node(self.node_id)

    # -- room events (synchronous, from the join and publish paths) ----------------------------

    def _on_room_event(
        self,
        event: str,
        room: Room,
        participant: Participant | None = None,
        producer: Producer | None = None,
    ) -> None:
        if event == "participant_joined" and participant is not None:
            self._enqueue(participant_record(room.name, participant, self.node_id))
        elif event == "participant_left" and participant is not None:
            self._enqueue(ParticipantLeft(room.name, participant.identity, participant.sid))
        elif event == "track_published" and producer is not None:
            self._enqueue(track_record(room.name, producer, self.node_id))
        elif event == "track_unpublished" and producer is not None:
            self._enqueue(TrackRemoved(room.name, producer.id))

    def _enqueue(self, op: _Op) -> None:
        if self._out_of_step:
            return  # the coming resync's snapshot holds it
        try:
            self._ops.put_nowait(op)
        except asyncio.QueueFull:
            logger.warning("cluster: %d room changes wait for Redis; resynchronising", QUEUE_LIMIT)
            self._request_resync()

    def _request_resync(self) -> None:
        """Queue one catch-up; what is queued before it is skipped (the snapshot holds it)."""
        self._out_of_step = True
        if self._resync_queued:
            return
        if self._ops.full():
            while not self._ops.empty():
                self._ops.get_nowait()
                self._ops.task_done()
        self._resync_queued = True
        self._ops.put_nowait(_RESYNC)

    # -- applying changes -----------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        carried: _Op | None = None  # a resync met while batching: it goes next, alone
        while True:
            first = carried if carried is not None else await self._ops.get()
            carried = None
            batch = [first]
            # what queued up meanwhile goes in the same round trip
            while (
                not isinstance(first, _Resync)
                and len(batch) < BATCH_LIMIT
                and not self._ops.empty()
            ):
                op = self._ops.get_nowait()
                if isinstance(op, _Resync):
                    carried = op
                    break
                batch.append(op)
            try:
                if isinstance(batch[0], _Resync):
                    self._resync_queued = False
                    # changes from now on queue behind the snapshot _catch_up takes first
                    self._out_of_step = False
                    await self._catch_up()
                elif not self._out_of_step:
                    await self._apply(batch)  # type: ignore[arg-type]
            except ClusterUnavailable:
                self._out_of_step = True  # the heartbeat asks for a resync once Redis answers
            except ClusterError as exc:
                logger.warning("cluster: %s", exc)
            except Exception:
                logger.exception("cluster: applying room changes failed")
            finally:
                for _ in batch:
                    self._ops.task_done()

    async def _apply(self, changes: list[DirectoryChange]) -> None:
        """Write the changes, follow the rooms they touch, then tell the rooms' nodes."""
        await self.backend.directory.apply(changes)
        for room in dict.fromkeys(change.room for change in changes):
            await self._follow(room)
        for change in changes:
            if isinstance(change, ParticipantRecord):
                kind, body = MessageKind.PARTICIPANT_JOINED, change.to_json()
            elif isinstance(change, ParticipantLeft):
                kind = MessageKind.PARTICIPANT_LEFT
                body = {"identity": change.identity, "sid": change.sid}
            elif isinstance(change, TrackRecord):
                kind, body = MessageKind.TRACK_PUBLISHED, change.to_json()
            else:
                kind, body = MessageKind.TRACK_UNPUBLISHED, {"track_id": change.track_id}
            self._announce(kind, change.room, body)

    async def _follow(self, room: str) -> None:
        """Subscribe to the room's channel while this node has participants in it."""
        wanted = room in self.rooms.rooms
        if wanted and room not in self._following:
            await self.backend.bus.subscribe_room(room, self._on_message)
            self._following.add(room)
            for callback in self.on_follow:
                try:
                    await callback(room)
                except ClusterUnavailable:
                    raise
                except Exception:
                    logger.exception("cluster: following room %s failed", room)
        elif not wanted and room in self._following:
            self._following.discard(room)
            await self.backend.bus.unsubscribe_room(room)

    def _announce(self, kind: MessageKind, room: str, body: dict[str, Any]) -> None:
        """Tell the room's other nodes, without waiting: the bus keeps the order."""
        message = ClusterMessage(kind, self.node_id, room=room, body=body)
        task = asyncio.ensure_future(self.backend.bus.publish(message))
        task.add_done_callback(_consume_error)

    def snapshot(self) -> NodeSnapshot:
        participants, tracks = [], []
        for room in self.rooms.rooms.values():
            for p in room.participants.values():
                participants.append(participant_record(room.name, p, self.node_id))
            for producer in room.producers.values():
                if not producer.closed and producer.id not in room.remote_tracks:
                    tracks.append(track_record(room.name, producer, self.node_id))
        return NodeSnapshot(self.node_id, participants, tracks)

    async def _catch_up(self, quiet: bool = False) -> None:
        """After a start or an outage: the directory gets this node's present state (the
        snapshot is taken before the first await, so no change falls between it and the
        changes queued after it)."""
        snapshot = self.snapshot()
        await self.backend.directory.sync_node(snapshot)
        await self.backend.bus.subscribe_node(self.node_id, self._on_message)
        for room in set(self.rooms.rooms) | self._following:
            await self._follow(room)
        if not quiet:  # after an outage; the start is logged on its own
            logger.info(
                "cluster: node %s in step with %s again", self.node_id, self.backend.description
            )

    # -- heartbeat ------------------------------------------------------------------------------

    async def mark_draining(self) -> None:
        """Tell the registry now (not at the next heartbeat) that this node is draining."""
        self.draining = True
        with contextlib.suppress(ClusterError):
            await self._heartbeat()

    async def _heartbeat(self) -> bool:
        self.last_load = self.load.sample()
        was_live = await self.backend.registry.heartbeat(self.info())
        self.nodes = await self.backend.registry.live_nodes()
        return was_live

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                was_live = await self._heartbeat()
                if not was_live and not self._out_of_step:
                    # a stalled loop (or a slow Redis) let the record expire: other nodes may
                    # have swept this node's entries, so they are written again
                    logger.warning(
                        "cluster: node %s was taken for gone (no heartbeat within %g s); "
                        "writing its entries again",
                        self.node_id,
                        self.settings.node_ttl_s,
                    )
                    self._out_of_step = True
                if self._out_of_step:
                    self._request_resync()
                await self._sweep()
            except ClusterUnavailable:
                self._out_of_step = True
            except ClusterError as exc:
                logger.warning("cluster: heartbeat: %s", exc)
            except Exception:
                logger.exception("cluster: heartbeat failed")

    async def _sweep(self) -> None:
        """Remove what nodes that died (no heartbeat for node_ttl_s) left in the directory."""
        for node_id in await self.backend.registry.expired_nodes():
            if node_id == self.node_id:
                continue
            rooms = await self.backend.directory.prune_node(node_id)
            await self.backend.registry.forget(node_id)
            logger.warning(
                "cluster: node %s is gone (no heartbeat for %g s); removed its entries in %d "
                "room(s)",
                node_id,
                self.settings.node_ttl_s,
                len(rooms),
            )

    # -- messages from other nodes --------------------------------------------------------------

    def _on_message(self, message: ClusterMessage) -> None:
        if message.origin == self.node_id:
            return
        self.received += 1
        for listener in self.listeners:
            try:
                listener(message)
            except Exception:
                logger.exception("cluster: message listener failed on %s", message.kind)

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.backend.description,
            "available": self.backend.available,
            "in_step": not self._out_of_step,
            "public_url": self.public_url,
            "load": self.last_load.to_json(),
            "queued_changes": self._ops.qsize(),
            "rooms_followed": len(self._following),
            "messages_received": self.received,
        }


def _consume_error(task: asyncio.Future) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, ClusterUnavailable):  # outages are logged once
        logger.warning("cluster: publishing an event failed: %s", exc)
