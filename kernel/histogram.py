"""Bucketed durations: how the kernel keeps a latency's distribution, not only its mean.

A mean hides the slow tail that an operator watches for (one agent waiting a minute among a
hundred answered in a second), and a list of every duration grows without end. Fixed buckets
cost one integer each, merge across any window by subtraction, and are what Prometheus's
histograms are (cumulative counts per upper bound ``le``, a sum and a count), so ``sys/metrics``
hands them over as they are. Plain Python and no locks: like the kernel's other counters, a
histogram is only touched on the trio thread.
"""

from __future__ import annotations

import bisect
from typing import Any

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Upper bounds in seconds: a memory read through the mount (~1 ms) to a long generation on a
loaded CPU (minutes)."""


class Histogram:
    """Counts of observed durations per bucket, their sum and their number."""

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be distinct and ascending")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: over every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, so a value equal to a bound counts under it
        # (Prometheus's ``le``, less than or equal)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def info(self) -> dict[str, Any]:
        """``buckets``: ``[upper bound, observations <= it]`` pairs, cumulative, the last bound
        ``"+Inf"`` (JSON has no infinity); ``sum`` in seconds; ``count``."""
        cumulative: list[list[Any]] = []
        running = 0
        for bound, n in zip((*self.bounds, "+Inf"), self.counts, strict=True):
            running += n
            cumulative.append([bound, running])
        return {"buckets": cumulative, "sum": self.sum, "count": self.count}
