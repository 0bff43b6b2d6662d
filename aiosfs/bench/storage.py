"""Memory and storage through the mount: ingest into store/, search latency at two store sizes,
memory block operations and eviction under a small budget, and the same memory operations on the
kernel directly (``python -m kernel.microbench --memory``) for comparison.

Runs on the tiny model: nothing here generates text, and the embedder (MiniLM or model-free
hashing) is what search and indexing cost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosfs.bench.report import say
from aiosfs.bench.stats import quantile
from aiosfs.bench.traffic import bench_mount
from aiosfs.harness import Mount, write_config

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
MEM_BLOCK = 4096
"""Bytes in each memory block of the operations measurement."""
EVICT_BLOCK, EVICT_BLOCKS = 100_000, 40
"""40 blocks of 100 KB: four times the 1 MiB per-agent budget, so most are evicted and reloaded."""


def doc(i: int) -> bytes:
    """A small text file (about 1 KB) of varied words, different for each i."""
    rng = random.Random(i)
    sentences = [
        " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(14)
    ]
    return f"Document {i}. ".encode() + " ".join(sentences).encode() + b"\n"


def timed_ops(n: int, fn: Callable[[int], object]) -> list[float]:
    """Seconds each of ``fn(0)`` … ``fn(n - 1)`` took."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def ingest(m: Mount, first: int, count: int) -> dict[str, Any]:
    """Write ``count`` documents, then wait until the store has indexed them all."""
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


def search_latency(m: Mount, tag: str, n: int) -> dict[str, Any]:
    """``n`` distinct queries listed through ``store/.search/``; ``tag`` keeps them uncached."""
    rng = random.Random(tag)
    queries = [f"{rng.choice(WORDS)} near the {rng.choice(WORDS)} {tag}{q}" for q in range(n)]
    lat = timed_ops(len(queries), lambda q: os.listdir(m.p(f"store/.search/{queries[q]}")))
    return {
        "queries": len(lat),
        "p50_ms": round(1000 * quantile(lat, 0.5), 1),
        "p99_ms": round(1000 * quantile(lat, 0.99), 1),
    }


def memory_through_mount(m: Mount, n: int) -> dict[str, Any]:
    """Memory blocks written (write and close) and read back, then eviction and reload."""
    os.mkdir(m.p("agents/membench"))
    block = b"m" * MEM_BLOCK
    w = timed_ops(n, lambda i: m.write(f"mem/membench/b{i}", block))
    r = timed_ops(n, lambda i: m.read_bytes(f"mem/membench/b{i}"))
    out: dict[str, Any] = {
        "ops": n,
        "writes_per_s": round(n / sum(w), 1),
        "reads_per_s": round(n / sum(r), 1),
    }
    big = b"e" * EVICT_BLOCK
    for i in range(EVICT_BLOCKS):
        m.write(f"mem/membench/e{i}", big)
    for i in range(EVICT_BLOCKS):
        m.read_bytes(f"mem/membench/e{i}")
    info = m.json("sys/mem")
    agent = info["agents"]["membench"]
    out["evictions"] = agent["evictions"]
    out["misses"] = agent["misses"]
    out["evict_plus_reload_seconds"] = info["evict_seconds"] + info["load_seconds"]
    return out


def microbench(*args: str) -> Any:
    """The JSON result (last line) of ``python -m kernel.microbench ARGS``."""
    res = subprocess.run(
        [sys.executable, "-m", "kernel.microbench", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


LARGE_MIB = 256
"""The large file of the streaming measurement, in MiB."""


def rss_kib(pid: int) -> int:
    """A process's resident memory now (KiB, from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def large_file(m: Mount, host_dir: Path, mib: int, reps: int) -> dict[str, Any]:
    """Write (1 MiB writes, then fsync and close) and read back (1 MiB reads) a ``mib``-MiB
    file in store/ and, alternately in the same run, in a plain directory on the data dir's
    disk; medians of MB/s and of the ratio store/host, and how far the daemon's memory grew
    while it held the file (streamed in blocks, it should not grow by the file's size)."""
    chunk = os.urandom(1 << 20)
    rows: dict[str, list[float]] = {k: [] for k in ("w_store", "r_store", "w_host", "r_host")}
    grew: list[float] = []
    pid = m.proc.pid

    def one(path: str) -> tuple[float, float]:
        t = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        w = time.perf_counter() - t
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        r = time.perf_counter() - t
        os.unlink(path)
        return mib * 1.048576 / w, mib * 1.048576 / r

    for _ in range(reps):
        before = rss_kib(pid)
        w, r = one(m.p("store/bench-large"))
        grew.append((rss_kib(pid) - before) / 1024)
        rows["w_store"].append(w)
        rows["r_store"].append(r)
        w, r = one(str(host_dir / "bench-large"))
        rows["w_host"].append(w)
        rows["r_host"].append(r)
    med = {k: round(quantile(v, 0.5), 1) for k, v in rows.items()}
    ratio = {
        op: round(
            quantile(
                [a / b for a, b in zip(rows[f"{op}_store"], rows[f"{op}_host"], strict=True)], 0.5
            ),
            3,
        )
        for op in ("w", "r")
    }
    return {
        "mib": mib,
        "write_mb_s": med["w_store"],
        "read_mb_s": med["r_store"],
        "host_write_mb_s": med["w_host"],
        "host_read_mb_s": med["r_host"],
        "write_ratio_vs_host": ratio["w"],
        "read_ratio_vs_host": ratio["r"],
        "daemon_rss_growth_mib_max": round(max(grew), 1),
    }


def run_storage(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Ingest, search latency at two sizes, memory ops through the mount, eviction costs."""
    cfg = write_config(
        workdir, mem_agent_mb=1, mem_total_mb=64, store_max_file_mb=max(64, 2 * args.large_mib)
    )
    out: dict[str, Any] = {"embedder": args.embedder}
    extra = ("--config", cfg, "--embedder", args.embedder)
    with bench_mount(workdir, "storage", "tiny-random", *extra) as m:
        os.mkdir(m.p("store/bench"))
        first = args.ingest
        out[f"ingest_{first}"] = ingest(m, 0, first)
        out[f"search_at_{first}"] = search_latency(m, "a", args.search_queries)
        say(
            f"store ingest {out[f'ingest_{first}']}, search at {first} files "
            f"{out[f'search_at_{first}']}"
        )
        if args.search_large > first:
            out["ingest_to_large"] = ingest(m, first, args.search_large - first)
            out[f"search_at_{args.search_large}"] = search_latency(m, "b", args.search_queries)
            say(f"search at {args.search_large}: {out[f'search_at_{args.search_large}']}")
        out["memory_mount"] = memory_through_mount(m, args.mem_ops)
        if args.large_mib:
            host = workdir / "host-large"
            host.mkdir(exist_ok=True)
            out["large_file"] = large_file(m, host, args.large_mib, 3)
            say(f"a {args.large_mib} MiB file in store/: {out['large_file']}")
    out["memory_direct"] = microbench("--memory", str(args.mem_ops))
    out["eviction_direct"] = microbench(
        "--memory",
        str(EVICT_BLOCKS),
        "--block",
        str(EVICT_BLOCK),
        "--budget",
        str(1 << 20),
    )
    say(
        f"memory through the mount {out['memory_mount']}; direct "
        f"{out['memory_direct']}; eviction {out['eviction_direct']}"
    )
    return out
