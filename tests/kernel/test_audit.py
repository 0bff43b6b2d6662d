"""The audit log (kernel/audit.py) on a real kernel and a real SQLite file: what is recorded for
each way a call can end, that arguments never reach the log, the byte streams at any offset,
retention, and reopening."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import sqlite3
from hashlib import sha256
from pathlib import Path

import pytest

from kernel import Kernel, KernelConfig
from kernel.audit import FIELDS, AuditLog, canonical_json, digest
from kernel.errors import AccessDenied, InvalidArgument, KernelError, NotPermitted
from kernel.llm.core import LLMCore
from kernel.results import ResultState
from kernel.tools import Caller
from tests.conftest import make_kernel

SECRET = "zebra-violet-4417"  # an argument that must never show in the log's files


def call(name: str, **args: object) -> bytes:
    return json.dumps({"call": name, **args}).encode()


def db_bytes(data_dir: Path) -> bytes:
    """Everything on disk for the audit log: the database, its WAL and its index."""
    return b"".join(p.read_bytes() for p in data_dir.glob("audit.db*"))


async def finished(kernel: Kernel, agent: str, data: bytes) -> ResultState:
    try:
        result = kernel.submit(agent, data)
    except KernelError as e:  # refused at submission: the failed result is still recorded
        assert e.result is not None
        return e.result.state
    await result.wait_finished()
    return result.state


async def test_each_outcome_is_recorded_with_its_errno(kernel: Kernel) -> None:
    kernel.create_agent("a", uid=1000, gid=1000)
    assert await finished(kernel, "a", call("mem_write", path="n", content=SECRET)) == "done"
    assert await finished(kernel, "a", call("store_read", path="missing")) == "failed"
    assert await finished(kernel, "a", call("mem_read", nope=SECRET)) == "failed"
    assert await finished(kernel, "a", call("llm", prompt="hi", max_tokens=2)) == "done"
    # a spent token budget: the next model call is refused (EACCES, naming the capability)
    kernel.update_config("a", b"capabilities.max_tokens_per_hour=1\n", uid=1000)
    assert await finished(kernel, "a", call("llm", prompt="hi", max_tokens=2)) == "failed"
    audit = kernel.audit_log
    assert audit is not None
    got = [(r["call"], r["outcome"], r["errno"]) for r in audit.records()]
    assert got == [
        ("agent_create", "ok", 0),
        ("mem_write", "ok", 0),
        ("store_read", "failed", errno.ENOENT),
        ("syscall", "invalid", errno.EINVAL),
        ("llm", "ok", 0),
        ("llm", "denied", errno.EACCES),
    ]
    records = audit.records()
    assert all(list(r) == list(FIELDS) for r in records)  # fixed key order
    assert all(r["uid"] == 1000 and r["agent"] == "a" for r in records)
    assert [r["seq"] for r in records] == list(range(1, 7))
    assert "max_tokens_per_hour" in records[5]["detail"]  # the capability a denial names
    assert records[4]["duration_s"] > 0 and records[4]["time"] > 0
    # the digest is of the syscall as written: the same call written again has the same one
    written = call("llm", prompt="hi", max_tokens=2)
    assert records[4]["digest"] == records[5]["digest"] == sha256(written).hexdigest()[:16]
    assert len({r["digest"] for r in records}) == 5


async def test_arguments_never_reach_the_log(kernel: Kernel) -> None:
    kernel.create_agent("a")
    await finished(kernel, "a", call("mem_write", path="p", content=SECRET))
    await finished(kernel, "a", call("llm", prompt=f"tell me {SECRET}", max_tokens=1))
    await finished(kernel, "a", SECRET.encode() + b" as a plain prompt\n")
    await finished(kernel, "a", call("mem_read", bad=SECRET))  # invalid: digest of the bytes
    out = await kernel.call_tool("calculator", {"expression": "1 +"}, Caller("", 0, 0))
    assert not out.ok
    assert kernel.audit_log is not None
    assert len(kernel.audit_log.records()) == 6
    on_disk = db_bytes(kernel.config.data_dir)
    assert on_disk and SECRET.encode() not in on_disk
    assert SECRET.encode() not in kernel.audit_log.read(0, kernel.audit_log.size())


def test_digest_is_of_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
    assert digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    assert len(digest(b"raw bytes")) == 16


async def test_tool_calls_and_events(kernel: Kernel) -> None:
    kernel.create_agent("a", uid=1000, gid=1000)
    out = await kernel.call_tool("calculator", {"expression": "6*7"}, Caller("", 1001, 1001))
    assert out.ok
    await kernel.call_tool("calculator", {"nonsense": 1}, Caller("a", 1000, 1000))
    with pytest.raises(NotPermitted):
        kernel.check_config_change("a", {"capabilities": {"tools": ["*"]}}, uid=1001)
    with pytest.raises(AccessDenied):
        await kernel.ask_agent(Caller("a", 1000, 1000), "a", "hi")  # no agents capability
    kernel.audit_event(1000, "a", "approval", {"n": 1}, "approved", detail="by uid 0")
    kernel.remove_agent("a", uid=0)
    assert kernel.audit_log is not None
    got = [(r["uid"], r["agent"], r["call"], r["outcome"]) for r in kernel.audit_log.records()]
    assert got == [
        (1000, "a", "agent_create", "ok"),
        (1001, "", "tool:calculator", "ok"),
        (1000, "a", "tool:calculator", "invalid"),
        (1001, "a", "config", "denied"),
        (1000, "a", "ask_agent", "denied"),
        (1000, "a", "approval", "approved"),
        (0, "a", "agent_remove", "ok"),
    ]


async def test_an_agents_stream_is_its_own_since_it_was_made(kernel: Kernel) -> None:
    kernel.create_agent("a", uid=1000, gid=1000)
    kernel.create_agent("b", uid=1001, gid=1001)
    for _ in range(3):
        await finished(kernel, "a", call("mem_list", path=""))
        await finished(kernel, "b", call("mem_list", path=""))
    audit = kernel.audit_log
    assert audit is not None
    assert [r["agent"] for r in audit.records("a")] == ["a"] * 4
    assert [r["agent"] for r in audit.records("b")] == ["b"] * 4
    assert audit.agent_size("a") + audit.agent_size("b") == audit.size()
    kernel.remove_agent("a")
    assert audit.agent_size("a") == 0
    kernel.create_agent("a", uid=1001, gid=1001)  # a new agent of the old name
    assert [r["call"] for r in audit.records("a")] == ["agent_create"]
    assert audit.records("a")[0]["uid"] == 1001


def test_reads_at_any_offset_match_the_whole(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.db")
    rng = random.Random(7)
    for i in range(300):
        agent = rng.choice(["x", "y", ""])
        audit.record(i, agent, "llm", digest(i), "ok", detail="é" * rng.randrange(0, 30))
    whole = audit.read(0, audit.size())
    assert len(whole) == audit.size() and whole.count(b"\n") == 300
    mine = audit.agent_read("x", 0, 10**9)
    assert mine == b""  # no stream for an agent that was never begun
    audit.begin_agent("x")
    for i in range(50):
        audit.record(i, "x", "mem_read", digest(i), "ok")
    whole = audit.read(0, audit.size())
    mine = audit.agent_read("x", 0, audit.agent_size("x"))
    assert mine.count(b"\n") == 50
    for _ in range(400):
        off, size = rng.randrange(0, len(whole) + 10), rng.randrange(1, 5000)
        assert audit.read(off, size) == whole[off : off + size]
        off = rng.randrange(0, len(mine) + 10)
        assert audit.agent_read("x", off, size) == mine[off : off + size]
    audit.close()


def test_retention_by_age_and_by_count(tmp_path: Path) -> None:
    day = 86400.0
    audit = AuditLog(tmp_path / "audit.db", retention_days=10, max_records=0)
    now = 1_000_000_000.0
    for i in range(20):  # one a day, the oldest 19 days ago
        audit.record(0, "a", "llm", digest(i), "ok", now=now - (19 - i) * day)
    before = audit.read(0, audit.size())
    assert audit.prune(now=now) == 9  # 19 to 11 days old; 10 days old is still kept
    after = audit.read(0, audit.size())
    assert before.endswith(after) and len(after) < len(before)
    assert [json.loads(line)["seq"] for line in after.splitlines()] == list(range(10, 21))
    audit.max_records = 4
    assert audit.prune(now=now) == 7
    assert [r["seq"] for r in audit.records()] == [17, 18, 19, 20]
    audit.record(0, "a", "llm", digest(99), "ok", now=now)
    assert [r["seq"] for r in audit.records()] == [17, 18, 19, 20, 21]
    audit.close()
    forever = AuditLog(tmp_path / "audit.db", retention_days=0, max_records=0)
    assert forever.prune(now=now + 1000 * day) == 0
    forever.close()


async def test_reopening_keeps_every_record(tiny_core: LLMCore) -> None:
    kernel = make_kernel(tiny_core, journal=False)  # reopens the audit log, not the agents
    await kernel.start()
    kernel.create_agent("a")
    for _ in range(3):
        await finished(kernel, "a", call("mem_list", path=""))
    assert kernel.audit_log is not None
    first = kernel.audit_log.read(0, kernel.audit_log.size())
    await kernel.shutdown()
    assert kernel.audit_log is None
    again = Kernel(kernel.config, lambda _n, _c: tiny_core)
    await again.start()
    try:
        audit = again.audit_log
        assert audit is not None
        assert audit.read(0, audit.size()) == first
        again.create_agent("a")
        await finished(again, "a", call("mem_list", path=""))
        records = audit.records()
        assert [r["seq"] for r in records] == list(range(1, 7))
        assert [r["call"] for r in audit.records("a")] == ["agent_create", "mem_list"]
        assert audit.read(0, len(first)) == first  # the old offsets still hold
    finally:
        await again.shutdown()
    # retention runs at start: with a cap of 3 records only the newest 3 stay
    capped = Kernel(kernel.config.with_overrides(audit_max_records=3), lambda _n, _c: tiny_core)
    await capped.start()
    try:
        assert capped.audit_log is not None
        assert [r["seq"] for r in capped.audit_log.records()] == [4, 5, 6]
    finally:
        await capped.shutdown()


async def test_a_log_that_cannot_be_written_fails_no_syscall(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    audit = kernel.audit_log
    assert audit is not None
    kernel.create_agent("a")
    # what a full disk does to the tail file: /dev/full fails every write with ENOSPC
    saved = os.dup(audit._fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, audit._fd)
    try:
        with caplog.at_level(logging.WARNING, logger="kernel.audit"):
            for _ in range(20):
                assert await finished(kernel, "a", call("mem_list", path="")) == "done"
    finally:
        os.dup2(saved, audit._fd)
        os.close(saved)
        os.close(full)
    assert audit.lost == 20
    assert any("could not be written" in r.getMessage() for r in caplog.records)
    assert await finished(kernel, "a", call("mem_list", path="")) == "done"
    whole = audit.read(0, audit.size()).splitlines()
    assert json.loads(whole[-1])["seq"] == len(whole) == 2  # lost records took no number


async def test_rows_the_database_refuses_are_kept_and_put_in_later(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    audit = kernel.audit_log
    assert audit is not None
    kernel.create_agent("a")
    audit.flush()
    # what a full disk does to SQLite: no page can be added ("database or disk is full")
    with audit._db_lock:
        pages = audit._db.execute("PRAGMA page_count").fetchone()[0]
        audit._db.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.WARNING, logger="kernel.audit"):
        for _ in range(60):
            assert await finished(kernel, "a", call("mem_list", path="")) == "done"
        audit.flush()
    assert audit.lost == 0  # in the tail file: nothing is lost, the rows wait
    assert any("not put in the database yet" in r.getMessage() for r in caplog.records)
    with audit._db_lock:
        audit._db.execute("PRAGMA max_page_count = 1073741823")
    whole = audit.read(0, audit.size()).splitlines()
    assert [json.loads(line)["seq"] for line in whole] == list(range(1, 62))


def test_a_crash_leaves_the_tail_and_the_next_open_puts_it_in(tmp_path: Path) -> None:
    """What ``kill -9`` leaves: lines in the tail file the database never got (and a line cut
    off mid-write). Reopening puts them in at the offsets they had; the cut line is dropped."""
    audit = AuditLog(tmp_path / "audit.db")
    for i in range(5):
        audit.record(i, "x", "llm", digest(i), "ok")
    audit.close()  # everything in the database, the tail empty
    assert audit.tail_path.stat().st_size == 0
    audit = AuditLog(tmp_path / "audit.db")
    audit.begin_agent("x")
    lines = [audit.record(i, "x" if i % 2 else "y", "mem_read", digest(i), "ok")
             for i in range(7)]  # fmt: skip
    assert all(lines)
    before = audit.read(0, audit.size())
    # the crash: the indexer stops and never put the last lines in (taken back out of the db)
    audit._stop.set()
    audit._wake.set()
    audit._indexer.join()
    with audit._db_lock:
        audit._db.execute("DELETE FROM records WHERE seq > 8")
    os.close(audit._fd)
    audit._db.close()
    with open(audit.tail_path, "ab") as f:
        f.write(b'{"seq": 13, "time"')  # a write the crash cut off
    again = AuditLog(tmp_path / "audit.db")
    try:
        assert again.read(0, again.size()) == before
        db = sqlite3.connect(tmp_path / "audit.db")
        assert db.execute("SELECT count(*) FROM records").fetchone() == (12,)  # in at open
        db.close()
        again.begin_agent("x")
        assert again.record(0, "x", "llm", digest(0), "ok")
        assert [r["seq"] for r in again.records()] == list(range(1, 14))
        assert [r["seq"] for r in again.records("x")] == [13]  # a stream since begin_agent
    finally:
        again.close()
    assert again.tail_path.stat().st_size == 0


async def test_audit_off_writes_nothing(tiny_core: LLMCore) -> None:
    kernel = make_kernel(tiny_core, audit=False)
    await kernel.start()
    try:
        kernel.create_agent("a")
        assert await finished(kernel, "a", call("mem_list", path="")) == "done"
        assert kernel.audit_log is None
        assert not list(Path(kernel.config.data_dir).glob("audit.db*"))
    finally:
        await kernel.shutdown()


def test_settings_are_checked() -> None:
    cfg = KernelConfig().with_overrides(audit_retention_days=0, audit_max_records=0)
    assert cfg.audit and cfg.audit_retention_days == 0
    for bad in (
        {"audit": "yes"},
        {"audit_retention_days": -1},
        {"audit_max_records": "many"},
    ):
        with pytest.raises(InvalidArgument):
            KernelConfig().with_overrides(**bad)


def test_the_database_is_plain_sqlite(tmp_path: Path) -> None:
    """Anyone may query it with sqlite3: one row a record, its line in ``line``."""
    audit = AuditLog(tmp_path / "audit.db")
    audit.record(5, "a", "llm", digest(1), "ok")
    audit.flush()  # rows reach the database within FLUSH_EVERY_S; now at once
    db = sqlite3.connect(tmp_path / "audit.db")
    (line,) = db.execute("SELECT line FROM records").fetchone()
    assert json.loads(line)["uid"] == 5
    db.close()
    audit.close()
