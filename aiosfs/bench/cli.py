"""``aiosfs bench``: its options and the run that strings the measurements together.

Each measurement mounts a daemon of its own in a temporary directory, so that one's state (agents,
store, memory budget) cannot leak into another's numbers; the directory is removed after a
successful run and kept after a failed one, with each daemon's ``daemon.out`` in it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosfs.bench.access import run_access
from aiosfs.bench.engine import run_engine
from aiosfs.bench.journal import run_journal
from aiosfs.bench.llm import MODEST_AGENTS, run_contexts, run_llm
from aiosfs.bench.overhead import run_overhead
from aiosfs.bench.remote import run_remote
from aiosfs.bench.report import machine, print_summary, say
from aiosfs.bench.storage import run_storage
from aiosfs.bench.tools import print_tools_summary, run_tools

OVERHEAD_CALLS_PER_BLOCK = 50
ACCESS_CALLS_PER_BLOCK = 100
JOURNAL_CALLS_PER_BLOCK = 100
MEASUREMENTS = (
    "scaling",
    "fairness",
    "engine",
    "remote",
    "overhead",
    "contexts",
    "storage",
    "tools",
    "access",
    "journal",
)
ONLY = ("storage", "tools", "access", "engine", "remote", "journal")
"""The measurements with an ``--only-NAME`` option, which skips every other one (the first
such option given wins)."""


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement not skipped; write ``OUT/results.json`` and, with matplotlib,
    its plots beside it (``OUT/results-*.png``: ``plots.py``); return the results."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="aiosfs-bench-"))

    results: dict[str, Any] = {
        "model": args.model,
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    only = [n for n in ONLY if getattr(args, f"only_{n}")]
    if only:
        for n in MEASUREMENTS:
            if n != only[0]:
                setattr(args, f"skip_{n}", True)
    if not (args.skip_scaling and args.skip_fairness):
        run_llm(args, workdir, results)
    if not args.skip_engine:
        run_engine(args, workdir, results)
    if not args.skip_remote:
        run_remote(args, workdir, results)
    if not args.skip_overhead:
        results["overhead"] = run_overhead(
            workdir, args.overhead_blocks, OVERHEAD_CALLS_PER_BLOCK, args.threads
        )
    if not args.skip_storage:
        results["storage"] = run_storage(args, workdir)
    if not args.skip_contexts:
        results["contexts"] = run_contexts(args)
    if not args.skip_tools:
        results["tools"] = run_tools(args, workdir)
    if not args.skip_access:
        results["access"] = run_access(
            workdir, args.access_blocks, ACCESS_CALLS_PER_BLOCK, args.threads
        )
    if not args.skip_journal:
        results["journal"] = run_journal(
            workdir, args.journal_blocks, JOURNAL_CALLS_PER_BLOCK, args.journal_rounds, args.threads
        )
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    from aiosfs.bench.plots import plot_results  # here: python -m aiosfs.bench.plots runs it

    try:
        for path in plot_results(results, out, "results"):
            say(f"plot: {path}")
    except ImportError:
        say("matplotlib is not installed; no plots")
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def positive(text: str) -> int:
    """An option that counts repetitions: a whole number, at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``aiosfs bench``; ``aiosfs.cli`` adds them to its ``bench`` subcommand
    (kept here so that the benchmark's knobs live with the benchmark)."""
    p.add_argument(
        "--plot",
        nargs="+",
        type=Path,
        metavar="RESULTS.json",
        help="run nothing: plot these results files (aiosfs bench's, make soak's) as PNGs "
        "beside them, or in --plot-out",
    )
    p.add_argument("--plot-out", type=Path, metavar="DIR", help="where --plot writes its PNGs")
    p.add_argument("--model", default="smollm2")
    p.add_argument(
        "--agents",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4, 16, 64],
        help="comma-separated agent counts",
    )
    p.add_argument("--turns", type=int, default=2, help="chat syscalls per agent")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="repetitions per configuration")
    p.add_argument("--large", type=int, default=16, help="above this many agents use --reps-large")
    p.add_argument("--reps-large", type=int, default=1)
    p.add_argument("--flood", type=int, default=24, help="requests the flooding agent sends")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--overhead-blocks", type=int, default=6)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-fairness", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-contexts", action="store_true")
    p.add_argument("--skip-storage", action="store_true")
    p.add_argument("--skip-tools", action="store_true")
    p.add_argument("--skip-access", action="store_true")
    p.add_argument("--skip-engine", action="store_true", help="skip aiosfs against llama-server")
    p.add_argument(
        "--skip-remote",
        action="store_true",
        help="skip the remote model through the mount against calling its server directly",
    )
    p.add_argument(
        "--only-storage", action="store_true", help="only the memory and storage measurements"
    )
    p.add_argument("--only-tools", action="store_true", help="only the tool measurements")
    p.add_argument(
        "--only-access",
        action="store_true",
        help="only what the access manager and the audit log cost",
    )
    p.add_argument(
        "--only-engine",
        action="store_true",
        help="only the engine measurement: aiosfs through the mount against llama-server",
    )
    p.add_argument(
        "--only-remote",
        action="store_true",
        help="only the remote measurement: a model on llama-server through the mount and direct",
    )
    p.add_argument(
        "--remote-agents",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16],
        help="comma-separated agent counts of the remote measurement",
    )
    p.add_argument(
        "--remote-modest",
        type=int,
        default=MODEST_AGENTS,
        help="agents beside the flooder in the remote measurement's fairness runs",
    )
    p.add_argument("--access-blocks", type=int, default=10)
    p.add_argument(
        "--only-journal",
        action="store_true",
        help="only what the journal costs: round trips and 16 agents at once, journal on and off",
    )
    p.add_argument("--skip-journal", action="store_true", help="skip the journal measurement")
    p.add_argument(
        "--journal-blocks",
        type=positive,
        default=10,
        help=f"alternating blocks of {JOURNAL_CALLS_PER_BLOCK} round trips, journal on and off",
    )
    p.add_argument(
        "--journal-rounds",
        type=positive,
        default=20,
        help="alternating rounds of 16 agents submitting at once, journal on and off",
    )
    p.add_argument(
        "--llama-server",
        metavar="PATH",
        help="the llama-server binary (default: built by scripts/llama-server.sh when missing)",
    )
    p.add_argument(
        "--skip-llama-server",
        action="store_true",
        help="the engine measurement without llama-server (aiosfs configurations alone), and "
        "no remote measurement",
    )
    p.add_argument(
        "--llama-f16",
        metavar="GGUF",
        help="the f16 GGUF for llama-server (default: the one aiosfs's llama.cpp core runs)",
    )
    p.add_argument(
        "--llama-ctx", type=int, default=1024, help="llama-server context tokens per slot"
    )
    p.add_argument(
        "--skip-engine-fairness",
        action="store_true",
        help="the engine measurement without the flooding agent",
    )
    p.add_argument("--embedder", default="minilm", choices=("minilm", "hashing"))
    p.add_argument("--ingest", type=int, default=1000, help="small text files to write first")
    p.add_argument("--search-queries", type=int, default=50)
    p.add_argument(
        "--search-large",
        type=int,
        default=10_000,
        help="files in the store for the second search-latency measurement",
    )
    p.add_argument("--mem-ops", type=int, default=500)
    p.add_argument(
        "--large-mib",
        type=int,
        default=256,
        help="MiB of the large file streamed through store/ (0: skip)",
    )
    p.add_argument(
        "--tool-calls",
        type=int,
        default=300,
        help="sequential calls of each tool for the tool-call overhead",
    )
    p.add_argument(
        "--tool-agents", type=int, default=16, help="concurrent callers of the tool workload"
    )
    p.add_argument(
        "--tool-rounds", type=int, default=4, help="rounds of 4 tool calls per concurrent caller"
    )
    p.add_argument(
        "--tool-pairs",
        type=int,
        default=3,
        help="alternating runs of per-tool limits and the global-lock baseline",
    )
    p.add_argument(
        "--context-lengths",
        default="128,512,2048",
        help="context lengths for the preemption-cost measurement",
    )


def main(args: argparse.Namespace) -> int:
    """``aiosfs bench``: run, print the summary, say where the results are (or, with
    ``--plot``, only plot results kept from earlier runs)."""
    if args.plot:
        from aiosfs.bench.plots import plot_paths

        return plot_paths(args.plot, args.plot_out)
    results = run_bench(args)
    print_summary(results)
    print_tools_summary(results)
    print(
        f"bench: results in {args.out}/results.json and {args.out}/results-*.png", file=sys.stderr
    )
    return 0
