"""Policies on the real engine (tiny model): they behave visibly differently, switch live, and
cancellation frees what a sequence held."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from kernel import Kernel
from kernel.llm.core import LLMCore
from kernel.results import Result
from tests.conftest import make_kernel


def llm(prompt: str, tokens: int) -> bytes:
    return json.dumps({"call": "llm", "prompt": prompt, "max_tokens": tokens}).encode()


async def started(k: Kernel, **config: object) -> Kernel:
    await k.start()
    await k.wait_loaded()
    return k


async def flood_then_modest(core: LLMCore, policy: str) -> tuple[list[Result], list[Result]]:
    k = await started(make_kernel(core, scheduler=policy, max_running=4, quantum=4))
    try:
        for name in ("flood", "m1", "m2", "m3"):
            k.create_agent(name)
        flood = [k.submit("flood", llm(f"f{i}", 120)) for i in range(8)]
        await trio.sleep(0.05)
        modest = [k.submit(m, llm(m, 20)) for m in ("m1", "m2", "m3")]
        for r in flood + modest:
            await r.wait_finished()
        return flood, modest
    finally:
        await k.shutdown()


async def test_fair_serves_modest_agents_while_fifo_makes_them_wait(tiny_core: LLMCore) -> None:
    flood, modest = await flood_then_modest(tiny_core, "fifo")
    first_flood_done = min(r.finished_at for r in flood)
    assert all(r.started >= first_flood_done for r in modest)  # queued behind the flood
    flood, modest = await flood_then_modest(tiny_core, "fair")
    first_flood_done = min(r.finished_at for r in flood)
    assert all(r.finished_at < first_flood_done for r in modest)  # served alongside it


async def test_priority_preempts_for_an_urgent_agent(tiny_core: LLMCore) -> None:
    k = await started(make_kernel(tiny_core, scheduler="priority", max_running=2))
    try:
        k.create_agent("low")
        k.create_agent("vip")
        k.update_config("vip", b"priority=10")
        slow = [k.submit("low", llm(f"l{i}", 300)) for i in range(2)]
        while not all(r.tokens_out > 5 for r in slow):
            await trio.sleep(0.01)
        urgent = k.submit("vip", llm("now", 10))
        await urgent.wait_finished()
        assert not any(r.finished for r in slow)
        assert k.stats()["preemptions"] >= 1
        assert k.agent_status("low")["scheduling"]["preemptions"] >= 1
    finally:
        await k.shutdown()


async def test_policy_switches_live(tiny_core: LLMCore) -> None:
    k = await started(make_kernel(tiny_core, scheduler="fifo", max_running=2, quantum=4))
    try:
        k.create_agent("a")
        results = [k.submit("a", llm(f"q{i}", 200)) for i in range(5)]
        await trio.sleep(0.05)
        assert k.queue_info()["tiny-random"]["policy"] == "fifo"
        k.set_scheduler("rr")
        with trio.fail_after(20):
            while k.stats()["preemptions"] == 0:
                await trio.sleep(0.01)
        assert k.queue_info()["tiny-random"]["policy"] == "rr"
        for r in results:
            await r.wait_finished()
        assert all(r.ok and r.tokens_out == 200 for r in results)
    finally:
        await k.shutdown()


async def test_cancel_frees_running_and_saved_contexts(tiny_core: LLMCore, tmp_path: Path) -> None:
    k = await started(
        make_kernel(tiny_core, scheduler="rr", max_running=2, quantum=3, data_dir=tmp_path)
    )
    try:
        k.create_agent("a")
        for i in range(6):
            k.submit("a", llm(f"q{i}", 500))
        with trio.fail_after(20):
            while k.context_info()["tiny-random"]["contexts"].get("saved", 0) == 0:
                await trio.sleep(0.01)
        assert k.cancel("a") == 6
        with trio.fail_after(20):
            while True:
                q = k.queue_info()["tiny-random"]
                ctx = k.context_info()["tiny-random"]["contexts"]
                if not q["running"] and not q["waiting"] and ctx["saved"] == 0:
                    break
                await trio.sleep(0.01)
        assert ctx["ram_bytes"] == 0 and ctx["disk_bytes"] == 0
    finally:
        await k.shutdown()


async def test_agent_status_shows_position_and_service(tiny_core: LLMCore) -> None:
    k = await started(make_kernel(tiny_core, max_running=1))
    try:
        k.create_agent("first")
        k.create_agent("second")
        a = k.submit("first", llm("x", 300))
        b = k.submit("second", llm("y", 5))
        with trio.fail_after(10):
            while k.agent_status("second")["scheduling"]["position"] != 0:
                await trio.sleep(0.01)
        assert k.agent_status("first")["scheduling"]["running"] == 1
        await a.wait_finished()
        await b.wait_finished()
        with trio.fail_after(10):
            while k.agent_status("second")["scheduling"]["service_tokens"] < 5:
                await trio.sleep(0.01)
        first = k.agent_status("first")["scheduling"]
        assert first["service_tokens"] == 300 and first["share"] > 0.9
    finally:
        await k.shutdown()
