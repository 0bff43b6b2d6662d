"""The dashboard's small formatting rules (``aiosfs/top/snapshot.py``), which the terminal tests
(tests/fs/test_top.py) only see through whatever figures a run happens to produce."""

from __future__ import annotations

from aiosfs.top.snapshot import human_bytes, seconds, sparkline


def test_sparkline_scales_to_the_largest_shown_value() -> None:
    assert sparkline([0, 1, 2, 4, 8], 10) == "▁▂▃▅█"
    assert sparkline([100, 0, 1, 2], 3) == "▁▅█"  # only the last 3 count, 100 scrolled away
    assert sparkline([0, 0, 0], 5) == "▁▁▁"  # an idle model keeps its line
    assert sparkline([], 5) == ""


def test_bytes_and_seconds_for_people() -> None:
    assert [human_bytes(n) for n in (None, 0, 1023, 1024, 5 * 2**20, 3 * 2**40)] == [
        "-", "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 TiB",
    ]  # fmt: skip
    assert [seconds(v) for v in (None, 0.0324, 1.5, 61.0)] == ["-", "32ms", "1.50s", "61.00s"]
