"""Kernel-side measurements for ``aiosfs bench``.

``serve``: the kernel side of the FUSE-overhead benchmark — the same trivial syscall, called
directly. ``aiosfs bench`` alternates blocks of calls through the mount with blocks of calls here,
on the same model, so both see the same machine at the same time. Protocol: read a number N from
stdin, make N calls, print one JSON line with their latencies in seconds; repeat until stdin
closes. The first line printed is ``ready``.

``--memory OPS``: memory-manager writes and reads made directly, and eviction/reload costs.

``--contexts``: what preemption costs on a core (``--core``). For each context length, the time to
recompute the sequence's KV (chunked prefill, as the engine does), to snapshot it, to restore it
from RAM, to spill it to disk and to restore it from disk. Prints one JSON object.

``--agreement TOKENS``: the same fifty prompts answered greedily on the transformers core and on
the llama.cpp core (f16 and native weights), each alone; how many answers are identical.
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
    # a measurement kernel: nothing of an earlier run to restore
    kernel = Kernel(KernelConfig(model=model, threads=threads, journal=False))
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


def preemption_costs(
    model: str, threads: int, lengths: list[int], reps: int, core_name: str = "transformers"
) -> dict[str, object]:
    """What swapping a sequence out and back in costs on a core, against recomputing its KV."""
    import torch

    from kernel.llm.cores import make_core
    from kernel.llm.request import GenerationRequest
    from kernel.llm.sequence import Sequence
    from kernel.llm.swap import SwapManager

    config = KernelConfig().with_overrides(
        model=model, threads=threads, core=core_name, max_running=2,
        context=max(max(lengths) + 64, 2048),
    )  # fmt: skip
    core = make_core(model, config)
    core.load(lambda _msg: None)
    step = 256
    out: dict[str, object] = {"model": model, "core": core.info().get("core", core_name)}
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
                kv_bytes = disk.disk_bytes
                t = time.perf_counter()
                disk.restore(seq)
                times["restore_disk"].append(time.perf_counter() - t)
                if seq.kv is not None:
                    core.free_kv(seq.kv)
            rows.append(
                {
                    "tokens": n,
                    "kv_mb": round(kv_bytes / 2**20, 2),
                    **{f"{k}_ms": round(1000 * statistics.median(v), 2) for k, v in times.items()},
                }
            )
    out["lengths"] = rows
    return out


AGREEMENT_PROMPTS = (
    "What is the capital of France?",
    "What is the capital of Japan?",
    "Name three colours.",
    "What is 2+2?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet?",
    "Write a haiku about the sea.",
    "Give me a synonym for happy.",
    "What is water made of?",
    "How many days are in a week?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water?",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "What is the opposite of hot?",
    "Tell me a fun fact about cats.",
    "What language is spoken in Brazil?",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Suggest a name for a pet dog.",
    "What is the sun?",
    "Write one sentence about autumn.",
    "What is the square root of 16?",
    "Who painted the Mona Lisa?",
    "What is the tallest mountain?",
    "Name a musical instrument.",
    "What is the freezing point of water?",
    "Explain what a computer is.",
    "What is the main ingredient of bread?",
    "Give an example of a mammal.",
    "What colour is the sky on a clear day?",
    "Name a country in Africa.",
    "What is the chemical symbol for gold?",
    "How many continents are there?",
    "What is a triangle?",
    "Write a short greeting for a birthday card.",
    "What is the speed of light?",
    "Why do we sleep?",
    "What is democracy?",
    "Name a famous scientist.",
    "What does a doctor do?",
    "How do plants drink water?",
    "What is the moon?",
    "Give me a tip for studying.",
    "What is an ocean?",
    "Plan a 3-day trip from San Francisco to New York.",
    "What is gravity?",
    "Describe a rainbow.",
    "What is the capital of Italy?",
    "What is a verb?",
)
"""Fifty short instructions of the kind the embedded model answers, for ``--agreement``."""


async def _answers(config: KernelConfig, prompts: tuple[str, ...], tokens: int) -> list[str]:
    kernel = Kernel(config)
    await kernel.start()
    try:
        await kernel.wait_loaded()
        kernel.create_agent("agree")
        out = []
        for prompt in prompts:  # one at a time: each core's answer alone, no batch effects
            body = {"call": "llm", "prompt": prompt, "max_tokens": tokens, "temperature": 0}
            result = kernel.submit("agree", json.dumps(body).encode())
            await result.wait_finished()
            out.append(result.body().decode("utf-8", "replace"))
        return out
    finally:
        await kernel.shutdown()


def agreement(model: str, threads: int, tokens: int) -> dict[str, object]:
    """How many of the fifty prompts get the same greedy answer on the llama.cpp core (f16 and
    native weights) as on the transformers core (fp32), each run alone."""
    from kernel.llm.llamacpp import activations
    from kernel.llm.models import gguf_path, resolve_model

    results: dict[str, object] = {"model": model, "prompts": len(AGREEMENT_PROMPTS)}
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, settings in (
            ("transformers", {"core": "transformers"}),
            ("llamacpp-f16", {"core": "llamacpp", "gguf_weights": "f16"}),
            ("llamacpp-native", {"core": "llamacpp", "gguf_weights": "native"}),
        ):
            (Path(tmp) / label).mkdir()
            config = KernelConfig().with_overrides(
                model=model, threads=threads, data_dir=Path(tmp) / label, prefix_cache_mb=0,
                store_index=False, store_embedder="hashing", **settings,
            )  # fmt: skip
            answers[label] = trio.run(_answers, config, AGREEMENT_PROMPTS, tokens)
    base = answers["transformers"]
    # what "native" multiplied: 16-bit activations with aiosfs's llama.cpp patch, else 8-bit
    results["native_activations"] = activations(gguf_path(resolve_model(model)))
    for label in ("llamacpp-f16", "llamacpp-native"):
        same = [a == b for a, b in zip(answers[label], base, strict=True)]
        results[label] = {
            "identical": sum(same),
            "differing": [
                {"prompt": p, "transformers": b, label: a}
                for p, a, b, ok in zip(AGREEMENT_PROMPTS, answers[label], base, same, strict=True)
                if not ok
            ],
        }
    return results


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
    p.add_argument("--core", default="transformers", help="the core --contexts measures")
    p.add_argument(
        "--agreement", type=int, metavar="TOKENS", help="compare the cores' greedy answers"
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--memory", type=int, metavar="OPS", help="measure OPS memory-block writes")
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--budget", type=int, default=1 << 20)
    args = p.parse_args()
    if args.memory:
        print(json.dumps(memory_ops(args.memory, args.block, args.budget)))
    elif args.agreement:
        print(json.dumps(agreement(args.model, args.threads, args.agreement)))
    elif args.contexts:
        costs = preemption_costs(args.model, args.threads, args.contexts, args.reps, args.core)
        print(json.dumps(costs))
    else:
        trio.run(serve, args.model, args.threads)


if __name__ == "__main__":
    main()
