"""A room's part on other nodes, as this node's participants see it.

While this node has participants in a room it follows the room's channel (membership.py).
When it starts following, it reads the room's participants and tracks on other nodes from
the directory; from then on the room's messages keep them current, in the channel's order:

* `participant_joined` / `participant_left` of another node: kept in `room.remote` (the
  `joined` answer lists them) and sent to the local participants as the same events a local
  join or leave makes;
* `track_published` / `track_unpublished`: a `RemoteProducer` in the room (relay_edge.py),
  offered to local subscribers like a local track; closing it unpublishes it here;
* `data`: delivered to the local participants (or those of `to`), as a local data message.

Data messages sent by local participants go the other way: `room.data_relayed` hands them to
`data_outbound`, which publishes them on the room's channel. A room this node no longer has
participants in is forgotten: its remote tracks are closed (and their relays with them).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from .errors import ClusterError
from .records import ClusterMessage, MessageKind, ParticipantRecord, RecordError, TrackRecord
from .relay_edge import RelayEdge, RemoteProducer

if TYPE_CHECKING:
    from ..config import Config
    from ..participant import Participant
    from ..room import Room, RoomRegistry
    from .membership import ClusterMembership

logger = logging.getLogger(__name__)

MAX_DATA_BYTES = 64 * 1024  # a data message crossing nodes (the bus's own message limit)


def remote_info(record: ParticipantRecord) -> dict[str, Any]:
    """A participant of another node as participant.info() shows a local one."""
    return {
        "sid": record.sid,
        "identity": record.identity,
        "name": record.name,
        "kind": record.kind,
        "metadata": {},
        "tracks": [],
        "node_id": record.node_id,
    }


class RemoteRooms:
    def __init__(
        self,
        node_id: str,
        config: Config,
        rooms: RoomRegistry,
        membership: ClusterMembership,
        edge: RelayEdge,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.rooms = rooms
        self.membership = membership
        self.edge = edge
        self.data_in = 0
        self.data_out = 0
        self._prepared: set[str] = set()  # rooms read from the directory before their join
        self._seen_live: set[str] = set()  # nodes the registry listed as live

    def start(self) -> None:
        self.membership.listeners.append(self.on_message)
        self.membership.on_follow.append(self.load)
        self.rooms.observers.append(self._on_room_event)
        self.rooms.data_outbound = self._send_data
        self.edge.on_sweep.append(self.drop_gone_nodes)
        self.edge.start()

    def drop_gone_nodes(self) -> None:
        """Participants and tracks of nodes that are no longer live (no heartbeat for
        node_ttl_s: the registry as of the last heartbeat) leave the local rooms, which closes
        their relays; a publisher who comes back on another node is announced from there."""
        if not self.membership.backend.available:
            return  # (the registry is not current: nobody is taken as gone meanwhile)
        live = {n.node_id for n in self.membership.nodes}
        if self.node_id not in live:
            return  # not registered yet, or out of step
        # only nodes seen live before and missing now: a node that has just started may be
        # heard from before this node's registry copy lists it
        gone = self._seen_live - live
        self._seen_live = (self._seen_live | live) - gone
        if not gone:
            return
        for room in list(self.rooms.rooms.values()):
            for identity, info in list(room.remote.items()):
                if info["node_id"] in gone:
                    self._left(room, {"identity": identity, "sid": info["sid"]})
            for track_id in list(room.remote_tracks):
                producer = room.producers.get(track_id)
                if producer is not None and getattr(producer, "origin", None) in gone:
                    self._unpublished(room, track_id)

    # -- from the directory ---------------------------------------------------------------------

    async def prepare(self, room: Room) -> None:
        """Before the first local participant of `room` is answered: what other nodes hold
        there, so its `joined` lists them (bounded by the Redis timeout; without Redis, or
        when it fails, the join goes on and the room's messages fill in later)."""
        if room.participants or room.name in self._prepared:
            return
        if not self.membership.backend.available:
            return
        self._prepared.add(room.name)
        try:
            await asyncio.wait_for(self.load(room.name), self.config.cluster.redis_timeout_s)
        except (ClusterError, TimeoutError) as exc:
            logger.info(
                "cluster: room %s joined without its other nodes' state: %s", room.name, exc
            )

    async def load(self, room_name: str) -> None:
        """Take in what other nodes hold in the room; called again once this node follows the
        room's channel, which also drops what went away between the two reads."""
        directory = self.membership.backend.directory
        participants = await directory.participants(room_name)
        tracks = await directory.tracks(room_name)
        # entries of a node that died are in the directory until a node prunes them (up to
        # node_ttl_s plus a heartbeat): only live nodes' entries are taken in
        live = {n.node_id for n in await self.membership.backend.registry.live_nodes()}
        live.discard(self.node_id)
        room = self.rooms.rooms.get(room_name)
        if room is None:
            return
        others = [r for r in participants if r.node_id in live]
        for record in others:
            self._joined(room, record)
        present = {(r.identity, r.sid) for r in others}
        for identity, info in list(room.remote.items()):
            if (identity, info["sid"]) not in present:
                self._left(room, {"identity": identity, "sid": info["sid"]})
        remote_tracks = [t for t in tracks if t.node_id in live]
        for track in remote_tracks:
            self._published(room, track)
        listed = {t.track_id for t in remote_tracks}
        for track_id in list(room.remote_tracks - listed):
            self._unpublished(room, track_id)

    # -- messages ---------------------------------------------------------------------------------

    def on_message(self, message: ClusterMessage) -> None:
        """A message of another node (membership passes none of this node's own)."""
        room = self.rooms.rooms.get(message.room) if message.room else None
        if room is None:
            return
        try:
            kind = message.kind
            if kind == MessageKind.PARTICIPANT_JOINED:
                self._joined(room, ParticipantRecord.from_json(message.body))
            elif kind == MessageKind.PARTICIPANT_LEFT:
                self._left(room, message.body)
            elif kind == MessageKind.TRACK_PUBLISHED:
                self._published(room, TrackRecord.from_json(message.body))
            elif kind == MessageKind.TRACK_UNPUBLISHED:
                self._unpublished(room, message.body.get("track_id"))
            elif kind == MessageKind.DATA:
                self._data(room, message.body)
        except RecordError as exc:
            logger.warning(
                "cluster: dropped a %s message from %s: %s", message.kind, message.origin, exc
            )

    def _joined(self, room: Room, record: ParticipantRecord) -> None:
        local = room.participants.get(record.identity)
        if local is not None:
            return  # the same identity joined here since: this node's one is the live one
        old = room.remote.get(record.identity)
        info = remote_info(record)
        if old is not None:
            if old["sid"] == record.sid:
                return  # (from the directory and from the channel)
            info["tracks"] = old["tracks"]
        room.remote[record.identity] = info
        room.broadcast({"type": "participant_joined", "participant": info})

    def _left(self, room: Room, body: dict) -> None:
        identity = body.get("identity")
        info = room.remote.get(identity) if isinstance(identity, str) else None
        if info is None or info["sid"] != body.get("sid"):
            return  # a leave of an older connection of that identity
        del room.remote[identity]
        room.broadcast({"type": "participant_left", "identity": identity})

    def _published(self, room: Room, record: TrackRecord) -> None:
        if record.track_id in room.producers or record.kind not in ("audio", "video"):
            return
        if record.publisher in room.participants:
            # the publisher is here now (it resumed or moved; one participant per identity):
            # what its node still lists, until that node is taken for gone, is not offered
            return
        producer = RemoteProducer(record, self.config, self.edge.demand)
        info = room.remote.get(record.publisher)
        if info is not None:
            info["tracks"].append(producer.info.to_json())
        room.publish_remote(producer)

    def _unpublished(self, room: Room, track_id: Any) -> None:
        if not isinstance(track_id, str) or track_id not in room.remote_tracks:
            return
        producer = room.producers.get(track_id)
        if producer is None:
            return
        info = room.remote.get(producer.info.publisher)
        if info is not None:
            info["tracks"] = [t for t in info["tracks"] if t.get("id") != track_id]
        producer.close()  # the room tells its subscribers; the relay drops it at its next sweep

    def _data(self, room: Room, body: dict) -> None:
        sender, topic, payload, to = (
            body.get("from"),
            body.get("topic", ""),
            body.get("payload"),
            body.get("to"),
        )
        if not isinstance(sender, str) or not isinstance(topic, str):
            return
        if to is not None and not (isinstance(to, list) and all(isinstance(t, str) for t in to)):
            return
        self.data_in += 1
        event = {"type": "data", "from": sender, "topic": topic, "payload": payload}
        size = len(json.dumps(payload, separators=(",", ":"))) + 256
        for participant in list(room.participants.values()):
            if to is None or participant.identity in to:
                participant.send_event(event, size)

    # -- data from here ---------------------------------------------------------------------------

    def _send_data(
        self, room: Room, sender: Participant, topic: str, payload: Any, to: list[str] | None
    ) -> None:
        if not room.remote:
            return  # nobody on another node
        if to is not None:
            to = [t for t in to if t in room.remote]
            if not to:
                return
        body = {"from": sender.identity, "topic": topic, "payload": payload, "to": to}
        if len(json.dumps(body, separators=(",", ":"))) > MAX_DATA_BYTES - 1024:
            logger.info("data message in %s too large to cross nodes: kept local", room.name)
            return
        self.data_out += 1
        self.membership._announce(MessageKind.DATA, room.name, body)

    # -- rooms ------------------------------------------------------------------------------------

    def _on_room_event(self, event: str, room: Room, participant=None, producer=None) -> None:
        if event == "participant_joined" and participant is not None:
            self._superseded(room, participant.identity)
        if event == "room_finished":
            self._prepared.discard(room.name)
            for track_id in list(room.remote_tracks):
                producer = room.producers.get(track_id)
                if producer is not None:
                    producer.close()
            room.remote.clear()
            task = asyncio.ensure_future(self.edge.close_room(room.name))
            task.add_done_callback(_quiet)

    def _superseded(self, room: Room, identity: str) -> None:
        """An identity that was on another node joined here (a client that resumed after its
        node failed, or moved): one participant per identity, so the other node's entry and
        its tracks go (the clients were told of the local join already)."""
        info = room.remote.pop(identity, None)
        if info is None:
            return
        for track_id in list(room.remote_tracks):
            producer = room.producers.get(track_id)
            if producer is not None and producer.info.publisher == identity:
                producer.close()

    def status(self) -> dict[str, Any]:
        return {
            "relays_in": self.edge.stats(),
            "relays_opened": self.edge.opened,
            "data_in": self.data_in,
            "data_out": self.data_out,
        }


def _quiet(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, ClusterError):
            logger.warning("cluster: closing a room's relays failed: %r", exc)
