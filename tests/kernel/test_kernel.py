"""The kernel facade on the tiny random model, without any filesystem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from kernel import Kernel, KernelConfig
from kernel.errors import (
    AgentRemoved,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ShuttingDown,
    WouldBlock,
)
from kernel.llm.core import LLMCore
from kernel.results import ResultState
from tests.conftest import make_kernel


def llm(prompt: str, max_tokens: int = 4, **extra: object) -> bytes:
    return json.dumps({"call": "llm", "prompt": prompt, "max_tokens": max_tokens, **extra}).encode()


async def test_submit_and_finish(kernel: Kernel) -> None:
    kernel.create_agent("a", uid=1000, gid=1000)
    result = kernel.submit("a", llm("hello", 5))
    await result.wait_finished()
    assert result.state is ResultState.DONE
    assert result.tokens_out == 5 and result.tokens_in > 0
    assert result.body().endswith(b"\n") and len(result.body()) > 1
    meta = result.meta()
    assert meta["finish_reason"] == "length" and meta["latency_s"] > 0
    status = kernel.agent("a").status()
    assert status["done"] == 1 and status["uid"] == 1000 and status["tokens_out"] == 5


async def test_agent_names_and_duplicates(kernel: Kernel) -> None:
    kernel.create_agent("ok.name-1_x")
    with pytest.raises(AlreadyExists):
        kernel.create_agent("ok.name-1_x")
    for bad in ("", ".", "..", "a/b", "a b", "x" * 65, "é"):
        with pytest.raises(InvalidArgument):
            kernel.create_agent(bad)
    with pytest.raises(NotFound):
        kernel.submit("nobody", b"hi")


async def test_out_is_fifo_even_when_a_younger_result_finishes_first(kernel: Kernel) -> None:
    kernel.create_agent("a")
    first = kernel.submit("a", llm("long", 40))
    second = kernel.submit("a", llm("short", 1))
    await second.wait_finished()
    assert not first.finished
    got = await kernel.next_out(kernel.agent("a"))
    assert got is first
    assert (await kernel.next_out(kernel.agent("a"))) is second


async def test_concurrent_out_readers_each_get_their_own_result_in_order(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    got: list[int] = []

    async def reader() -> None:
        got.append((await kernel.next_out(agent)).id)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
            await trio.sleep(0)  # readers queue in this order
        await trio.sleep(0.05)
        for i in range(5):
            kernel.submit("a", llm(f"q{i}", 2))
    assert got == [1, 2, 3, 4, 5]


async def test_nonblocking_out(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    with pytest.raises(WouldBlock):
        await kernel.next_out(agent, nonblocking=True)
    r = kernel.submit("a", llm("x", 1))
    await r.wait_finished()
    assert (await kernel.next_out(agent, nonblocking=True)) is r


async def test_chat_turns_run_one_after_another_and_build_history(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    kernel.update_config("a", b"max_tokens=3")
    r1 = kernel.submit("a", b"first question")
    r2 = kernel.submit("a", b"second question")
    assert r2.state is ResultState.QUEUED and agent.chat_backlog  # waits for r1
    await r2.wait_finished()
    assert r1.finished_at is not None and r2.started is not None
    assert r1.finished_at <= r2.started
    assert r2.tokens_in > r1.tokens_in  # the second prompt carries the first turn
    history = [m.as_dict() for m in agent.conversation.messages]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[0]["content"] == "first question"
    assert history[1]["content"] == r1.body().decode().rstrip("\n")


async def test_stateless_calls_leave_history_alone(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    r = kernel.submit("a", llm("x", 2))
    await r.wait_finished()
    assert agent.conversation.messages == []
    r = kernel.submit("a", llm("y", 2, chat=True))
    await r.wait_finished()
    assert agent.conversation.turns == 1


async def test_reset_during_a_turn_keeps_the_new_history_clean(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    kernel.update_config("a", b"max_tokens=60")
    r = kernel.submit("a", b"question")
    kernel.reset_history("a")
    await r.wait_finished()
    assert r.ok and agent.conversation.messages == []


async def test_invalid_syscall_raises_and_leaves_an_error_result(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    with pytest.raises(InvalidArgument) as e:
        kernel.submit("a", b'{"call": "llm", "prompt": 1}')
    failed = e.value.result  # type: ignore[attr-defined]
    assert failed.state is ResultState.FAILED and failed.errno == 22
    got = await kernel.next_out(agent)
    assert got is failed
    assert got.body() == b'error: field "prompt" must be a string, not 1\n'
    assert agent.status()["last_error"]["errno"] == 22
    assert kernel.stats()["syscalls"]["invalid"] == 1


async def test_cancel_stops_running_and_queued_work(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    kernel.update_config("a", b"max_tokens=2000")
    running = kernel.submit("a", b"go on forever")
    queued = kernel.submit("a", b"and then this")
    while running.state is not ResultState.RUNNING:
        await running.changed.wait()
    assert kernel.cancel("a") == 2
    for r in (running, queued):
        assert r.state is ResultState.CANCELLED and r.body().endswith(b"error: cancelled\n")
    with trio.fail_after(10):
        while kernel.queue_info()["tiny-random"]["running"]:
            await trio.sleep(0.01)
    assert agent.status()["cancelled"] == 2 and agent.conversation.messages == []


async def test_remove_agent_wakes_waiting_readers(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    kernel.update_config("a", b"max_tokens=2000")
    r = kernel.submit("a", b"long")
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await kernel.next_out(agent)
        except AgentRemoved as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        kernel.remove_agent("a")
    assert len(errors) == 1
    with pytest.raises(AgentRemoved):
        await kernel.next_out(agent)
    assert r.state is ResultState.CANCELLED and "a" not in kernel.agents


async def test_shutdown_fails_unfinished_work_and_wakes_readers(tiny_core: LLMCore) -> None:
    k = make_kernel(tiny_core)
    await k.start()
    await k.wait_loaded()
    agent = k.create_agent("a")
    k.update_config("a", b"max_tokens=2000")
    r = k.submit("a", b"long")
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await k.next_out(k.create_agent("b"))
        except ShuttingDown as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        await k.shutdown()
    assert len(errors) == 1
    assert r.state is ResultState.FAILED and b"kernel shutting down" in r.body()
    with pytest.raises(ShuttingDown):
        k.submit("a", b"late")
    assert agent.removed is False


async def test_reserved_results_are_skipped_by_out_until_unreserved(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    mine = kernel.submit("a", llm("txn", 1), reserved=True)
    other = kernel.submit("a", llm("plain", 1))
    await mine.wait_finished()
    await other.wait_finished()
    assert (await kernel.next_out(agent)) is other
    with pytest.raises(WouldBlock):
        await kernel.next_out(agent, nonblocking=True)
    agent.unreserve(mine)
    assert (await kernel.next_out(agent)) is mine


async def test_results_are_kept_up_to_the_bound(tiny_core: LLMCore) -> None:
    k = make_kernel(tiny_core, results_keep=3)
    await k.start()
    agent = k.create_agent("a")
    for i in range(5):
        await (k.submit("a", llm(str(i), 1))).wait_finished()
    assert sorted(agent.results) == [3, 4, 5]
    await k.shutdown()


async def test_config_rejects_unknown_model_and_changes_nothing(kernel: Kernel) -> None:
    agent = kernel.create_agent("a")
    before = agent.config
    with pytest.raises(InvalidArgument, match="model 'gpt-9' is not loaded; loaded: tiny-random"):
        kernel.update_config("a", b"max_tokens=5\nmodel=gpt-9")
    assert agent.config == before
    kernel.update_config("a", b'{"model": "tiny-random", "priority": 3}')
    assert agent.config.priority == 3 and agent.config.model == "tiny-random"


async def test_greedy_output_is_the_same_alone_and_among_others(kernel: Kernel) -> None:
    kernel.create_agent("a")
    alone = kernel.submit("a", llm("The same prompt", 12))
    await alone.wait_finished()
    crowd = [kernel.submit("a", llm(f"other prompt {i}", 12)) for i in range(6)]
    again = kernel.submit("a", llm("The same prompt", 12))
    crowd += [kernel.submit("a", llm(f"more {i}", 12)) for i in range(6)]
    await again.wait_finished()
    assert again.body() == alone.body()


async def test_seeded_sampling_is_reproducible(kernel: Kernel) -> None:
    kernel.create_agent("a")
    a = kernel.submit("a", llm("x", 10, temperature=1.0, seed=7))
    b = kernel.submit("a", llm("x", 10, temperature=1.0, seed=7))
    await a.wait_finished()
    await b.wait_finished()
    assert a.body() == b.body()


async def test_prompt_longer_than_the_context_fails_clearly(kernel: Kernel) -> None:
    kernel.create_agent("a")
    r = kernel.submit("a", llm("word " * 3000, 4))
    await r.wait_finished()
    assert r.state is ResultState.FAILED
    assert "model tiny-random has a context of 2048" in (r.error or "")


async def test_old_turns_are_dropped_to_fit_the_context(kernel: Kernel) -> None:
    kernel.create_agent("a")
    kernel.replace_history(
        "a",
        b"".join(
            json.dumps({"role": role, "content": "blah " * 300}).encode() + b"\n"
            for _ in range(6)
            for role in ("user", "assistant")
        ),
    )
    kernel.update_config("a", b"max_tokens=4")
    r = kernel.submit("a", b"still there?")
    await r.wait_finished()
    assert r.ok and r.tokens_in < 2048


class BrokenCore:
    """A core whose model cannot be loaded."""

    name = "broken"
    max_context = 0
    eos_ids = frozenset()

    def load(self, progress: object) -> None:
        raise OSError("weights missing")

    def info(self) -> dict[str, object]:
        return {"name": self.name}


async def test_a_model_that_fails_to_load_fails_its_requests(tmp_path: Path) -> None:
    config = KernelConfig(model="broken", data_dir=tmp_path, store_embedder="hashing")
    k = Kernel(config, lambda _n, _c: BrokenCore())
    await k.start()
    await k.wait_loaded()
    assert k.models_info()["broken"]["state"] == "failed"
    k.create_agent("a")
    r = k.submit("a", b"hi")
    await r.wait_finished()
    assert r.state is ResultState.FAILED
    assert "model broken failed to load: OSError: weights missing" in (r.error or "")
    await k.shutdown()
