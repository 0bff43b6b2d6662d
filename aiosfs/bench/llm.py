"""The measurements of the model under test: scaling, fairness, and the cost of preemption.

Scaling and fairness share one daemon on the model and switch its scheduling policy between
runs (``sys/scheduler``); the configurations they compare alternate within each repetition so
that they share the machine's noise, and results are medians over repetitions. Preemption cost
is measured on the kernel directly (``python -m kernel.microbench --contexts``): it is a property
of the model's contexts, not of the filesystem.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiosfs.bench.report import say
from aiosfs.bench.stats import fmt, jain, median
from aiosfs.bench.traffic import (
    PROMPTS,
    Run,
    Sampler,
    bench_mount,
    closed_loop,
    make_agents,
    remove_agents,
    service_in_window,
    summarize,
)
from aiosfs.harness import Mount

SCALING_CONFIGS = ["fifo", "serial", "aios"]
"""Our batching engine, then baseline (a) one request at a time and (b) AIOS-style."""
SCALING_KEYS = (
    "tokens_per_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "ttft_p99_s",
    "latency_p50_s",
    "latency_p95_s",
    "latency_p99_s",
    "jain",
    "tokens",
    "wall_s",
)
"""The per-run figures whose median over repetitions the summary reports."""
MODEST_AGENTS = 15
"""Agents that share the engine with the flooder in the fairness measurement."""


def set_policy(m: Mount, name: str) -> None:
    """Switch the scheduling policy and wait until every engine runs under it."""
    m.write("sys/scheduler", name.encode() + b"\n")
    deadline = time.monotonic() + 30
    while any(q["policy"] != name for q in m.json("sys/queue").values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"engine did not switch to {name}")
        time.sleep(0.01)


def run_scaling(
    m: Mount,
    config: str,
    n: int,
    turns: int,
    max_tokens: int,
    run_id: int,
    model: str | None = None,
) -> Run:
    """``n`` fresh agents (on ``model``, else the daemon's own), each running ``turns``
    closed-loop turns under ``config``."""
    set_policy(m, config)
    run = Run(config, n)
    names = [f"s{run_id}-{i}" for i in range(n)]
    make_agents(m, names, max_tokens, model)
    try:
        with Sampler(m, run):
            closed_loop(m, run, names, turns, f"run {run_id}")
    finally:
        remove_agents(m, names)
    return run


def run_fairness(
    m: Mount,
    config: str,
    modest: int,
    turns: int,
    flood: int,
    max_tokens: int,
    run_id: int,
    model: str | None = None,
) -> dict[str, Any]:
    """One agent submits ``flood`` requests at once while ``modest`` agents take turns (all on
    ``model``, else the daemon's own); Jain's index over the tokens each received until the
    first modest agent was done."""
    set_policy(m, config)
    run = Run(config, modest + 1)
    flooder = f"f{run_id}-flood"
    names = [f"f{run_id}-m{i}" for i in range(modest)]
    make_agents(m, [flooder, *names], max_tokens, model)
    started = threading.Event()

    def flood_all() -> None:
        started.wait()
        for i in range(flood):
            m.write(
                f"agents/{flooder}/syscall",
                json.dumps(
                    {"call": "llm", "prompt": f"[{run_id}] flood {i}: " + PROMPTS[i % len(PROMPTS)]}
                ).encode(),
            )
        for _ in range(flood):
            m.read_bytes(f"agents/{flooder}/out")

    flooding = threading.Thread(target=flood_all)
    flooding.start()
    try:
        with Sampler(m, run, period=0.2):
            closed_loop(m, run, names, turns, f"fair {run_id}", started)
            window_end = min(
                max(r.done or run.end for r in run.requests if r.agent == a) for a in names
            )
        flooding.join()
    finally:
        remove_agents(m, [flooder, *names])
    service = service_in_window(run, [flooder, *names], window_end)
    return {
        "config": config,
        "window_s": round(window_end - run.start, 2),
        "flooder_tokens": service[0],
        "modest_tokens_median": statistics.median(service[1:]),
        "jain": jain(service),
    }


def scaling(args: argparse.Namespace, m: Mount, run_ids: Iterator[int]) -> dict[str, Any]:
    """Every agent count in ``args.agents`` under every configuration, with speed-ups."""
    raw: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    for n in args.agents:
        reps = args.reps if n <= args.large else args.reps_large
        per_config: dict[str, list[dict[str, Any]]] = {c: [] for c in SCALING_CONFIGS}
        speedups: dict[str, list[float]] = {"serial": [], "aios": []}
        for rep in range(reps):
            order = SCALING_CONFIGS[rep % 3 :] + SCALING_CONFIGS[: rep % 3]
            rep_runs = {}
            for config in order:
                s = summarize(run_scaling(m, config, n, args.turns, args.max_tokens, next(run_ids)))
                s["rep"] = rep
                raw.append(s)
                per_config[config].append(s)
                rep_runs[config] = s
                say(
                    f"N={n} rep {rep} {config:6s} {s['tokens_per_s']:7.1f} tok/s"
                    f"  p99 {s['latency_p99_s']:.2f} s  errors {s['errors']}"
                )
            for base, ratios in speedups.items():
                ratios.append(rep_runs["fifo"]["tokens_per_s"] / rep_runs[base]["tokens_per_s"])
        summary[str(n)] = {
            c: {key: median([r[key] for r in per_config[c]]) for key in SCALING_KEYS}
            for c in SCALING_CONFIGS
        }
        summary[str(n)]["speedup_vs_serial"] = median(speedups["serial"])
        summary[str(n)]["speedup_vs_aios"] = median(speedups["aios"])
        summary[str(n)]["reps"] = reps
    return {"runs": raw, "summary": summary}


def fairness(args: argparse.Namespace, m: Mount, run_ids: Iterator[int]) -> dict[str, Any]:
    """The flooder against the modest agents under ``fifo`` and ``fair``, alternating."""
    fair_runs: dict[str, list[dict[str, Any]]] = {"fifo": [], "fair": []}
    for rep in range(args.reps):
        for config in ["fifo", "fair"] if rep % 2 == 0 else ["fair", "fifo"]:
            r = run_fairness(
                m, config, MODEST_AGENTS, args.turns, args.flood, args.max_tokens, next(run_ids)
            )
            fair_runs[config].append(r)
            say(
                f"fairness rep {rep} {config:4s} jain {fmt(r['jain'])} "
                f"(flooder {r['flooder_tokens']:.0f} tokens, modest median "
                f"{r['modest_tokens_median']:.0f})"
            )
    return {
        "runs": fair_runs,
        "summary": {c: {"jain": median([r["jain"] for r in rs])} for c, rs in fair_runs.items()},
    }


def run_llm(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    """The scaling and fairness measurements, on a mount of the model under test."""
    extra = ["--threads", str(args.threads)] if args.threads else []
    run_ids = itertools.count(1)  # names each run's agents apart, across both measurements
    with bench_mount(workdir, "main", args.model, *extra) as m:
        if not args.skip_scaling:
            results["scaling"] = scaling(args, m, run_ids)
        if not args.skip_fairness:
            results["fairness"] = fairness(args, m, run_ids)
        results["daemon"] = {
            "stats": m.json("sys/stats"),
            "context": m.json("sys/context"),
            "models": m.json("sys/status")["models"],
        }


def run_contexts(args: argparse.Namespace) -> dict[str, Any]:
    """What preempting a sequence costs at each context length on each core: recomputing it,
    against snapshotting and restoring its KV in RAM or on disk."""
    cores: dict[str, Any] = {}
    for core in ("llamacpp", "transformers"):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "kernel.microbench",
                "--model",
                args.model,
                "--threads",
                str(args.threads),
                "--core",
                core,
                "--contexts",
                args.context_lengths,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            say(f"contexts on {core}: failed ({res.stderr.strip()[-200:]})")
            continue
        contexts: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        for row in contexts["lengths"]:
            say(
                f"{core} context {row['tokens']} tokens ({row['kv_mb']} MB): recompute "
                f"{row['recompute_ms']} ms, snapshot {row['snapshot_ms']} ms, restore "
                f"{row['restore_ram_ms']} ms (disk: spill {row['spill_ms']} ms, restore "
                f"{row['restore_disk_ms']} ms)"
            )
        cores[core] = contexts
    return cores
