"""``make soak`` at a tiny size: the load script runs end to end and its results have their shape.

Only the shape and what must hold at any size are checked (every syscall answered, every
blocked reader back, no errors); the timings and curves belong to the soak itself
(docs/benchmarks.md, "The paper's load").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounting import ROOT, require_fuse

pytestmark = pytest.mark.mount

SUMMARY_KEYS = {
    "errors",
    "errors_total",
    "daemon_log_problems",
    "syscalls",
    "turns",
    "tokens_per_agent",
    "rss_mib",
    "ls_ms",
    "readers",
    "blocked_reads_at_end",
    "daemon_cpu_s",
}


def soak(tmp_path: Path, *args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiosfs.bench.soak", *args, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.slow  # ~20-30 s: `make test-long`
@pytest.mark.timeout(120)  # the margin is for a busy machine
def test_soak_at_a_tiny_size_answers_everything_and_reports_the_curves(tmp_path: Path) -> None:
    require_fuse()
    res = soak(
        tmp_path,
        *("--model", "tiny-random", "--agents", "4", "--idle", "20", "--readers", "50"),
        *("--duration", "10", "--readers-per-process", "20", "--max-tokens", "8"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "soak.json").read_text())
    assert {"settings", "machine", "daemon_args", "phases", "conversation", "readers"} <= set(
        results
    )
    assert "--max-tasks" in results["daemon_args"]
    s = results["summary"]
    assert set(s) == SUMMARY_KEYS
    assert s["errors_total"] == 0, s["errors"]
    assert s["syscalls"]["all_answered"] and s["syscalls"]["inflight"] == 0
    # every turn and every release is a syscall the daemon counted
    assert s["syscalls"]["submitted"] == s["turns"]["requests"] + 50
    assert s["turns"]["requests"] >= 4 and s["turns"]["tokens"] > 0
    tokens = s["tokens_per_agent"]
    assert len(tokens["per_agent"]) == 4 and sum(tokens["per_agent"]) == s["turns"]["tokens"]
    assert tokens["min"] == min(tokens["per_agent"]) and isinstance(tokens["jain"], float)
    readers = results["readers"]
    assert readers["processes"] == 3 and readers["opened"] == readers["blocked"] == 50
    release = readers["release"]
    assert release["returned"] == 50 and release["unreturned"] == 0
    assert release["delivered"] == {"done": 50, "undelivered": 0, "status_errors": 0}
    assert s["blocked_reads_at_end"] == 0
    assert s["ls_ms"]["entries"] == 24 and s["ls_ms"]["samples"] >= 10
    assert s["rss_mib"]["max"] >= s["rss_mib"]["start"] > 0
    samples = results["samples"]
    assert {x["phase"] for x in samples} >= {"load", "release"}
    assert all(
        {"t", "rss_kib", "ls_ms", "blocked_reads", "prefix_cache_bytes"} <= set(x) for x in samples
    )
    assert max(x["blocked_reads"] for x in samples) >= 50  # the readers, while they waited
    assert (tmp_path / "out" / "soak.png").stat().st_size > 10_000
    assert "every one answered" in res.stdout and "Jain" in res.stdout


def test_soak_refuses_readers_without_idle_agents(tmp_path: Path) -> None:
    res = soak(tmp_path, "--model", "tiny-random", "--idle", "0", "--readers", "5")
    assert res.returncode == 2
    assert res.stderr.strip() == "soak: --readers need idle agents to block on (--idle 0)"
