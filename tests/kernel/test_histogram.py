"""The kernel's duration histograms: Prometheus's bucket rule (a value equal to a bound counts
under it), cumulative counts, and the sum."""

from __future__ import annotations

import pytest

from kernel.histogram import Histogram


def test_buckets_are_cumulative_and_a_bound_counts_under_itself() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    info = h.info()
    assert info["buckets"] == [[0.1, 2], [1.0, 4], ["+Inf", 5]]
    assert info["count"] == 5
    assert info["sum"] == pytest.approx(8.65)


def test_an_empty_histogram_and_bad_bounds() -> None:
    assert Histogram((1.0,)).info() == {"buckets": [[1.0, 0], ["+Inf", 0]], "sum": 0.0, "count": 0}
    with pytest.raises(ValueError, match="ascending"):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError, match="distinct"):
        Histogram((1.0, 1.0))
