"""When and where a RoomClient reconnects after its node fails (docs/cluster.md, "Failures").

`Reconnect` is the policy (bounded, jittered backoff; fallback nodes; how long a connection may
look dead); `next_targets()` orders the nodes to try; `ConnectionHealth` watches a client's
peer connections for the signs of a dead node that a signalling socket does not show (ICE
failed or disconnected for a while, no media on any track it receives).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

# Errors after which reconnecting cannot help (the same token gets the same answer) or must
# not happen (another connection of ours took over).
FINAL_ERRORS = frozenset({"unauthorized", "forbidden", "replaced"})


@dataclass
class Reconnect:
    """How a client resumes when its connection dies.

    Attempts go round the targets (the node it was on, then the fallback nodes the join answer
    named, then `fallbacks`; after a `move` the nodes it names first, never the node that sent
    it); before attempt n it waits `initial_delay_s * 2**n`, capped at `max_delay_s`, times a
    random factor in [1 - jitter, 1 + jitter] (so a node's clients do not all come back in
    the same millisecond). It gives up after `max_attempts`; a refusal in FINAL_ERRORS ends at
    once.
    """

    fallbacks: list[str] = field(default_factory=list)  # node URLs from the application
    initial_delay_s: float = 0.2
    max_delay_s: float = 5.0
    jitter: float = 0.3
    max_attempts: int = 12
    attempt_timeout_s: float = 5.0  # one attempt: socket, join, answer
    # ICE disconnected, or nothing received on any subscribed track, for this long: dead
    dead_after_s: float = 3.0
    # a fresh token for each attempt (tokens expire; None: the one given to connect())
    token: Callable[[], Awaitable[str]] | None = None

    def __post_init__(self) -> None:
        if self.initial_delay_s < 0 or self.max_delay_s < self.initial_delay_s:
            raise ValueError("need 0 <= initial_delay_s <= max_delay_s")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be within [0, 1)")
        if self.max_attempts < 1 or self.attempt_timeout_s <= 0 or self.dead_after_s <= 0:
            raise ValueError("max_attempts, attempt_timeout_s and dead_after_s must be positive")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt `attempt` (0 first)."""
        base = min(self.max_delay_s, self.initial_delay_s * (2 ** min(attempt, 30)))
        return base * (1 - self.jitter + 2 * self.jitter * rand())


def fallback_urls(value: object) -> list[str]:
    """URLs from a `fallbacks` list of a join answer or `move` event: strings, or objects with
    a `url` (anything else is ignored: it came over the network)."""
    urls: list[str] = []
    if not isinstance(value, list):
        return urls
    for item in value[:16]:
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) < 2048:
            urls.append(url.rstrip("/"))
    return urls


def next_targets(
    current: str, learned: Iterable[str], configured: Iterable[str], *, moving: Iterable[str] = ()
) -> list[str]:
    """The nodes to try, in order, without duplicates. After a `move` (`moving` given or not)
    the current node is left out: it is draining."""
    current = current.rstrip("/")
    moved = list(moving)
    order = [*moved, *learned, *configured] if moved else [current, *learned, *configured]
    targets: list[str] = []
    for url in order:
        url = url.rstrip("/")
        if url and url not in targets and not (moved and url == current):
            targets.append(url)
    return targets or [current]


class ConnectionHealth:
    """Says when a client's media connections look dead. `check()` is called about once a
    second with the current readings; it never blocks."""

    def __init__(self, dead_after_s: float) -> None:
        self.dead_after_s = dead_after_s
        self._disconnected_since: float | None = None
        self._packets = -1
        self._packets_changed_at = time.monotonic()

    def reset(self) -> None:
        self._disconnected_since = None
        self._packets = -1
        self._packets_changed_at = time.monotonic()

    def check(self, states: list[str], packets: int | None, now: float | None = None) -> str:
        """`states`: the peer connections' ICE states; `packets`: RTP packets received so far
        on the tracks being received (None: none is). Returns why it looks dead, or ""."""
        now = time.monotonic() if now is None else now
        if "failed" in states:
            return "ICE failed"
        if "disconnected" in states:
            if self._disconnected_since is None:
                self._disconnected_since = now
            elif now - self._disconnected_since >= self.dead_after_s:
                return f"ICE disconnected for {self.dead_after_s:g} s"
        else:
            self._disconnected_since = None
        if packets is None:
            self._packets = -1
            self._packets_changed_at = now
        elif packets != self._packets:
            self._packets = packets
            self._packets_changed_at = now
        elif now - self._packets_changed_at >= self.dead_after_s:
            return f"no media for {self.dead_after_s:g} s"
        return ""
