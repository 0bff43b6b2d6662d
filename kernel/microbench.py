"""Kernel-side measurements for ``aiosfs bench``.

``serve``: the kernel side of the FUSE-overhead benchmark — the same trivial syscall, called
directly. ``aiosfs bench`` alternates blocks of calls through the mount with blocks of calls here,
on the same model, so both see the same machine at the same time. Protocol: read a number N from
stdin, make N calls, print one JSON line with their latencies in seconds; repeat until stdin
closes. The first line printed is ``ready``.

``--memory OPS``: memory-manager writes and reads made directly, and eviction/reload costs.

``--contexts``: what preemption costs. For each context length, the time to recompute the
sequence's KV (chunked prefill, as the engine does), to snapshot it, to restore it from RAM, to
spill it to disk and to restore it from disk. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from kernel import Kernel, KernelConfig

TRIVIAL = json.dumps({"call": "llm", "prompt": "hi", "max_tokens": 1}).encode()


async def serve(model: str, threads: int) -> None:
    kernel = Kernel(KernelConfig(model=model, threads=threads))
    await kernel.start()
    await kernel.wait_loaded()
    kernel.create_agent("direct")
    print("ready", flush=True)
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            break
        latencies = []
        for _ in range(int(line)):
            start = time.perf_counter()
            result = kernel.submit("direct", TRIVIAL)
            await result.wait_finished()
            await kernel.next_out(kernel.agent("direct"))
            latencies.append(time.perf_counter() - start)
        print(json.dumps(latencies), flush=True)
    await kernel.shutdown()


def preemption_costs(model: str, threads: int, lengths: list[int], reps: int) -> dict[str, object]:
    """What swapping a sequence out and back in costs, against recomputing its KV."""
    import torch

    from kernel.llm.core import TransformersCore
    from kernel.llm.models import default_cache_dir, resolve_model
    from kernel.llm.request import GenerationRequest
    from kernel.llm.sequence import Sequence
    from kernel.llm.swap import SwapManager

    core = TransformersCore(resolve_model(model), default_cache_dir(), threads)
    core.load(lambda _msg: None)
    step = 256
    out: dict[str, object] = {"model": model, "bytes_per_token": core.kv_shape.bytes_per_token}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in lengths:
            times: dict[str, list[float]] = {
                k: [] for k in ("recompute", "snapshot", "restore_ram", "spill", "restore_disk")
            }
            for rep in range(reps):
                g = torch.Generator().manual_seed(rep)
                ids = torch.randint(100, 40000, (n,), generator=g).tolist()
                seq = Sequence(
                    GenerationRequest(rep, "m", ({"role": "user", "content": ""},)), ids, 1
                )
                t = time.perf_counter()
                while seq.unfed > 0:
                    core.forward([(seq, min(step, seq.unfed))])
                times["recompute"].append(time.perf_counter() - t)
                ram = SwapManager(core, 1 << 40, None)
                t = time.perf_counter()
                ram.save(seq)
                times["snapshot"].append(time.perf_counter() - t)
                t = time.perf_counter()
                ram.restore(seq)
                times["restore_ram"].append(time.perf_counter() - t)
                disk = SwapManager(core, 0, Path(tmp) / f"swap{n}-{rep}")
                t = time.perf_counter()
                disk.save(seq)  # snapshot and spill at once: the budget is 0
                times["spill"].append(time.perf_counter() - t)
                t = time.perf_counter()
                disk.restore(seq)
                times["restore_disk"].append(time.perf_counter() - t)
            rows.append(
                {
                    "tokens": n,
                    "kv_mb": round(n * core.kv_shape.bytes_per_token / 2**20, 2),
                    **{f"{k}_ms": round(1000 * statistics.median(v), 2) for k, v in times.items()},
                }
            )
    out["lengths"] = rows
    return out


def memory_ops(ops: int, size: int, budget: int) -> dict[str, object]:
    """Memory-manager calls made directly (no FUSE): the same write-then-read per block as the
    mount benchmark, and what eviction and reload cost under a small budget."""
    from kernel.memory import MemoryManager

    with tempfile.TemporaryDirectory() as tmp:
        mem = MemoryManager(Path(tmp), budget, budget)
        mem.ensure_agent("bench")
        data = b"m" * size
        start = time.perf_counter()
        for i in range(ops):
            mem.write_file("bench", f"b{i}", data)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(ops):
            mem.read_all("bench", f"b{i}")
        read_s = time.perf_counter() - start
        st = mem.stats["bench"]
        return {
            "ops": ops,
            "block_bytes": size,
            "budget_bytes": budget,
            "writes_per_s": round(ops / write_s, 1),
            "reads_per_s": round(ops / read_s, 1),
            "evictions": st.evictions,
            "reloads": st.loads,
            "evict_ms_avg": round(1000 * mem.evict_seconds / max(st.evictions, 1), 3),
            "reload_ms_avg": round(1000 * mem.load_seconds / max(st.loads, 1), 3),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--contexts",
        type=lambda s: [int(x) for x in s.split(",")],
        help="measure preemption costs at these context lengths",
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--memory", type=int, metavar="OPS", help="measure OPS memory-block writes")
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--budget", type=int, default=1 << 20)
    args = p.parse_args()
    if args.memory:
        print(json.dumps(memory_ops(args.memory, args.block, args.budget)))
    elif args.contexts:
        print(json.dumps(preemption_costs(args.model, args.threads, args.contexts, args.reps)))
    else:
        trio.run(serve, args.model, args.threads)


if __name__ == "__main__":
    main()
