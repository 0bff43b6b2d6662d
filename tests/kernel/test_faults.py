"""Faults injected into the kernel's own parts, without a mount: the model failing in the middle
of a step, and the store's embedder failing. Each fault is real — the real core and the real
store run, and one call into them raises — and each test shows what the contract promises
then: the calls the fault hit end with a clear error, every other call is answered, nothing
hangs, and the part recovers (tests/fs/test_faults.py has the faults that need a mount)."""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio

from kernel import Kernel
from kernel.errors import NoSpace
from kernel.llm.core import LLMCore, SavedKV
from kernel.llm.models import Progress
from kernel.llm.sequence import KVCache, Sequence
from kernel.results import Result, ResultState
from kernel.store.embedders import HashingEmbedder
from tests.conftest import make_kernel
from tests.disks import fill, small_disk


class InjectedFault(RuntimeError):
    """What the faulty parts raise: a name no real failure has, so a test knows it saw its own."""


class FaultyCore(LLMCore):
    """The real tiny-random core behind a wrapper that raises once, from inside the engine's
    step: on the ``forward_fault``-th forward pass (the batch's one pass), or the
    ``decode_fault``-th decode (the detokenising of a sampled token, after the pass); or that
    holds every pass until ``gate`` opens.

    Everything else is the real core's, so the engine, its scheduler, the prefix cache and the
    KV are exercised as they are in production. ``steps`` keeps the agents of each forward pass,
    so a test knows exactly which calls shared the failing step."""

    def __init__(
        self,
        inner: LLMCore,
        forward_fault: int = 0,
        decode_fault: int = 0,
        gate: threading.Event | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_sequences = inner.max_sequences
        self.forward_fault = forward_fault
        self.decode_fault = decode_fault
        self.gate = gate  # while it is closed, every forward pass waits (a test's moment)
        self.forwards = 0
        self.decodes = 0
        self.steps: list[set[str]] = []
        self.failed_step: set[str] = set()

    def load(self, progress: Progress) -> None:
        self.inner.load(progress)
        self.max_context = self.inner.max_context
        self.eos_ids = self.inner.eos_ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.inner.encode_chat(messages)

    def decode(self, ids: list[int]) -> str:
        self.decodes += 1
        if self.decodes == self.decode_fault:
            raise InjectedFault(f"decode {self.decodes} failed on purpose")
        return self.inner.decode(ids)

    def forward(self, feeds: list[tuple[Sequence, int]]) -> torch.Tensor:
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        self.forwards += 1
        agents = {seq.agent for seq, _ in feeds}
        self.steps.append(agents)
        if self.forwards == self.forward_fault:
            self.failed_step = agents
            raise InjectedFault(f"forward pass {self.forwards} failed on purpose")
        return self.inner.forward(feeds)

    def save_kv(self, kv: KVCache) -> SavedKV:
        return self.inner.save_kv(kv)

    def load_kv(self, saved: SavedKV, n: int) -> KVCache:
        return self.inner.load_kv(saved, n)

    def free_kv(self, kv: KVCache) -> None:
        self.inner.free_kv(kv)

    def info(self) -> dict[str, Any]:
        return self.inner.info()

    def grammar_vocab(self) -> tuple[str, int]:
        return self.inner.grammar_vocab()


def llm(prompt: str, max_tokens: int) -> bytes:
    return json.dumps({"call": "llm", "prompt": prompt, "max_tokens": max_tokens}).encode()


async def started(core: LLMCore) -> Kernel:
    k = make_kernel(core, audit=False)
    await k.start()
    await k.wait_loaded()
    return k


async def answers(kernel: Kernel, calls: dict[str, bytes]) -> dict[str, Result]:
    """Submit one call per agent, all before the engine's next step, and wait for all of them
    (a hang fails the test rather than the run)."""
    results: dict[str, Result] = {}
    for agent, body in calls.items():
        if agent not in kernel.agents:
            kernel.create_agent(agent)
        results[agent] = kernel.submit(agent, body)
    with trio.fail_after(30):
        for agent, result in results.items():
            await kernel.wait_result(kernel.agents[agent], result)
    return results


def assert_failed_by_the_fault(result: Result) -> None:
    assert result.state is ResultState.FAILED, result.meta()
    assert result.errno == errno.EIO
    assert result.error is not None and "engine error" in result.error
    assert "failed on purpose" in result.error  # the reason reaches the reader
    assert result.body().decode().rstrip("\n").endswith(f"error: {result.error}")


async def test_a_forward_pass_that_raises_fails_its_step_and_the_engine_goes_on(
    tiny_core: LLMCore, caplog: pytest.LogCaptureFixture
) -> None:
    # a takes one token and is done after the first pass; b and c are still decoding at the
    # third, which fails
    core = FaultyCore(tiny_core, forward_fault=3)
    k = await started(core)
    try:
        first = await answers(k, {"a": llm("one", 1), "b": llm("two", 8), "c": llm("three", 8)})
        assert core.failed_step, "the third pass never ran"
        assert "a" not in core.failed_step  # the fault hit only calls still running
        for agent, result in first.items():
            if agent in core.failed_step:
                assert_failed_by_the_fault(result)
            else:
                assert result.state is ResultState.DONE, result.meta()
        assert any("engine step failed" in r.getMessage() for r in caplog.records)
        # the engine carries on: every later call, on the same agents too, is answered
        later = await answers(k, {name: llm(f"again {name}", 4) for name in ("a", "b", "c", "d")})
        assert all(r.state is ResultState.DONE for r in later.values()), [
            r.meta() for r in later.values()
        ]
        assert all(r.tokens_out == 4 or r.finish_reason == "stop" for r in later.values())
        assert k.engines["tiny-random"].info()["state"] == "ready"
        assert not k._inflight  # nothing left behind in the kernel's table
    finally:
        await k.shutdown()


async def test_a_call_whose_token_cannot_be_detokenised_fails_alone(tiny_core: LLMCore) -> None:
    # The third detokenising raises: the pass has run and the sampler has picked the tokens, so
    # the failure is in the engine's work after the pass, on one sequence's row. a and b share
    # every step; whichever the fault hit fails, the other is answered in full.
    core = FaultyCore(tiny_core, decode_fault=3)
    k = await started(core)
    try:
        first = await answers(k, {"a": llm("one", 8), "b": llm("two", 8)})
        assert core.decodes >= 3, "the third decode never ran"
        failed = [r for r in first.values() if r.state is ResultState.FAILED]
        done = [r for r in first.values() if r.state is ResultState.DONE]
        assert len(failed) == 1 and len(done) == 1, [r.meta() for r in first.values()]
        assert_failed_by_the_fault(failed[0])
        assert done[0].tokens_out == 8 or done[0].finish_reason == "stop"
        later = await answers(k, {"a": llm("three", 4), "b": llm("four", 4)})
        assert all(r.state is ResultState.DONE for r in later.values()), [
            r.meta() for r in later.values()
        ]
    finally:
        await k.shutdown()


class FlakyEmbedder(HashingEmbedder):
    """The model-free embedder, broken while ``broken`` is set: what a model that fails to load
    or crashes on its input looks like to the store."""

    def __init__(self) -> None:
        self.broken = threading.Event()
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.broken.is_set():
            raise InjectedFault("the embedding model failed on purpose")
        return super().embed(texts)


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for state another thread settles (the indexer's)."""
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{what} did not happen within {timeout} s")


async def call(kernel: Kernel, agent: str, **fields: object) -> Result:
    result = kernel.submit(agent, json.dumps(fields).encode())
    with trio.fail_after(30):
        await kernel.wait_result(kernel.agents[agent], result)
    return result


async def test_a_failing_embedder_loses_no_write_is_reported_and_indexing_recovers(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kernel.store.index")
    store = kernel.storage
    flaky = FlakyEmbedder()
    store.embedder = flaky
    kernel.create_agent("w")
    kernel.update_config("w", b'{"capabilities": {"store_write": ["/"]}}')
    first = await call(kernel, "w", call="store_write", path="penguin.txt", content="Penguins.")
    assert first.state is ResultState.DONE
    await eventually(lambda: store.pending() == 0, 15, "the first file to be indexed")

    flaky.broken.set()  # the model breaks
    text = "Walruses sleep on the ice floes of the Arctic."
    wrote = await call(kernel, "w", call="store_write", path="notes/walrus.txt", content=text)
    assert wrote.state is ResultState.DONE, wrote.meta()  # the write does not wait for the index
    read = await call(kernel, "w", call="store_read", path="notes/walrus.txt")
    assert read.body().decode().rstrip("\n") == text
    # the passages are in the full-text index at once: grep works while the model is down
    await eventually(lambda: bool(store.grep("walruses")), 10, "grep finds the file")
    await eventually(lambda: bool(store.info()["index_error"]), 10, "the indexer to fail")

    # the failure is reported: in sys/store (the kernel's status), and in the log
    info = kernel.status()["store"]
    assert info["pending_index"] == 1 and info["chunks_to_embed"] == 1
    failure = info["index_error"]
    assert failure["phase"] == "embed" and failure["failures"] >= 1
    assert "failed on purpose" in failure["message"]
    assert any(
        r.levelno >= logging.ERROR and "store indexing (embed) failed" in r.getMessage()
        for r in caplog.records
    )
    # search by meaning needs the model for the query too: a clear error, not an internal one
    searched = await call(kernel, "w", call="store_search", query="penguins")
    assert searched.state is ResultState.FAILED and searched.errno == errno.EIO, searched.meta()
    assert searched.error is not None
    assert "search by meaning is unavailable: the embedder failed" in searched.error
    # a later write is kept as well, and waits its turn in the index
    again = await call(kernel, "w", call="store_write", path="notes/seal.txt", content="Seals.")
    assert again.state is ResultState.DONE

    flaky.broken.clear()  # the model works again: the retry picks everything up
    await eventually(lambda: store.pending() == 0, 15, "both files to be indexed")
    assert kernel.status()["store"]["index_error"] is None
    found = await call(kernel, "w", call="store_search", query="walruses sleep on ice", k=1)
    assert found.state is ResultState.DONE
    assert json.loads(found.body().decode().splitlines()[0])["path"] == "notes/walrus.txt"
    assert any("store indexing (embed) works again" in r.getMessage() for r in caplog.records)


async def test_a_result_finished_on_a_full_disk_is_delivered_once_across_a_restart(
    tiny_core: LLMCore, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "data") as data:
        gate = threading.Event()  # the answer cannot finish before the disk is full
        first = make_kernel(FaultyCore(tiny_core, gate=gate), data_dir=str(data), audit=False)
        await first.start()
        await first.wait_loaded()
        try:
            agent = first.create_agent("a")
            result = first.submit("a", llm("one", 8))
            await first.durable()  # accepted: its close would return now
            fill(data / "filler")
            gate.set()
            with trio.fail_after(30):  # it finishes while the journal cannot commit
                await first.wait_result(agent, result)
            with pytest.raises(NoSpace):  # and the commit of its result has failed
                await first.durable()
            (data / "filler").unlink()
            delivered = await first.next_out(agent)  # out hands it over, durably
            await first.durable()
            assert delivered is result
            # what a restart after kill -9 finds (tests/kernel/test_journal.py, "crash")
            second = make_kernel(tiny_core, data_dir=str(data), audit=False)
            await second.start()
            try:
                again = second.agents["a"]
                assert again.next_undelivered() is None  # out has nothing more to give
            finally:
                await second.shutdown()
        finally:
            gate.set()
            await first.shutdown()
