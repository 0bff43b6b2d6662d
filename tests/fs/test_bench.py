"""`aiosfs bench` runs end to end (tiny model, tiny workload) and writes its results.

Only the shape of the results is checked: timings belong to the benchmark, not to tests.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from aiosfs.bench import jain, percentile
from tests.mounting import ROOT, require_fuse

pytestmark = pytest.mark.mount


def test_jain_and_percentile() -> None:
    assert jain([3, 3, 3]) == 1.0
    assert jain([1, 0, 0, 0]) == 0.25
    assert jain([]) is None and jain([0, 0]) is None
    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    assert percentile([1.0, 2.0], 0.99) == pytest.approx(1.99)
    assert percentile([], 0.5) is None


@pytest.mark.slow  # ~110 s: `make test-long`
@pytest.mark.timeout(300)
def test_bench_runs_and_writes_results(tmp_path: Path) -> None:
    require_fuse()
    out = tmp_path / "results"
    args = shlex.split(
        "bench --model tiny-random --agents 1,2 --reps 1 --turns 1 --max-tokens 4 --flood 4 "
        "--overhead-blocks 2 --context-lengths 64,128 --embedder hashing --ingest 100 "
        "--search-large 150 --search-queries 5 --mem-ops 20 --large-mib 4 "
        "--tool-calls 10 --tool-agents 4 --tool-rounds 1 --tool-pairs 1 --access-blocks 2 "
        "--skip-engine --skip-remote --skip-journal"  # tests/test_bench_journal.py runs it
    )
    res = subprocess.run(
        [sys.executable, "-m", "aiosfs", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    scaling = results["scaling"]["summary"]
    assert set(scaling) == {"1", "2"}
    for config in ("fifo", "serial", "aios"):
        assert scaling["2"][config]["tokens_per_s"] > 0
    assert all(r["errors"] == 0 for r in results["scaling"]["runs"])
    assert set(results["fairness"]["summary"]) == {"fifo", "fair"}
    assert results["overhead"]["calls_each"] == 100
    lengths = results["contexts"]["transformers"]["lengths"]  # tiny-random: no llama.cpp core
    assert [r["tokens"] for r in lengths] == [64, 128]
    storage = results["storage"]
    assert storage["ingest_100"]["files"] == 100 and storage["search_at_150"]["queries"] == 5
    assert storage["memory_mount"]["ops"] == storage["memory_direct"]["ops"] == 20
    large = storage["large_file"]
    assert large["mib"] == 4 and large["write_mb_s"] > 0 and large["read_mb_s"] > 0
    for plot in ("scaling-throughput", "scaling-latency", "fairness", "contexts"):
        assert (out / f"results-{plot}.png").stat().st_size > 10_000
    assert "speed-up vs serial" in res.stdout
    tools = results["tools"]
    assert set(tools["overhead"]) == {"builtin", "exec", "mcp"}
    assert all(o["calls"] == 10 and o["errors"] == 0 for o in tools["overhead"].values())
    assert set(tools["first_mcp_call_ms"]) == {"limits", "global_lock"}
    conc = tools["concurrent"]
    assert [r["config"] for r in conc["runs"]] == ["limits", "global_lock"]
    assert conc["errors"] == 0 and all(r["calls"] == 16 for r in conc["runs"])
    # what the executables' timestamps prove, whatever the timings
    assert conc["printer_never_overlapped"] and conc["exec_max_overlap_global_lock"] == 1
    assert conc["nap_max_overlap_limits"] <= 4 and conc["ratio_median"] > 0
    assert "callers at once" in res.stdout
    access = results["access"]
    assert access["blocks"] == 2
    for kind in ("syscall", "store_read", "fs_read"):
        assert access[kind]["on_p50_ms"] > 0 and access[kind]["off_p50_ms"] > 0
