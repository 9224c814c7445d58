"""Join-time metrics: when each phase of one participant's join happened.

A join is measured from the moment its `join` message reached the server. Signalling marks its
phases as they happen (`joined` reply queued, first subscriber `offer` queued, first `answer`
received, `publish_answer` queued); the connection phases (ICE connected, DTLS connected) and
the first packet forwarded to each of its m-lines are read from the peer connections and
DownTracks when the metrics are looked at, and frozen when the participant leaves. Nothing here
runs per packet.

`GET /api/stats` shows each participant's `join` and, per node, the recent joins with their
median (p50) and p95 per phase, so an operator sees where join time goes.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

# Phases in the order they normally happen; each is milliseconds after the join message.
PHASES = (
    "joined",  # the `joined` reply was queued for sending
    "offer",  # the first subscriber offer was queued (inside `joined` with inline offers)
    "publish_answer",  # the answer to the first publish offer (join.publish or `publish`)
    "answer",  # the subscriber's answer to the first offer arrived
    "subscriber_ice",  # subscriber connection: ICE connected
    "subscriber_dtls",  # subscriber connection: DTLS connected (media can flow)
    "publisher_ice",
    "publisher_dtls",
    "first_packet",  # first packet of any kind forwarded to this participant
    "first_video_packet",  # first video packet forwarded (a keyframe, cached or fresh)
    "first_audio_packet",
)

RECENT_JOINS = 200  # joins kept per node for the summary
RECENT_SHOWN = 20  # of which the stats endpoint lists the newest


class JoinTimeline:
    """The phases of one join, as monotonic times; reported in ms since the join message."""

    def __init__(
        self, identity: str, room: str, kind: str = "websocket", started: float | None = None
    ) -> None:
        self.identity = identity
        self.room = room
        self.kind = kind
        now = time.monotonic()
        self.started = now if started is None else started
        self.started_wall = time.time() - (now - self.started)
        self.marks: dict[str, float] = {}
        self.first_packets: dict[str, float] = {}  # track id (or mid) -> monotonic time
        self.flags: dict[str, bool] = {}  # how the join was made: inline_offer, with_publish
        self._probe: Callable[[JoinTimeline], None] | None = None

    def mark(self, phase: str, at: float | None = None) -> None:
        """Record a phase; only its first occurrence counts."""
        if phase not in self.marks:
            self.marks[phase] = time.monotonic() if at is None else at

    def attach(self, probe: Callable[[JoinTimeline], None]) -> None:
        """`probe(timeline)` reads connection and first-packet times from live objects."""
        self._probe = probe

    def refresh(self) -> None:
        if self._probe is not None:
            try:
                self._probe(self)
            except Exception:  # metrics must never break a stats request or a leave
                self._probe = None

    def freeze(self) -> None:
        """Take the last readings (the participant is leaving) and let go of its objects."""
        self.refresh()
        self._probe = None

    def ms(self) -> dict[str, float]:
        """Phase -> milliseconds since the join message, in the order they happened."""
        self.refresh()
        items = sorted(self.marks.items(), key=lambda kv: kv[1])
        return {name: round((at - self.started) * 1000, 1) for name, at in items}

    def to_json(self) -> dict:
        ms = self.ms()
        return {
            "identity": self.identity,
            "room": self.room,
            "kind": self.kind,
            "at": round(self.started_wall, 4),
            "ms": ms,
            "first_packet_ms": {
                track: round((at - self.started) * 1000, 1)
                for track, at in self.first_packets.items()
            },
            **self.flags,
        }


class JoinLog:
    """The recent joins of a node, with per-phase percentiles."""

    def __init__(self, size: int = RECENT_JOINS) -> None:
        self.recent: deque[JoinTimeline] = deque(maxlen=size)
        self.total = 0

    def add(self, timeline: JoinTimeline) -> None:
        self.recent.append(timeline)
        self.total += 1

    def summary(self, shown: int = RECENT_SHOWN) -> dict:
        per_phase: dict[str, list[float]] = {}
        entries = [t.to_json() for t in self.recent]
        for entry in entries:
            for phase, value in entry["ms"].items():
                per_phase.setdefault(phase, []).append(value)
        order = {name: i for i, name in enumerate(PHASES)}
        phases = sorted(per_phase, key=lambda p: order.get(p, len(order)))
        return {
            "count": self.total,
            "window": len(entries),
            "p50_ms": {p: round(percentile(per_phase[p], 50), 1) for p in phases},
            "p95_ms": {p: round(percentile(per_phase[p], 95), 1) for p in phases},
            "recent": entries[-shown:] if shown else [],
        }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation); the median for q = 50."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    if q == 50:
        return float(statistics.median(values))
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
