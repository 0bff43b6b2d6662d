"""Remote models against real llama.cpp servers on loopback, driven through the kernel facade:
streaming and the server's token counts, cancellation the server sees, the in-flight limit,
the policy's share when the server is the bottleneck, preemption by text snapshot, failover
when a server is killed with ``kill -9`` mid-answer, 429 and 5xx answers with their
``Retry-After``, keys, structured output, tool rounds held to the step schema and as the
server's own tools and tool calls, and a reload that adds and removes models.

Every answer is greedy on the same weights. An answer preempted into pieces, or moved to another
server halfway, must start exactly as the answer given in one piece and keep its length; after
the point where it resumed it may differ, because the server recomputes the partial answer's
keys and values as a prompt, with its batched kernels, where it first computed them one token
at a time (the near-ties of docs/design.md, "Two cores"), so it is not compared there."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

from aiosfs.bench import llama_server as ls
from kernel import Kernel
from kernel.config import KernelConfig
from kernel.llm.core import LLMCore
from kernel.llm.remote import parse_models
from kernel.results import Result, ResultState
from tests.conftest import make_kernel
from tests.remote.servers import (
    TOOL_TEMPLATE,
    Proxy,
    Refusal,
    base_url,
    processing,
    server,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

CAPITAL = "What is the capital of France?"
STORY = "Write a long story about a lighthouse keeper and the sea."
QUESTIONS = [CAPITAL, "Count to five.", "Name three colours.", "What is two plus two?"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ls.Server]:
    with server(tmp_path_factory.mktemp("llama") / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def tool_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ls.Server]:
    """llama-server with a chat template that gives SmolLM2 a tool-call format (TOOL_TEMPLATE)."""
    log = tmp_path_factory.mktemp("llama-tools") / "server.log"
    with server(log, slots=2, extra=["--chat-template-file", str(TOOL_TEMPLATE)]) as s:
        yield s


def table(*urls: str, **settings: Any) -> dict[str, Any]:
    return {"kind": "openai", "model": "smollm2", "endpoints": list(urls), **settings}


@contextlib.asynccontextmanager
async def remote_kernel(
    core: LLMCore, models: dict[str, dict[str, Any]], **config: Any
) -> AsyncIterator[Kernel]:
    k = make_kernel(core, models=parse_models(models), **config)
    await k.start()
    await k.wait_loaded()
    try:
        yield k
    finally:
        await k.shutdown()


def llm(prompt: str, max_tokens: int, **extra: Any) -> bytes:
    return json.dumps({"call": "llm", "prompt": prompt, "max_tokens": max_tokens, **extra}).encode()


def agent(k: Kernel, name: str, model: str = "remote", **config: Any) -> str:
    k.create_agent(name)
    k.update_config(name, json.dumps({"model": model, **config}).encode())
    return name


async def answer(k: Kernel, name: str, prompt: str, max_tokens: int = 24, **extra: Any) -> Result:
    result = k.submit(name, llm(prompt, max_tokens, **extra))
    await result.wait_finished()
    return result


def text(result: Result) -> str:
    assert result.state is ResultState.DONE, result.meta()
    return result.body().decode().rstrip("\n")


def resumed_whole(got: Result, ref: str, n: int) -> None:
    """``got`` is one answer of ``n`` tokens that begins as ``ref`` does and repeats nothing of
    what came before its resumption (the server's echo of the prefix was dropped)."""
    answer = text(got)
    assert answer[:24] == ref[:24], (answer, ref)
    assert answer.count(ref[:24]) == 1, answer
    assert got.meta()["finish_reason"] == "length" and abs(got.tokens_out - n) <= 2


async def until(predicate: Any, timeout: float = 20.0, what: str = "the condition") -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def reference(core: LLMCore, srv: ls.Server, prompts: list[str], n: int) -> list[str]:
    """Each prompt's answer in one piece: one agent at a time, nothing preempted."""
    async with remote_kernel(core, {"remote": table(base_url(srv))}) as k:
        return [text(await answer(k, agent(k, f"ref{i}"), p, n)) for i, p in enumerate(prompts)]


async def test_an_answer_streams_with_the_servers_counts(
    tiny_core: LLMCore, srv: ls.Server
) -> None:
    async with remote_kernel(tiny_core, {"remote": table(base_url(srv))}) as k:
        name = agent(k, "geo")
        result = await answer(k, name, CAPITAL, 16)
        assert "Paris" in text(result)
        assert 0 < result.tokens_out <= 16 and result.tokens_in > 10
        assert result.meta()["model"] == "remote"
        info = k.models_info()["remote"]
        assert info["remote"] and info["state"] == "ready" and info["healthy"]
        assert info["requests"] == info["finished"] == 1 and info["errors"] == 0
        assert info["tokens_generated"] == result.tokens_out
        (ep,) = info["endpoints"]
        assert ep["url"] == base_url(srv) and ep["requests"] == 1 and ep["ttft_s"] > 0
        # the local model is still there, and the default
        assert k.models_info()["tiny-random"]["default"] is True
        status = k.agent_status(name)
        assert status["scheduling"]["model"] == "remote"
        assert status["scheduling"]["service_tokens"] == 16 or result.tokens_out < 16


async def test_cancelling_ends_the_request_at_the_server(
    tiny_core: LLMCore, srv: ls.Server
) -> None:
    async with remote_kernel(tiny_core, {"remote": table(base_url(srv))}) as k:
        name = agent(k, "teller")
        result = k.submit(name, llm(STORY, 400))
        await until(lambda: len(result.data) > 20, what="the story to start")
        assert await trio.to_thread.run_sync(processing, srv) == 1
        assert k.cancel(name) == 1
        assert result.state is ResultState.CANCELLED
        # the stream's connection closed: the server stops generating and frees the slot
        await trio.to_thread.run_sync(
            lambda: wait_for(lambda: processing(srv) == 0, 10, "the server to stop")
        )
        assert k.models_info()["remote"]["in_flight"] == 0


async def test_the_in_flight_limit_holds(tiny_core: LLMCore, srv: ls.Server) -> None:
    seen: list[int] = []
    async with remote_kernel(tiny_core, {"remote": table(base_url(srv), max_in_flight=2)}) as k:
        names = [agent(k, f"a{i}") for i in range(6)]
        results = [k.submit(n, llm(QUESTIONS[i % 4], 24)) for i, n in enumerate(names)]
        while not all(r.finished for r in results):
            seen.append(await trio.to_thread.run_sync(processing, srv))
            assert len(k.queue_info()["remote"]["running"]) <= 2
            await trio.sleep(0.03)
        assert all(r.state is ResultState.DONE for r in results)
    assert max(seen) == 2  # the server has 4 slots; the kernel sent 2 at a time


async def test_fair_shares_a_bottleneck_server_and_preempted_answers_stay_whole(
    tiny_core: LLMCore, srv: ls.Server
) -> None:
    """One place at the server; a flooder's four requests, then a modest agent's one. Under
    fifo the modest request waits for all four; under fair it gets in after a quantum, and the
    flooder's preempted answer resumes from its text: the same answer as in one piece."""
    ref = await reference(tiny_core, srv, [STORY], 48)

    async def run(policy: str) -> tuple[list[Result], Result]:
        decl = {"remote": table(base_url(srv), max_in_flight=1)}
        async with remote_kernel(tiny_core, decl, scheduler=policy, quantum=8) as k:
            flood = agent(k, "flood")
            floods = [k.submit(flood, llm(STORY, 48)) for _ in range(4)]
            await until(lambda: len(floods[0].data) > 0, what="the flood to start")
            modest = k.submit(agent(k, "modest"), llm(CAPITAL, 12))
            with trio.fail_after(120):
                for r in [*floods, modest]:
                    await r.wait_finished()
            if policy == "fair":
                assert k.models_info()["remote"]["resumed"] >= 1
            return floods, modest

    floods, modest = await run("fifo")
    assert modest.finished_at is not None and all(
        f.finished_at is not None and f.finished_at < modest.finished_at for f in floods
    )
    floods, modest = await run("fair")
    assert modest.finished_at is not None and floods[1].finished_at is not None
    assert modest.finished_at < floods[1].finished_at
    for f in floods:
        resumed_whole(f, ref[0], 48)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_round_robin_preemption_gives_the_answers_of_one_piece(
    tiny_core: LLMCore, srv: ls.Server, kind: str
) -> None:
    """Both wire formats continue a text snapshot: llama-server's Messages API as well."""
    ref = await reference(tiny_core, srv, QUESTIONS[:3], 32)
    decl = {"remote": table(base_url(srv), kind=kind, max_in_flight=1)}
    async with remote_kernel(tiny_core, decl, scheduler="rr", quantum=4) as k:
        results = [k.submit(agent(k, f"a{i}"), llm(q, 32)) for i, q in enumerate(QUESTIONS[:3])]
        with trio.fail_after(120):
            for r in results:
                await r.wait_finished()
        info = k.models_info()["remote"]
        assert info["resumed"] >= 3 and info["errors"] == 0
    for r, want in zip(results, ref, strict=True):
        if r.meta()["finish_reason"] == "length":
            resumed_whole(r, want, 32)
        else:  # a short answer that ended by itself
            assert text(r)[:24] == want[:24] and text(r).count(want[:24]) == 1


async def test_failover_when_a_server_is_killed_mid_answer(
    tiny_core: LLMCore, tmp_path: Path, srv: ls.Server
) -> None:
    ref = await reference(tiny_core, srv, [STORY], 160)
    with server(tmp_path / "a.log", slots=2) as a, server(tmp_path / "b.log", slots=2) as b:
        decl = {"remote": table(base_url(a), base_url(b), health_interval_s=0.5)}
        async with remote_kernel(tiny_core, decl) as k:
            name = agent(k, "teller")
            result = k.submit(name, llm(STORY, 160))
            await until(lambda: len(result.data) > 40, what="the story to start")
            busy = a if await trio.to_thread.run_sync(processing, a) else b
            other = b if busy is a else a
            os.kill(busy.proc.pid, signal.SIGKILL)
            with trio.fail_after(60):
                await result.wait_finished()
            resumed_whole(result, ref[0], 160)
            info = k.models_info()["remote"]
            assert info["retries"] >= 1 and info["resumed"] >= 1 and info["errors"] == 0
            dead = next(e for e in info["endpoints"] if e["url"] == base_url(busy))
            assert dead["errors"] >= 1 and not dead["healthy"] and dead["last_error"]
            # the next answer goes straight to the survivor
            again = await answer(k, name, CAPITAL, 8)
            assert "Paris" in text(again)
            alive = next(
                e for e in k.models_info()["remote"]["endpoints"] if e["url"] == base_url(other)
            )
            assert alive["requests"] >= 2


async def test_429_waits_for_retry_after_then_succeeds(tiny_core: LLMCore, srv: ls.Server) -> None:
    with Proxy(srv) as proxy:
        proxy.refuse = [Refusal(429, {"retry-after": "1"}), Refusal(503)]
        async with remote_kernel(tiny_core, {"remote": table(base_url(proxy))}) as k:
            started = time.monotonic()
            result = await answer(k, agent(k, "patient"), CAPITAL, 8)
            assert "Paris" in text(result)
            # one refusal answered with a wait of a second, then a 503 backed off, then served
            assert proxy.posts == 3 and proxy.post_times[1] - proxy.post_times[0] >= 1.0
            assert time.monotonic() - started >= 1.0
            (ep,) = k.models_info()["remote"]["endpoints"]
            assert ep["errors"] == 2 and ep["consecutive_failures"] == 0 and ep["healthy"]
            assert "503" in ep["last_error"]


async def test_a_server_that_keeps_refusing_ends_in_a_clear_error(
    tiny_core: LLMCore, srv: ls.Server
) -> None:
    with Proxy(srv) as proxy:
        proxy.always = Refusal(429, {"retry-after": "0"})
        async with remote_kernel(tiny_core, {"remote": table(base_url(proxy), retries=2)}) as k:
            result = await answer(k, agent(k, "unlucky"), CAPITAL, 8)
            assert result.state is ResultState.FAILED
            error = result.meta()["error"]
            assert "3 attempts failed" in error and "HTTP 429" in error, error
            assert proxy.posts == 3
            # a request the server finds wrong is not retried
            proxy.always = Refusal(
                400, body=b'{"error": {"message": "bad request, says the test"}}'
            )
            bad = await answer(k, "unlucky", CAPITAL, 8)
            assert (
                bad.state is ResultState.FAILED
                and "bad request, says the test" in bad.meta()["error"]
            )
            assert proxy.posts == 4


async def test_the_key_goes_to_the_server_and_nowhere_else(
    tiny_core: LLMCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-test-" + os.urandom(8).hex()
    monkeypatch.setenv("AIOSFS_TEST_KEY", key)
    with server(tmp_path / "keyed.log", slots=1, extra=["--api-key", key]) as keyed:
        decls = {
            "right": table(base_url(keyed), api_key_env="AIOSFS_TEST_KEY"),
            "wrong": table(base_url(keyed), api_key_file=str(tmp_path / "wrong.key")),
        }
        (tmp_path / "wrong.key").write_text("not-the-key\n")
        async with remote_kernel(tiny_core, decls) as k:
            assert "Paris" in text(await answer(k, agent(k, "a", "right"), CAPITAL, 8))
            refused = await answer(k, agent(k, "b", "wrong"), CAPITAL, 8)
            assert refused.state is ResultState.FAILED and "401" in refused.meta()["error"]
            assert k.models_info()["wrong"]["endpoints"][0]["requests"] == 1  # not retried
            shown = json.dumps([k.models_info(), k.status()])
            assert key not in shown and "not-the-key" not in shown


async def test_response_format_is_the_servers_json_schema(
    tiny_core: LLMCore, srv: ls.Server
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    async with remote_kernel(tiny_core, {"remote": table(base_url(srv))}) as k:
        result = await answer(k, agent(k, "geo"), CAPITAL, 48, response_format=fmt)
        jsonschema.validate(json.loads(text(result)), schema)


async def test_an_anthropic_schema_goes_as_a_forced_tool_the_server_accepts(
    tiny_core: LLMCore, srv: ls.Server
) -> None:
    """llama-server's Messages API takes the forced ``output`` tool (the wire format is
    tests/kernel/test_wire.py's). It does not hold SmolLM2 to it (the model's chat template
    has no tool calls), so only the answer's arrival is checked here, not its JSON."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    async with remote_kernel(tiny_core, {"remote": table(base_url(srv), kind="anthropic")}) as k:
        result = await answer(k, agent(k, "geo"), CAPITAL, 16, response_format=fmt)
        assert text(result) and result.tokens_out > 0


async def test_the_repetition_penalty_reaches_a_server_that_takes_one(
    tiny_core: LLMCore, srv: ls.Server
) -> None:
    """With ``penalty_field`` the agent's penalty is the server's: llama.cpp's server, given
    ``repeat_penalty`` 2 on a story that repeats itself greedily, answers otherwise."""
    models = {"remote": table(base_url(srv), penalty_field="repeat_penalty")}
    async with remote_kernel(tiny_core, models) as k:
        name = agent(k, "teller")
        plain = text(await answer(k, name, STORY, 48, repetition_penalty=1.0))
        penalised = text(await answer(k, name, STORY, 48, repetition_penalty=2.0))
        assert plain != penalised, plain


async def test_reload_adds_and_removes_models_and_finishes_what_they_accepted(
    tiny_core: LLMCore, srv: ls.Server, tmp_path: Path
) -> None:
    path = tmp_path / "aiosfs.toml"

    def write(*names: str) -> None:
        tables = "".join(
            f'[models.{n}]\nkind = "openai"\nmodel = "smollm2"\nendpoints = ["{base_url(srv)}"]\n'
            for n in names
        )
        path.write_text(f'[kernel]\nmodel = "tiny-random"\nstore_embedder = "hashing"\n{tables}')

    write("first")
    (tmp_path / "data").mkdir()
    config = KernelConfig.from_toml(path, data_dir=str(tmp_path / "data"))
    k = Kernel(
        config, lambda _n, _c: tiny_core, lambda: KernelConfig.from_toml(path, data_dir=None)
    )
    await k.start()
    try:
        assert set(k.engines) == {"tiny-random", "first"}
        write("first", "second")
        assert k.reload()["added"] == ["second"]
        assert "Paris" in text(await answer(k, agent(k, "a", "second"), CAPITAL, 8))
        running = k.submit("a", llm(STORY, 64))
        await until(lambda: len(running.data) > 0, what="the story to start")
        write("first")
        assert k.reload()["removed"] == ["second"]
        assert set(k.engines) == {"tiny-random", "first"}
        await running.wait_finished()
        assert running.state is ResultState.DONE and running.tokens_out == 64
        lost = await answer(k, "a", CAPITAL, 8)  # its model is gone: a clear error
        assert lost.state is ResultState.FAILED and "second" in lost.meta()["error"]
        path.write_text("[models.broken]\nkind = 'nonsense'\n")
        with pytest.raises(Exception, match="kind must be one of"):
            k.reload()
        assert set(k.engines) == {"tiny-random", "first"} and not k.last_reload["ok"]
    finally:
        await k.shutdown()


async def calculate(k: Kernel, prompt: str, **extra: Any) -> Result:
    """An llm call offering only the calculator, which the model must call (once, greedily)."""
    return await answer(
        k,
        agent(k, "calc"),
        prompt,
        100,
        tools=["calculator"],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        **extra,
    )


async def test_tool_rounds_run_on_a_remote_model(tiny_core: LLMCore, srv: ls.Server) -> None:
    """The kernel's tool loop on a remote model: each round's step schema goes to the server as
    its JSON Schema, so the step parses and the kernel runs the tool it names."""
    async with remote_kernel(tiny_core, {"remote": table(base_url(srv))}) as k:
        result = await calculate(k, "What is 99 * 99?", max_tool_rounds=1)
        meta = result.meta()
        assert result.state is ResultState.DONE, meta
        (call,) = meta["tool_calls"]  # the step held to the schema: one well-formed call
        assert call["tool"] == "calculator" and call["outcome"] == "ok", call
        assert "99" in call["arguments"]["expression"]  # (135M parameters: not always 99 * 99)
        assert text(result).startswith("[tool calculator")


async def test_a_table_may_name_a_local_model_and_the_default_may_be_remote(
    tiny_core: LLMCore, srv: ls.Server
) -> None:
    models = {"small": {"kind": "local", "model": "tiny-random"}, "remote": table(base_url(srv))}
    async with remote_kernel(tiny_core, models, model="remote") as k:
        assert k.default_model == "remote" and set(k.engines) == {"small", "remote"}
        assert "core" in k.models_info()["small"] and not k.models_info()["small"].get("remote")
        k.create_agent("plain")  # no model key: the default, which is remote
        assert "Paris" in text(await answer(k, "plain", CAPITAL, 12))
        assert k.models_info()["remote"]["finished"] == 1
        small = await answer(k, agent(k, "local", "small"), "hello", 4)
        assert small.state is ResultState.DONE and small.tokens_out == 4


TOOL_PROMPT = "Return JSON for the calculator: 99 * 99"


async def test_native_tool_calls_are_the_servers_own(
    tiny_core: LLMCore, tool_srv: ls.Server
) -> None:
    """With ``tool_calls = "native"`` a tool round offers the tools as the API's own and reads
    the server's parsed calls: llama-server, whose template gives it a tool-call format, holds
    ``tool_choice: required`` to it and answers ``tool_calls``. The kernel runs the call, and
    the answer round (tool_choice none) gets it back as an assistant turn with the call and a
    ``tool`` turn with its result."""
    with Proxy(tool_srv) as proxy:
        models = {"remote": table(base_url(proxy), tool_calls="native")}
        async with remote_kernel(tiny_core, models) as k:
            assert k.models_info()["remote"]["tool_calls"] == "native"
            result = await calculate(k, TOOL_PROMPT, max_tool_rounds=1)
    meta = result.meta()
    assert result.state is ResultState.DONE, meta
    (call,) = meta["tool_calls"]
    assert call["tool"] == "calculator" and call["round"] == 1, call
    assert text(result).startswith("[tool calculator")
    first, second = [b for b in proxy.bodies if b]
    assert "response_format" not in first and "response_format" not in second
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator"]
    assert first["tool_choice"] == "required" and first["parallel_tool_calls"] is False
    assert second["tool_choice"] == "none"
    asked, answered = second["messages"][-2:]
    (made,) = asked["tool_calls"]
    assert made["function"]["name"] == "calculator"
    assert json.loads(made["function"]["arguments"]) == call["arguments"]
    assert answered["role"] == "tool" and answered["tool_call_id"] == made["id"]


async def test_native_tool_use_on_the_messages_api(tiny_core: LLMCore, tool_srv: ls.Server) -> None:
    """The same on the Anthropic kind: the tools go as the Messages API's, ``required`` as
    ``any``, and the server's ``tool_use`` block is the call. In ``manual`` mode the call is
    the answer: llama-server's Messages endpoint ignores ``tool_choice: none`` (it passes only
    auto and any on), so an answer round there would not be held to text. The round's
    ``tool_result`` turns are tests/kernel/test_wire.py's."""
    with Proxy(tool_srv) as proxy:
        models = {"remote": table(base_url(proxy), kind="anthropic", tool_calls="native")}
        async with remote_kernel(tiny_core, models) as k:
            result = await calculate(k, TOOL_PROMPT, tool_mode="manual")
    assert result.state is ResultState.DONE, result.meta()
    (wanted,) = json.loads(text(result))["tool_calls"]
    assert wanted["tool"] == "calculator" and isinstance(wanted["arguments"], dict), wanted
    (body,) = [b for b in proxy.bodies if b]
    assert [t["name"] for t in body["tools"]] == ["calculator"]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_a_native_round_cut_off_mid_call_starts_again(
    tiny_core: LLMCore, tool_srv: ls.Server
) -> None:
    """A native round's stream dropped in the middle of its tool call (a dying server) is not
    continued from the pieces that came: the retry starts the round again, and the call the
    kernel runs is the retry's whole one."""
    with Proxy(tool_srv) as proxy:
        proxy.cut = [1200]  # past the first pieces of the call's arguments
        models = {"remote": table(base_url(proxy), tool_calls="native")}
        async with remote_kernel(tiny_core, models) as k:
            result = await calculate(k, TOOL_PROMPT, tool_mode="manual")
            assert k.models_info()["remote"]["retries"] == 1
    assert result.state is ResultState.DONE, result.meta()
    (wanted,) = json.loads(text(result))["tool_calls"]
    first, again = [b for b in proxy.bodies if b]
    assert first == again  # the same request from the start, no partial answer
    assert wanted["tool"] == "calculator" and set(wanted["arguments"]) == {"expression"}


async def test_a_native_call_cut_off_by_max_tokens_fails_clearly(
    tiny_core: LLMCore, tool_srv: ls.Server
) -> None:
    """Eight tokens end the server's answer inside its tool call (``finish_reason: length``):
    half a call is not run or guessed at; the syscall fails saying to raise max_tokens."""
    models = {"remote": table(base_url(tool_srv), tool_calls="native")}
    async with remote_kernel(tiny_core, models) as k:
        result = await answer(
            k, agent(k, "calc"), TOOL_PROMPT, 8, tools=["calculator"], tool_choice="required"
        )
    meta = result.meta()
    assert result.state is ResultState.FAILED and not meta.get("tool_calls"), meta
    assert "round 1" in meta["error"] and "raise max_tokens" in meta["error"], meta
