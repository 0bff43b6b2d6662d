"""Approvals: the request list itself (ask, decide, timeout, cancel, who may answer), and the
kernel paths that wait on it: a ``store_write`` or ``store_rollback`` into a protected subtree,
and a destructive tool called from an ``llm`` call's tool loop (the mount-level tests are in
tests/fs/test_approvals.py)."""

from __future__ import annotations

import errno
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from kernel import Kernel
from kernel.approvals import Approval, Approvals, parse_answer
from kernel.errors import InvalidArgument, NotFound, NotPermitted
from kernel.llm.core import LLMCore
from kernel.results import Result, ResultState
from kernel.tools import Caller, ToolSpec
from kernel.tools.builtins import BuiltinSource, BuiltinTool
from tests.conftest import make_kernel

ALICE, BOB = 1001, 1002


async def first_waiting(approvals: Approvals, agent: str | None = None) -> Approval:
    """The oldest request (of ``agent``) once one waits."""
    while True:
        mine = [a for a in approvals.pending() if agent is None or a.agent == agent]
        if mine:
            return mine[0]
        await approvals.changed.wait()


# ---- the request list -------------------------------------------------------------------------


def test_answers_are_yes_or_no_and_nothing_else() -> None:
    for text in (b"yes", b"yes\n", b"  YES \n", b"y", b"Y\n"):
        assert parse_answer(text) is True
    for text in (b"no", b"no\n", b"No", b"n\n"):
        assert parse_answer(text) is False
    for bad in (b"", b"\n", b"yes please", b"ok", b"1", b"\xff"):
        with pytest.raises(InvalidArgument):
            parse_answer(bad)


async def test_ask_waits_for_the_owners_yes_or_no() -> None:
    events: list[tuple[int, str, int]] = []
    approvals = Approvals(300, lambda a, event, uid: events.append((a.id, event, uid)))
    answers: list[bool] = []
    async with trio.open_nursery() as nursery:

        async def ask(what: str) -> None:
            answers.append((await approvals.request("a", ALICE, "tool", what, {"x": 1})).approved)

        nursery.start_soon(ask, "rm")
        first = await first_waiting(approvals)
        assert (first.id, first.agent, first.owner_uid, first.what) == (1, "a", ALICE, "rm")
        shown = first.as_dict()
        assert shown["tool"] == "rm" and shown["arguments"] == {"x": 1}
        assert shown["timeout_at"] - shown["since"] == 300
        with pytest.raises(NotPermitted):  # bob is not the agent's owner
            approvals.decide(1, True, BOB)
        with pytest.raises(NotPermitted):
            approvals.check_text(1, b"yes\n", BOB)
        with pytest.raises(InvalidArgument):
            approvals.check_text(1, b"maybe\n", ALICE)
        assert approvals.pending() == [first]  # neither decided anything
        approvals.decide_text(1, b"yes\n", ALICE)
        with pytest.raises(NotFound):  # decided: gone
            approvals.decide(1, False, ALICE)
        nursery.start_soon(ask, "wipe")
        second = await first_waiting(approvals)
        assert second.id == 2  # numbers only grow
        approvals.decide(2, False, 0)  # root may decide anyone's
    assert answers == [True, False]
    assert approvals.pending() == []
    with pytest.raises(NotFound):
        approvals.get(7)
    assert events == [(1, "asked", ALICE), (1, "approved", ALICE), (2, "asked", ALICE),
                      (2, "refused", 0)]  # fmt: skip


async def test_no_answer_in_time_is_no(autojump_clock: trio.testing.MockClock) -> None:
    approvals = Approvals(5)
    decided = await approvals.request("a", ALICE, "tool", "rm", {})
    assert decided.outcome == "timeout" and not decided.approved
    assert "within 5 s" in decided.reason(5)
    assert approvals.pending() == []


async def test_a_cancelled_wait_leaves_the_list() -> None:
    approvals = Approvals(300)
    fired = 0

    def count() -> None:
        nonlocal fired
        fired += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(approvals.request, "a", ALICE, "tool", "rm", {})
        waiting = await first_waiting(approvals)
        approvals.changed.once(count)
        nursery.cancel_scope.cancel()  # the caller goes away
    assert waiting.outcome == "cancelled" and approvals.pending() == [] and fired == 1


async def test_cancel_agent_and_close_answer_no() -> None:
    approvals = Approvals(300)
    answers: dict[str, bool] = {}

    async def ask(agent: str) -> None:
        answers[agent] = (await approvals.request(agent, ALICE, "tool", "rm", {})).approved

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "a")
        nursery.start_soon(ask, "b")
        await first_waiting(approvals, "a")
        await first_waiting(approvals, "b")
        assert approvals.cancel_agent("a") == 1
        assert [x.agent for x in approvals.pending()] == ["b"]
        approvals.close()
    assert answers == {"a": False, "b": False}
    late = await approvals.request("c", ALICE, "tool", "rm", {})  # after close: no at once
    assert late.outcome == "stopped"


# ---- the kernel's paths -----------------------------------------------------------------------


@pytest.fixture
async def guarded(tiny_core: LLMCore) -> AsyncIterator[Kernel]:
    """A kernel with two protected subtrees of the store, open to every user's writes (so that
    only the approvals stand in the way)."""
    k = make_kernel(tiny_core, store_protected=["contracts", "/finance/2026/"])
    await k.start()
    await k.wait_loaded()
    for d in ("contracts", "finance", "finance/2025", "finance/2026"):
        k.storage.mkdir(d, 0o777)
    yield k
    await k.shutdown()


def writer(k: Kernel, name: str, uid: int) -> None:
    """An agent that may write anywhere in the store (its capabilities say so)."""
    k.create_agent(name, uid=uid, gid=uid)
    k.update_config(name, b'{"capabilities": {"store_write": ["/"]}}')


def syscall(call: str, **fields: Any) -> bytes:
    return json.dumps({"call": call, **fields}).encode()


async def test_a_write_in_a_protected_subtree_waits_for_the_owner(guarded: Kernel) -> None:
    k = guarded
    assert k.config.store_protected == ("contracts", "finance/2026")
    writer(k, "clerk", ALICE)
    # outside the protected subtrees nothing waits
    free = k.submit("clerk", syscall("store_write", path="finance/2025/q1", content="ok"))
    await free.wait_finished()
    assert free.state is ResultState.DONE, free.error
    assert k.approvals.pending() == []

    result = k.submit("clerk", syscall("store_write", path="contracts//lease.txt", content="v1"))
    waiting = await first_waiting(k.approvals)
    assert (waiting.kind, waiting.what, waiting.owner_uid) == (
        "store_write",
        "contracts/lease.txt",
        ALICE,
    )
    assert waiting.args["content"] == "v1"
    status = k.agent_status("clerk")
    assert status["state"] == "awaiting_approval" and status["awaiting_approval"] == [waiting.id]
    assert k.storage.entry("contracts/lease.txt") is None  # nothing written yet
    with pytest.raises(NotPermitted):
        k.approvals.decide(waiting.id, True, BOB)
    k.approvals.decide(waiting.id, True, ALICE)
    await result.wait_finished()
    assert result.state is ResultState.DONE, result.error
    assert k.storage.read("contracts/lease.txt") == b"v1"
    assert k.agent_status("clerk")["awaiting_approval"] == []

    # a no: EACCES, the capability named, nothing written
    result = k.submit("clerk", syscall("store_write", path="contracts/other.txt", content="v2"))
    k.approvals.decide((await first_waiting(k.approvals)).id, False, ALICE)
    await result.wait_finished()
    assert result.state is ResultState.FAILED and result.errno == errno.EACCES
    assert "approval" in (result.error or "") and "refused" in (result.error or "")
    assert k.storage.entry("contracts/other.txt") is None

    # a rollback is a change too
    writer(k, "boss", 0)
    result = k.submit("boss", syscall("store_rollback", path="contracts/lease.txt", version=1))
    rollback = await first_waiting(k.approvals)
    assert rollback.kind == "store_rollback"
    k.approvals.decide(rollback.id, False, 0)
    await result.wait_finished()
    assert result.errno == errno.EACCES


async def test_a_cancelled_call_or_removed_agent_takes_its_request_away(guarded: Kernel) -> None:
    k = guarded
    writer(k, "clerk", ALICE)
    result = k.submit("clerk", syscall("store_write", path="contracts/x", content="x"))
    await first_waiting(k.approvals)
    k.cancel("clerk", reason="cancelled by ctl")
    await result.wait_finished()
    assert result.state is ResultState.CANCELLED
    assert k.approvals.pending() == []
    await trio.testing.wait_all_tasks_blocked()  # the handler saw its no and wrote nothing
    assert k.storage.entry("contracts/x") is None

    # one syscall cancelled alone (``cancel N``): its request goes, the other's stays
    one = k.submit("clerk", syscall("store_write", path="contracts/one", content="1"))
    other = k.submit("clerk", syscall("store_write", path="contracts/other", content="2"))
    with trio.fail_after(10):
        while len(k.approvals.pending()) < 2:
            await trio.sleep(0.01)
    assert k.cancel_result("clerk", one.id, reason="cancelled by ctl") is True
    await one.wait_finished()
    assert one.state is ResultState.CANCELLED and not other.finished
    await trio.testing.wait_all_tasks_blocked()  # its cancelled step has run and ended
    (left,) = k.approvals.pending()
    assert left.args["path"] == "contracts/other"
    assert k.cancel_result("clerk", one.id) is False  # finished already: nothing to do
    k.approvals.decide(left.id, True, 0)
    await other.wait_finished()
    assert other.state is ResultState.DONE
    await trio.testing.wait_all_tasks_blocked()
    assert k.storage.entry("contracts/one") is None
    assert k.storage.read("contracts/other") == b"2"

    result = k.submit("clerk", syscall("store_write", path="finance/2026/y", content="y"))
    await first_waiting(k.approvals)
    k.remove_agent("clerk")
    assert k.approvals.pending() == []
    await trio.testing.wait_all_tasks_blocked()
    assert k.storage.entry("finance/2026/y") is None


async def test_a_person_calling_a_tool_directly_is_not_asked(guarded: Kernel) -> None:
    k = guarded
    out = await k.tools.call(
        "store_write", {"path": "contracts/direct", "content": "by hand"}, Caller("", 0, 0)
    )
    assert out.ok, out.error
    assert k.storage.read("contracts/direct") == b"by hand"


async def test_bad_settings_are_refused(tiny_core: LLMCore) -> None:
    for bad in ({"store_protected": "contracts"}, {"store_protected": ["a/../b"]},
                {"approval_timeout_s": 0}, {"approval_timeout_s": True}):  # fmt: skip
        with pytest.raises(InvalidArgument):
            make_kernel(tiny_core, **bad)


# ---- a destructive tool in the tool loop -------------------------------------------------------


def add_destructive_tool(k: Kernel, ran: list[dict[str, Any]]) -> None:
    """A built-in tool marked destructive whose only effect is to note that it ran."""

    async def wipe(args: dict[str, Any], caller: Caller) -> str:
        ran.append(args)
        return "wiped"

    spec = ToolSpec(
        "wipe", "Delete everything (for the test).",
        {"type": "object", "properties": {}, "additionalProperties": False},
        destructive=True,
    )  # fmt: skip
    builtins = k.tools.sources[0]
    assert isinstance(builtins, BuiltinSource)
    builtins.add(BuiltinTool(spec, wipe))


async def run_wipe(k: Kernel, agent: str) -> Result:
    k.update_config(agent, b'{"capabilities": {"tools": ["wipe"]}}')
    return k.submit(
        agent,
        syscall("llm", prompt="Wipe it.", tools=["wipe"], tool_choice="required",
                parallel_tool_calls=False, max_tool_rounds=1, max_tokens=3000),
    )  # fmt: skip


async def test_a_destructive_tool_runs_only_after_a_yes(guarded: Kernel) -> None:
    k = guarded
    ran: list[dict[str, Any]] = []
    add_destructive_tool(k, ran)
    await k.tools.refresh()
    k.create_agent("ops", uid=ALICE, gid=ALICE)

    result = await run_wipe(k, "ops")
    waiting = await first_waiting(k.approvals)
    assert (waiting.kind, waiting.what, waiting.agent) == ("tool", "wipe", "ops")
    assert k.agent_status("ops")["state"] == "awaiting_approval"
    assert ran == []
    k.approvals.decide(waiting.id, False, ALICE)
    await result.wait_finished()
    assert result.state is ResultState.DONE, result.error
    call = result.tool_calls[0]
    assert call["outcome"] == "denied" and not call["ok"] and "refused" in call["error"]
    assert ran == []  # a no: it never ran

    result = await run_wipe(k, "ops")
    k.approvals.decide((await first_waiting(k.approvals)).id, True, ALICE)
    await result.wait_finished()
    assert result.tool_calls[0]["outcome"] == "ok" and ran == [{}]
