"""A request's greedy output is the same token for token whether it ran alone, in a batch of 32,
or was preempted, snapshotted (in RAM or on disk) and resumed — and whether or not its prompt
prefix came from the prefix cache."""

from __future__ import annotations

import json
from pathlib import Path

from kernel import Kernel
from kernel.llm.core import LLMCore
from tests.conftest import make_kernel

PROMPTS = [f"Question {i}: tell me about the number {i} and why it matters." for i in range(32)]


def body(prompt: str, tokens: int = 24) -> bytes:
    return json.dumps(
        {"call": "llm", "prompt": prompt, "max_tokens": tokens, "repetition_penalty": 1.0}
    ).encode()


async def answers(k: Kernel, one_at_a_time: bool = False) -> list[bytes]:
    await k.start()
    await k.wait_loaded()
    k.create_agent("a")
    if one_at_a_time:
        out = []
        for p in PROMPTS:
            r = k.submit("a", body(p))
            await r.wait_finished()
            out.append(r.body())
        return out
    results = [k.submit("a", body(p)) for p in PROMPTS]
    for r in results:
        await r.wait_finished()
    return [r.body() for r in results]


async def run(
    core: LLMCore, one_at_a_time: bool = False, **config: object
) -> tuple[list[bytes], dict]:
    # each run starts from nothing: no journal of an earlier run's agent to restore
    k = make_kernel(core, model=core.name, prefix_cache_mb=0, journal=False, **config)
    try:
        out = await answers(k, one_at_a_time)
        engine = k.engines[core.name]
        return out, {**engine.info(), **engine.kv_info}
    finally:
        await k.shutdown()


async def test_alone_batched_and_preempted_agree(tiny_core: LLMCore, tmp_path: Path) -> None:
    alone, _ = await run(tiny_core, one_at_a_time=True, max_running=1)
    batched, info = await run(tiny_core, max_running=32)
    assert info["mean_batch"] > 16  # they really ran together
    assert batched == alone
    preempted, info = await run(
        tiny_core, scheduler="rr", max_running=4, quantum=3, data_dir=tmp_path
    )
    assert info["contexts"]["snapshots"] > 50 and info["contexts"]["restores"] > 50
    assert preempted == alone


async def test_contexts_spilled_to_disk_resume_exactly(tiny_core: LLMCore, tmp_path: Path) -> None:
    alone, _ = await run(tiny_core, one_at_a_time=True, max_running=1)
    spilled, info = await run(
        tiny_core, scheduler="rr", max_running=4, quantum=3, context_mb=0, data_dir=tmp_path
    )
    ctx = info["contexts"]
    assert ctx["spills"] > 50 and ctx["drops"] == 0
    assert ctx["ram_bytes"] == 0 and ctx["disk_bytes"] == 0  # all restored and cleaned up
    assert spilled == alone
    assert not list((tmp_path / "swap").rglob("*.kv"))


async def test_contexts_that_cannot_be_spilled_are_recomputed(
    tiny_core: LLMCore, tmp_path: Path
) -> None:
    (tmp_path / "swap").write_text("a file where the swap directory should be")
    out, info = await run(
        tiny_core, scheduler="rr", max_running=4, quantum=3, context_mb=0, data_dir=tmp_path
    )
    assert info["contexts"]["drops"] > 0
    assert all(b.endswith(b"\n") and b"error" not in b for b in out)


async def two_turns(
    core: LLMCore, prefix_mb: int, questions: tuple[str, str], max_tokens: int
) -> tuple[list[bytes], list[int]]:
    """One agent's two chat turns on a fresh kernel: the answers and each turn's tokens_cached."""
    k = make_kernel(core, model=core.name, prefix_cache_mb=prefix_mb)
    await k.start()
    try:
        k.create_agent("a")
        k.update_config("a", f"max_tokens={max_tokens}\nrepetition_penalty=1.0".encode())
        bodies, cached = [], []
        for q in questions:
            r = k.submit("a", q.encode())
            await r.wait_finished()
            bodies.append(r.body())
            cached.append(r.tokens_cached)
        return bodies, cached
    finally:
        await k.shutdown()


async def prefix_reuse_changes_nothing(
    core: LLMCore, questions: tuple[str, str], max_tokens: int
) -> None:
    """The second turn starts from the first's KV in the prefix cache, and its answer is the
    one computed without the cache (one sequence at a time, so exact on every core)."""
    with_cache, cached = await two_turns(core, 256, questions, max_tokens)
    without, no_cache = await two_turns(core, 0, questions, max_tokens)
    assert cached[0] == 0 and cached[1] > 30  # the second turn started from the first's KV
    assert no_cache == [0, 0]
    assert with_cache == without


async def test_prefix_cache_reuses_the_previous_turn(tiny_core: LLMCore) -> None:
    questions = ("first question about the sea", "and a second one about ships")
    await prefix_reuse_changes_nothing(tiny_core, questions, 12)
