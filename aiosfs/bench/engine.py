"""The engine measurement: aiosfs through the mount against llama.cpp's ``llama-server``.

At each agent count the configurations alternate within every repetition (rotated, so that none
always runs first): each aiosfs configuration in :data:`AIOSFS_CONFIGS` on a daemon of its own,
then llama-server on the model's own GGUF (Q4_1 for SmolLM2) and on its f16 dequantisation (the
weights the fp32 transformers core computes with, at half the bytes). The workload is the
scaling measurement's (:mod:`aiosfs.bench.llm`): N agents, ``turns`` chat turns each, greedy.
llama-server is restarted for every run with ``-np`` = N. Ratios aiosfs / llama-server are
medians of per-repetition ratios, as the scaling speed-ups are. Then Jain's index under a
flooding agent: each aiosfs configuration under ``fair`` against llama-server with the same
flood from one client.

The llama-server binary comes from ``--llama-server PATH`` or ``scripts/llama-server.sh`` (built
into the cache the first time); if neither gives one, the measurement says so and is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiosfs.bench import llama_server as ls
from aiosfs.bench.llm import MODEST_AGENTS, SCALING_KEYS, run_fairness, run_scaling, set_policy
from aiosfs.bench.report import say
from aiosfs.bench.stats import fmt, median
from aiosfs.bench.traffic import bench_mount, config_file, summarize
from aiosfs.harness import Mount

_SLOTS = {"max_running": 64, "context": 1024}
AIOSFS_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    # 64 places and 1,024 tokens a sequence: what llama-server gets at 64 agents (-np, -c)
    # native: the GGUF's own weights, 16-bit activations with aiosfs's patch (the default)
    ("aiosfs llama.cpp native", {"core": "llamacpp", "gguf_weights": "native", **_SLOTS}),
    ("aiosfs llama.cpp f16", {"core": "llamacpp", "gguf_weights": "f16", **_SLOTS}),
    ("aiosfs transformers", {"core": "transformers", "max_running": 64}),
]
"""aiosfs configurations the engine measurement runs, each a label and the ``[kernel]`` settings
its daemon gets on top of the defaults (one daemon each, mounted for the whole measurement).
A core variant is one more line, e.g.
``("aiosfs llamacpp f16", {"core": "llamacpp", "gguf_weights": "f16"})``."""
LLAMA_SERVER_VERSION = "0.3.36"
"""The llama-cpp-python release whose vendored llama.cpp ``scripts/llama-server.sh`` builds."""
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llama-server.sh"
BUILD_TIMEOUT = 3600.0
"""A first build on 2 cores takes several minutes; an hour means something is wrong."""


def find_llama_server(args: argparse.Namespace) -> Path | None:
    """The binary to run: ``--llama-server PATH``, else the one the build script installs (it
    builds it the first time; that takes minutes and prints its progress). None, with a line
    saying why, when there is none and the build failed or cannot run here."""
    if args.llama_server:
        path = Path(args.llama_server).expanduser()
        if not os.access(path, os.X_OK):
            say(f"engine: --llama-server {path} is not an executable; llama-server skipped")
            return None
        return path
    if not SCRIPT.exists():
        say(f"engine: no {SCRIPT} (not a source checkout); pass --llama-server PATH")
        return None
    say("engine: finding or building llama-server (scripts/llama-server.sh)")
    env = dict(os.environ, PYTHON=sys.executable)
    try:
        res = subprocess.run(
            ["bash", str(SCRIPT)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        say(f"engine: building llama-server failed ({e}); llama-server skipped")
        return None
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        say(f"engine: building llama-server failed (exit {res.returncode}); llama-server skipped")
        return None
    return Path(lines[-1])


def native_gguf(model: str) -> Path | None:
    """The GGUF file the model under test is loaded from, or None for a model that has none
    (tiny-random, a transformers folder). Asked of the kernel's model resolver in a
    subprocess: the benchmark imports no kernel.llm (the import contracts)."""
    code = (
        "import sys\n"
        "from kernel.llm.models import resolve_model, smollm2_gguf_path\n"
        "s = resolve_model(sys.argv[1])\n"
        "print(smollm2_gguf_path() if s.kind == 'smollm2' else s.path if s.kind == 'gguf' else '')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, model], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        say(f"engine: cannot find the GGUF of {model}: {res.stderr.strip()[-300:]}")
        return None
    out = res.stdout.strip()
    return Path(out) if out else None


def cache_dir() -> Path:
    """The kernel's cache folder (``AIOSFS_CACHE``, else the XDG cache), as the script's."""
    base = os.environ.get("AIOSFS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aiosfs"
    )
    return Path(base)


def f16_gguf(args: argparse.Namespace) -> Path | None:
    """The f16 GGUF for the second llama-server configuration: ``--llama-f16 PATH``, else the
    very file the llama.cpp core runs (``kernel.llm.llamacpp.weights_file``: the model's
    quantised tensors dequantised once to f16, in the cache), asked of the kernel in a
    subprocess like :func:`native_gguf`. None when that cannot be done."""
    if args.llama_f16:
        return Path(args.llama_f16).expanduser()
    code = (
        "import sys\n"
        "from kernel.llm.llamacpp import weights_file\n"
        "from kernel.llm.models import default_cache_dir, resolve_model\n"
        "print(weights_file(resolve_model(sys.argv[1]), default_cache_dir()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, args.model], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        say(f"engine: no f16 GGUF ({res.stderr.strip()[-300:]}); llama-server f16 skipped")
        return None
    return Path(res.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def aiosfs_mounts(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, Mount]]:
    """One daemon per aiosfs configuration, all mounted for the whole measurement (idle ones
    wait on their queues and take no CPU), each with its settings in a ``--config`` file."""
    with contextlib.ExitStack() as stack:
        mounts: dict[str, Mount] = {}
        for i, (label, settings) in enumerate(AIOSFS_CONFIGS):
            extra = ["--threads", str(args.threads)] if args.threads else []
            if settings:
                toml = config_file(workdir / f"engine-{i}.toml", {"kernel": settings})
                extra += ["--config", str(toml)]
            mounts[label] = stack.enter_context(
                bench_mount(workdir, f"engine-{i}", args.model, *extra)
            )
        yield mounts


def llama_configs(args: argparse.Namespace) -> tuple[Path | None, dict[str, Path]]:
    """The llama-server binary and its configurations (label: GGUF), empty when skipped."""
    if args.skip_llama_server:
        say("engine: --skip-llama-server; aiosfs alone")
        return None, {}
    native = native_gguf(args.model)
    if native is None:
        say(f"engine: {args.model} has no GGUF file; llama-server skipped")
        return None, {}
    binary = find_llama_server(args)
    if binary is None:
        return None, {}
    configs = {"llama-server native": native}
    f16 = f16_gguf(args)
    if f16 is not None:
        configs["llama-server f16"] = f16
    return binary, configs


def llama_threads(args: argparse.Namespace) -> int:
    """llama-server's threads: ``--threads``, else every core."""
    return int(args.threads or os.cpu_count() or 1)


def rotated(labels: list[str], rep: int) -> list[str]:
    """The order of one repetition: each configuration first in turn."""
    k = rep % len(labels)
    return labels[k:] + labels[:k]


class Engines:
    """What the engine measurement runs against: the mounted aiosfs configurations and the
    llama-server ones, each started afresh for a run with as many slots as it needs.

    The class attributes are what a measurement built on this one (``remote.py``) changes:
    its name in progress lines, the policy of the mounts' scaling runs, and the model the
    mounts' agents use (None: the daemon's own)."""

    title = "engine"
    policy = "fifo"
    model: str | None = None

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        mounts: dict[str, Mount],
        binary: Path | None,
        llamas: dict[str, Path],
    ) -> None:
        self.args, self.mounts, self.binary, self.llamas = args, mounts, binary, llamas
        self.log = workdir / "llama-server.log"
        self.threads = llama_threads(args)
        self.labels = [*mounts, *llamas]
        self.agents: list[int] = args.agents  # the agent counts of the scaling runs
        self.modest = MODEST_AGENTS  # the modest agents beside the flooder

    @contextlib.contextmanager
    def server(self, label: str, slots: int) -> Iterator[ls.Server]:
        assert self.binary is not None
        with ls.llama_server(
            self.binary, self.llamas[label], slots, self.args.llama_ctx, self.threads, self.log
        ) as srv:
            yield srv

    def scaling_run(self, label: str, n: int, run_id: int) -> dict[str, Any]:
        a = self.args
        if label in self.mounts:
            m = self.mounts[label]
            run = run_scaling(m, self.policy, n, a.turns, a.max_tokens, run_id, self.model)
        else:
            with self.server(label, n) as srv:
                run = ls.run_scaling(srv, label, n, a.turns, a.max_tokens, run_id)
        s = summarize(run)
        s["config"] = label
        return s

    def fairness_run(self, label: str, run_id: int) -> dict[str, Any]:
        a = self.args
        if label in self.mounts:
            m = self.mounts[label]
            r = run_fairness(
                m, "fair", self.modest, a.turns, a.flood, a.max_tokens, run_id, self.model
            )
        else:
            with self.server(label, self.modest + 1) as srv:
                r = ls.run_fairness(srv, label, self.modest, a.turns, a.flood, a.max_tokens, run_id)
        r["config"] = label
        return r


def engine_scaling(e: Engines, run_ids: Iterator[int]) -> dict[str, Any]:
    """Every agent count under every configuration, alternating; medians and ratios."""
    args = e.args
    raw: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    for n in e.agents:
        reps = args.reps if n <= args.large else args.reps_large
        per: dict[str, list[dict[str, Any]]] = {label: [] for label in e.labels}
        for rep in range(reps):
            for label in rotated(e.labels, rep):
                s = e.scaling_run(label, n, next(run_ids))
                s["rep"] = rep
                raw.append(s)
                per[label].append(s)
                say(
                    f"{e.title} N={n} rep {rep} {label:20s} {s['tokens_per_s']:7.1f} tok/s"
                    f"  ttft p50 {fmt(s['ttft_p50_s'], 2)} s  p99 {fmt(s['latency_p99_s'], 2)} s"
                    f"  errors {s['errors']}"
                )
        row: dict[str, Any] = {
            label: {key: median([r[key] for r in per[label]]) for key in SCALING_KEYS}
            for label in e.labels
        }
        row["ratios"] = {
            f"{a} / {b}": median(
                [
                    x["tokens_per_s"] / y["tokens_per_s"] if y["tokens_per_s"] else None
                    for x, y in zip(per[a], per[b], strict=True)
                ]
            )
            for a in e.mounts
            for b in e.llamas
        }
        row["reps"] = reps
        summary[str(n)] = row
    return {"runs": raw, "summary": summary}


def engine_fairness(e: Engines, run_ids: Iterator[int]) -> dict[str, Any]:
    """The flooder against the modest agents: aiosfs under ``fair``, llama-server as it
    comes."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in e.labels}
    for rep in range(e.args.reps):
        for label in rotated(e.labels, rep):
            r = e.fairness_run(label, next(run_ids))
            runs[label].append(r)
            say(
                f"{e.title} fairness rep {rep} {label:20s} jain {fmt(r['jain'])} "
                f"(flooder {r['flooder_tokens']:.0f} tokens, modest median "
                f"{r['modest_tokens_median']:.0f})"
            )
    return {
        "runs": runs,
        "summary": {label: {"jain": median([r["jain"] for r in rs])} for label, rs in runs.items()},
    }


def run_engine(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    """The engine measurement into ``results["engine"]``."""
    binary, llamas = llama_configs(args)
    run_ids = iter(range(10_000, 10**9))  # apart from the scaling measurement's agents' names
    with aiosfs_mounts(args, workdir) as mounts:
        for m in mounts.values():
            # one unrecorded turn: the first forward passes after a load are slow (allocation,
            # thread pools), which llama-server pays in its own warm-up before /health is ready
            set_policy(m, "fifo")
            run_scaling(m, "fifo", 1, 1, 4, next(run_ids))
        e = Engines(args, workdir, mounts, binary, llamas)
        engine: dict[str, Any] = {
            "aiosfs": {label: settings for label, settings in AIOSFS_CONFIGS},
            "llama_server": {
                "binary": str(binary) if binary else None,
                "ggufs": {label: str(p) for label, p in llamas.items()},
                "threads": e.threads,
                "ctx_per_slot": args.llama_ctx,
            },
        }
        engine["scaling"] = engine_scaling(e, run_ids)
        if not args.skip_engine_fairness:
            engine["fairness"] = engine_fairness(e, run_ids)
        engine["daemons"] = {label: m.json("sys/status")["models"] for label, m in mounts.items()}
    results["engine"] = engine
