"""Statistics of the benchmark: percentiles, Jain's fairness index, medians over repetitions.

Hand-written rather than numpy's so that the benchmark needs nothing beyond the standard
library to measure (matplotlib only to plot), and so that an empty sample is ``None`` — a
configuration whose every request failed — rather than an exception in the middle of a run.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0…1) with linear interpolation between ranks; ``None`` if empty."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def quantile(xs: Sequence[float], q: float) -> float:
    """:func:`percentile` of a sample that cannot be empty (a measurement loop that ran)."""
    value = percentile(xs, q)
    if value is None:
        raise ValueError("quantile of an empty sample")
    return value


def jain(xs: Sequence[float]) -> float | None:
    """Jain's fairness index: 1 when all equal, 1/n when one gets everything."""
    if not xs or not any(xs):
        return None
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def median(xs: Sequence[float | None]) -> float | None:
    """The median of the values that exist: a repetition without a value does not count."""
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None
