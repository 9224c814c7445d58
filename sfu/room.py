"""Room and RoomRegistry: who is in a room, what they publish, and who receives what."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import LimitSettings

if TYPE_CHECKING:
    from .media.producer import Producer
    from .rooms.participant import Participant

logger = logging.getLogger(__name__)

# Lifecycle events observers get (the webhook event names): observer(event, room, participant,
# producer), participant/producer None where the event has none.
ROOM_EVENTS = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
)
RoomObserver = Callable[[str, "Room", "Participant | None", "Producer | None"], None]
# data observer(room, sender, topic, payload): a data message the room relayed
DataObserver = Callable[["Room", "Participant", str, Any], None]


class RoomFull(Exception):
    pass


class TooManyRooms(Exception):
    pass


class Room:
    def __init__(self, name: str, limits: LimitSettings, registry: RoomRegistry) -> None:
        self.name = name
        self.limits = limits
        self.registry = registry
        self.participants: dict[str, Participant] = {}
        self.producers: dict[str, Producer] = {}
        self.created_at = time.time()
        self.sid = "RM_" + uuid.uuid4().hex[:12]  # tells apart two sessions of one room name
        self.started = False  # room_started announced (first participant added)
        # the room's part on other nodes (sfu/cluster/remote_rooms.py): participants there
        # (identity -> info, as info() gives it, with node_id) and the tracks relayed from there
        self.remote: dict[str, dict] = {}
        self.remote_tracks: set[str] = set()

    # -- membership ------------------------------------------------------------------------------

    async def add(self, participant: Participant) -> None:
        """Join; a second connection with the same identity replaces the first."""
        old = self.participants.get(participant.identity)
        if old is not None:  # (a client resuming after a failure, or a second tab)
            old.replaced()  # told why, its socket closed: it can act no more as this identity
            await self.remove(old, replacing=True)
        if len(self.participants) >= self.limits.max_participants_per_room:
            raise RoomFull(f"room {self.name!r} is full")
        self.participants[participant.identity] = participant
        if not self.started:
            self.started = True
            self.registry.emit("room_started", self)
        self.broadcast(
            {"type": "participant_joined", "participant": participant.info()}, exclude=participant
        )
        logger.info("%s joined %s (%s)", participant.identity, self.name, participant.kind.value)
        self.registry.emit("participant_joined", self, participant)
        self.registry.notify("joined", self, participant)

    async def remove(self, participant: Participant, replacing: bool = False) -> None:
        """Leave. `replacing`: the same identity is joining again, so the room stays even if
        this was its only participant (otherwise the newcomer would land in a room the
        registry had already dropped, unseen by later joiners)."""
        if self.participants.get(participant.identity) is not participant:
            await participant.close()
            return
        del self.participants[participant.identity]
        await participant.close()  # unpublishes its producers (see publish())
        self.broadcast({"type": "participant_left", "identity": participant.identity})
        logger.info("%s left %s", participant.identity, self.name)
        self.registry.emit("participant_left", self, participant)
        # listeners first: the agent dispatcher still sees the room's part on other nodes,
        # which the room's end (discard) clears
        self.registry.notify("left", self, participant)
        if not self.participants and not replacing:
            self.registry.discard(self)

    # -- tracks --------------------------------------------------------------------------------

    def publish(self, participant: Participant, producer: Producer) -> None:
        """Announce a new track and give it to everyone who subscribes automatically."""
        self.producers[producer.id] = producer
        producer.on_close(self._unpublished)
        self.registry.emit("track_published", self, participant, producer)
        self._offer(producer, participant)

    def publish_remote(self, producer: Producer) -> None:
        """A track published on another node (relayed here when someone subscribes)."""
        self.remote_tracks.add(producer.id)
        self.producers[producer.id] = producer
        producer.on_close(self._unpublished)
        self._offer(producer, None)

    def _offer(self, producer: Producer, publisher: Participant | None) -> None:
        self.broadcast({"type": "track_published", "track": producer.info.to_json()}, publisher)
        for other in self.participants.values():
            if other is publisher or not other.grants.subscribe:
                continue
            if other.auto_subscribe and other.subscriber is not None:
                other.subscriber.subscribe(producer)

    def _unpublished(self, producer: Producer) -> None:
        if self.producers.pop(producer.id, None) is None:
            return
        remote = producer.id in self.remote_tracks
        self.remote_tracks.discard(producer.id)
        for other in self.participants.values():
            if other.subscriber is not None:
                other.subscriber.drop_producer(producer)
        self.broadcast({"type": "track_unpublished", "track_id": producer.id})
        if remote:
            return  # its own node tells the directory and the webhooks
        publisher = self.participants.get(producer.info.publisher)
        self.registry.emit("track_unpublished", self, publisher, producer)

    def data_relayed(
        self, sender: Participant, topic: str, payload: Any, to: list[str] | None = None
    ) -> None:
        """Signalling relayed a data message (metrics read agent turn timings from them; the
        cluster sends it to the room's other nodes)."""
        if self.registry.data_outbound is not None:
            self.registry.data_outbound(self, sender, topic, payload, to)
        for observer in self.registry.data_observers:
            try:
                observer(self, sender, topic, payload)
            except Exception:
                logger.exception("data observer failed")

    def live_producers(self, exclude: Participant | None = None) -> list[Producer]:
        return [
            p
            for p in self.producers.values()
            if not p.closed and (exclude is None or p.info.publisher != exclude.identity)
        ]

    def broadcast(self, message: dict, exclude: Participant | None = None) -> None:
        for participant in list(self.participants.values()):
            if participant is not exclude:
                participant.send_event(message)

    async def close(self) -> None:
        for participant in list(self.participants.values()):
            await self.remove(participant)

    def info(self) -> dict:
        return {
            "name": self.name,
            "created_at": self.created_at,
            "participants": [p.info() for p in self.participants.values()],
        }


class RoomRegistry:
    """The rooms of one node; a room exists while it has participants."""

    def __init__(self, limits: LimitSettings) -> None:
        self.limits = limits
        self.rooms: dict[str, Room] = {}
        # listener(event, room, participant) for "joined" and "left" (agent dispatch uses it)
        self.listeners: list[Callable[[str, Room, Participant], None]] = []
        # lifecycle observers (webhooks, metrics): see ROOM_EVENTS; called synchronously, so
        # they must only queue work, never block
        self.observers: list[RoomObserver] = []
        self.data_observers: list[DataObserver] = []
        # (room, sender, topic, payload, to): a data message for the room's other nodes
        self.data_outbound: Callable[[Room, Participant, str, Any, list | None], None] | None = None

    def emit(
        self,
        event: str,
        room: Room,
        participant: Participant | None = None,
        producer: Producer | None = None,
    ) -> None:
        for observer in self.observers:
            try:
                observer(event, room, participant, producer)
            except Exception:  # an observer's bug must not break joins and leaves
                logger.exception("room observer failed on %s", event)

    def notify(self, event: str, room: Room, participant: Participant) -> None:
        for listener in self.listeners:
            try:
                listener(event, room, participant)
            except Exception:  # a listener's bug must not break joins and leaves
                logger.exception("room listener failed on %s", event)

    def get_or_create(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            if len(self.rooms) >= self.limits.max_rooms:
                raise TooManyRooms("this node hosts its maximum number of rooms")
            room = Room(name, self.limits, self)
            self.rooms[name] = room
        return room

    def discard(self, room: Room) -> None:
        if self.rooms.get(room.name) is room and not room.participants:
            del self.rooms[room.name]
            if room.started:
                self.emit("room_finished", room)

    async def close(self) -> None:
        for room in list(self.rooms.values()):
            await room.close()
        self.rooms.clear()
