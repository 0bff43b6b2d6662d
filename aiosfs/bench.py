"""``aiosfs bench``: many agents through a real mount, against the baselines, in one run.

Three measurements, each alternating the configurations it compares so that they share the
machine's noise, and each reporting medians over repetitions:

* **scaling** — N concurrent agents (default 1, 4, 16, 64), each sending ``turns`` chat syscalls
  in a closed loop (write ``syscall``, read ``stream`` for the first byte, read it to the end,
  then the next turn), under ``fifo`` (our batching engine), ``serial`` (baseline a: strictly one
  request at a time) and ``aios`` (baseline b: a 1 s collection window, then each request
  generated on its own). Reports aggregate generated tokens/s, p50/p99 time to first token and
  completion latency, Jain's index over per-agent service, and the speed-ups.
* **fairness** — one agent floods the queue with ``flood`` requests while 15 others each send
  ``turns`` turns; Jain's index over the tokens each agent received until the first modest agent
  was done, under ``fifo`` and under ``fair``.
* **overhead** — a trivial syscall (one token of the tiny model) through the mount, against the
  same call made on the kernel directly (``python -m kernel.microbench``).

Results go to ``OUT/results.json`` and ``OUT/bench.png``; ``docs/benchmarks.md`` summarises a run.
This module drives the mount with plain file operations and never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPTS = [
    "Plan a 3-day trip from San Francisco to New York.",
    "Suggest a hotel near the airport and say why.",
    "What should I pack for a rainy weekend in London?",
    "Give me three tips for a long flight.",
    "Write a short itinerary for a day in Paris.",
    "How do I get from JFK to Manhattan?",
    "Recommend a restaurant style for a family dinner.",
    "Explain jet lag in two sentences.",
]
FOLLOW_UPS = ["Make it shorter.", "Add one more idea.", "Now for a budget traveller.", "Thanks!"]


# ---- statistics ---------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def jain(xs: list[float]) -> float | None:
    """Jain's fairness index: 1 when all equal, 1/n when one gets everything."""
    if not xs or not any(xs):
        return None
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


# ---- the mount under test -----------------------------------------------------------------------


class BenchMount:
    """A daemon in a subprocess, mounted on a temporary directory."""

    def __init__(self, model: str, extra: list[str], workdir: Path, label: str = "main") -> None:
        self.path = workdir / f"mnt-{label}"
        self.data = workdir / f"data-{label}"
        self.path.mkdir(parents=True)
        log = open(workdir / f"daemon-{label}.log", "wb")  # noqa: SIM115 (lives as long as the daemon)
        cmd = [
            sys.executable,
            "-m",
            "aiosfs",
            "mount",
            str(self.path),
            "--foreground",
            "--model",
            model,
            "--data-dir",
            str(self.data),
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited; see {log.name}")
            try:
                models = self.json("sys/models")
                if all(m["state"] == "ready" for m in models.values()):
                    break
                if any(m["state"] == "failed" for m in models.values()):
                    raise RuntimeError(f"model failed to load: {models}")
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mount not ready after 600 s")
            time.sleep(0.2)
        self.models = self.json("sys/models")

    def p(self, rel: str) -> str:
        return str(self.path / rel)

    def read(self, rel: str) -> bytes:
        with open(self.p(rel), "rb") as f:
            return f.read()

    def json(self, rel: str) -> Any:
        return json.loads(self.read(rel))

    def write(self, rel: str, data: bytes) -> None:
        with open(self.p(rel), "wb") as f:
            f.write(data)

    def policy(self, name: str) -> None:
        self.write("sys/scheduler", name.encode() + b"\n")
        deadline = time.monotonic() + 30
        while any(q["policy"] != name for q in self.json("sys/queue").values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"engine did not switch to {name}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)


# ---- one workload run ---------------------------------------------------------------------------


@dataclass
class Req:
    agent: str
    turn: int
    submitted: float
    first: float | None = None
    done: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class Run:
    config: str
    agents: int
    requests: list[Req] = field(default_factory=list)
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0


def ask(m: BenchMount, agent: str, turn: int, body: bytes) -> Req:
    """One closed-loop turn: submit, time the first byte on stream, read to the end."""
    req = Req(agent, turn, time.monotonic())
    try:
        m.write(f"agents/{agent}/syscall", body)
        with open(m.p(f"agents/{agent}/stream"), "rb", buffering=0) as f:
            while f.read(65536):
                if req.first is None:
                    req.first = time.monotonic()
        req.done = time.monotonic()
        answer = m.read(f"agents/{agent}/out")
        meta = m.json(f"agents/{agent}/results/{turn + 1}.json")
        req.tokens = meta["tokens_out"]
        if meta["state"] != "done":
            req.error = answer.decode(errors="replace")[-200:]
    except OSError as e:
        req.error = str(e)
    return req


class Sampler:
    """Reads every agent's token count from sys/status a few times a second."""

    def __init__(self, m: BenchMount, run: Run, period: float = 0.25) -> None:
        self.m, self.run, self.period = m, run, period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                st = self.m.json("sys/status")
                counts = {a: s["tokens_out"] for a, s in st["agents"].items()}
                self.run.samples.append((time.monotonic(), counts))
            except (OSError, ValueError):
                pass
            self.stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def make_agents(m: BenchMount, names: list[str], max_tokens: int) -> None:
    for name in names:
        os.mkdir(m.p(f"agents/{name}"))
        m.write(f"agents/{name}/config", f"max_tokens={max_tokens}\n".encode())


def remove_agents(m: BenchMount, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError):
            os.rmdir(m.p(f"agents/{name}"))


def closed_loop(
    m: BenchMount,
    run: Run,
    names: list[str],
    turns: int,
    tag: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Every agent runs its turns in its own thread, all starting together."""
    barrier = threading.Barrier(len(names) + 1)
    lock = threading.Lock()

    def agent_loop(i: int, name: str) -> None:
        barrier.wait()
        for t in range(turns):
            text = PROMPTS[(i + t) % len(PROMPTS)] if t == 0 else FOLLOW_UPS[(i + t) % 4]
            req = ask(m, name, t, f"[{tag}] {text}\n".encode())
            with lock:
                run.requests.append(req)

    threads = [threading.Thread(target=agent_loop, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    barrier.wait()
    run.start = time.monotonic()
    if extra:
        extra["started"].set()
    for t in threads:
        t.join()
    run.end = time.monotonic()


def run_scaling(
    m: BenchMount, config: str, n: int, turns: int, max_tokens: int, run_id: int
) -> Run:
    m.policy(config)
    run = Run(config, n)
    names = [f"s{run_id}-{i}" for i in range(n)]
    make_agents(m, names, max_tokens)
    try:
        with Sampler(m, run):
            closed_loop(m, run, names, turns, f"run {run_id}")
    finally:
        remove_agents(m, names)
    return run


def service_in_window(run: Run, agents: list[str], window_end: float) -> list[float]:
    """Tokens each agent received between the run's start and ``window_end``."""
    # the last sample inside the window (or the first one, for a very short window)
    before = [s for s in run.samples if s[0] <= window_end] or run.samples[:1]
    last = before[-1][1] if before else {}
    return [float(last.get(a, 0)) for a in agents]


def summarize(run: Run) -> dict[str, Any]:
    ok = [r for r in run.requests if r.error is None and r.done is not None]
    tokens = sum(r.tokens for r in ok)
    wall = max(run.end - run.start, 1e-9)
    ttft = [r.first - r.submitted for r in ok if r.first is not None]
    lat = [r.done - r.submitted for r in ok if r.done is not None]
    agents = sorted({r.agent for r in run.requests})
    per_agent_rate = []
    for a in agents:
        mine = [r for r in ok if r.agent == a]
        if mine:
            active = max(r.done for r in mine) - min(r.submitted for r in mine)
            per_agent_rate.append(sum(r.tokens for r in mine) / max(active, 1e-9))
    return {
        "config": run.config,
        "agents": run.agents,
        "requests": len(run.requests),
        "errors": len(run.requests) - len(ok),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p99_s": percentile(ttft, 0.99),
        "latency_p50_s": percentile(lat, 0.5),
        "latency_p99_s": percentile(lat, 0.99),
        "jain": jain(per_agent_rate),
    }


# ---- fairness -----------------------------------------------------------------------------------


def run_fairness(
    m: BenchMount, config: str, modest: int, turns: int, flood: int, max_tokens: int, run_id: int
) -> dict[str, Any]:
    m.policy(config)
    run = Run(config, modest + 1)
    flooder = f"f{run_id}-flood"
    names = [f"f{run_id}-m{i}" for i in range(modest)]
    make_agents(m, [flooder, *names], max_tokens)
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
            m.read(f"agents/{flooder}/out")

    flooding = threading.Thread(target=flood_all)
    flooding.start()
    try:
        with Sampler(m, run, period=0.2):
            closed_loop(m, run, names, turns, f"fair {run_id}", {"started": started})
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


# ---- FUSE overhead ------------------------------------------------------------------------------


def run_overhead(workdir: Path, blocks: int, per_block: int, threads: int) -> dict[str, Any]:
    m = BenchMount("tiny-random", ["--threads", str(threads)], workdir, label="overhead")
    direct = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernel.microbench",
            "--model",
            "tiny-random",
            "--threads",
            str(threads),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert direct.stdin is not None and direct.stdout is not None
        assert direct.stdout.readline().strip() == "ready"
        os.mkdir(m.p("agents/overhead"))
        body = json.dumps({"call": "llm", "prompt": "hi", "max_tokens": 1}).encode()
        mount_lat: list[float] = []
        direct_lat: list[float] = []
        ratios = []
        for b in range(blocks):
            order = ("mount", "direct") if b % 2 == 0 else ("direct", "mount")
            block: dict[str, list[float]] = {}
            for side in order:
                if side == "mount":
                    lat = []
                    for _ in range(per_block):
                        t = time.perf_counter()
                        with open(m.p("agents/overhead/syscall"), "r+b", buffering=0) as f:
                            f.write(body)
                            while f.read(65536):
                                pass
                        lat.append(time.perf_counter() - t)
                else:
                    direct.stdin.write(f"{per_block}\n")
                    direct.stdin.flush()
                    lat = json.loads(direct.stdout.readline())
                block[side] = lat
            mount_lat += block["mount"]
            direct_lat += block["direct"]
            ratios.append(statistics.median(block["mount"]) / statistics.median(block["direct"]))
        return {
            "calls_each": len(mount_lat),
            "mount_p50_ms": 1000 * percentile(mount_lat, 0.5),
            "mount_p99_ms": 1000 * percentile(mount_lat, 0.99),
            "direct_p50_ms": 1000 * percentile(direct_lat, 0.5),
            "direct_p99_ms": 1000 * percentile(direct_lat, 0.99),
            "overhead_p50_ms": 1000 * (percentile(mount_lat, 0.5) - percentile(direct_lat, 0.5)),
            "ratio_median_of_blocks": statistics.median(ratios),
        }
    finally:
        if direct.stdin:
            direct.stdin.close()
        direct.wait(30)
        m.stop()


# ---- memory and storage -------------------------------------------------------------------------

WORDS = [
    "hotel",
    "flight",
    "airport",
    "train",
    "museum",
    "river",
    "coffee",
    "bakery",
    "garden",
    "market",
    "bridge",
    "castle",
    "ticket",
    "beach",
    "mountain",
    "harbour",
    "concert",
    "library",
    "bicycle",
    "festival",
    "lighthouse",
    "vineyard",
    "island",
]


def doc(i: int) -> bytes:
    """A small text file (about 1 KB) of varied words, different for each i."""
    rng = random.Random(i)
    sentences = [
        " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(14)
    ]
    return f"Document {i}. ".encode() + " ".join(sentences).encode() + b"\n"


def timed_ops(n: int, fn: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def run_storage(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Ingest, search latency at two sizes, memory ops through the mount, eviction costs."""
    cfg = workdir / "storage.toml"
    cfg.write_text("[kernel]\nmem_agent_mb = 1\nmem_total_mb = 64\n")
    m = BenchMount(
        "tiny-random", ["--config", str(cfg), "--embedder", args.embedder], workdir, label="storage"
    )
    out: dict[str, Any] = {"embedder": args.embedder}
    try:
        os.mkdir(m.p("store/bench"))

        def ingest(first: int, count: int) -> dict[str, Any]:
            data = [doc(i) for i in range(first, first + count)]
            t = time.perf_counter()
            for i, content in enumerate(data, first):
                m.write(f"store/bench/doc{i:05d}.txt", content)
            written = time.perf_counter() - t
            while m.json("sys/store")["pending_index"]:
                time.sleep(0.1)
            indexed = time.perf_counter() - t
            size = sum(len(d) for d in data)
            return {
                "files": count,
                "bytes": size,
                "write_s": round(written, 2),
                "files_per_s": round(count / written, 1),
                "mb_per_s": round(size / written / 2**20, 2),
                "indexed_s": round(indexed, 2),
                "indexed_files_per_s": round(count / indexed, 1),
            }

        def search_latency(tag: str) -> dict[str, Any]:
            rng = random.Random(tag)
            queries = [
                f"{rng.choice(WORDS)} near the {rng.choice(WORDS)} {tag}{q}"
                for q in range(args.search_queries)
            ]
            lat = timed_ops(len(queries), lambda q: os.listdir(m.p(f"store/.search/{queries[q]}")))
            return {
                "queries": len(lat),
                "p50_ms": round(1000 * percentile(lat, 0.5), 1),
                "p99_ms": round(1000 * percentile(lat, 0.99), 1),
            }

        first = args.ingest
        out[f"ingest_{first}"] = ingest(0, first)
        out[f"search_at_{first}"] = search_latency("a")
        print(
            f"bench: store ingest {out[f'ingest_{first}']}, search at {first} files "
            f"{out[f'search_at_{first}']}",
            file=sys.stderr,
            flush=True,
        )
        if args.search_large > first:
            out["ingest_to_large"] = ingest(first, args.search_large - first)
            out[f"search_at_{args.search_large}"] = search_latency("b")
            print(
                f"bench: search at {args.search_large}: {out[f'search_at_{args.search_large}']}",
                file=sys.stderr,
                flush=True,
            )
        # memory blocks through the mount (write-and-close, then read), 4 KiB each
        os.mkdir(m.p("agents/membench"))
        block = b"m" * 4096
        n = args.mem_ops
        w = timed_ops(n, lambda i: m.write(f"mem/membench/b{i}", block))
        r = timed_ops(n, lambda i: m.read(f"mem/membench/b{i}"))
        out["memory_mount"] = {
            "ops": n,
            "writes_per_s": round(n / sum(w), 1),
            "reads_per_s": round(n / sum(r), 1),
        }
        # eviction and reload under the 1 MiB budget: 100 KB blocks
        big = b"e" * 100_000
        for i in range(40):
            m.write(f"mem/membench/e{i}", big)
        for i in range(40):
            m.read(f"mem/membench/e{i}")
        info = m.json("sys/mem")
        agent = info["agents"]["membench"]
        out["memory_mount"]["evictions"] = agent["evictions"]
        out["memory_mount"]["misses"] = agent["misses"]
        out["memory_mount"]["evict_plus_reload_seconds"] = (
            info["evict_seconds"] + info["load_seconds"]
        )
    finally:
        m.stop()
    res = subprocess.run(
        [sys.executable, "-m", "kernel.microbench", "--memory", str(args.mem_ops)],
        capture_output=True,
        text=True,
        check=True,
    )
    out["memory_direct"] = json.loads(res.stdout.strip().splitlines()[-1])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "kernel.microbench",
            "--memory",
            "40",
            "--block",
            "100000",
            "--budget",
            str(1 << 20),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out["eviction_direct"] = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"bench: memory through the mount {out['memory_mount']}; direct "
        f"{out['memory_direct']}; eviction {out['eviction_direct']}",
        file=sys.stderr,
        flush=True,
    )
    return out


# ---- driver -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scaling = results["scaling"]["summary"]
    ns = sorted({int(n) for n in scaling})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for config, style in (("fifo", "o-"), ("serial", "s--"), ("aios", "^:")):
        tput = [scaling[str(n)][config]["tokens_per_s"] for n in ns]
        p99 = [scaling[str(n)][config]["latency_p99_s"] for n in ns]
        label = {
            "fifo": "aiosfs (batched)",
            "serial": "(a) one at a time",
            "aios": "(b) AIOS-style",
        }[config]
        axes[0].plot(ns, tput, style, label=label)
        axes[1].plot(ns, p99, style, label=label)
    axes[0].set(
        xscale="log",
        xlabel="concurrent agents",
        ylabel="generated tokens/s",
        title="Aggregate throughput (median)",
    )
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="concurrent agents",
        ylabel="seconds",
        title="p99 completion latency (median)",
    )
    for ax in axes[:2]:
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.legend()
        ax.grid(alpha=0.3)
    fair = results.get("fairness", {}).get("summary", {})
    axes[2].set_visible(bool(fair))
    if fair:
        names = list(fair)
        axes[2].bar(
            names, [fair[c]["jain"] or 0 for c in names], color=["#c66", "#6a6"][: len(names)]
        )
        axes[2].axhline(0.9, color="k", ls="--", lw=1)
        axes[2].set(
            ylim=(0, 1.05), ylabel="Jain's index", title="Fairness: 1 flooder + 15 modest agents"
        )
    fig.suptitle(f"aiosfs bench — {results['model']} on {results['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_llm(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    """The scaling and fairness measurements, on a mount of the model under test."""
    extra = ["--threads", str(args.threads)] if args.threads else []
    m = BenchMount(args.model, extra, workdir)
    run_id = 0
    try:
        if not args.skip_scaling:
            raw: list[dict[str, Any]] = []
            summary: dict[str, dict[str, Any]] = {}
            for n in args.agents:
                reps = args.reps if n <= args.large else args.reps_large
                configs = ["fifo", "serial", "aios"]
                per_config: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
                speedups: dict[str, list[float]] = {"serial": [], "aios": []}
                for rep in range(reps):
                    order = configs[rep % 3 :] + configs[: rep % 3]
                    rep_runs = {}
                    for config in order:
                        run_id += 1
                        s = summarize(
                            run_scaling(m, config, n, args.turns, args.max_tokens, run_id)
                        )
                        s["rep"] = rep
                        raw.append(s)
                        per_config[config].append(s)
                        rep_runs[config] = s
                        print(
                            f"bench: N={n} rep {rep} {config:6s} {s['tokens_per_s']:7.1f} tok/s"
                            f"  p99 {s['latency_p99_s']:.2f} s  errors {s['errors']}",
                            file=sys.stderr,
                            flush=True,
                        )
                    for base in speedups:
                        speedups[base].append(
                            rep_runs["fifo"]["tokens_per_s"] / rep_runs[base]["tokens_per_s"]
                        )
                summary[str(n)] = {
                    c: {
                        key: median([r[key] for r in per_config[c]])
                        for key in (
                            "tokens_per_s",
                            "ttft_p50_s",
                            "ttft_p99_s",
                            "latency_p50_s",
                            "latency_p99_s",
                            "jain",
                            "tokens",
                            "wall_s",
                        )
                    }
                    for c in configs
                }
                summary[str(n)]["speedup_vs_serial"] = median(speedups["serial"])
                summary[str(n)]["speedup_vs_aios"] = median(speedups["aios"])
                summary[str(n)]["reps"] = reps
            results["scaling"] = {"runs": raw, "summary": summary}
        if not args.skip_fairness:
            fair_runs: dict[str, list[dict[str, Any]]] = {"fifo": [], "fair": []}
            for rep in range(args.reps):
                for config in ["fifo", "fair"] if rep % 2 == 0 else ["fair", "fifo"]:
                    run_id += 1
                    r = run_fairness(m, config, 15, args.turns, args.flood, args.max_tokens, run_id)
                    fair_runs[config].append(r)
                    print(
                        f"bench: fairness rep {rep} {config:4s} jain {fmt(r['jain'])} "
                        f"(flooder {r['flooder_tokens']:.0f} tokens, modest median "
                        f"{r['modest_tokens_median']:.0f})",
                        file=sys.stderr,
                        flush=True,
                    )
            results["fairness"] = {
                "runs": fair_runs,
                "summary": {
                    c: {"jain": median([r["jain"] for r in rs])} for c, rs in fair_runs.items()
                },
            }
        results["daemon"] = {
            "stats": m.json("sys/stats"),
            "context": m.json("sys/context"),
            "models": m.json("sys/models"),
        }
    finally:
        m.stop()


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="aiosfs-bench-"))
    results: dict[str, Any] = {
        "model": args.model,
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.only_storage:
        args.skip_scaling = args.skip_fairness = args.skip_overhead = args.skip_contexts = True
    if not (args.skip_scaling and args.skip_fairness):
        run_llm(args, workdir, results)
    if not args.skip_overhead:
        results["overhead"] = run_overhead(workdir, args.overhead_blocks, 50, args.threads)
        o = results["overhead"]
        print(
            f"bench: overhead mount p50 {o['mount_p50_ms']:.2f} ms, direct p50 "
            f"{o['direct_p50_ms']:.2f} ms",
            file=sys.stderr,
            flush=True,
        )
    if not args.skip_storage:
        results["storage"] = run_storage(args, workdir)
    if not args.skip_contexts:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "kernel.microbench",
                "--model",
                args.model,
                "--threads",
                str(args.threads),
                "--contexts",
                args.context_lengths,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results["contexts"] = json.loads(res.stdout.strip().splitlines()[-1])
        for row in results["contexts"]["lengths"]:
            print(
                f"bench: context {row['tokens']} tokens: recompute {row['recompute_ms']} ms, "
                f"snapshot {row['snapshot_ms']} ms, restore {row['restore_ram_ms']} ms "
                f"(disk: spill {row['spill_ms']} ms, restore {row['restore_disk_ms']} ms)",
                file=sys.stderr,
                flush=True,
            )
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if "scaling" in results:
        try:
            plot(results, out / "bench.png")
        except ImportError:
            print("bench: matplotlib is not installed; no plot", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--only-storage", action="store_true", help="only the memory and storage measurements"
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
        "--context-lengths",
        default="128,512,2048",
        help="context lengths for the preemption-cost measurement",
    )


def print_summary(results: dict[str, Any]) -> None:
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
    ctx = results.get("contexts")
    if ctx:
        print("preemption cost (ms): tokens, recompute, snapshot, restore, spill, restore-disk")
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


def main(args: argparse.Namespace) -> int:
    results = run_bench(args)
    print_summary(results)
    print(f"bench: results in {args.out}/results.json and {args.out}/bench.png", file=sys.stderr)
    return 0
