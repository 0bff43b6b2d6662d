"""Kernel paths into mem/ act with the permissions of the agent's owner, and reading another
agent's memory also needs the ``mem_read`` capability.

The manager's own checks are tested with files of several owners and modes (we are root, so the
test can give files away) and credentials of users that need not exist; the syscalls and tools
through a kernel whose agents belong to such users.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from kernel import Kernel
from kernel.access import Cred
from kernel.errors import AccessDenied, InvalidArgument, KernelError, NotFound
from kernel.memory import MemoryManager
from kernel.results import ResultState
from kernel.tools.tool import Caller

ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(not ROOT, reason="giving files to other users needs root")

ALICE, BOB, CAROL = 2001, 2002, 2003
TEAM = 3000  # alice's and bob's shared group (bob's as a supplementary group); not carol's
alice = Cred(ALICE, ALICE, frozenset({TEAM}))
bob = Cred(BOB, BOB, frozenset({TEAM}))
carol = Cred(CAROL, CAROL)


def mm(tmp_path: Path) -> MemoryManager:
    """Memory of agent a1, alice's, as the kernel makes it; a note in it, 0644."""
    m = MemoryManager(tmp_path / "mem", 1 << 20, 1 << 30, k=2, correlation=0.01)
    m.ensure_agent("a1", owner=(ALICE, ALICE))
    m.write_file("a1", "note", b"alice's note", cred=alice)
    return m


def denied(fn: object, *args: object, **kw: object) -> AccessDenied:
    with pytest.raises(AccessDenied) as e:
        fn(*args, **kw)  # type: ignore[operator]
    assert e.value.errno == errno.EACCES and e.value.capability is None
    return e.value


def test_an_agents_memory_is_closed_to_other_users(tmp_path: Path) -> None:
    m = mm(tmp_path)
    top = (tmp_path / "mem/a1").stat()
    assert (top.st_uid, stat.S_IMODE(top.st_mode)) == (ALICE, 0o700)
    note = (tmp_path / "mem/a1/note").stat()  # made by a kernel call: alice's, 0644
    assert (note.st_uid, note.st_gid, stat.S_IMODE(note.st_mode)) == (ALICE, ALICE, 0o644)
    assert m.read_all("a1", "note", alice) == b"alice's note"
    for who in (bob, carol):
        e = denied(m.read_all, "a1", "note", who)
        assert "mem/a1/note" in e.message and f"uid {who.uid}" in e.message
        denied(m.list_entries, "a1", "", who)
        denied(m.write_file, "a1", "note", b"x", cred=who)
        denied(m.write_file, "a1", "new", b"x", cred=who)
        denied(m.delete, "a1", "note", who)
        # a name behind a closed directory is EACCES, not ENOENT: nothing about it leaks
        denied(m.read_all, "a1", "missing", who)
    assert m.read_all("a1", "note") == b"alice's note"  # unchanged; None checks nothing
    assert not (tmp_path / "mem/a1/new").exists()
    root = Cred(0, 0)
    assert m.read_all("a1", "note", root) == b"alice's note"  # root passes, as on the host


def test_the_owner_shares_it_the_unix_way(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.set_metadata("a1", "", mode=0o750, gid=TEAM)
    m.set_metadata("a1", "note", mode=0o640, gid=TEAM)
    assert m.read_all("a1", "note", bob) == b"alice's note"  # group: read and search
    assert [e["name"] for e in m.list_entries("a1", "", bob)] == ["note"]
    denied(m.read_all, "a1", "note", carol)  # other: not even search
    denied(m.write_file, "a1", "note", b"x", cred=bob)  # group may not write the file
    denied(m.write_file, "a1", "bobs", b"x", cred=bob)  # nor create in the directory
    denied(m.delete, "a1", "note", bob)  # nor delete in it
    # a group-writable directory and file: bob changes the file and creates his own
    m.set_metadata("a1", "", mode=0o770)
    m.set_metadata("a1", "note", mode=0o660)
    assert m.write_file("a1", "note", b" and bob's", append=True, cred=bob) == 22
    assert m.write_file("a1", "bobs", b"mine", cred=bob) == 4
    st = (tmp_path / "mem/a1/bobs").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (BOB, BOB, 0o644)
    denied(m.write_file, "a1", "bobs", b"x", cred=alice)  # bob's own 0644 file
    # a sticky directory: only an entry's owner (or the directory's) deletes it
    m.set_metadata("a1", "", mode=0o1770)
    m.set_metadata("a1", "bobs", mode=0o666)
    m.write_file("a1", "mine", b"b", cred=bob)
    e = denied(m.delete, "a1", "note", bob)
    assert "sticky" in e.message
    m.delete("a1", "mine", bob)
    m.delete("a1", "bobs", alice)  # the directory's owner
    with pytest.raises(NotFound):
        m.read_all("a1", "mine")


def test_search_on_every_directory_and_read_on_the_directory_to_list(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.set_metadata("a1", "", mode=0o755)
    m.mkdir("a1", "d", 0o711, (ALICE, ALICE))
    m.mkdir("a1", "d/inner", 0o700, (ALICE, ALICE))
    m.create("a1", "d/f", 0o644, (ALICE, ALICE))
    m.write_file("a1", "d/inner/secret", b"s")
    assert m.read_all("a1", "d/f", bob) == b""  # search on d is enough to reach a file
    e = denied(m.list_entries, "a1", "d", bob)  # but listing needs read
    assert "list" in e.message
    e = denied(m.read_all, "a1", "d/inner/secret", bob)
    assert "search mem/a1/d/inner" in e.message
    assert [x["name"] for x in m.list_entries("a1", "d", alice)] == ["f", "inner"]
    with pytest.raises(KernelError) as err:  # a file is not a directory, whoever asks
        m.list_entries("a1", "note", bob)
    assert err.value.errno == errno.ENOTDIR
    m.set_metadata("a1", "note", mode=0o600)
    denied(m.read_all, "a1", "note", bob)  # the file's own bits


def test_symbolic_links_never_lead_into_other_memory(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.ensure_agent("c1", owner=(CAROL, CAROL))
    for name, target in (("link", "../a1/note"), ("abs", str(tmp_path / "mem/a1/note"))):
        m.symlink("c1", name, target.encode(), (CAROL, CAROL))
        with pytest.raises(KernelError) as e:
            m.read_all("c1", name, carol)
        assert e.value.errno == errno.ELOOP
        with pytest.raises(KernelError) as e:
            m.write_file("c1", name, b"x", cred=carol)
        assert e.value.errno == errno.ELOOP
    m.symlink("c1", "dir", b"../a1", (CAROL, CAROL))
    with pytest.raises(KernelError) as e:
        m.read_all("c1", "dir/note", carol)
    assert e.value.errno == errno.ELOOP
    assert {x["name"]: x["kind"] for x in m.list_entries("c1", "", carol)}["dir"] == "symlink"
    m.delete("c1", "dir", carol)  # removing a link is an unlink of the link itself
    assert (tmp_path / "mem/a1/note").read_bytes() == b"alice's note"


# ---- syscalls and tools through the kernel ---------------------------------------------------


def call(**fields: object) -> bytes:
    return json.dumps(fields).encode()


async def run(kernel: Kernel, agent: str, /, **fields: object) -> tuple[ResultState, str, int]:
    result = kernel.submit(agent, call(**fields))
    await result.wait_finished()
    return result.state, result.body().decode(), result.errno


async def test_syscalls_act_as_the_agents_owner(kernel: Kernel) -> None:
    kernel.create_agent("a1", uid=ALICE, gid=TEAM)
    kernel.create_agent("a2", uid=ALICE, gid=TEAM)
    kernel.create_agent("b1", uid=BOB, gid=TEAM)
    kernel.create_agent("c1", uid=CAROL, gid=CAROL)
    top = kernel.config.data_dir / "mem" / "a1"
    assert (top.stat().st_uid, stat.S_IMODE(top.stat().st_mode)) == (ALICE, 0o700)
    state, text, _ = await run(kernel, "a1", call="mem_write", path="note", content="hello")
    assert state is ResultState.DONE and text.startswith("ok")
    assert (top / "note").stat().st_uid == ALICE

    # another agent's memory needs the capability first, whoever owns it
    state, text, code = await run(kernel, "a2", call="mem_read", agent="a1", path="note")
    assert (state, code) == (ResultState.FAILED, errno.EACCES) and "mem_read" in text
    state, text, code = await run(kernel, "a2", call="mem_list", agent="a1")
    assert code == errno.EACCES and "mem_read" in text
    kernel.update_config("a2", call(capabilities={"mem_read": ["a*"]}), uid=ALICE)
    state, text, _ = await run(kernel, "a2", call="mem_read", agent="a1", path="note")
    assert (state, text) == (ResultState.DONE, "hello\n")
    state, text, _ = await run(kernel, "a2", call="mem_list", agent="a1")
    assert [json.loads(line)["name"] for line in text.splitlines()] == ["note"]

    # with the capability, the owner's file permissions still decide
    for agent in ("b1", "c1"):
        kernel.update_config(agent, call(capabilities={"mem_read": ["a1"]}), uid=0)
        state, text, code = await run(kernel, agent, call="mem_read", agent="a1", path="note")
        assert (state, code) == (ResultState.FAILED, errno.EACCES), text
        assert "mem/a1/note" in text and "mem_read" not in text
    os.chmod(top, 0o750)  # a1's owner shares it with the group (TEAM is a1's directory's)
    os.chown(top, ALICE, TEAM)
    os.chmod(top / "note", 0o640)
    os.chown(top / "note", ALICE, TEAM)
    state, text, _ = await run(kernel, "b1", call="mem_read", agent="a1", path="note")
    assert (state, text) == (ResultState.DONE, "hello\n")
    state, _, code = await run(kernel, "c1", call="mem_read", agent="a1", path="note")
    assert code == errno.EACCES

    # writes and deletes only ever touch the agent's own memory
    with pytest.raises(InvalidArgument, match='unknown field "agent"'):
        kernel.submit("b1", call(call="mem_write", agent="a1", path="n", content="x"))
    with pytest.raises(InvalidArgument, match='unknown field "agent"'):
        kernel.submit("b1", call(call="mem_delete", agent="a1", path="note"))

    # an agent field that is no agent's name is refused before anything runs
    for bad in ("../a1", "a1/..", "..", ".", "a/b", "", "x" * 65):
        with pytest.raises(InvalidArgument):
            kernel.submit("b1", call(call="mem_read", agent=bad, path="note"))


async def test_memory_field_of_llm_calls_reads_as_the_owner(kernel: Kernel) -> None:
    kernel.create_agent("a1", uid=ALICE, gid=ALICE)
    await run(kernel, "a1", call="mem_write", path="open", content="fine")
    await run(kernel, "a1", call="mem_write", path="closed", content="hidden")
    os.chmod(kernel.config.data_dir / "mem/a1/closed", 0o000)  # even the owner may not read
    llm = {"call": "llm", "prompt": "hi", "max_tokens": 1}
    state, _, _ = await run(kernel, "a1", **llm, memory=["open"])
    assert state is ResultState.DONE
    state, text, code = await run(kernel, "a1", **llm, memory=["open", "closed"])
    assert (state, code) == (ResultState.FAILED, errno.EACCES) and "mem/a1/closed" in text


async def test_tools_carry_the_agent_field_and_a_person_names_the_agent(kernel: Kernel) -> None:
    kernel.create_agent("a1", uid=ALICE, gid=ALICE)
    kernel.create_agent("a2", uid=ALICE, gid=ALICE)
    await run(kernel, "a1", call="mem_write", path="note", content="hello")
    schema = (await kernel.tools.spec("mem_read")).schema
    assert "agent" in schema["properties"]
    as_a2 = Caller("a2", ALICE, ALICE)
    r = await kernel.tools.call("mem_read", {"agent": "a1", "path": "note"}, as_a2)
    assert not r.ok and "mem_read" in r.error
    kernel.update_config("a2", call(capabilities={"mem_read": ["a1"]}), uid=ALICE)
    r = await kernel.tools.call("mem_read", {"agent": "a1", "path": "note"}, as_a2)
    assert (r.ok, r.value) == (True, "hello")
    r = await kernel.tools.call("mem_list", {"agent": "a1"}, as_a2)
    assert r.ok and [e["name"] for e in r.value] == ["note"]
    # a person calling the tool directly: only their file permissions bind them
    r = await kernel.tools.call("mem_read", {"agent": "a1", "path": "note"}, Caller("", BOB, BOB))
    assert not r.ok and "permission denied" in r.error
    r = await kernel.tools.call("mem_read", {"agent": "a1", "path": "note"}, Caller("", 0, 0))
    assert (r.ok, r.value) == (True, "hello")
    r = await kernel.tools.call("mem_read", {"path": "a1/note"}, Caller("", 0, 0))
    assert not r.ok and '"agent"' in r.error  # no agent of their own to default to
    r = await kernel.tools.call("mem_write", {"path": "x", "content": "y"}, Caller("", 0, 0))
    assert not r.ok and "as an agent" in r.error
