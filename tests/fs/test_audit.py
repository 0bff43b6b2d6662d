"""The audit trail through a real mount: ``sys/audit`` and ``agents/NAME/audit`` as JSON lines,
who may read them (real second and third users), ``tail -f`` following the log, and records that
survive a ``kill -9`` of the daemon and a remount."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel.audit import FIELDS
from tests.mounting import Mount, eventually, mounted, write_config
from tests.users import public_tmpdir, three_users

pytestmark = pytest.mark.mount

SECRET = "marmalade-quasar-0925"


def lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def syscall(m: Mount, agent: str, body: dict[str, Any]) -> bytes:
    """One syscall on the transaction descriptor: written, then its answer read back."""
    with open(m.p(f"agents/{agent}/syscall"), "r+b", buffering=0) as f:
        f.write(json.dumps(body).encode())
        return f.read()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """A mount other users reach (``--allow-other``, a directory they can traverse)."""
    tmp = public_tmpdir("aiosfs-audit-")
    cfg = write_config(tmp, store_embedder="hashing")
    try:
        with mounted(tmp, "tiny-random", "--config", cfg, "--allow-other") as m:
            yield m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_sys_audit_and_each_agents_part(shared: Mount) -> None:
    alice, bob, carol = three_users()
    m = shared
    alice.ok(f"mkdir {m.p('agents/al')}")
    bob.ok(f"mkdir {m.p('agents/bo')}")
    call = {"call": "mem_write", "path": "note", "content": SECRET}
    alice.ok(f"printf '%s' '{json.dumps(call)}' > {m.p('agents/al/syscall')}")
    alice.ok(f"cat {m.p('agents/al/out')}")
    bob.ok(f"echo '{{\"call\": \"store_read\", \"path\": \"nothing-here\"}}' > "
           f"{m.p('agents/bo/syscall')}")  # fmt: skip
    assert "error:" in bob.sh(f"cat {m.p('agents/bo/out')}").stdout

    everything = lines(m.read_bytes("sys/audit"))
    assert all(list(r) == list(FIELDS) for r in everything)
    mine = [(r["uid"], r["call"], r["outcome"]) for r in everything if r["agent"] == "al"]
    assert mine == [(alice.uid, "agent_create", "ok"), (alice.uid, "mem_write", "ok")]
    bobs = [(r["uid"], r["call"], r["outcome"], r["errno"]) for r in everything
            if r["agent"] == "bo"]  # fmt: skip
    assert bobs == [(bob.uid, "agent_create", "ok", 0),
                    (bob.uid, "store_read", "failed", errno.ENOENT)]  # fmt: skip
    assert SECRET not in m.read("sys/audit")
    assert os.stat(m.p("sys/audit")).st_size == len(m.read_bytes("sys/audit"))

    # an agent's own part: only its records, readable by its owner, by no other user
    part = alice.ok(f"cat {m.p('agents/al/audit')}").encode()
    assert [r["agent"] for r in lines(part)] == ["al", "al"]
    assert lines(part) == [r for r in everything if r["agent"] == "al"]
    st = os.stat(m.p("agents/al/audit"))
    assert st.st_uid == alice.uid and st.st_mode & 0o777 == 0o400
    assert st.st_size == len(part)
    assert carol.errno_of("open(p).read()", p=m.p("agents/al/audit")) == errno.EACCES
    # sys/audit lists every user's agents: the daemon's owner (root here) only
    assert os.stat(m.p("sys/audit")).st_mode & 0o777 == 0o400
    for user in (alice, carol):
        assert user.errno_of("open(p).read()", p=m.p("sys/audit")) == errno.EACCES

    # a refusal is recorded as denied, with the capability it names: a spent token budget
    alice.ok(f"echo capabilities.max_tokens_per_hour=1 > {m.p('agents/al/config')}")
    llm = json.dumps({"call": "llm", "prompt": "hi", "max_tokens": 2})
    alice.ok(f"echo '{llm}' > {m.p('agents/al/syscall')}; cat {m.p('agents/al/out')}")
    alice.sh(f"echo '{llm}' > {m.p('agents/al/syscall')}; cat {m.p('agents/al/out')}")
    last = lines(m.read_bytes("sys/audit"))[-1]
    assert (last["uid"], last["agent"], last["call"], last["outcome"], last["errno"]) == (
        alice.uid, "al", "llm", "denied", errno.EACCES,
    )  # fmt: skip
    assert "max_tokens_per_hour" in last["detail"]
    # carol's rmdir of alice's agent is refused by the OS kernel (agents/ is sticky) before
    # the daemon hears of it: nothing the daemon could record
    assert carol.errno_of("os.rmdir(p)", p=m.p("agents/al")) == errno.EPERM
    assert lines(m.read_bytes("sys/audit"))[-1] == last
    # reading at an offset gives the same bytes as reading everything
    whole = m.read_bytes("sys/audit")
    with open(m.p("sys/audit"), "rb") as f:
        f.seek(len(whole) // 3)
        assert f.read() == whole[len(whole) // 3 :]


def test_a_persons_tool_calls_are_recorded_as_theirs(shared: Mount) -> None:
    alice, _bob, _carol = three_users()
    call = shared.p("tools/calculator/call")
    good, bad = json.dumps({"expression": "6*7"}), json.dumps({"expr": SECRET})
    out = alice.ok(f"exec 3<>{call}; echo '{good}' >&3; cat <&3")
    assert json.loads(out)["value"] == 42
    refused = alice.sh(f"exec 3<>{call}; echo '{bad}' >&3")
    assert refused.returncode != 0  # the write that completes bad arguments fails (EINVAL)
    got = [(r["uid"], r["agent"], r["call"], r["outcome"])
           for r in lines(shared.read_bytes("sys/audit"))[-2:]]  # fmt: skip
    assert got == [(alice.uid, "", "tool:calculator", "ok"),
                   (alice.uid, "", "tool:calculator", "invalid")]  # fmt: skip
    assert SECRET not in shared.read("sys/audit")


def calls(seen: list[dict[str, Any]], agent: str) -> int:
    return sum(r["agent"] == agent and r["call"] == "mem_list" for r in seen)


def test_tail_f_follows_the_log(shared: Mount) -> None:
    m = shared
    agent = m.agent()
    tail = subprocess.Popen(
        ["tail", "-n", "+1", "-f", m.p("sys/audit")], stdout=subprocess.PIPE, text=True
    )
    seen: list[dict[str, Any]] = []

    def reader() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            seen.append(json.loads(line))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        eventually(lambda: any(r["agent"] == agent for r in seen), timeout=10,
                   what="tail -f to show the agent's creation")  # fmt: skip
        for n in range(3):
            assert b"error" not in syscall(m, agent, {"call": "mem_list", "path": ""})
            eventually(
                lambda n=n: calls(seen, agent) > n,
                timeout=10,
                what=f"tail -f to show syscall {n + 1}",
            )
    finally:
        tail.kill()
        tail.wait()
        thread.join(timeout=5)
    ordered = [r["seq"] for r in seen]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered)


def test_records_survive_kill_9_and_remount(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, store_embedder="hashing")
    answered: list[bytes] = []
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        os.mkdir(m.p("agents/k9"))
        for i in range(12):
            answer = syscall(m, "k9", {"call": "mem_write", "path": f"f{i}", "content": "x"})
            assert b"error" not in answer
            answered.append(answer)
        before = m.read_bytes("sys/audit")
        m.proc.kill()  # kill -9, right after the last answer came back
        m.proc.wait(timeout=30)
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        after = m.read_bytes("sys/audit")
        assert after.startswith(before)
        writes = [r for r in lines(after) if r["agent"] == "k9" and r["call"] == "mem_write"]
        assert len(writes) == len(answered) and all(r["outcome"] == "ok" for r in writes)
        body = json.dumps({"call": "mem_write", "path": "f0", "content": "x"}).encode()
        assert writes[0]["digest"] == hashlib.sha256(body).hexdigest()[:16]  # of the bytes written
        # the agent came back with the journal (docs/filesystem.md, "After a crash"), and its
        # own audit file with it
        assert os.path.isdir(m.p("agents/k9"))
        calls = [r["call"] for r in lines(m.read_bytes("agents/k9/audit"))]
        assert calls.count("mem_write") == len(answered), calls
