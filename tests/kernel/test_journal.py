"""The journal (kernel/journal.py): records come back as written, commits are grouped, and a
kernel started on the data dir of one that died takes up where it stopped.

A crash is simulated in process by starting a second kernel on the first one's data dir while
the first still runs: the second sees exactly what the journal held at that instant, which is
all a restart after ``kill -9`` sees (tests/fs/test_crash.py does the real ``kill -9``)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from kernel import Kernel
from kernel.journal import Journal
from kernel.llm.core import LLMCore
from kernel.results import ResultState
from tests.conftest import make_kernel


def llm(prompt: str, max_tokens: int = 4, **extra: object) -> bytes:
    return json.dumps({"call": "llm", "prompt": prompt, "max_tokens": max_tokens, **extra}).encode()


async def test_records_come_back_and_commits_are_grouped(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.start()
    journal.put_agent("a", 1000, 1000, 0o700, 1.5, {"max_tokens": 8}, [], 0, 1)
    async with trio.open_nursery() as nursery:
        for i in range(16):  # sixteen agents' closes at once

            async def submit(i: int = i) -> None:
                journal.put_syscall("a", i + 1, b"hello %d" % i, 2.0)
                await journal.durable()

            nursery.start_soon(submit)
    assert journal.commits < 16  # they shared commits
    journal.put_result("a", 3, "done", b"answer\n", {"tokens_out": 2}, True)
    journal.drop_results("a", [4])
    await journal.durable()
    journal.close()
    loaded = Journal(tmp_path / "journal.db").load()
    (agent,) = loaded.agents
    assert (agent.name, agent.uid, agent.mode, agent.config, agent.next_id) == (
        "a", 1000, 0o700, {"max_tokens": 8}, 17,
    )  # fmt: skip
    assert [s.id for s in loaded.syscalls] == [i for i in range(1, 17) if i != 4]
    three = next(s for s in loaded.syscalls if s.id == 3)
    assert (three.state, three.data, three.meta, three.delivered) == (
        "done", b"answer\n", {"tokens_out": 2}, True,
    )  # fmt: skip
    one = loaded.syscalls[0]
    assert (one.state, one.raw, one.delivered) == ("queued", b"hello 0", False)


async def test_a_commit_waits_for_a_waiter_and_takes_everything_queued(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db", idle_commit_s=60)
    journal.start()
    journal.put_agent("a", 1000, 1000, 0o700, 1.5, {}, [], 0, 1)
    journal.put_syscall("a", 1, b"hello", 2.0)  # accepted, on a transaction descriptor
    journal.put_result("a", 1, "done", b"hi\n", {}, False)  # finished at once
    await trio.sleep(0.1)
    assert journal.commits == 0  # nobody waits yet: nothing to fsync for
    journal.put_delivered("a", 1)
    await journal.durable()  # the delivering read
    assert (journal.commits, journal.records, journal.waits) == (1, 5, 1)
    journal.close()
    (row,) = Journal(tmp_path / "journal.db").load().syscalls
    assert (row.state, row.data, row.delivered) == ("done", b"hi\n", True)


async def test_what_nobody_waits_for_is_committed_on_its_own(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db", idle_commit_s=0.02)
    journal.start()
    journal.put_agent("a", 1000, 1000, 0o700, 1.5, {"max_tokens": 8}, [], 0, 1)
    with trio.fail_after(10):
        while journal.commits == 0:
            await trio.sleep(0.01)
    (agent,) = Journal(tmp_path / "journal.db").load().agents  # another connection sees it
    assert agent.config == {"max_tokens": 8} and journal.waits == 0
    journal.close()


@pytest.fixture
def data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="aiosfs-journal-"))


async def started(core: LLMCore, data_dir: Path, **config: object) -> Kernel:
    # the audit log is one process's: two kernels on one data dir would share it
    k = make_kernel(core, data_dir=str(data_dir), audit=False, **config)
    await k.start()
    await k.wait_loaded()
    return k


@pytest.fixture
async def first(tiny_core: LLMCore, data_dir: Path) -> AsyncIterator[Kernel]:
    k = await started(tiny_core, data_dir)
    yield k
    await k.shutdown()


async def test_a_restart_brings_back_agents_results_and_what_was_not_delivered(
    tiny_core: LLMCore, first: Kernel, data_dir: Path
) -> None:
    k = first
    a = k.create_agent("a", uid=1000, gid=1000)
    k.update_config("a", b"max_tokens=5\nsystem=Be brief.")
    k.change_agent_access("a", k.actor(a).cred, mode=0o750)
    turn = k.submit("a", b"hello there")  # a chat turn: it joins the history
    await turn.wait_finished()
    delivered = k.submit("a", llm("one"))
    await delivered.wait_finished()
    assert await k.next_out(a) is turn and await k.next_out(a) is delivered
    waiting = k.submit("a", llm("two"))  # finished, never read
    await waiting.wait_finished()
    bad = None
    try:
        k.submit("a", b'{"call": "llm"')
    except Exception as e:  # refused: still a result, still answered on out
        bad = getattr(e, "result", None)
    assert bad is not None
    await k.durable()

    k2 = await started(tiny_core, data_dir)  # what a restart after kill -9 now would see
    try:
        b = k2.agent("a")
        assert (b.uid, b.gid, b.mode) == (1000, 1000, 0o750)
        assert b.config.max_tokens == 5 and b.config.system == "Be brief."
        assert b.conversation.messages[0].content == "hello there"
        assert sorted(b.results) == [1, 2, 3, 4] and b.next_id == 5
        assert b.results[2].body() == delivered.body() and b.results[2].delivered
        got = await k2.next_out(b)  # the undelivered ones, once each, in order
        assert got.id == 3 and got.body() == waiting.body() and got.tokens_out == 4
        assert (await k2.next_out(b)).id == 4
        with pytest.raises(Exception, match="no finished result"):
            await k2.next_out(b, nonblocking=True)
        meta = b.results[3].meta()
        assert meta["state"] == "done" and meta["restarts"] == 0 and not meta["interrupted"]
        assert meta["prompt"] == "two" and meta["call"] == "llm"  # results/N.json as before
        assert meta["model"] == "tiny-random"
        # the next syscall is numbered after them
        assert k2.submit("a", llm("three")).id == 5
    finally:
        await k2.shutdown()


async def test_unfinished_syscalls_run_again_or_fail_as_interrupted(
    tiny_core: LLMCore, first: Kernel, data_dir: Path
) -> None:
    k = first
    k.create_agent("again")
    k.create_agent("fails")
    k.update_config("fails", b"on_restart=fail")
    long = llm("a long one", 400)
    running = [k.submit("again", long), k.submit("fails", long)]
    queued = k.submit("again", llm("next", 3))
    await trio.sleep(0.05)
    assert not any(r.finished for r in running)
    await k.durable()

    k2 = await started(tiny_core, data_dir)
    try:
        again, fails = k2.agent("again"), k2.agent("fails")
        first_again = again.results[1]
        with trio.fail_after(60):
            await first_again.wait_finished()
            await again.results[2].wait_finished()
        assert first_again.state is ResultState.DONE and first_again.tokens_out == 400
        assert first_again.meta()["restarts"] == 1
        assert again.results[2].tokens_out == 3 and again.results[2].id == queued.id
        lost = fails.results[1]
        assert lost.state is ResultState.FAILED and lost.meta()["interrupted"] is True
        assert lost.body() == b"error: interrupted by restart\n"
        assert (await k2.next_out(fails)) is lost
    finally:
        await k2.shutdown()


async def test_a_removed_agent_stays_removed_and_trimmed_results_stay_gone(
    tiny_core: LLMCore, data_dir: Path
) -> None:
    k = await started(tiny_core, data_dir, results_keep=2)
    try:
        k.create_agent("gone")
        k.remove_agent("gone")
        k.create_agent("kept")
        for i in range(4):
            r = k.submit("kept", llm(f"n{i}", 2))
            await r.wait_finished()
        await k.durable()
        k2 = await started(tiny_core, data_dir, results_keep=2)
        try:
            assert "gone" not in k2.agents
            assert sorted(k2.agent("kept").results) == [3, 4]
        finally:
            await k2.shutdown()
    finally:
        await k.shutdown()


async def test_a_clean_shutdown_keeps_unfinished_work_for_the_next_mount(
    tiny_core: LLMCore, data_dir: Path
) -> None:
    k = await started(tiny_core, data_dir)
    k.create_agent("a")
    r = k.submit("a", llm("long", 400))
    await trio.sleep(0.05)
    await k.durable()
    await k.shutdown()  # its reader hears "shutting down"; the syscall is not forgotten
    assert r.state is ResultState.FAILED
    k2 = await started(tiny_core, data_dir)
    try:
        again = k2.agent("a").results[1]
        with trio.fail_after(60):
            await again.wait_finished()
        assert again.state is ResultState.DONE and again.meta()["restarts"] == 1
    finally:
        await k2.shutdown()


async def test_journal_off_keeps_nothing(tiny_core: LLMCore, data_dir: Path) -> None:
    k = await started(tiny_core, data_dir, journal=False)
    k.create_agent("a")
    await k.durable()
    await k.shutdown()
    assert not (data_dir / "journal.db").exists()
