"""A plain cumulative histogram, observed from events (joins, agent turns, webhook deliveries)
and exported by the node's collector; no locks, no global registry."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# seconds: join phases, agent stages, webhook deliveries (1 ms .. 30 s)
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip


class Histogram:
    """Counts per upper bound (`le`), plus sum and count, as Prometheus histograms have."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """[(le, cumulative count)], ending with +Inf, for HistogramMetricFamily."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else _le(bound), running))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))
