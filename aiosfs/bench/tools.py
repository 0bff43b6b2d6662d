"""Tools through the mount: what one call costs, and what per-tool limits gain over one lock.

Two measurements, both through ``tools/NAME/call`` transaction files exactly as a user's program
would make them (open read-write, write the JSON arguments, read the result to end-of-file):

* **overhead** — sequential calls of a built-in (``calculator``), an executable (``noop``, a
  shell script that reads its arguments and prints ``{}``) and an MCP tool (``demo.add`` on
  :mod:`aiosfs.bench.mcp_server`), in blocks that rotate the order of the three so that they
  share the machine's noise. Each result's own ``duration_s`` (time inside the tool) is kept
  too, so the figures separate the tool from the path to it. The MCP server starts on first
  use, so the very first call on a fresh daemon is reported separately.
* **concurrent** — 16 callers (threads, each opening the call files itself) run the same
  workload at once: a tool that sleeps 50 ms with ``parallel: 4``, two tools that share the
  exclusive resource ``printer``, the calculator and the MCP tool. Two daemons are mounted side
  by side, one with the per-tool limits and one with ``tools_global_lock = true`` (AIOS's
  design: every call behind one lock), and runs alternate between them (A, B; B, A; …) so that
  both see the same noise; the figure is the median of the per-pair ratios of completion times.
  The executables print when they started and ended, so the results themselves prove that calls
  sharing ``printer`` never overlapped, that the 50 ms tool never ran more than 4 at once, and
  that behind the global lock no two executable calls overlapped at all.

The executables are written into each daemon's ``DATA_DIR/tools/`` before it mounts. When the
daemon is root they run as ``nobody``, who cannot enter the data dir: the source opens the
program and runs it through its descriptor, so only the scripts themselves are made readable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from aiosfs.bench.report import say
from aiosfs.bench.stats import quantile
from aiosfs.bench.traffic import bench_mount
from aiosfs.harness import Mount

MCP_SERVER = Path(__file__).with_name("mcp_server.py")
"""The benchmark's own MCP server: shipped with the package, so no test file is needed."""

OVERHEAD_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "builtin": ("calculator", {"expression": "2 + 3 * 4"}),
    "exec": ("noop", {}),
    "mcp": ("demo.add", {"a": 2, "b": 3}),
}
"""The tool measured for each source, with the arguments of every call."""

WARMUP_CALLS = 10
"""Untimed calls of each tool first: the MCP session, page cache and FUSE lookups settle."""
NAP_S, PRINT_S = 0.05, 0.02
"""How long the rate-limited tool and the two resource-sharing tools each sleep."""
NAP_PARALLEL = 4

_TIMED = """#!/bin/sh
# An aiosfs benchmark tool: read the arguments, sleep, say when it ran (ns since the epoch).
IFS= read -r args || true
start=$(date +%s%N)
sleep {seconds}
end=$(date +%s%N)
echo "{{\\"start_ns\\": $start, \\"end_ns\\": $end}}"
"""

EXEC_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "noop": (
        "#!/bin/sh\n# An aiosfs benchmark tool: read the arguments, answer at once.\n"
        "IFS= read -r args || true\necho '{}'\n",
        {"description": "Do nothing (tool-call overhead).", "parallel": 4},
    ),
    "nap": (
        _TIMED.format(seconds=NAP_S),
        {"description": f"Sleep {NAP_S} s, at most {NAP_PARALLEL} at once.", "parallel": 4},
    ),
    "print_a": (
        _TIMED.format(seconds=PRINT_S),
        {"description": f"Hold the printer {PRINT_S} s.", "resources": ["printer"]},
    ),
    "print_b": (
        _TIMED.format(seconds=PRINT_S),
        {"description": f"Hold the printer {PRINT_S} s.", "resources": ["printer"]},
    ),
}
"""Executable tools: the script, and the manifest keys beyond the schema (which is ``{}``)."""


def install_tools(data_dir: Path) -> None:
    """Write the benchmark's executables and manifests into ``DATA_DIR/tools/``."""
    tools = data_dir / "tools"
    tools.mkdir(parents=True, exist_ok=True)
    for name, (script, manifest) in EXEC_TOOLS.items():
        program = tools / name
        program.write_text(script)
        # readable and executable by nobody: the shell re-opens the script by its descriptor
        program.chmod(0o755)
        full = {"schema": {"type": "object"}, "timeout_s": 10, **manifest}
        (tools / f"{name}.json").write_text(json.dumps(full, indent=2) + "\n")


def write_config(path: Path, global_lock: bool) -> Path:
    """The daemon's TOML config: the baseline switch and the MCP server, started by this Python
    (whose environment has the SDK) and never stopped for idleness during the run."""
    command = json.dumps([sys.executable, str(MCP_SERVER)])  # a JSON array is a TOML array
    path.write_text(
        "[kernel]\n"
        f"tools_global_lock = {'true' if global_lock else 'false'}\n\n"
        "[mcp.servers.demo]\n"
        f"command = {command}\n"
        "idle_s = 3600\n"
    )
    return path


@contextmanager
def tools_mount(workdir: Path, label: str, global_lock: bool, threads: int) -> Iterator[Mount]:
    """A tiny-random daemon with the benchmark's tools, mounted under ``workdir/label``."""
    base = workdir / label
    install_tools(base / "data")
    config = write_config(workdir / f"{label}.toml", global_lock)
    extra = ("--config", str(config), "--embedder", "hashing", "--threads", str(threads))
    with bench_mount(workdir, label, "tiny-random", *extra) as m:
        yield m


def call(m: Mount, tool: str, args: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """One call on a fresh descriptor of ``tools/TOOL/call``: seconds, and the result."""
    body = json.dumps(args).encode()
    t = time.perf_counter()
    with open(m.p(f"tools/{tool}/call"), "r+b", buffering=0) as f:
        f.write(body)
        data = b""
        while chunk := f.read(65536):
            data += chunk
    elapsed = time.perf_counter() - t
    result: dict[str, Any] = json.loads(data)
    return elapsed, result


def max_overlap(runs: list[tuple[int, int]]) -> int:
    """The most intervals open at one instant (an end sorts before a start at the same one:
    touching is not overlapping)."""
    events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


# ---- overhead -----------------------------------------------------------------------------


def first_mcp_call(m: Mount) -> float:
    """The first tool call on a fresh daemon, an MCP one: it lists the tools, which starts the
    server (a Python process importing the SDK) and opens its session."""
    elapsed, result = call(m, *OVERHEAD_TOOLS["mcp"])
    if not result["ok"]:
        raise RuntimeError(f"the MCP tool failed on first use: {result}")
    return elapsed


def run_overhead(m: Mount, calls: int, per_block: int = 50) -> dict[str, Any]:
    """``calls`` sequential calls of each tool, in blocks rotating the order; milliseconds."""
    for tool, args in OVERHEAD_TOOLS.values():
        for _ in range(WARMUP_CALLS):
            call(m, tool, args)
    lat: dict[str, list[float]] = {k: [] for k in OVERHEAD_TOOLS}
    inside: dict[str, list[float]] = {k: [] for k in OVERHEAD_TOOLS}
    busy: dict[str, float] = dict.fromkeys(OVERHEAD_TOOLS, 0.0)
    errors = dict.fromkeys(OVERHEAD_TOOLS, 0)
    kinds = list(OVERHEAD_TOOLS)
    block = 0
    while any(len(lat[k]) < calls for k in kinds):
        order = kinds[block % 3 :] + kinds[: block % 3]
        for kind in order:
            tool, args = OVERHEAD_TOOLS[kind]
            n = min(per_block, calls - len(lat[kind]))
            t = time.perf_counter()
            for _ in range(n):
                elapsed, result = call(m, tool, args)
                lat[kind].append(elapsed)
                inside[kind].append(result["duration_s"])
                errors[kind] += not result["ok"]
            busy[kind] += time.perf_counter() - t
        block += 1
    out: dict[str, Any] = {}
    for kind, (tool, _) in OVERHEAD_TOOLS.items():
        out[kind] = {
            "tool": tool,
            "calls": len(lat[kind]),
            "errors": errors[kind],
            "p50_ms": 1000 * quantile(lat[kind], 0.5),
            "p99_ms": 1000 * quantile(lat[kind], 0.99),
            "calls_per_s": len(lat[kind]) / busy[kind],
            "in_tool_p50_ms": 1000 * quantile(inside[kind], 0.5),
        }
        say(
            f"tools overhead {kind} ({tool}): p50 {out[kind]['p50_ms']:.2f} ms, "
            f"p99 {out[kind]['p99_ms']:.2f} ms, {out[kind]['calls_per_s']:.0f} calls/s"
        )
    return out


# ---- 16 callers at once -------------------------------------------------------------------


def workload(agent: int, rounds: int) -> list[tuple[str, dict[str, Any]]]:
    """One caller's calls: each round the rate-limited tool, one of the printer tools, the
    calculator and the MCP tool (the same list for both configurations)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for r in range(rounds):
        calls += [
            ("nap", {}),
            ("print_a" if (agent + r) % 2 == 0 else "print_b", {}),
            ("calculator", {"expression": f"{agent} * {r} + 1"}),
            ("demo.add", {"a": agent, "b": r}),
        ]
    return calls


def run_concurrent(m: Mount, config: str, agents: int, rounds: int) -> dict[str, Any]:
    """``agents`` threads run their workloads at once; the completion time of all of them and
    what the executables' own timestamps say about overlap."""
    results: list[tuple[str, dict[str, Any]]] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(agents + 1)

    def agent(i: int) -> None:
        mine: list[tuple[str, dict[str, Any]]] = []
        start.wait()
        for tool, args in workload(i, rounds):
            try:
                mine.append((tool, call(m, tool, args)[1]))
            except (OSError, ValueError) as e:
                with lock:
                    failures.append(f"{tool}: {e}")
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=agent, args=(i,), daemon=True) for i in range(agents)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    makespan = time.perf_counter() - t0

    def spans(*tools: str) -> list[tuple[int, int]]:
        return [
            (r["value"]["start_ns"], r["value"]["end_ns"])
            for tool, r in results
            if tool in tools and r["ok"]
        ]

    errors = len(failures) + sum(not r["ok"] for _, r in results)
    return {
        "config": config,
        "agents": agents,
        "calls": len(results) + len(failures),
        "errors": errors,
        "failures": failures[:5] + [r["error"] for _, r in results if not r["ok"]][:5],
        "completion_s": makespan,
        "printer_max_overlap": max_overlap(spans("print_a", "print_b")),
        "nap_max_overlap": max_overlap(spans("nap")),
        "exec_max_overlap": max_overlap(spans("nap", "print_a", "print_b")),
    }


def run_tools(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both measurements on two daemons mounted side by side (per-tool limits; global lock)."""
    with ExitStack() as stack:
        limits = stack.enter_context(tools_mount(workdir, "tools-limits", False, args.threads))
        locked = stack.enter_context(tools_mount(workdir, "tools-lock", True, args.threads))
        mounts = {"limits": limits, "global_lock": locked}
        first = {config: first_mcp_call(m) for config, m in mounts.items()}
        say(
            "tools: first MCP call (server start) "
            + ", ".join(f"{c} {1000 * s:.0f} ms" for c, s in first.items())
        )
        overhead = run_overhead(limits, args.tool_calls)
        for m in mounts.values():  # every tool used once more before timing
            run_concurrent(m, "warmup", 2, 1)
        runs = []
        ratios = []
        for pair in range(args.tool_pairs):
            order = ("limits", "global_lock") if pair % 2 == 0 else ("global_lock", "limits")
            done = {}
            for config in order:
                run = run_concurrent(mounts[config], config, args.tool_agents, args.tool_rounds)
                run["pair"] = pair
                runs.append(run)
                done[config] = run
                say(
                    f"tools concurrent {config}: {run['completion_s']:.2f} s, "
                    f"{run['calls']} calls, {run['errors']} errors"
                )
            ratios.append(done["global_lock"]["completion_s"] / done["limits"]["completion_s"])
        status = {c: m.json("tools/nap/status")["max_running"] for c, m in mounts.items()}

    def median_of(config: str) -> float:
        return statistics.median(float(r["completion_s"]) for r in runs if r["config"] == config)

    by_config = {c: [r for r in runs if r["config"] == c] for c in mounts}
    return {
        "first_mcp_call_ms": {c: 1000 * s for c, s in first.items()},
        "overhead": overhead,
        "concurrent": {
            "agents": args.tool_agents,
            "rounds": args.tool_rounds,
            "calls_per_run": args.tool_agents * args.tool_rounds * 4,
            "nap_s": NAP_S,
            "nap_parallel": NAP_PARALLEL,
            "printer_hold_s": PRINT_S,
            "pairs": args.tool_pairs,
            "runs": runs,
            "limits_completion_s": median_of("limits"),
            "global_lock_completion_s": median_of("global_lock"),
            "ratios": ratios,
            "ratio_median": statistics.median(ratios),
            "errors": sum(r["errors"] for r in runs),
            # proofs, from the executables' own timestamps
            "printer_never_overlapped": all(r["printer_max_overlap"] <= 1 for r in runs),
            "nap_max_overlap_limits": max(r["nap_max_overlap"] for r in by_config["limits"]),
            "exec_max_overlap_global_lock": max(
                r["exec_max_overlap"] for r in by_config["global_lock"]
            ),
            "nap_max_running_status": status,
        },
    }


def print_tools_summary(results: dict[str, Any]) -> None:
    """One line per measurement on stdout (``aiosfs bench > summary.txt`` keeps them)."""
    t = results.get("tools")
    if not t:
        return
    o = t["overhead"]
    print(
        "tool calls (p50/p99 ms): "
        + "; ".join(
            f"{k} {v['tool']} {v['p50_ms']:.2f}/{v['p99_ms']:.2f} ({v['calls_per_s']:.0f}/s)"
            for k, v in o.items()
        )
        + f"; first MCP call {t['first_mcp_call_ms']['limits']:.0f} ms"
    )
    c = t["concurrent"]
    print(
        f"{c['agents']} callers at once: per-tool limits {c['limits_completion_s']:.2f} s, "
        f"global lock {c['global_lock_completion_s']:.2f} s, ratio {c['ratio_median']:.2f}x "
        f"(median of {c['pairs']} pairs); printer calls overlapped: "
        f"{'never' if c['printer_never_overlapped'] else 'YES'}, {c['errors']} errors"
    )
