"""The remote measurement: what aiosfs's remote core adds to a model served elsewhere, measured
against calling the same server directly.

One llama-server (``llama_server.py``) serves the model's own GGUF (Q4_1 for SmolLM2) on
loopback with as many slots as the most clients any run has (the largest ``--remote-agents``, or
the fairness run's modest agents and the flooder). One aiosfs daemon is mounted for the whole
measurement with that server as its ``[models.remote]`` (``kind = "openai"``, ``max_in_flight`` =
the server's slots, ``context`` = its context per slot) and ``fair`` as its policy; its own local
model is ``tiny-random``, which loads in seconds and sits idle. Its agents say ``model=remote``.

At each agent count (``--remote-agents``, default 1 and 16) the two configurations alternate
within every repetition, rotated as in the engine measurement (``engine.py``, whose loops this
one reuses): **direct**, N clients of the server over HTTP, and **mount**, N agents through the
mount, the kernel streaming their requests from the same server. The workload is the scaling
measurement's on both sides: ``--turns`` chat turns that keep their history, ``--max-tokens``
new tokens, greedy, the same prompts. Besides each side's medians, mount / direct is reported for
throughput and each latency percentile as the median of per-repetition ratios, and the added
latency, mount minus direct at p50 (time to first token and completion), as the median of
per-repetition differences. Then Jain's index under a flooding agent (``--flood`` requests at
once beside ``--remote-modest`` agents): through the mount under ``fair`` against the server on
its own, which has no policy.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiosfs.bench import llama_server as ls
from aiosfs.bench.engine import (
    Engines,
    engine_fairness,
    engine_scaling,
    find_llama_server,
    llama_threads,
    native_gguf,
)
from aiosfs.bench.llm import run_scaling
from aiosfs.bench.report import say
from aiosfs.bench.stats import median
from aiosfs.bench.traffic import bench_mount, config_file
from aiosfs.harness import Mount

REMOTE = "remote"
"""The ``[models.NAME]`` table of the daemon, and the model its agents name."""
LOCAL_MODEL = "tiny-random"
"""The daemon's own model: loads fast and takes no CPU while the remote one is measured."""
MOUNT, DIRECT = "mount", "direct"
RATIO_KEYS = ("tokens_per_s", "ttft_p50_s", "ttft_p99_s", "latency_p50_s", "latency_p99_s")
ADDED_KEYS = ("ttft_p50_s", "latency_p50_s")


class RemoteRuns(Engines):
    """The engine measurement's runs with one mount whose agents use the remote model and one
    llama-server, shared by every run, in place of a server started for each."""

    title = "remote"
    policy = "fair"
    model = REMOTE

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        mount: Mount,
        srv: ls.Server,
        binary: Path,
        gguf: Path,
    ) -> None:
        super().__init__(args, workdir, {MOUNT: mount}, binary, {DIRECT: gguf})
        self.srv = srv
        self.agents = args.remote_agents
        self.modest = args.remote_modest

    @contextlib.contextmanager
    def server(self, label: str, slots: int) -> Iterator[ls.Server]:
        yield self.srv  # started once with enough slots for every run


def slots_needed(args: argparse.Namespace) -> int:
    """The server's slots: one for every client of the largest run, so that neither side
    waits for a slot the other would have had."""
    return int(max([*args.remote_agents, args.remote_modest + 1]))


def mount_config(workdir: Path, srv: ls.Server, args: argparse.Namespace) -> Path:
    """The daemon's ``--config``: ``fair``, no embedding model to load for ``store/``, and the
    server as ``[models.remote]``."""
    return config_file(
        workdir / "remote.toml",
        {
            "kernel": {"scheduler": "fair", "store_embedder": "hashing"},
            f"models.{REMOTE}": {
                "kind": "openai",
                "endpoints": [f"http://{srv.host}:{srv.port}/v1"],
                "model": args.model,  # llama-server serves its one model whatever the id
                "max_in_flight": srv.slots,
                "context": args.llama_ctx,
            },
        },
    )


def mount_vs_direct(scaling: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per agent count: mount / direct for each of :data:`RATIO_KEYS` and mount − direct for
    each of :data:`ADDED_KEYS` (seconds), each the median over repetitions of the figure
    computed within a repetition (both runs of a repetition share the machine's noise)."""
    by = {(r["agents"], r["rep"], r["config"]): r for r in scaling["runs"]}
    out: dict[str, dict[str, Any]] = {}
    for n, row in scaling["summary"].items():
        reps = range(row["reps"])
        pairs = [(by[(int(n), rep, MOUNT)], by[(int(n), rep, DIRECT)]) for rep in reps]
        out[n] = {
            "ratios": {k: median([_ratio(x[k], y[k]) for x, y in pairs]) for k in RATIO_KEYS},
            "added_s": {k: median([_diff(x[k], y[k]) for x, y in pairs]) for k in ADDED_KEYS},
            "reps": row["reps"],
        }
    return out


def _ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def _diff(x: float | None, y: float | None) -> float | None:
    return x - y if x is not None and y is not None else None


def run_remote(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    """The remote measurement into ``results["remote"]`` (skipped, with a line saying why,
    without a llama-server or a GGUF of the model)."""
    if args.skip_llama_server:
        say("remote: --skip-llama-server; the remote measurement needs it, skipped")
        return
    gguf = native_gguf(args.model)
    if gguf is None:
        say(f"remote: {args.model} has no GGUF file to serve; skipped")
        return
    binary = find_llama_server(args)
    if binary is None:
        return
    run_ids = iter(range(20_000, 10**9))  # apart from the other measurements' agents' names
    log = workdir / "remote-llama-server.log"
    slots = slots_needed(args)
    with ls.llama_server(binary, gguf, slots, args.llama_ctx, llama_threads(args), log) as srv:
        toml = mount_config(workdir, srv, args)
        with bench_mount(workdir, REMOTE, LOCAL_MODEL, "--config", str(toml)) as m:
            # one unrecorded turn through the mount: the daemon's first request opens its
            # client's connections; llama-server warmed up before it answered /health
            run_scaling(m, RemoteRuns.policy, 1, 1, 4, next(run_ids), REMOTE)
            e = RemoteRuns(args, workdir, m, srv, binary, gguf)
            remote: dict[str, Any] = {
                "server": {
                    "binary": str(binary),
                    "gguf": str(gguf),
                    "slots": srv.slots,
                    "threads": srv.threads,
                    "ctx_per_slot": args.llama_ctx,
                },
                "mount": {"model": LOCAL_MODEL, "config": toml.read_text()},
            }
            remote["scaling"] = engine_scaling(e, run_ids)
            remote["scaling"]["mount_vs_direct"] = mount_vs_direct(remote["scaling"])
            remote["fairness"] = {
                **engine_fairness(e, run_ids),
                "modest": e.modest,
                "flood": args.flood,
            }
            remote["model_state"] = m.json(f"sys/models/{REMOTE}")
    results["remote"] = remote
