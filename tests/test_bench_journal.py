"""The journal measurement at its smallest: ``aiosfs bench --only-journal`` with two blocks of
round trips and two rounds of sixteen agents at once, on the two tiny-random mounts (journal on
and ``journal = false``).

Only the shape of what was measured is checked, and what must hold whatever the timings: the
journal's counters saw every syscall, its commits held more than one record each on average
(the group commit), and the "off" mount really ran without a journal. Never a timing: timings
belong to the benchmark.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from aiosfs.bench.cli import JOURNAL_CALLS_PER_BLOCK, add_arguments, main
from aiosfs.bench.journal import BURST_AGENTS, SIDES
from tests.mounting import require_fuse

pytestmark = pytest.mark.mount


def bench_args(line: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(shlex.split(line))


@pytest.mark.slow  # ~15 s: `make test-long`
@pytest.mark.timeout(90)
def test_journal_measurement_runs_on_and_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_fuse()
    out = tmp_path / "results"
    args = bench_args(
        f"--only-journal --journal-blocks 2 --journal-rounds 2 --threads 1 --out {out}"
    )
    assert main(args) == 0

    results = json.loads((out / "results.json").read_text())
    assert not {"scaling", "overhead", "storage", "access", "tools"} & set(results)
    j = results["journal"]
    assert json.loads(j["call"])["call"] == "mem_read"
    assert j["off_side_journal"] is None  # sys/stats of the journal = false mount

    rt = j["round_trip"]
    calls = 2 * JOURNAL_CALLS_PER_BLOCK
    assert rt["calls_each"] == calls and len(rt["added_p50_ms_each"]) == 2
    for side in SIDES:
        assert 0 < rt[f"{side}_p50_ms"] <= rt[f"{side}_p99_ms"]
    journal = rt["journal"]
    assert journal["syscalls"] == calls and journal["waits"] > 0
    # each syscall is accepted, finished and delivered: a record at least for each
    assert journal["records"] >= 3 * calls
    assert 0 < journal["commits"] < journal["records"]  # commits hold several records

    b = results["journal"]["burst"]
    assert (b["agents"], b["rounds"]) == (BURST_AGENTS, 2)
    assert len(b["added_p50_ms_each"]) == 2
    for side in SIDES:
        assert 0 < b[f"{side}_p50_ms"] <= b[f"{side}_p99_ms"]
    assert b["journal"]["syscalls"] == 2 * BURST_AGENTS
    assert b["journal"]["records"] >= 3 * 2 * BURST_AGENTS
    assert 0 < b["journal"]["commits"] < b["journal"]["records"]
    assert b["commits_per_syscall_while_closing"] > 0 and b["records_while_closing"] > 0

    assert j["fsync_probe"]["syncs"] > 0 and j["fsync_probe"]["p50_ms"] > 0
    printed = capsys.readouterr().out
    assert "journal, round trip of" in printed and "16 agents at once" in printed


def test_journal_options_refuse_what_is_not_a_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_args("--journal-rounds 0")
    assert "--journal-rounds: 0 is not at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_args("--journal-blocks two")
    assert "--journal-blocks: 'two' is not a whole number" in capsys.readouterr().err
