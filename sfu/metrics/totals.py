"""Node-wide counters that never go down, from per-object counters that come and go.

Producers and downtracks count packets and bytes themselves, for their own lifetime; a
Prometheus counter must not drop when a participant leaves. `Totals` keeps, per (object,
counter), the highest value it has read, and adds only the increase to the node total. Objects
are read at each scrape, and once more when they go away (a participant leaves, a track is
unpublished), then forgotten. An object that vanishes without such an event loses only what it
counted since the last scrape. A counter that restarts (a new ReceiveStats after an SSRC
change) is a new object, so nothing is counted twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

# (metric name, label values) -> total
Key = tuple[str, tuple[str, ...]]
# (metric name, label values, the object counting, its counter's name, the value read now)
Reading = tuple[str, tuple[str, ...], object, str, float]


class Totals:
    def __init__(self) -> None:
        self.values: defaultdict[Key, float] = defaultdict(float)
        # (id(obj), counter) -> [obj, highest value read, scrape round]; the strong reference
        # keeps id() from being reused while the entry exists
        self._seen: dict[tuple[int, str], list] = {}
        self._round = 0

    def read(self, readings: Iterable[Reading]) -> None:
        """Account the increase of every reading since it was last read."""
        values, seen, current = self.values, self._seen, self._round
        for name, labels, obj, counter, value in readings:
            slot = (id(obj), counter)
            entry = seen.get(slot)
            if entry is None or entry[0] is not obj:
                entry = seen[slot] = [obj, 0.0, current]
            if value > entry[1]:
                values[(name, labels)] += value - entry[1]
                entry[1] = value
            entry[2] = current

    def retire(self, readings: Iterable[Reading]) -> None:
        """Last readings of objects going away; then forget them."""
        readings = list(readings)
        self.read(readings)
        for _name, _labels, obj, counter, _value in readings:
            self._seen.pop((id(obj), counter), None)

    def scrape(self, readings: Iterable[Reading]) -> None:
        """Read every live object; forget the ones not seen (gone without an event)."""
        self._round += 1
        self.read(readings)
        current = self._round
        stale = [slot for slot, entry in self._seen.items() if entry[2] != current]
        for slot in stale:
            del self._seen[slot]

    def get(self, name: str, labels: tuple[str, ...] = ()) -> float:
        return self.values.get((name, labels), 0.0)
