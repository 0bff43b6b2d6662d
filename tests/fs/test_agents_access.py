"""An agent's files are its owner's: other users reach them only as far as the owner opens the
agent directory with ``chmod``/``chgrp``, and only the owner (or root) changes who it belongs to
or what it may do. Real users (``tests/users.py``) on one shared mount made with
``--allow-other``: alice owns the agent; bob shares her group ``aiosfs-team``; carol does not.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator

import pytest

from kernel.access import R_OK, W_OK, X_OK, Cred, agent_file_mode, agent_permits
from tests.mounting import Mount, mounted
from tests.users import SHARED_GROUP, User, public_tmpdir, shared_gid, three_users

# the agent's files, what their owner may do with each, and how another user would use them
READABLE = ["history", "results/1", "results/1.json", "out", "stream", "status", "config",
            "ctl", "syscall"]  # fmt: skip
WRITABLE = ["syscall", "config", "ctl", "history"]
NATURAL = {
    "syscall": 0o600, "out": 0o400, "stream": 0o400, "status": 0o400, "config": 0o600,
    "history": 0o600, "ctl": 0o600, "results": 0o500, "results/1": 0o400, "results/1.json": 0o400,
}  # fmt: skip

OPEN_READ = "os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))"
OPEN_WRITE = "os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))"


@pytest.fixture(scope="module")
def users() -> tuple[User, User, User]:
    return three_users()


@pytest.fixture(scope="module")
def mount() -> Iterator[Mount]:
    tmp = public_tmpdir("aiosfs-agents-access-")
    try:
        with mounted(tmp, "tiny-random", "--allow-other") as m:
            yield m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(mount: Mount, users: tuple[User, User, User]) -> str:
    """alice's agent, with one answer in ``results/`` and a turn in its history."""
    alice = users[0]
    d = mount.p("agents/alices")
    alice.ok(f"mkdir {d} && echo max_tokens=2 > {d}/config && echo hi > {d}/syscall")
    assert alice.ok(f"cat {d}/out")
    return d


def chmod_as_alice(alice: User, d: str, mode: str) -> None:
    alice.ok(f"chmod {mode} {d} && chgrp {SHARED_GROUP} {d}")


def perm(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_closed_to_everyone_else_by_default(agent: str, users: tuple[User, User, User]) -> None:
    alice, bob, carol = users
    st = os.stat(agent)
    assert (st.st_uid, st.st_gid, perm(agent)) == (alice.uid, alice.gid, 0o700)
    for f, natural in NATURAL.items():  # ls -l: the owner, and the owner's bits only
        sf = os.stat(os.path.join(agent, f))
        assert (sf.st_uid, sf.st_gid, stat.S_IMODE(sf.st_mode)) == (alice.uid, alice.gid, natural)
    for user in (bob, carol):
        assert user.errno_of("os.listdir(path)", path=agent) == errno.EACCES
        for f in READABLE:
            path = os.path.join(agent, f)
            assert user.errno_of(OPEN_READ, path=path) == errno.EACCES, (user.name, f)
        for f in WRITABLE:
            path = os.path.join(agent, f)
            assert user.errno_of(OPEN_WRITE, path=path) == errno.EACCES, (user.name, f)
    for f in READABLE:  # the owner reads every one
        assert alice.errno_of(OPEN_READ, path=os.path.join(agent, f)) == 0, f


def test_chmod_750_lends_the_group_what_reads(agent: str, users: tuple[User, User, User]) -> None:
    alice, bob, carol = users
    chmod_as_alice(alice, agent, "750")
    st = os.stat(agent)
    assert (st.st_gid, perm(agent)) == (shared_gid(), 0o750)
    for f, natural in NATURAL.items():  # each file: its owner's bits, the readable ones for all
        assert perm(os.path.join(agent, f)) == natural | (natural & 0o500) >> 3, f
    assert "status" in bob.ok(f"ls {agent}").split()
    status = json.loads(bob.ok(f"cat {agent}/status"))
    assert status["uid"] == alice.uid
    assert bob.ok(f"cat {agent}/history") and bob.ok(f"cat {agent}/results/1")
    assert json.loads(bob.ok(f"cat {agent}/results/1.json"))["id"] == 1
    assert bob.errno_of(OPEN_READ, path=f"{agent}/out") == 0
    for f in WRITABLE:
        assert bob.errno_of(OPEN_WRITE, path=f"{agent}/{f}") == errno.EACCES, f
    assert carol.errno_of("os.listdir(path)", path=agent) == errno.EACCES
    for f in READABLE:
        assert carol.errno_of(OPEN_READ, path=f"{agent}/{f}") == errno.EACCES, f


def test_chmod_770_lends_the_agent(agent: str, users: tuple[User, User, User]) -> None:
    alice, bob, carol = users
    chmod_as_alice(alice, agent, "770")
    assert perm(f"{agent}/syscall") == 0o660 and perm(f"{agent}/status") == 0o440
    # bob submits on a transaction descriptor and reads his own answer
    assert bob.ok(f"exec 3<>{agent}/syscall && printf 'yo\\n' >&3 && cat <&3")
    assert carol.errno_of(OPEN_WRITE, path=f"{agent}/syscall") == errno.EACCES
    # closed again: bob's access goes with it at once
    alice.ok(f"chmod 700 {agent}")
    assert bob.errno_of(OPEN_READ, path=f"{agent}/status") == errno.EACCES
    assert bob.errno_of("os.stat(path)", path=f"{agent}/results/1") == errno.EACCES


def test_config_keys_that_change_privileges_are_the_owners(
    agent: str, users: tuple[User, User, User]
) -> None:
    alice, bob, _ = users
    chmod_as_alice(alice, agent, "770")
    write = "fd = os.open(path, os.O_WRONLY | os.O_TRUNC)\ntry:\n    os.write(fd, data.encode())\n"
    write += "finally:\n    os.close(fd)\n"
    caps = json.dumps({"capabilities": {"store_write": ["/notes"]}})
    assert bob.errno_of(write, path=f"{agent}/config", data=caps) == errno.EPERM  # at write()
    assert bob.errno_of(write, path=f"{agent}/config", data="max_tokens=3\n") == 0
    config = json.loads(alice.ok(f"cat {agent}/config"))
    assert config["max_tokens"] == 3 and not config["capabilities"]
    assert alice.errno_of(write, path=f"{agent}/config", data=caps) == 0
    status = json.loads(alice.ok(f"cat {agent}/status"))
    assert status["capabilities"]["store_write"] == ["/notes"]
    alice.ok(f"echo capabilities.store_write= > {agent}/config")  # back to the default


def test_only_the_owner_changes_mode_and_group_and_root_the_owner(
    agent: str, users: tuple[User, User, User]
) -> None:
    alice, bob, carol = users
    chmod_as_alice(alice, agent, "770")
    for user in (bob, carol):
        assert user.errno_of("os.chmod(path, 0o777)", path=agent) == errno.EPERM
        assert user.errno_of(f"os.chown(path, -1, {user.gid})", path=agent) == errno.EPERM
        assert user.errno_of(f"os.chown(path, {user.uid}, -1)", path=agent) == errno.EPERM
        assert user.errno_of("os.rmdir(path)", path=agent) == errno.EPERM
    # alice may not hand the agent to a group she is not in, nor to another user
    assert alice.errno_of(f"os.chown(path, -1, {carol.gid})", path=agent) == errno.EPERM
    assert alice.errno_of(f"os.chown(path, {bob.uid}, -1)", path=agent) == errno.EPERM
    assert os.stat(agent).st_gid == shared_gid()
    # the files inside are not controls of their own
    assert alice.errno_of("os.chmod(path, 0o644)", path=f"{agent}/status") == errno.EPERM
    with pytest.raises(PermissionError):
        os.chmod(f"{agent}/status", 0o644)
    # only the 0777 bits count
    alice.ok(f"chmod 3750 {agent}")
    assert perm(agent) == 0o750
    # root gives the agent to carol: she owns it and its files now, and alice is a stranger
    os.chown(agent, carol.uid, carol.gid)
    try:
        assert json.loads(carol.ok(f"cat {agent}/status"))["uid"] == carol.uid
        assert os.stat(f"{agent}/syscall").st_uid == carol.uid
        assert alice.errno_of(OPEN_READ, path=f"{agent}/status") == errno.EACCES
        carol.ok(f"chmod 700 {agent}")
    finally:
        os.chown(agent, alice.uid, alice.gid)
    assert alice.ok(f"cat {agent}/status")


def test_root_still_cannot_open_a_read_only_file_for_writing(agent: str) -> None:
    for f in ("status", "out", "results/1"):
        with pytest.raises(PermissionError):
            open(os.path.join(agent, f), "w").close()


def test_the_rule_the_kernel_checks_is_the_one_ls_shows() -> None:
    """``agent_permits`` (what ``ask_agent`` checks) agrees with the derived modes for every
    directory mode, file and class of user."""
    assert agent_file_mode(0o6, 0o750) == 0o640
    assert agent_file_mode(0o4, 0o705) == 0o404
    assert agent_file_mode(0o6, 0o760) == 0o600  # no search bit on the directory: nothing
    assert agent_file_mode(0o5, 0o711) == 0o511
    owner, member, other = Cred(10, 10), Cred(11, 11, frozenset({20})), Cred(12, 12)
    for mode in range(0o1000):
        for natural in (0o6, 0o4, 0o5):
            derived = agent_file_mode(natural, mode)
            for shift, cred in ((6, owner), (3, member), (0, other)):
                for want in (R_OK, W_OK, X_OK):
                    search = bool((mode >> shift) & X_OK)
                    expect = search and bool((derived >> shift) & want)
                    assert agent_permits(cred, 10, 20, mode, want, natural) == expect
    assert agent_permits(Cred(0, 0), 10, 20, 0o700, W_OK)  # root is refused nothing
