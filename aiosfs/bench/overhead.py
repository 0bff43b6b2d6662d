"""What the filesystem costs: a trivial syscall through the mount against the same call made on
the kernel directly (``python -m kernel.microbench``, a persistent process fed batch sizes).

Both sides run the tiny model for one token, so the difference is FUSE, the daemon's file
handling and the syscall protocol. Mount and direct calls alternate in blocks so that they share
the machine's noise; the ratio reported is the median of the blocks' ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiosfs.bench.report import say
from aiosfs.bench.stats import quantile
from aiosfs.bench.traffic import bench_mount
from aiosfs.harness import Mount


def time_mount_calls(m: Mount, body: bytes, n: int) -> list[float]:
    """``n`` syscalls on one agent, each written and read back on the same open file."""
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        with open(m.p("agents/overhead/syscall"), "r+b", buffering=0) as f:
            f.write(body)
            while f.read(65536):
                pass
        lat.append(time.perf_counter() - t)
    return lat


def run_overhead(workdir: Path, blocks: int, per_block: int, threads: int) -> dict[str, Any]:
    """``blocks`` blocks of ``per_block`` calls on each side; latencies in milliseconds."""
    with bench_mount(workdir, "overhead", "tiny-random", "--threads", str(threads)) as m:
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
                        block[side] = time_mount_calls(m, body, per_block)
                    else:
                        direct.stdin.write(f"{per_block}\n")
                        direct.stdin.flush()
                        block[side] = json.loads(direct.stdout.readline())
                mount_lat += block["mount"]
                direct_lat += block["direct"]
                ratios.append(
                    statistics.median(block["mount"]) / statistics.median(block["direct"])
                )
        finally:
            if direct.stdin:
                direct.stdin.close()
            direct.wait(30)
    mount_p50, direct_p50 = quantile(mount_lat, 0.5), quantile(direct_lat, 0.5)
    out = {
        "calls_each": len(mount_lat),
        "mount_p50_ms": 1000 * mount_p50,
        "mount_p99_ms": 1000 * quantile(mount_lat, 0.99),
        "direct_p50_ms": 1000 * direct_p50,
        "direct_p99_ms": 1000 * quantile(direct_lat, 0.99),
        "overhead_p50_ms": 1000 * (mount_p50 - direct_p50),
        "ratio_median_of_blocks": statistics.median(ratios),
    }
    say(
        f"overhead mount p50 {out['mount_p50_ms']:.2f} ms, direct p50 {out['direct_p50_ms']:.2f} ms"
    )
    return out
