"""A token bucket: what one client may send per second, with a short burst allowed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens a second, holding at most `capacity`; starts full.

    `take(n)` spends n tokens if there are that many and says whether it did: a caller
    drops what it cannot pay for instead of queueing it (a flood costs the flooder, not
    whoever would have had to carry it).
    """

    rate: float
    capacity: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.tokens = self.capacity
        self._at = self.clock()

    def take(self, n: float = 1.0) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True
