"""Rooms' participants and the one join / publish / subscribe path.

joins.py: JoinService, the path every surface's joins take (and where the room directory
plugs in: JoinService.open_room); participant.py: one identity in a room; timeline.py: the
phases of each join. The rooms themselves are sfu/room.py.
"""

from .joins import JoinError, JoinService, Published
from .participant import Participant, ParticipantKind

__all__ = ["JoinError", "JoinService", "Participant", "ParticipantKind", "Published"]
