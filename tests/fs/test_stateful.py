"""Proven under hostile input: a hypothesis state machine drives one real mount with random
sequences of operations across ``agents/``, ``mem/`` and ``store/`` and checks every answer.

Each step is one operation — mkdir, rmdir, create, write at an offset, read, rename (with
``renameat2``'s flags), unlink, truncate, chmod, symlink, link, an agent's config, history, ctl
and syscalls, or something the contract refuses — with valid and hostile input: names of every
length (up to and past NAME_MAX, FUSE's limit and PATH_MAX), names that are not UTF-8, the
memory manager's reserved suffix, the store's reserved names, ``NAME/..`` in paths, bad JSON,
bytes that are not UTF-8, JSON escapes that are not characters, NUL and ``..`` in syscall paths,
writes and truncates far past every limit. After each step:

- the answer is the model's (``stateful_model.py``): success, or the errno it must fail with,
  and that errno is one docs/filesystem.md lists for the operation (its "Errors by operation"
  table, read from the page itself);
- what the step touched reads back as the model says (content, kind, mode, size, link count,
  the listing of its directory), and every few steps the whole tree does;
- the operation finished within ``STEP_TIMEOUT`` (each runs in a worker thread with a
  deadline: a hang fails, it does not stall the suite);
- the daemon is alive and its log has no unexpected ERROR: a handler exception the
  filesystem turned into EIO shows only there.

``test_stateful`` is the short run of ``make test`` (about a minute on two cores);
``test_soak_fs`` is ``make soak-fs``: the same machine for ``AIOSFS_SOAK_FS_OPS`` operations
(default 100,000), printing operations per second and the histogram of answers.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import functools
import json
import os
import random
import shutil
import stat
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aiosfs.harness import describe_log_problems
from tests.fs.stateful_model import (
    FUSE_NAME_MAX,
    Directory,
    Expect,
    File,
    Key,
    Link,
    Magic,
    Model,
    Node,
    Refused,
    documented_errnos,
    fail,
    is_utf8,
    succeed,
)
from tests.mounting import Mount, mounted, write_config

pytestmark = pytest.mark.mount

T = TypeVar("T")

LIMIT = 1 << 20  # mem_agent_mb = store_max_file_mb = 1: the EFBIG edges are cheap to reach
SYSCALL_LIMIT = 65536  # max_syscall_bytes, which also bounds config, history and ctl writes
STEP_TIMEOUT = float(os.environ.get("AIOSFS_STATEFUL_STEP_TIMEOUT", "30"))
UMASK = 0o022
FULL_CHECK_EVERY = 8  # steps between comparisons of the whole tree

NAMES = (b"a", b"b", b"c")  # few names, so that operations meet what others made
HOSTILE_NAMES = (
    b"L" * 255,  # the longest name there is
    "é".encode() * 127 + b"x",  # 255 bytes in 128 characters
    b"L" * 256,  # one byte too long: the daemon says so
    "é".encode() * 128,  # 256 bytes in 128 characters
    b"L" * FUSE_NAME_MAX,
    b"L" * (FUSE_NAME_MAX + 1),  # the FUSE kernel module says so
    b"L" * 4096,  # past PATH_MAX on its own
    b"\xff\xfe",  # not UTF-8
    b"a\x80b",
    b"x.aiosfs-tmp",  # the memory manager's temporary files
    b".search",  # the store's query directories, found but never listed
    b".grep",
    b".versions",  # reserved in the store
    b".hidden",
    "ünï 🙂".encode(),
    b"line\nbreak",
    b"-rf *",
)
TARGETS = (  # symbolic links that lead nowhere that exists, whatever a client does with them
    b"nowhere/x",
    b"/nonexistent-aiosfs-test/x",
    b"../" * 24 + b"nonexistent-aiosfs-test",
    b"\xff\xfe/x",
    (b"abc/" * 1024)[:4095],  # the longest a target may be
    b"t" * 4096,  # one byte too long: ENAMETOOLONG
    b"",  # empty: ENOENT
    None,  # into the mount itself (to nothing there): the daemon must never follow it
)
MODES = (0o644, 0o600, 0o755, 0o700, 0o777, 0o4755, 0o2755, 0o1777, 0o000, 0o444)
SIZES = (0, 1, 7, 4095, 4096, 65535, 65536, 65537, 100_000, LIMIT - 1, LIMIT, LIMIT + 1)
HUGE = (2**31, 2**40, 2**62, 2**63 - 1)
OFFSETS = (0, 1, 100, 4095, 4096, 65535, 65536, 70_000, LIMIT - 5, LIMIT, 2**40, 2**62)
LENGTHS = (0, 1, 5, 100, 4096, 65537)

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
_libc.renameat2.argtypes.append(ctypes.c_uint)
AT_FDCWD = -100


def renameat2(old: bytes, new: bytes, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, old, AT_FDCWD, new, flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old, None, new)


def answer(data: bytes | bytearray) -> str:
    """A read call's answer: the content as text, with a final newline if it lacks one."""
    text = data.decode(errors="replace")
    return text if not text or text.endswith("\n") else text + "\n"


def describe(expect: Expect) -> str:
    return "success" if expect.ok else "/".join(errno.errorcode[c] for c in sorted(expect.errnos))


def remove_tree(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)


def is_dir(node: object) -> bool:
    return isinstance(node, Directory | Magic)


def content(seed: int, n: int) -> bytes:
    """``n`` bytes that differ from seed to seed, so a misplaced block shows."""
    return random.Random(seed).randbytes(n)


# ---- running operations with a deadline ---------------------------------------------------------


class Hung(AssertionError):
    """An operation on the mount did not finish within its deadline."""


class Runner:
    """Each operation in a worker thread, waited for with a deadline: a hung FUSE request
    fails the step instead of stalling the test. After a hang the stuck thread is abandoned
    and a new one takes the next operation."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.spent: Counter[str] = Counter()  # seconds, by operation
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fs-op")

    def __call__(self, what: str, fn: Callable[[], T]) -> T | OSError:
        future = self.pool.submit(fn)
        start = time.monotonic()
        try:
            return future.result(timeout=self.timeout)
        except OSError as e:
            return e
        except concurrent.futures.TimeoutError:
            self.pool.shutdown(wait=False)
            self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fs-op")
            raise Hung(f"{what} did not finish within {self.timeout} s") from None
        finally:
            self.spent[what.split(" ")[0]] += time.monotonic() - start


@dataclass
class Tally:
    """What a run did: steps, and every answer by operation (the soak's histogram)."""

    steps: int = 0
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def count(self, op: str, outcome: object) -> None:
        if isinstance(outcome, OSError):
            name = errno.errorcode.get(outcome.errno or 0, str(outcome.errno))
        else:
            name = "ok"
        self.answers[(op, name)] += 1

    def report(self, runner: Runner) -> str:
        took = time.monotonic() - self.started
        by_errno: Counter[str] = Counter()
        for (_op, name), n in self.answers.items():
            by_errno[name] += n
        lines = [
            f"{self.steps} operations in {took:.1f} s: {self.steps / max(took, 1e-9):.1f} ops/s",
            "answers: " + ", ".join(f"{k} {v}" for k, v in by_errno.most_common()),
        ]
        ops = sorted({op for op, _ in self.answers})
        for op in ops:
            row = sorted(((n, k) for (o, n), k in self.answers.items() if o == op), key=str)
            lines.append(f"  {op:<14} " + ", ".join(f"{n} {k}" for n, k in row))
        slowest = sorted(runner.spent.items(), key=lambda kv: -kv[1])[:6]
        lines.append(
            "seconds waited on the mount: " + ", ".join(f"{k} {v:.1f}" for k, v in slowest)
        )
        return "\n".join(lines)


# ---- the agents' side of the model ---------------------------------------------------------------

CONFIG_DEFAULTS: dict[str, Any] = {
    "max_tokens": 2,  # set when the machine makes the agent: answers stay short
    "temperature": 0.0,
    "priority": 0,
    "system": None,
    "on_restart": "rerun",
}
CONFIG_VALID = (
    ("max_tokens", "1", 1),
    ("max_tokens", "3", 3),
    ("temperature", "0.5", 0.5),
    ("temperature", "0", 0.0),
    ("priority", "-100", -100),
    ("priority", "100", 100),
    ("system", "be brief", "be brief"),
    ("system", "", None),
    ("on_restart", "fail", "fail"),
    ("on_restart", "rerun", "rerun"),
)
CONFIG_INVALID = (
    "max_tokens=0\n",
    "max_tokens=5000\n",
    "max_tokens=x\n",
    "priority=101\n",
    "temperature=-1\n",
    "on_restart=maybe\n",
    "model=no-such-model\n",
    "bogus=1\n",
    "=5\n",
    "max_tokens=1\nbogus=2\n",  # one bad line: nothing changes
    "{",
    "[1]\n",
    '{"max_tokens": "2"}\n',
    '{"system": "\\udcff"}\n',  # an escape that is half a surrogate pair: not text
)


@dataclass
class AgentModel:
    config: dict[str, Any] = field(default_factory=lambda: dict(CONFIG_DEFAULTS))
    history: list[dict[str, str]] = field(default_factory=list)
    # undelivered results, oldest first: True an error, False an answer, None either (a
    # ``cancel`` may have caught it still running)
    out: deque[bool | None] = field(default_factory=deque)


HISTORY_INVALID = (
    b'{"role": "robot", "content": "x"}\n',
    b"not json\n",
    b'{"role": "user"}\n',
    b'{"role": "user", "content": 3}\n',
    b'{"role": "user", "content": "\\ud800"}\n',
    b"\xff\xfe\n",
)
CTL = (  # (bytes, valid, resets the history)
    (b"cancel\n", True, False),
    (b"reset\n", True, True),
    (b"cancel\nreset\n", True, True),
    (b"stop\n", False, False),
    (b"reset\nbogus\n", False, False),
    (b"\xff\n", False, False),
)
SYSCALL_INVALID = (  # written to agents/NAME/syscall: each fails with EINVAL
    b"{bad\n",
    b"{bad",  # incomplete at the write: refused at the close (or the read)
    b'{"call": 3}\n',
    b'{"call": "nope"}\n',
    b'{"call": "llm"}\n',
    b'{"call": "llm", "prompt": "x", "bogus": 1}\n',
    b'{"call": "llm", "prompt": "x", "max_tokens": 0}\n',
    b'{"call": "llm", "prompt": "x", "max_tokens": "two"}\n',
    b'{"call": "llm", "prompt": "\\udcff"}\n',
    b'{"call": "mem_read", "path": "a\\u0000b"}\n',
    b'{"call": "mem_read", "path": "../x"}\n',
    b'{"call": "mem_read", "agent": "../x", "path": "a"}\n',
    b'{"call": "mem_write", "path": "a/./b", "content": "x"}\n',
    b'{"call": "mem_write", "path": "a", "content": "\\udcff"}\n',
    b'{"call": "store_read", "path": ".."}\n',
    b'{"call": "store_write", "path": "", "content": "x"}\n',
    b"\xff\xfe plain text that is not UTF-8\n",
    b"   \n",
    b"x" * (SYSCALL_LIMIT + 1),  # over max_syscall_bytes: EFBIG
)


# ---- the machine ---------------------------------------------------------------------------------


def op_create(path: bytes, flags: int, mode: int) -> None:
    os.close(os.open(path, flags, mode))


def write_then_close(fd: int, write: Callable[[], int]) -> int:
    """Run ``write`` on ``fd`` and close it; when the write fails, the close may fail only the
    same way."""
    try:
        n = write()
    except OSError as e:
        try:
            os.close(fd)
        except OSError as again:
            assert again.errno == e.errno, f"write failed with {e}, then its close with {again}"
        raise
    os.close(fd)
    return n


def op_write(path: bytes, flags: int, mode: int, offset: int, data: bytes) -> int:
    """open, one pwrite, close."""
    fd = os.open(path, flags, mode)
    return write_then_close(fd, lambda: os.pwrite(fd, data, offset) if data else 0)


def op_read(path: bytes, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def op_ftruncate(path: bytes, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def op_control(path: str, data: bytes, flags: int) -> None:
    """Write a control file (config, history, ctl) in one write and close it."""
    fd = os.open(path, flags)
    write_then_close(fd, lambda: os.write(fd, data) if data else 0)


def op_transaction(path: str, body: bytes) -> bytes:
    """One syscall on a transaction descriptor: write it, read its answer, close."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.write(fd, body)
        out = b""
        while chunk := os.read(fd, 65536):
            out += chunk
        return out
    finally:
        os.close(fd)


def op_read_out(path: str, nonblocking: bool) -> bytes:
    fd = os.open(path, os.O_RDONLY | (os.O_NONBLOCK if nonblocking else 0))
    try:
        out = b""
        while chunk := os.read(fd, 65536):
            out += chunk
        return out
    finally:
        os.close(fd)


class FsMachine(RuleBasedStateMachine):
    """One example: its own ``store/RUN`` and agents (``mem/AGENT`` with them), made at the
    start and removed at the end, so examples never see each other's files."""

    mount: ClassVar[Mount]
    runner: ClassVar[Runner]
    tally: ClassVar[Tally]
    allowed: ClassVar[dict[str, frozenset[int]]]
    runs: ClassVar[Iterator[int]]

    def __init__(self) -> None:
        super().__init__()
        self.run = f"sm{next(self.runs)}"
        self.model = Model(os.fsencode(self.mount.path), {b"mem": LIMIT, b"store": LIMIT})
        self.agents: dict[str, AgentModel] = {}
        self.ever: list[str] = []  # every agent name used: their mem/ dirs go at the end
        self.touched: set[Key] = set()
        self.steps = 0

    # ---- plumbing -------------------------------------------------------------------------

    def agent_names(self) -> list[str]:
        return [f"{self.run}{x}" for x in "abc"]

    def roots(self) -> list[Key]:
        roots = [(b"store", self.run.encode())]
        roots += [(b"mem", a.encode()) for a in self.ever]
        return roots

    def do(self, op: str, fn: Callable[[], T], expect: Expect, *touch: Key) -> T | OSError:
        """Run ``fn`` on the mount; its answer must be the model's, with an errno the contract
        lists for ``op``; on success the model changes as ``expect`` says."""
        got = self.runner(op, fn)
        self.tally.count(op, got)
        self.steps += 1
        self.tally.steps += 1
        if isinstance(got, OSError):
            code = got.errno or 0
            name = errno.errorcode.get(code, str(code))
            assert code in self.allowed[op], (
                f"{op}: {got} — {name} is not an errno docs/filesystem.md lists for {op}"
            )
            assert code in expect.errnos, f"{op}: {got}; the model expected {describe(expect)}"
        elif expect.partial is not None:
            assert isinstance(got, int), f"{op} across a limit answered {got!r}"
            expect.partial(got)
        else:
            assert expect.ok, f"{op} succeeded ({got!r:.200}); the model expected " + describe(
                expect
            )
            if expect.apply is not None:
                expect.apply()
        self.touched.update(touch)
        return got

    def io(self, what: str, fn: Callable[[], T]) -> T:
        """A step of the test's own (setting up, reading back) that must succeed, also with
        a deadline: nothing the test does to the mount may hang it."""
        got = self.runner(what, fn)
        if isinstance(got, OSError):
            raise AssertionError(f"{what}: {got}")
        return got

    def judge(self, verdict: Callable[[], Expect]) -> Expect:
        try:
            return verdict()
        except Refused as r:
            return fail(r.code)

    def draw_path(
        self,
        data: st.DataObject,
        hostile: bool = True,
        existing: float = 0.6,
        prefer: type[Node] | None = None,
    ) -> Key:
        """A path below one of the roots: often one that exists (of the kind ``prefer`` if
        there is one), else made of the few NAMES (so that it may collide), now and then ending
        in a hostile name or taking a detour through ``NAME/..``."""
        roots = self.roots()
        below = [k for k in self.model.nodes if len(k) > 2 and k[:2] in roots]
        liked = [k for k in below if isinstance(self.model.nodes[k], prefer or object)]
        if liked and data.draw(st.integers(0, 3)):
            below = liked
        if below and data.draw(st.floats(0, 1)) < existing:
            key: Key = data.draw(st.sampled_from(sorted(below)))
            comps = list(key[2:])
            root = key[:2]
        elif data.draw(st.integers(0, 4)):  # a new name in a directory that exists
            dirs = [k for k, v in self.model.nodes.items() if isinstance(v, Directory)]
            parent: Key = data.draw(st.sampled_from(sorted(k for k in dirs if k[:2] in roots)))
            root, comps = parent[:2], [*parent[2:], data.draw(st.sampled_from(NAMES))]
        else:
            root = data.draw(st.sampled_from(roots))
            comps = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))
        if hostile and data.draw(st.integers(0, 3)) == 0:
            bad = data.draw(st.sampled_from((*HOSTILE_NAMES, None)))
            # None: a name of any length up to a little past NAME_MAX
            comps[-1] = bad if bad is not None else b"n" * data.draw(st.integers(1, 300))
        if data.draw(st.integers(0, 14)) == 0:
            at = data.draw(st.integers(0, len(comps) - 1))
            comps[at:at] = [data.draw(st.sampled_from(NAMES)), b".."]
        return root + tuple(comps)

    def split(self, key: Key) -> tuple[Key, list[bytes]]:
        return key[:2], list(key[2:])

    def comps_root(self, key: Key) -> tuple[list[bytes], Key]:
        return list(key[2:]), key[:2]

    def resolve(self, key: Key) -> Key:
        """The canonical key of ``key`` (its ``NAME/..`` detours taken out): call only once
        the walk succeeded."""
        out: list[bytes] = []
        for name in key[2:]:
            if name == b"..":
                out.pop()
            elif name != b".":
                out.append(name)
        return key[:2] + tuple(out)

    def walk(self, key: Key) -> tuple[Key, bytes, Any]:
        """(parent, last name, what it finds) or Refused."""
        self.model.check_length(key)
        root, comps = self.split(key)
        parent, name = self.model.parent_of(comps, root)
        return parent, name, self.model.lookup(parent, name)

    # ---- lifecycle -------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.io("mkdir store/RUN", lambda: os.mkdir(self.mount.p("store", self.run)))
        self.model.add((b"store", self.run.encode()), Directory(0o755))
        self._make_agent(self.agent_names()[0])

    def _make_agent(self, name: str) -> None:
        self.io("mkdir agents/NAME", lambda: os.mkdir(self.mount.p("agents", name)))
        self._made_agent(name)

    def _made_agent(self, name: str) -> None:
        """The machine's settings for a new agent: short answers, and the example's store
        directory writable by its store_* calls."""
        settings_ = f"max_tokens=2\ncapabilities.store_write=/{self.run}\n"
        self.io("config", lambda: self.mount.write(f"agents/{name}/config", settings_))
        self.agents[name] = AgentModel()
        if name not in self.ever:
            self.ever.append(name)
        key = (b"mem", name.encode())
        if key not in self.model.nodes:
            self.model.add(key, Directory(0o700))
        else:
            self.model.nodes[key] = Directory(0o700)  # handed over again: 0700
        self.touched.add(key)

    def teardown(self) -> None:
        """Check the whole tree once more, then remove everything this example made."""
        try:
            if self.mount.proc.poll() is None:
                self.check_tree()
        finally:
            if self.mount.proc.poll() is None:
                for name in list(self.agents):
                    agent = self.mount.p("agents", name)
                    self.io("rmdir agents/NAME", functools.partial(os.rmdir, agent))
                for name in self.ever:
                    mem = self.mount.p("mem", name)
                    self.io("rm -r mem/NAME", functools.partial(remove_tree, mem))
                self.io("rm -r store/RUN", lambda: shutil.rmtree(self.mount.p("store", self.run)))
            self.check_daemon()

    # ---- invariants --------------------------------------------------------------------------

    @invariant()
    def daemon_alive_and_log_clean(self) -> None:
        self.check_daemon()

    def check_daemon(self) -> None:
        assert self.mount.proc.poll() is None, (
            f"the daemon died ({self.mount.proc.returncode}):\n{self.mount.log_tail()}"
        )
        problems = self.mount.log_problems()
        assert not problems, describe_log_problems(self.mount, problems)

    @invariant()
    def mount_shows_the_model(self) -> None:
        if self.steps and self.steps % FULL_CHECK_EVERY == 0:
            self.check_tree()
        else:
            self.check_touched()

    def check_touched(self) -> None:
        touched, self.touched = self.touched, set()
        for key in sorted(touched):
            if self.plain(key):
                self.check_entry(key)
            parent = key[:-1]
            if parent in self.model.nodes:
                self.check_entry(parent)

    def plain(self, key: Key) -> bool:
        """Could ``key`` be looked up, and would ENOENT mean it is not there?"""
        try:
            name = key[-1]
            return (
                len(self.model.abs(key)) < 4096
                and len(name) <= 255
                and name not in (b"..", b".")
                and self.resolve(key) == key
                and not (key[0] == b"store" and name in (b".search", b".grep"))
            )
        except IndexError:
            return False

    def check_tree(self) -> None:
        for root in self.roots():
            if root in self.model.nodes:
                for key in sorted(self.model.subtree(root)):
                    self.check_entry(key)
            else:
                self.check_entry(root)
        self.touched.clear()

    def check_entry(self, key: Key) -> None:
        """What the mount shows at ``key`` is what the model has there."""
        path = self.model.abs(key)
        node = self.model.nodes.get(key)
        st_ = self.runner(f"lstat {key}", lambda: os.lstat(path))
        if node is None:
            above = [self.model.nodes.get(key[:i]) for i in range(2, len(key))]
            code = errno.ENOTDIR if any(isinstance(n, File) for n in above) else errno.ENOENT
            if any(isinstance(n, Link) for n in above):
                code = errno.ENOENT  # followed, to nothing
            assert isinstance(st_, OSError) and st_.errno == code, (
                f"{key}: the model has nothing there, the mount shows {st_}"
            )
            return
        assert not isinstance(st_, OSError), f"{key}: the model has {node}, the mount: {st_}"
        kind = stat.S_IFMT(st_.st_mode)
        if isinstance(node, Directory):
            assert kind == stat.S_IFDIR, f"{key}: not a directory: {oct(st_.st_mode)}"
            assert stat.S_IMODE(st_.st_mode) == node.perm, (
                f"{key}: mode {oct(st_.st_mode)}, the model's {oct(node.perm)}"
            )
            names = self.runner(f"listdir {key}", lambda: sorted(os.listdir(path)))
            want = sorted(k[-1] for k in self.model.children(key))
            assert names == want, f"{key}: lists {names}, the model {want}"
            assert st_.st_nlink == self.model.nlink(key), (
                f"{key}: {st_.st_nlink} links, the model {self.model.nlink(key)}"
            )
        elif isinstance(node, File):
            assert kind == stat.S_IFREG, f"{key}: not a file: {oct(st_.st_mode)}"
            assert stat.S_IMODE(st_.st_mode) == node.perm, (
                f"{key}: mode {oct(st_.st_mode)}, the model's {oct(node.perm)}"
            )
            assert st_.st_size == len(node.data), (
                f"{key}: {st_.st_size} bytes, the model {len(node.data)}"
            )
            assert st_.st_nlink == self.model.nlink(key), (
                f"{key}: {st_.st_nlink} links, the model {self.model.nlink(key)}"
            )
            got = self.runner(f"read {key}", lambda: op_read(path, 0, LIMIT + 1))
            assert got == bytes(node.data), f"{key}: content differs from the model's"
        else:
            assert kind == stat.S_IFLNK, f"{key}: not a symbolic link: {oct(st_.st_mode)}"
            target = self.runner(f"readlink {key}", lambda: os.readlink(path))
            assert target == node.target, f"{key}: leads to {target!r}, not {node.target!r}"
            assert st_.st_nlink == self.model.nlink(key)

    # ---- mem/ and store/ -------------------------------------------------------------------

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def mkdir(self, data: st.DataObject, mode: int) -> None:
        key = self.draw_path(data)

        def verdict() -> Expect:
            parent, name, found = self.walk(key)
            if found is not None:
                return fail(errno.EEXIST)
            self.model.creatable(parent, name)
            # mkdir(2) drops setuid and setgid; a setgid parent gives its setgid back
            perm = self.model.inherit_dir_perm(parent, mode & ~UMASK & 0o1777)
            return succeed(lambda: self.model.add((*parent, name), Directory(perm)))

        path = self.model.abs(key)
        self.do("mkdir", lambda: os.mkdir(path, mode), self.judge(verdict), self.resolve_or(key))

    def resolve_or(self, key: Key) -> Key:
        try:
            return self.resolve(key)
        except IndexError:
            return key

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        key = self.draw_path(data, prefer=Directory)

        def verdict() -> Expect:
            parent, name, found = self.walk(key)
            if isinstance(found, Magic):
                return fail(errno.EINVAL)
            if found is None:
                return fail(errno.ENOENT)
            if not isinstance(found, Directory):
                return fail(errno.ENOTDIR)
            if self.model.children((*parent, name)):
                return fail(errno.ENOTEMPTY)
            return succeed(lambda: self.model.remove_tree((*parent, name)))

        path = self.model.abs(key)
        self.do("rmdir", lambda: os.rmdir(path), self.judge(verdict), self.resolve_or(key))

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def create(self, data: st.DataObject, mode: int) -> None:
        key = self.draw_path(data)
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW

        def verdict() -> Expect:
            parent, name, found = self.walk(key)
            if found is not None:
                return fail(errno.EEXIST)
            self.model.creatable(parent, name)
            perm = mode & ~UMASK & 0o7777
            return succeed(lambda: self.model.add((*parent, name), File(bytearray(), perm)))

        path = self.model.abs(key)
        self.do(
            "create", lambda: op_create(path, flags, mode), self.judge(verdict),
            self.resolve_or(key),
        )  # fmt: skip

    @rule(
        data=st.data(),
        offset=st.sampled_from(OFFSETS),
        length=st.sampled_from(LENGTHS),
        seed=st.integers(0, 255),
        flags=st.sampled_from(("", "creat", "trunc", "append", "creat|trunc", "creat|append")),
    )
    def write(self, data: st.DataObject, offset: int, length: int, seed: int, flags: str) -> None:
        key = self.draw_path(data, existing=0.8, prefer=File)
        payload = content(seed, length)
        oflags = os.O_WRONLY | os.O_NOFOLLOW
        oflags |= os.O_CREAT if "creat" in flags else 0
        oflags |= os.O_TRUNC if "trunc" in flags else 0
        oflags |= os.O_APPEND if "append" in flags else 0

        def verdict() -> Expect:
            parent, name, found = self.walk(key)
            if isinstance(found, Magic | Directory):
                return fail(errno.EISDIR)
            if isinstance(found, Link):
                return fail(errno.ELOOP)
            new = found is None
            if new:
                if "creat" not in flags:
                    return fail(errno.ENOENT)
                self.model.creatable(parent, name)
                found = File(bytearray(), 0o644 & ~UMASK)
            node = found
            assert isinstance(node, File)
            tree = self.model.tree(parent)
            start = bytearray() if "trunc" in flags else bytearray(node.data)
            at = len(start) if "append" in flags else offset
            limit = self.model.limits[tree]

            def apply(n: int = len(payload)) -> None:
                buf = start
                if payload:
                    if len(buf) < at:
                        buf.extend(bytes(at - len(buf)))
                    buf[at : at + n] = payload[:n]
                node.data[:] = buf
                if new:
                    self.model.add((*parent, name), node)

            if payload and at + len(payload) > limit:
                # EFBIG at the write; what stays: mem saves what an O_TRUNC open left (an
                # empty file), the store commits nothing of a descriptor that failed
                def refused() -> None:
                    if new:
                        self.model.add((*parent, name), node)
                    if tree == b"mem" and "trunc" in flags:
                        node.data[:] = b""

                def partial(n: int) -> None:
                    # or the part below the limit is written and counted (the OS kernel hands
                    # the daemon a write page by page): never a byte past it
                    assert 0 < n < len(payload) and at + n <= limit, (
                        f"a write of {len(payload)} bytes at {at} across the {limit}-byte "
                        f"limit wrote {n}"
                    )
                    apply(n)

                return Expect(frozenset({errno.EFBIG}), refused, partial)

            return succeed(apply)

        expect = self.judge(verdict)
        path = self.model.abs(key)
        got = self.do(
            "write", lambda: op_write(path, oflags, 0o644, offset, payload), expect,
            self.resolve_or(key),
        )  # fmt: skip
        if isinstance(got, OSError) and got.errno == errno.EFBIG and expect.apply is not None:
            expect.apply()  # a refused write still leaves what the tree documents
        elif not isinstance(got, OSError):
            assert got == len(payload) or expect.partial, f"short write: {got} of {len(payload)}"

    @rule(data=st.data(), offset=st.sampled_from(OFFSETS), size=st.sampled_from(LENGTHS))
    def read(self, data: st.DataObject, offset: int, size: int) -> None:
        key = self.draw_path(data, existing=0.8, prefer=File)
        want: list[bytes] = []

        def verdict() -> Expect:
            _parent, _name, found = self.walk(key)
            if found is None:
                return fail(errno.ENOENT)
            if isinstance(found, Magic | Directory):
                return fail(errno.EISDIR)
            if isinstance(found, Link):
                return fail(errno.ELOOP)
            want.append(bytes(found.data[offset : offset + size]))
            return succeed()

        path = self.model.abs(key)
        got = self.do("read", lambda: op_read(path, offset, size), self.judge(verdict))
        if not isinstance(got, OSError):
            assert got == want[0], f"read {key} at {offset}: not the model's bytes"

    @rule(data=st.data(), how=st.sampled_from(("path", "descriptor")), size=st.data())
    def truncate(self, data: st.DataObject, how: str, size: st.DataObject) -> None:
        key = self.draw_path(data, existing=0.8, prefer=File)
        n = size.draw(st.one_of(st.sampled_from(SIZES), st.sampled_from(HUGE), st.just(-1)))

        def verdict() -> Expect:
            if n < 0 and how == "path":
                return fail(errno.EINVAL)  # truncate(2) looks at the size first
            _parent, _name, found = self.walk(key)
            if found is None:
                return fail(errno.ENOENT)
            if isinstance(found, Magic | Directory):
                return fail(errno.EISDIR)
            if isinstance(found, Link):
                # by path the OS kernel follows it (to nothing); by descriptor O_NOFOLLOW
                return fail(errno.ENOENT if how == "path" else errno.ELOOP)
            if n < 0:
                return fail(errno.EINVAL)
            if n > self.model.limits[self.model.tree(key)]:
                return fail(errno.EFBIG)
            node = found

            def apply() -> None:
                if n < len(node.data):
                    del node.data[n:]
                else:
                    node.data.extend(bytes(n - len(node.data)))

            return succeed(apply)

        path = self.model.abs(key)
        fn = (lambda: os.truncate(path, n)) if how == "path" else (lambda: op_ftruncate(path, n))
        self.do("truncate", fn, self.judge(verdict), self.resolve_or(key))

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def chmod(self, data: st.DataObject, mode: int) -> None:
        key = self.draw_path(data, existing=0.8)

        def verdict() -> Expect:
            _parent, _name, found = self.walk(key)
            if found is None or isinstance(found, Link):  # a link is followed: to nothing
                return fail(errno.ENOENT)
            if isinstance(found, Magic):
                return fail(errno.EPERM)
            node = found

            def apply() -> None:
                node.perm = mode

            return succeed(apply)

        path = self.model.abs(key)
        self.do("chmod", lambda: os.chmod(path, mode), self.judge(verdict), self.resolve_or(key))

    @rule(data=st.data(), to=st.sampled_from(TARGETS))
    def symlink(self, data: st.DataObject, to: bytes | None) -> None:
        key = self.draw_path(data)
        if to is None:
            to = self.model.mount + b"/mem/nonexistent-aiosfs-test"

        def verdict() -> Expect:
            if not to:
                return fail(errno.ENOENT)
            if len(to) >= 4096:
                return fail(errno.ENAMETOOLONG)
            parent, name, found = self.walk(key)
            if found is not None:
                return fail(errno.EEXIST)
            self.model.creatable(parent, name)
            return succeed(lambda: self.model.add((*parent, name), Link(to)))

        path = self.model.abs(key)
        self.do("symlink", lambda: os.symlink(to, path), self.judge(verdict), self.resolve_or(key))

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        src = self.draw_path(data, existing=0.9, prefer=File)
        dst = self.draw_path(data, existing=0.3)

        def verdict() -> Expect:
            _sp, _sn, found = self.walk(src)
            if found is None:
                return fail(errno.ENOENT)
            parent, name, there = self.walk(dst)
            if there is not None:
                return fail(errno.EEXIST)
            if isinstance(found, Magic | Directory):
                return fail(errno.EPERM)
            if not is_utf8(name):  # refused before any tree sees it
                return fail(errno.EINVAL)
            if self.model.tree(src) != self.model.tree(dst):
                return fail(errno.EXDEV)
            self.model.creatable(parent, name)
            node = found
            return succeed(lambda: self.model.add((*parent, name), node))

        a, b = self.model.abs(src), self.model.abs(dst)
        self.do(
            "link", lambda: os.link(a, b, follow_symlinks=False), self.judge(verdict),
            self.resolve_or(src), self.resolve_or(dst),
        )  # fmt: skip

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        key = self.draw_path(data, existing=0.8)

        def verdict() -> Expect:
            parent, name, found = self.walk(key)
            if found is None:
                return fail(errno.ENOENT)
            if isinstance(found, Magic | Directory):
                return fail(errno.EISDIR)
            return succeed(lambda: self.model.remove_tree((*parent, name)))

        path = self.model.abs(key)
        self.do("unlink", lambda: os.unlink(path), self.judge(verdict), self.resolve_or(key))

    @rule(data=st.data(), flags=st.sampled_from((0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE, 3)))
    def rename(self, data: st.DataObject, flags: int) -> None:
        src, dst = self.draw_path(data, existing=0.9), self.draw_path(data, existing=0.5)

        def verdict() -> Expect:
            # in rename(2)'s order: the flags, each path and its parent, the two names, the
            # flags' conditions, ancestry, the kinds; then the daemon: trees, names, emptiness
            if flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
                return fail(errno.EINVAL)
            self.model.check_length(src)  # each path is taken in and walked in turn
            sparent, sname = self.model.parent_of(*self.comps_root(src))
            self.model.check_length(dst)
            dparent, dname = self.model.parent_of(*self.comps_root(dst))
            found = self.model.lookup(sparent, sname)
            if found is None:
                return fail(errno.ENOENT)
            there = self.model.lookup(dparent, dname)
            if flags & RENAME_NOREPLACE and there is not None:
                return fail(errno.EEXIST)
            if flags & RENAME_EXCHANGE and there is None:
                return fail(errno.ENOENT)
            s, d = (*sparent, sname), (*dparent, dname)
            if s != d and d[: len(s)] == s:  # into itself
                return fail(errno.EINVAL)
            if s != d and s[: len(d)] == d:  # over a directory above it
                return fail(errno.EINVAL if flags & RENAME_EXCHANGE else errno.ENOTEMPTY)
            if s == d or (found is there and not isinstance(found, Magic)):
                return succeed()  # the same entry, or two names of one file: nothing happens
            if not flags & RENAME_EXCHANGE and there is not None:
                if is_dir(found) and not is_dir(there):
                    return fail(errno.ENOTDIR)
                if not is_dir(found) and is_dir(there):
                    return fail(errno.EISDIR)
            if not is_utf8(dname):  # refused before any tree sees it
                return fail(errno.EINVAL)
            if self.model.tree(s) != self.model.tree(d):
                return fail(errno.EXDEV)
            if isinstance(found, Magic) or isinstance(there, Magic):
                return fail(errno.EINVAL)  # a store query directory is never moved or replaced
            self.model.creatable(dparent, dname)
            if flags & RENAME_EXCHANGE:
                return succeed(lambda: self.model.exchange(s, d))
            if isinstance(there, Directory) and self.model.children(d):
                return fail(errno.ENOTEMPTY)
            return succeed(lambda: self.model.move(s, d))

        a, b = self.model.abs(src), self.model.abs(dst)
        self.do(
            "rename", lambda: renameat2(a, b, flags), self.judge(verdict),
            self.resolve_or(src), self.resolve_or(dst),
        )  # fmt: skip

    @rule(data=st.data())
    def listdir(self, data: st.DataObject) -> None:
        key = self.draw_path(data, hostile=False, prefer=Directory)
        names: list[list[bytes]] = []

        def verdict() -> Expect:
            _parent, _name, found = self.walk(key)
            if found is None or isinstance(found, Link):
                return fail(errno.ENOENT)
            if isinstance(found, File):
                return fail(errno.ENOTDIR)
            if isinstance(found, Directory):
                names.append(sorted(k[-1] for k in self.model.children(self.resolve(key))))
            return succeed()

        path = self.model.abs(key)
        got = self.do("listdir", lambda: sorted(os.listdir(path)), self.judge(verdict))
        if names and not isinstance(got, OSError):
            assert got == names[0], f"{key} lists {got}, the model {names[0]}"

    # ---- agents ----------------------------------------------------------------------------

    @rule(which=st.integers(0, 2))
    def make_agent(self, which: int) -> None:
        name = self.agent_names()[which]
        expect = fail(errno.EEXIST) if name in self.agents else succeed()
        got = self.do("agent mkdir", lambda: os.mkdir(self.mount.p("agents", name)), expect)
        if not isinstance(got, OSError):
            self._made_agent(name)

    @rule(
        name=st.one_of(
            st.sampled_from(("", ".", "..", "a b", "x" * 65, "x" * 300, "é", "a\nb")),
            st.text(min_size=1, max_size=80).filter(lambda s: "/" not in s and "\0" not in s),
        )
    )
    def make_bad_agent(self, name: str) -> None:
        ok = name not in (".", "..") and len(name) <= 64
        ok = ok and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
        if ok:
            return  # a legal name the text strategy happened to draw: not this rule's case
        path = os.fsencode(self.mount.p("agents")) + b"/" + name.encode()
        if name in ("", "."):
            expect = fail(errno.EEXIST)  # agents/ itself
        elif name == "..":
            expect = fail(errno.EEXIST)  # the mount's root
        elif len(name.encode()) > FUSE_NAME_MAX:
            expect = fail(errno.ENAMETOOLONG)
        else:
            expect = fail(errno.EINVAL, errno.ENAMETOOLONG)
        self.do("agent mkdir", lambda: os.mkdir(path), expect)

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data())
    def remove_agent(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.agents)))

        def apply() -> None:
            del self.agents[name]

        self.do("agent rmdir", lambda: os.rmdir(self.mount.p("agents", name)), succeed(apply))

    @rule(which=st.integers(0, 2))
    def remove_missing_agent(self, which: int) -> None:
        name = self.agent_names()[which]
        if name in self.agents:
            return
        path = self.mount.p("agents", name)
        self.do("agent rmdir", lambda: os.rmdir(path), fail(errno.ENOENT))

    def draw_agent(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.agents)))

    @precondition(lambda self: bool(self.agents))
    @rule(
        data=st.data(),
        form=st.sampled_from(("lines", "json")),
        truncate=st.booleans(),
        settings_=st.lists(st.sampled_from(CONFIG_VALID), min_size=1, max_size=3),
    )
    def config(
        self,
        data: st.DataObject,
        form: str,
        truncate: bool,
        settings_: list[tuple[str, str, Any]],
    ) -> None:
        name = self.draw_agent(data)
        agent = self.agents[name]
        if form == "lines":
            body = "".join(f"{k}={v}\n" for k, v, _ in settings_).encode()
        else:
            body = (json.dumps({k: value for k, _, value in settings_}) + "\n").encode()

        def apply() -> None:
            for k, _, value in settings_:
                agent.config[k] = value

        flags = os.O_WRONLY | (os.O_TRUNC if truncate else 0)
        path = self.mount.p("agents", name, "config")
        self.do("config", lambda: op_control(path, body, flags), succeed(apply))
        self.check_config(name)

    @precondition(lambda self: bool(self.agents))
    @rule(
        data=st.data(),
        body=st.one_of(
            st.sampled_from(CONFIG_INVALID).map(str.encode),
            st.just(b"\xff\xfe\n"),
            st.just(b"max_tokens=1\n" * (SYSCALL_LIMIT // 13 + 1)),  # over the limit: EFBIG
        ),
    )
    def bad_config(self, data: st.DataObject, body: bytes) -> None:
        name = self.draw_agent(data)
        code = errno.EFBIG if len(body) > SYSCALL_LIMIT else errno.EINVAL
        path = self.mount.p("agents", name, "config")
        self.do("config", lambda: op_control(path, body, os.O_WRONLY), fail(code))
        self.check_config(name)

    def check_config(self, name: str) -> None:
        got = json.loads(self.io("config", lambda: self.mount.read_bytes("agents", name, "config")))
        want = self.agents[name].config
        shown = {k: got.get(k) for k in want}
        assert shown == want, f"agents/{name}/config shows {shown}, the model {want}"

    @precondition(lambda self: bool(self.agents))
    @rule(
        data=st.data(),
        how=st.sampled_from(("replace", "append", "write")),
        turns=st.lists(
            st.tuples(
                st.sampled_from(("user", "assistant", "system")),
                st.sampled_from(("hello", "", "ünï 🙂", 'quote " and \\', "line\nbreak")),
            ),
            max_size=3,
        ),
    )
    def history(self, data: st.DataObject, how: str, turns: list[tuple[str, str]]) -> None:
        name = self.draw_agent(data)
        agent = self.agents[name]
        lines = [{"role": r, "content": c} for r, c in turns]
        body = "".join(json.dumps(t) + "\n" for t in lines).encode()
        flags = os.O_WRONLY | {"replace": os.O_TRUNC, "append": os.O_APPEND, "write": 0}[how]

        def apply() -> None:
            if how == "append":
                agent.history.extend(lines)
            elif body or how == "replace":
                agent.history[:] = lines

        path = self.mount.p("agents", name, "history")
        self.do("history", lambda: op_control(path, body, flags), succeed(apply))
        self.check_history(name)

    @precondition(lambda self: bool(self.agents))
    @rule(
        data=st.data(),
        body=st.one_of(st.sampled_from(HISTORY_INVALID), st.just(b"x" * (SYSCALL_LIMIT + 1))),
        replace=st.booleans(),
    )
    def bad_history(self, data: st.DataObject, body: bytes, replace: bool) -> None:
        name = self.draw_agent(data)
        agent = self.agents[name]
        code = errno.EFBIG if len(body) > SYSCALL_LIMIT else errno.EINVAL
        flags = os.O_WRONLY | (os.O_TRUNC if replace else os.O_APPEND)
        path = self.mount.p("agents", name, "history")
        self.do("history", lambda: op_control(path, body, flags), fail(code))
        if replace:
            agent.history.clear()  # the O_TRUNC open reset it before the write was refused
        self.check_history(name)

    def check_history(self, name: str) -> None:
        text = self.io("history", lambda: self.mount.read("agents", name, "history"))
        got = [json.loads(line) for line in text.splitlines() if line.strip()]
        want = self.agents[name].history
        assert got == want, f"agents/{name}/history is {got}, the model {want}"

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data(), command=st.sampled_from(CTL))
    def ctl(self, data: st.DataObject, command: tuple[bytes, bool, bool]) -> None:
        name = self.draw_agent(data)
        body, valid, resets = command
        agent = self.agents[name]

        def apply() -> None:
            if resets:
                agent.history.clear()
            if body.startswith(b"cancel"):
                agent.out = deque(None if e is False else e for e in agent.out)

        path = self.mount.p("agents", name, "ctl")
        expect = succeed(apply) if valid else fail(errno.EINVAL)
        self.do("ctl", lambda: op_control(path, body, os.O_WRONLY), expect)
        self.check_history(name)

    # ---- syscalls --------------------------------------------------------------------------

    def mem_path(self, data: st.DataObject, name: str) -> tuple[str, Key]:
        """A path in agent ``name``'s memory, as a syscall names it, and its key."""
        root = (b"mem", name.encode())
        mine = [k for k in self.model.nodes if len(k) > 2 and k[:2] == root]
        if mine and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(mine)))
        else:
            comps = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))
            key = root + tuple(comps)
        return b"/".join(key[2:]).decode(errors="surrogateescape"), key

    def table_verdict(self, key: Key, want: str) -> Expect:
        """What a kernel call on ``key`` (a path in ``mem/`` or ``store/``) answers: the
        kernel walks as the agent's owner and never follows a link (ELOOP)."""
        root, comps = self.split(key)
        cur = root
        for name in comps[:-1]:
            node = self.model.nodes.get((*cur, name))
            if node is None:
                return fail(errno.ENOENT)
            if isinstance(node, Link):
                return fail(errno.ELOOP)  # never followed
            if isinstance(node, File):
                return fail(errno.ENOTDIR)
            cur = (*cur, name)
        node = self.model.nodes.get(key)
        if want == "file":
            if node is None:
                return fail(errno.ENOENT)
            if isinstance(node, Directory):
                return fail(errno.EISDIR)
            if isinstance(node, Link):
                return fail(errno.ELOOP)
        return succeed()

    def syscall(self, name: str, body: bytes) -> tuple[bytes | OSError, dict[str, Any] | None]:
        """One syscall on a transaction descriptor; its answer and its results/N.json."""
        path = self.mount.p("agents", name, "syscall")
        got = self.runner("syscall", lambda: op_transaction(path, body))
        results = self.mount.p("agents", name, "results")
        names = self.io("ls results", lambda: os.listdir(results))
        numbers = [int(n[:-5]) for n in names if n.endswith(".json")]
        if not numbers:
            return got, None
        last = os.path.join(results, f"{max(numbers)}.json")
        return got, json.loads(self.io("results/N.json", lambda: Path(last).read_bytes()))

    def judge_call(
        self, op: str, got: bytes | OSError, meta: dict[str, Any] | None, expect: Expect
    ) -> str:
        """A table call's answer: its text on success, else an error result whose errno is
        the model's (and one the contract lists for kernel calls)."""
        self.tally.steps += 1
        self.steps += 1
        assert not isinstance(got, OSError), f"{op}: the transaction failed: {got}"
        text = got.decode(errors="replace")
        assert meta is not None
        code = meta["errno"] or 0
        self.tally.count(op, OSError(code, "") if code else None)
        if expect.ok:
            assert meta["state"] == "done", f"{op}: {text!r}; the model expected success"
            if expect.apply is not None:
                expect.apply()
        else:
            assert meta["state"] == "failed" and text.startswith("error: "), (
                f"{op}: answered {text!r:.200}; the model expected "
                + "/".join(errno.errorcode[c] for c in sorted(expect.errnos))
            )
            assert code in self.allowed["syscall result"], (
                f"{op}: {errno.errorcode.get(code)} is not an errno docs/filesystem.md lists "
                "for kernel calls"
            )
            assert code in expect.errnos, (
                f"{op}: {text!r}: {errno.errorcode.get(code)}; the model expected "
                + "/".join(errno.errorcode[c] for c in sorted(expect.errnos))
            )
        return text

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data(), seed=st.integers(0, 99), append=st.booleans())
    def mem_write(self, data: st.DataObject, seed: int, append: bool) -> None:
        name = self.draw_agent(data)
        rel, key = self.mem_path(data, name)
        text = f"note {seed} ünï\n" * (seed % 4)
        body = json.dumps({"call": "mem_write", "path": rel, "content": text, "append": append})

        def verdict() -> Expect:
            expect = self.table_verdict(key, "write")
            if not expect.ok:
                return expect
            node = self.model.nodes.get(key)
            if isinstance(node, Directory):
                return fail(errno.EISDIR)
            if isinstance(node, Link):
                return fail(errno.ELOOP)
            if node is None:
                self.model.creatable(key[:-1], key[-1])

            def apply() -> None:
                target = node if isinstance(node, File) else File(bytearray(), 0o644)
                if append:
                    target.data.extend(text.encode())
                else:
                    target.data[:] = text.encode()
                self.model.nodes[key] = target

            return succeed(apply)

        got, meta = self.syscall(name, (body + "\n").encode())
        self.judge_call("mem_write", got, meta, self.judge(verdict))
        self.touched.add(key)

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data())
    def mem_read(self, data: st.DataObject) -> None:
        name = self.draw_agent(data)
        rel, key = self.mem_path(data, name)
        body = json.dumps({"call": "mem_read", "path": rel}) + "\n"
        expect = self.table_verdict(key, "file")
        got, meta = self.syscall(name, body.encode())
        text = self.judge_call("mem_read", got, meta, expect)
        node = self.model.nodes.get(key)
        if expect.ok and isinstance(node, File):
            assert text == answer(node.data), f"mem_read {rel}: not the model's"

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data())
    def mem_list(self, data: st.DataObject) -> None:
        name = self.draw_agent(data)
        root = (b"mem", name.encode())
        dirs = [
            k for k, v in self.model.nodes.items() if k[:2] == root and isinstance(v, Directory)
        ]
        key = data.draw(st.sampled_from(sorted(dirs)))
        rel = b"/".join(key[2:]).decode()
        body = json.dumps({"call": "mem_list", "path": rel}) + "\n"
        got, meta = self.syscall(name, body.encode())
        text = self.judge_call("mem_list", got, meta, succeed())
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        kinds = {Directory: "dir", File: "file", Link: "symlink"}
        want = sorted(
            (k[-1].decode(errors="surrogateescape"), kinds[type(self.model.nodes[k])])
            for k in self.model.children(key)
        )
        assert sorted((r["name"], r["kind"]) for r in rows) == want, f"mem_list {rel}: {rows}"

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data())
    def mem_delete(self, data: st.DataObject) -> None:
        name = self.draw_agent(data)
        rel, key = self.mem_path(data, name)
        body = json.dumps({"call": "mem_delete", "path": rel}) + "\n"

        def verdict() -> Expect:
            expect = self.table_verdict(key, "write")
            if not expect.ok:
                return expect
            node = self.model.nodes.get(key)
            if node is None:
                return fail(errno.ENOENT)
            if isinstance(node, Directory) and self.model.children(key):
                return fail(errno.ENOTEMPTY)
            return succeed(lambda: self.model.remove_tree(key))

        got, meta = self.syscall(name, body.encode())
        self.judge_call("mem_delete", got, meta, self.judge(verdict))
        self.touched.add(key)

    def store_path(self, data: st.DataObject) -> tuple[str, Key]:
        root = (b"store", self.run.encode())
        mine = [k for k in self.model.nodes if len(k) > 2 and k[:2] == root]
        if mine and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(mine)))
        else:
            comps = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))
            key = root + tuple(comps)
        return b"/".join(key[1:]).decode(errors="surrogateescape"), key

    def through_link(self, key: Key) -> bool:
        return any(isinstance(self.model.nodes.get(key[:i]), Link) for i in range(3, len(key) + 1))

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data(), seed=st.integers(0, 99))
    def store_write(self, data: st.DataObject, seed: int) -> None:
        name = self.draw_agent(data)
        rel, key = self.store_path(data)
        if self.through_link(key):
            return  # a store_write follows links and makes what is missing: not modelled
        text = f"doc {seed}\n" * (seed % 3)
        body = json.dumps({"call": "store_write", "path": rel, "content": text}) + "\n"

        def verdict() -> Expect:
            root, comps = self.split(key)
            cur = root
            made: list[Key] = []
            for part in comps[:-1]:
                node = self.model.nodes.get((*cur, part))
                if isinstance(node, File):
                    return fail(errno.ENOTDIR)
                cur = (*cur, part)
                if node is None:
                    made.append(cur)
            node = self.model.nodes.get(key)
            if isinstance(node, Directory):
                return fail(errno.EISDIR)

            def apply() -> None:
                for k in made:  # store_write makes the directories on the way
                    self.model.add(k, Directory(self.model.inherit_dir_perm(k[:-1], 0o755)))
                if isinstance(node, File):
                    node.data[:] = text.encode()
                else:
                    self.model.add(key, File(bytearray(text.encode()), 0o644))

            return succeed(apply)

        got, meta = self.syscall(name, body.encode())
        self.judge_call("store_write", got, meta, self.judge(verdict))
        self.touched.update(key[:i] for i in range(3, len(key) + 1))

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data())
    def store_read(self, data: st.DataObject) -> None:
        name = self.draw_agent(data)
        rel, key = self.store_path(data)
        if self.through_link(key):
            return  # followed as a process would: to nothing, or outside the store
        body = json.dumps({"call": "store_read", "path": rel}) + "\n"
        node = self.model.nodes.get(key)
        expect = self.table_verdict(key, "file")
        got, meta = self.syscall(name, body.encode())
        text = self.judge_call("store_read", got, meta, expect)
        if expect.ok and isinstance(node, File):
            assert text == answer(node.data), f"store_read {rel}: not the model's"

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data(), prompt=st.sampled_from(("hi", "ünï 🙂", "x" * 300, "chat")))
    def llm(self, data: st.DataObject, prompt: str) -> None:
        """A call of the model: a stateless one, or (``chat``) a plain-text turn, which the
        history gains with its answer."""
        name = self.draw_agent(data)
        if prompt != "chat":
            body = json.dumps({"call": "llm", "prompt": prompt, "max_tokens": 2}) + "\n"
            got, meta = self.syscall(name, body.encode())
            self.judge_call("llm", got, meta, succeed())
            return
        got, meta = self.syscall(name, b"tell me more\n")
        self.judge_call("chat", got, meta, succeed())
        text = self.io("history", lambda: self.mount.read("agents", name, "history"))
        turns = [json.loads(line) for line in text.splitlines() if line.strip()]
        agent = self.agents[name]
        assert turns[: len(agent.history)] == agent.history, "a chat turn rewrote the history"
        new = turns[len(agent.history) :]
        assert [t["role"] for t in new] == ["user", "assistant"], new
        assert new[0]["content"] == "tell me more"
        agent.history[:] = turns

    @precondition(lambda self: bool(self.agents))
    @rule(
        data=st.data(),
        body=st.sampled_from(SYSCALL_INVALID),
        transaction=st.booleans(),
    )
    def bad_syscall(self, data: st.DataObject, body: bytes, transaction: bool) -> None:
        name = self.draw_agent(data)
        code = errno.EFBIG if len(body) > SYSCALL_LIMIT else errno.EINVAL
        path = self.mount.p("agents", name, "syscall")
        if transaction:
            self.do("syscall", lambda: op_transaction(path, body), fail(code))
        else:
            self.do("syscall", lambda: op_control(path, body, os.O_WRONLY), fail(code))
            self.agents[name].out.append(True)  # an error result for out's reader

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        """A syscall written and closed: its answer goes to ``out``."""
        name = self.draw_agent(data)
        body = b'{"call": "llm", "prompt": "hello", "max_tokens": 1}\n'
        path = self.mount.p("agents", name, "syscall")
        self.do("syscall", lambda: op_control(path, body, os.O_WRONLY), succeed())
        self.agents[name].out.append(False)

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data())
    def read_out(self, data: st.DataObject) -> None:
        name = self.draw_agent(data)
        queue = self.agents[name].out
        path = self.mount.p("agents", name, "out")
        if not queue:
            self.do("out", lambda: op_read_out(path, True), fail(errno.EAGAIN))
            return
        got = self.do("out", lambda: op_read_out(path, False), succeed())
        assert not isinstance(got, OSError)
        error = queue.popleft()
        assert error is None or got.startswith(b"error: ") == error, (
            f"out answered {got!r:.200}; the model expected "
            + ("an error result" if error else "an answer")
        )

    @rule(
        data=st.data(),
        name=st.sampled_from(("status", "mem", "store", "stats", "queue", "agent status")),
    )
    def read_sys(self, data: st.DataObject, name: str) -> None:
        """The kernel's views, which look at everything (``sys/mem`` walks every agent's
        memory on disk): JSON, and never a hang, whatever the trees hold."""
        if name == "agent status":
            if not self.agents:
                return
            agent = self.draw_agent(data)
            path = self.mount.p("agents", agent, "status")
        else:
            path = self.mount.p("sys", name)
        got = self.do("read", lambda: Path(path).read_bytes(), succeed())
        assert not isinstance(got, OSError)
        shown = json.loads(got)
        if name == "mem":
            assert set(self.agents) <= set(shown["agents"]), shown["agents"]
        elif name == "agent status":
            assert shown["name"] == agent

    # ---- what the contract refuses ----------------------------------------------------------

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data(), which=st.integers(0, 11))
    def refused(self, data: st.DataObject, which: int) -> None:
        name = self.draw_agent(data)
        a = self.mount.p("agents", name)
        new = os.fsencode(a) + b"/new"
        m = self.mount.p
        cases: list[tuple[str, Callable[[], object], int]] = [
            ("mkdir", lambda: os.mkdir(m("sys", "x")), errno.EACCES),
            ("mkdir", lambda: os.mkdir(os.path.join(a, "x")), errno.EACCES),
            ("mkdir", lambda: os.mkdir(m("x")), errno.EACCES),
            ("create", lambda: op_create(new, os.O_CREAT | os.O_WRONLY, 0o644), errno.EACCES),
            ("unlink", lambda: os.unlink(os.path.join(a, "status")), errno.EACCES),
            ("rmdir", lambda: os.rmdir(os.path.join(a, "results")), errno.EACCES),
            ("rename", lambda: os.rename(os.path.join(a, "config"), a + "/c"), errno.EACCES),
            ("write", lambda: op_control(a + "/status", b"x", os.O_WRONLY), errno.EACCES),
            ("chmod", lambda: os.chmod(os.path.join(a, "status"), 0o666), errno.EPERM),
            ("symlink", lambda: os.symlink("x", os.path.join(a, "ln")), errno.EACCES),
            ("truncate", lambda: os.truncate(os.path.join(a, "status"), 0), errno.EACCES),
            ("unlink", lambda: os.unlink(m("README")), errno.EACCES),
        ]
        op, fn, code = cases[which]
        self.do(op, fn, fail(code))


# ---- the runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One daemon for every example: tiny-random, the hashing embedder, small limits."""
    tmp = tmp_path_factory.mktemp("stateful")
    cfg = write_config(
        tmp,
        store_embedder="hashing",
        mem_agent_mb=LIMIT >> 20,
        store_max_file_mb=LIMIT >> 20,
        max_syscall_bytes=SYSCALL_LIMIT,
    )
    old = os.umask(UMASK)
    try:
        with mounted(tmp, "tiny-random", "--config", cfg) as m:
            yield m
    finally:
        os.umask(old)


_RUNS = iter(range(1, 10**9))


def machine_for(mount: Mount, tally: Tally) -> type[FsMachine]:
    return type(
        "Machine",
        (FsMachine,),
        {
            "mount": mount,
            "runner": Runner(STEP_TIMEOUT),
            "tally": tally,
            "allowed": documented_errnos(),
            "runs": _RUNS,
        },
    )


SETTINGS = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@pytest.mark.timeout(600)
def test_stateful(world: Mount) -> None:
    """The short run of ``make test``: about 3,000 random operations, 20-60 s on two cores."""
    tally = Tally()
    examples = int(os.environ.get("AIOSFS_STATEFUL_EXAMPLES", "80"))
    machine = machine_for(world, tally)
    run_state_machine_as_test(
        machine, settings=settings(max_examples=examples, stateful_step_count=40, **SETTINGS)
    )
    print(tally.report(machine.runner), flush=True)
    assert tally.steps > examples * 5, tally.report(machine.runner)


@pytest.mark.timeout(0)
@pytest.mark.skipif("AIOSFS_SOAK_FS_OPS" not in os.environ, reason="the long run: make soak-fs")
def test_soak_fs(world: Mount) -> None:
    """``make soak-fs``: the same machine until AIOSFS_SOAK_FS_OPS operations have run (100,000
    when it is empty), printing its progress, then operations per second and every answer by
    operation. Any failure ends it, reported as in the short run (shrunk, reproducible)."""
    target = int(os.environ["AIOSFS_SOAK_FS_OPS"] or 100_000)
    tally = Tally()
    machine = machine_for(world, tally)
    outcome = "FAILED"
    try:
        while tally.steps < target:
            run_state_machine_as_test(
                machine, settings=settings(max_examples=50, stateful_step_count=100, **SETTINGS)
            )
            print(tally.report(machine.runner).splitlines()[0], flush=True)
        outcome = "passed: no daemon death, no hung operation, no unexpected errno or log error"
    finally:
        print(f"soak-fs {outcome}\n{tally.report(machine.runner)}", flush=True)
