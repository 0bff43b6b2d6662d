"""What the benchmark shows: progress lines, the machine it ran on, the summary table (the
plots are ``plots.py``'s).

Progress goes to stderr and the summary to stdout, so ``aiosfs bench > summary.txt`` keeps the
table alone.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from aiosfs.bench.stats import fmt


def say(line: str) -> None:
    """A progress line on stderr, flushed at once: a run takes many minutes."""
    print(f"bench: {line}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """What a reader needs to compare runs: cores, platform, Python and the load at start."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }


def print_summary(results: dict[str, Any]) -> None:
    """The medians of every measurement that ran, as a table on stdout."""
    scaling = results.get("scaling", {}).get("summary", {})
    if scaling:
        print(
            f"{'agents':>6} {'config':>7} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9} "
            f"{'lat p50':>8} {'lat p99':>8} {'jain':>6}"
        )
        for n, row in scaling.items():
            for c in ("fifo", "serial", "aios"):
                r = row[c]
                print(
                    f"{n:>6} {c:>7} {r['tokens_per_s']:>8.1f} {r['ttft_p50_s']:>9.2f} "
                    f"{r['ttft_p99_s']:>9.2f} {r['latency_p50_s']:>8.2f} "
                    f"{r['latency_p99_s']:>8.2f} {r['jain'] or 0:>6.3f}"
                )
            print(
                f"{'':>6} speed-up vs serial {row['speedup_vs_serial']:.2f}x, "
                f"vs aios {row['speedup_vs_aios']:.2f}x ({row['reps']} reps)"
            )
    fair = results.get("fairness", {}).get("summary")
    if fair:
        print(
            "fairness (Jain's index, flooder + 15 modest): "
            + ", ".join(f"{c} {fmt(v['jain'])}" for c, v in fair.items())
        )
    print_engine(results.get("engine"))
    print_remote(results.get("remote"))
    for core, ctx in (results.get("contexts") or {}).items():
        print(
            f"preemption cost on {core} (ms): tokens, recompute, snapshot, restore, spill, "
            "restore-disk"
        )
        for r in ctx["lengths"]:
            print(
                f"  {r['tokens']:>6} {r['recompute_ms']:>10} {r['snapshot_ms']:>9} "
                f"{r['restore_ram_ms']:>8} {r['spill_ms']:>7} {r['restore_disk_ms']:>8}"
            )
    o = results.get("overhead")
    if o:
        print(
            f"trivial syscall: mount p50 {o['mount_p50_ms']:.2f} ms / p99 {o['mount_p99_ms']:.2f}"
            f" ms; direct p50 {o['direct_p50_ms']:.2f} ms / p99 {o['direct_p99_ms']:.2f} ms; "
            f"FUSE adds {o['overhead_p50_ms']:.2f} ms at p50 "
            f"(x{o['ratio_median_of_blocks']:.2f}, median of blocks)"
        )
    print_journal(results.get("journal"))


def print_journal(j: dict[str, Any] | None) -> None:
    """The journal measurement: what it adds to a round trip and to a close, how many syscalls
    shared a commit, where a waiter's wait went, and what the disk's own fsync took."""
    if not j:
        return
    rt, b = j["round_trip"], j["burst"]
    print(
        f"journal, round trip of {j['call']}: on p50 {rt['on_p50_ms']:.3f} / p99 "
        f"{rt['on_p99_ms']:.3f} ms, off p50 {rt['off_p50_ms']:.3f} / p99 {rt['off_p99_ms']:.3f} "
        f"ms; adds {rt['added_p50_ms']:+.3f} ms at p50 (median of {j['blocks']} blocks); "
        f"{rt['journal']['commits_per_syscall']} commits per syscall one at a time"
    )
    print(
        f"journal, {b['agents']} agents at once ({b['rounds']} rounds): close p50 on "
        f"{b['on_p50_ms']:.3f} / off {b['off_p50_ms']:.3f} ms, p99 on {b['on_p99_ms']:.3f} / off "
        f"{b['off_p99_ms']:.3f} ms, adds {b['added_p50_ms']:+.3f} ms at p50; "
        f"{b['journal']['commits_per_syscall']} commits per syscall "
        f"({b['commits_per_syscall_while_closing']} while the closes were in flight), "
        f"{b['journal']['records_per_commit']} records per commit"
    )
    for label, part in (("a round trip", rt["journal"]), ("a close of 16", b["journal"])):
        print(
            f"journal, where {label}'s wait goes: {fmt(part['wait_ms_avg'])} ms = a commit "
            f"{fmt(part['commit_ms_avg'])} ms + {fmt(part.get('wait_beyond_commit_ms'))} ms of "
            "hand-offs and queueing"
        )
    print(
        f"journal, the disk: an fdatasync of 4 KiB p50 {j['fsync_probe']['p50_ms']:.3f} / p99 "
        f"{j['fsync_probe']['p99_ms']:.3f} ms"
    )


def print_engine(engine: dict[str, Any] | None, name: str = "engine", modest: int = 15) -> None:
    """The engine measurement's medians, its ratios and the flooder's Jain index per engine
    (or those of a measurement of the same shape: ``name`` and ``modest`` say which)."""
    if not engine:
        return
    summary = engine["scaling"]["summary"]
    print(
        f"{'agents':>6} {'engine':>20} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9} "
        f"{'lat p50':>8} {'lat p99':>8}"
    )
    for n, row in summary.items():
        for label, r in row.items():
            if label in ("ratios", "reps"):
                continue
            print(
                f"{n:>6} {label:>20} {fmt(r['tokens_per_s'], 1):>8} {fmt(r['ttft_p50_s'], 2):>9} "
                f"{fmt(r['ttft_p99_s'], 2):>9} {fmt(r['latency_p50_s'], 2):>8} "
                f"{fmt(r['latency_p99_s'], 2):>8}"
            )
        ratios = ", ".join(f"{k} {fmt(v, 2)}x" for k, v in row["ratios"].items())
        print(f"{'':>6} {ratios or 'no llama-server'} ({row['reps']} reps)")
    if "1" in summary:
        single = ", ".join(
            f"{label} {fmt(r['tokens_per_s'], 1)}"
            for label, r in summary["1"].items()
            if label not in ("ratios", "reps")
        )
        print(f"single-stream tok/s: {single}")
    fair = engine.get("fairness", {}).get("summary")
    if fair:
        print(
            f"{name} fairness (Jain's index, flooder + {modest} modest; aiosfs under fair): "
            + ", ".join(f"{c} {fmt(v['jain'])}" for c, v in fair.items())
        )


def print_remote(remote: dict[str, Any] | None) -> None:
    """The remote measurement: the engine table of its two sides, then per agent count what the
    mount costs against calling the server directly."""
    if not remote:
        return
    print_engine(remote, "remote", remote["fairness"]["modest"])
    for n, d in remote["scaling"]["mount_vs_direct"].items():
        r, added = d["ratios"], d["added_s"]
        print(
            f"remote N={n} mount / direct: tok/s {fmt(r['tokens_per_s'], 2)}x, ttft p50 "
            f"{fmt(r['ttft_p50_s'], 2)}x p99 {fmt(r['ttft_p99_s'], 2)}x, completion p50 "
            f"{fmt(r['latency_p50_s'], 2)}x p99 {fmt(r['latency_p99_s'], 2)}x; added "
            f"{_ms(added['ttft_p50_s'])} to ttft p50, {_ms(added['latency_p50_s'])} to "
            f"completion p50 ({d['reps']} reps)"
        )


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:+.1f} ms"
