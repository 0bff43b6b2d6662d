"""What access control costs: the same calls through two mounts, one with the access manager
and the audit log on (the default) and one with both off (``access_control = false``,
``audit = false``, settings that exist for this measurement).

Three round trips are timed: a trivial syscall (an ``llm`` call of one token on the tiny model,
as ``bench/overhead.py`` times it), a ``store_read`` syscall of a small file (the kernel checks
the owner's permissions on every directory on the way and the capability, and appends an audit
record), and a plain read of that file through ``store/`` (the OS kernel checks permissions
there; the daemon adds nothing). The two mounts run in alternating blocks, so they share the
machine's noise, and each figure is the median of the blocks' on/off ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosfs.bench.report import say
from aiosfs.bench.stats import quantile
from aiosfs.bench.traffic import bench_mount
from aiosfs.harness import Mount, write_config

KINDS = ("syscall", "store_read", "fs_read")


def transaction(m: Mount, agent: str, body: bytes) -> None:
    """One syscall written and answered on one descriptor of ``agents/AGENT/syscall``."""
    with open(m.p("agents", agent, "syscall"), "r+b", buffering=0) as f:
        f.write(body)
        while f.read(65536):
            pass


def _timed(fn: Callable[[], None], n: int) -> list[float]:
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat


def _prepare(m: Mount) -> dict[str, Callable[[], None]]:
    os.mkdir(m.p("agents/bench"))
    os.makedirs(m.p("store/bench/docs"), exist_ok=True)
    doc = m.p("store/bench/docs/doc.txt")
    with open(doc, "wb") as f:
        f.write(b"a line of a small document\n" * 150)  # 4 KiB
    trivial = json.dumps({"call": "llm", "prompt": "hi", "max_tokens": 1}).encode()
    read = json.dumps({"call": "store_read", "path": "bench/docs/doc.txt"}).encode()

    def fs_read() -> None:
        with open(doc, "rb") as f:
            f.read()

    calls: dict[str, Callable[[], None]] = {
        "syscall": lambda: transaction(m, "bench", trivial),
        "store_read": lambda: transaction(m, "bench", read),
        "fs_read": fs_read,
    }
    for fn in calls.values():  # warm: the first call of each kind pays for imports and caches
        fn()
    return calls


def run_access(workdir: Path, blocks: int, per_block: int, threads: int) -> dict[str, Any]:
    """``blocks`` alternating blocks of ``per_block`` calls of each kind on each mount."""
    off_config = write_config(workdir, access_control=False, audit=False)
    extra = ("--threads", str(threads), "--embedder", "hashing")
    with (
        bench_mount(workdir, "access-on", "tiny-random", *extra) as on,
        bench_mount(workdir, "access-off", "tiny-random", *extra, "--config", off_config) as off,
    ):
        sides = {"on": _prepare(on), "off": _prepare(off)}
        lat: dict[str, dict[str, list[float]]] = {s: {k: [] for k in KINDS} for s in sides}
        ratios: dict[str, list[float]] = {k: [] for k in KINDS}
        for b in range(blocks):
            order = ("on", "off") if b % 2 == 0 else ("off", "on")
            for kind in KINDS:
                block = {side: _timed(sides[side][kind], per_block) for side in order}
                for side in order:
                    lat[side][kind] += block[side]
                ratios[kind].append(
                    statistics.median(block["on"]) / statistics.median(block["off"])
                )
    out: dict[str, Any] = {"blocks": blocks, "calls_per_block": per_block}
    for kind in KINDS:
        on_p50, off_p50 = quantile(lat["on"][kind], 0.5), quantile(lat["off"][kind], 0.5)
        ratio = statistics.median(ratios[kind])
        out[kind] = {
            "on_p50_ms": round(1000 * on_p50, 4),
            "off_p50_ms": round(1000 * off_p50, 4),
            "on_p99_ms": round(1000 * quantile(lat["on"][kind], 0.99), 4),
            "off_p99_ms": round(1000 * quantile(lat["off"][kind], 0.99), 4),
            "ratio_median_of_blocks": round(ratio, 4),
            "added_percent": round(100 * (ratio - 1), 2),
        }
        say(
            f"access {kind}: on p50 {1000 * on_p50:.3f} ms, off p50 {1000 * off_p50:.3f} ms, "
            f"{100 * (ratio - 1):+.1f}% (median of {blocks} block ratios)"
        )
    return out
