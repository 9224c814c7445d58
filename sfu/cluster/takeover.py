"""One participant per identity across nodes: a rejoin on another node replaces this one.

A client that resumes on a fallback node while its old node is still alive (its connection
there looked dead to the client, not to the node) would otherwise be in the room twice. Each
node hears the others' `participant_joined` messages; when one names an identity this node
holds in the same room under another connection (sid) that joined earlier, the local one is
replaced exactly as a rejoin on this node would replace it (`replaced` error, socket closed,
others see it leave). Ties (the same join time) go to the larger sid, the same on every node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .interface import MessageHandler
from .membership import participant_record
from .records import ClusterMessage, MessageKind, ParticipantRecord, RecordError

if TYPE_CHECKING:
    from ..room import RoomRegistry

logger = logging.getLogger(__name__)


def replace_on_rejoin_elsewhere(rooms: RoomRegistry) -> MessageHandler:
    """A membership listener (ClusterMembership.listeners) doing the above."""

    def on_message(message: ClusterMessage) -> None:
        if message.kind != MessageKind.PARTICIPANT_JOINED:
            return
        try:
            record = ParticipantRecord.from_json(message.body)
        except RecordError:
            return
        room = rooms.rooms.get(record.room)
        local = room.participants.get(record.identity) if room is not None else None
        if local is None or local.sid == record.sid:
            return
        if not record.is_later_connection_than(participant_record(record.room, local, "")):
            return  # ours is the newer connection: the other node replaces its own
        logger.info(
            "%s in %s joined again on node %s: replacing the connection here",
            record.identity,
            record.room,
            record.node_id,
        )
        local.replaced()
        asyncio.ensure_future(room.remove(local))

    return on_message
