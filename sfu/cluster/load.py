"""A node's load for its heartbeat, read from the node's own counters (no extra per-packet work).

CPU is the process's CPU time over the interval since the last sample (percent of one core).
Bitrate is media in (bytes received per published layer) plus media out (bytes sent per
subscriber track, retransmissions and probes included) over the same interval; each counter
is followed by its owner's key, so a participant who leaves does not make the sum go back.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .records import NodeLoad

if TYPE_CHECKING:
    from ..room import RoomRegistry


class LoadSampler:
    def __init__(self, rooms: RoomRegistry) -> None:
        self.rooms = rooms
        self._at = time.monotonic()
        self._cpu = time.process_time()
        self._bytes: dict[tuple, int] = {}

    def _counters(self) -> dict[tuple, int]:
        counters: dict[tuple, int] = {}
        for room in self.rooms.rooms.values():
            for producer in room.producers.values():
                for layer in producer.layers:
                    if layer.stats is not None:
                        counters[("in", producer.id, layer.spatial)] = layer.stats.bytes_received
            for participant in room.participants.values():
                if participant.subscriber is None:
                    continue
                for dt in participant.subscriber.downtracks:
                    sent = dt.octets_sent + dt.retransmitted_octets + dt.probe_octets
                    counters[("out", participant.sid, dt.mid or id(dt))] = sent
        return counters

    def sample(self) -> NodeLoad:
        """The load since the previous sample."""
        now, cpu = time.monotonic(), time.process_time()
        span = max(now - self._at, 1e-6)
        counters = self._counters()
        moved = 0
        for key, value in counters.items():
            moved += max(0, value - self._bytes.get(key, 0))
        cpu_pct = 100.0 * (cpu - self._cpu) / span
        self._at, self._cpu, self._bytes = now, cpu, counters
        rooms = self.rooms.rooms.values()
        return NodeLoad(
            cpu_pct=round(cpu_pct, 1),
            rooms=len(self.rooms.rooms),
            participants=sum(len(r.participants) for r in rooms),
            tracks=sum(len(r.producers) for r in rooms),
            bitrate_bps=round(moved * 8 / span),
        )
