"""The memory manager: each agent's memory blocks, kept in RAM within budgets, on disk for good.

An agent's memory is a tree of ordinary files under ``DATA_DIR/mem/AGENT/`` (each file is a
memory block). Disk holds every block as of its last flush (a writer's close or fsync), so memory
survives unmounting and restarting; RAM holds the blocks in use, up to a per-agent and a global
budget in bytes. Past a budget the manager evicts with K-LRU (LRU-K, K=2 by default): the block
whose K-th most recent use is oldest goes first, and blocks used fewer than K times go before
any that were used K times, so one scan over many blocks cannot flush the ones in steady use.
Uses within ``correlation`` seconds of each other count as one (a ``cat`` reading in chunks is
one use). A dirty block is written out before it is evicted. Reading an evicted block loads it
back.

Paths are relative to the agent's directory, ``/``-separated; each component is checked with
``kernel.names.check_name`` (the one owner of name rules).

Metadata lives beside the blocks, on the backing files themselves: mode (setuid, setgid and
sticky included), atime and mtime are the host file's, and so is the owner. The host then enforces
what it enforces for any file (a daemon that is not root may give a file only to itself and its
own groups: chown to another uid is EPERM, as on the host), and nothing can drift out of step
with a sidecar. ``flush`` carries mode, owner and atime over to the file that replaces the old
one. ctime is the host file's ctime. Entries made without an explicit owner (the ``mem_write``
syscall) take their directory's owner; the kernel gives a new agent's directory to the agent's
owner when it creates the agent (``ensure_agent`` with an owner, ``claim_agent`` for one the
daemon made earlier: the manager itself knows no agents).

Threads: one documented way in. Every public method takes the manager's lock (a re-entrant
``threading.RLock``, so public methods may call each other), which makes the manager safe to call
from any thread: syscalls run it on a worker thread, while the filesystem asks for metadata
(``is_dir``, ``stat``, ``size``, ``listdir``, ``agents``, ``ensure_agent``, ``info``) straight
from its trio thread, because those cost microseconds and a thread hop would cost more. Such a
caller may wait for the call that holds the lock to finish: milliseconds where that call saves
blocks (each save ends in an fsync). Private helpers (``_block``, ``_enforce``, ...) assume the
lock is held.
The attributes ``blocks``, ``stats`` and ``resident`` are for inspection where nothing else runs
(tests, benchmarks); read them through ``info()`` otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from kernel.errors import (
    AlreadyExists,
    IsADirectory,
    KernelError,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    TooLarge,
)
from kernel.names import TMP_SUFFIX, split_path, validate_agent_name

P = ParamSpec("P")
R = TypeVar("R")


def os_error(e: OSError, what: str) -> KernelError:
    """Translate an OSError from the backing directory, keeping its errno."""
    err = KernelError(f"{what}: {e.strerror}")
    err.errno = e.errno or errno.EIO
    return err


def _serialized(
    method: Callable[Concatenate[MemoryManager, P], R],
) -> Callable[Concatenate[MemoryManager, P], R]:
    """Run a public method of the manager holding its lock: the one way into its state."""

    @functools.wraps(method)
    def locked(manager: MemoryManager, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with manager._lock:
            return method(manager, *args, **kwargs)

    return locked


@dataclass
class Block:
    """One memory file. ``data`` is None while evicted (the disk copy is the truth)."""

    data: bytearray | None
    dirty: bool = False
    uses: deque[float] = field(default_factory=deque)  # the last K uncorrelated uses
    last_ref: float = 0.0  # the last reference of any kind, correlated ones included

    @property
    def resident(self) -> int:
        return len(self.data) if self.data is not None else 0


@dataclass
class AgentMemStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: int = 0


class MemoryManager:
    """Per-agent memory trees with K-LRU eviction from RAM to disk; safe from any thread."""

    def __init__(
        self,
        root: Path,
        agent_budget: int,
        global_budget: int,
        k: int = 2,
        correlation: float = 0.1,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.agent_budget = agent_budget
        self.global_budget = global_budget
        self.k = k
        # Uses closer together than this count as one (LRU-K's correlated reference period): a
        # `cat` reading a block in chunks, or one write_file, is one use, not several.
        self.correlation = correlation
        self.blocks: dict[tuple[str, str], Block] = {}
        self.stats: dict[str, AgentMemStats] = {}
        self.resident: dict[str, int] = {}
        self.evict_seconds = 0.0
        self.load_seconds = 0.0
        self._lock = threading.RLock()  # held by every public method; see the module docstring

    # ---- paths ------------------------------------------------------------------------------

    @_serialized
    def agents(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    @_serialized
    def ensure_agent(
        self, agent: str, mode: int = 0o755, owner: tuple[int, int] | None = None
    ) -> None:
        """Make ``AGENT/`` unless it exists (an existing one keeps its metadata), owned by
        ``owner`` or else by the daemon (see ``claim_agent``)."""
        validate_agent_name(agent)
        disk = self.root / agent
        try:
            os.mkdir(disk, 0o700)
        except FileExistsError:
            return
        except OSError as e:
            raise os_error(e, agent) from None
        try:
            owner = owner or (os.geteuid(), os.getegid())
            self._settle(disk, None, mode, owner, setgid_parent=False)
        except OSError as e:
            os.rmdir(disk)
            raise os_error(e, agent) from None

    @_serialized
    def claim_agent(self, agent: str, owner: tuple[int, int]) -> None:
        """Give ``AGENT/`` to the agent's owner if it is still the daemon's: memory made before
        the agent existed (by the daemon, e.g. a ``mem_*`` call or an earlier run) goes to
        whoever creates the agent; memory a user made stays theirs. Called by the kernel when
        it creates an agent. One stat and at most one chown, no fsync: cheap enough for the trio
        thread, as ``stat`` is. A daemon that is not root cannot give it away and leaves it."""
        disk = self.root / agent
        try:
            st = os.stat(disk)
            if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()) != owner:
                os.chown(disk, *owner)
                os.chmod(disk, stat.S_IMODE(st.st_mode))
        except PermissionError:
            if os.geteuid() == 0:
                raise
        except FileNotFoundError:
            pass
        except OSError as e:
            raise os_error(e, agent) from None

    @_serialized
    def remove_agent(self, agent: str) -> None:
        """``rm -r mem/AGENT`` done in one step (also used when the tree is removed)."""
        validate_agent_name(agent)
        for key in [k for k in self.blocks if k[0] == agent]:
            self._drop(key)
        shutil.rmtree(self.root / agent, ignore_errors=True)

    @_serialized
    def is_dir(self, agent: str, path: str) -> bool:
        return self._disk(agent, path).is_dir()

    def _disk(self, agent: str, path: str) -> Path:
        base = self.root / agent
        parts = split_path(path)
        return base.joinpath(*parts) if parts else base

    # ---- metadata ---------------------------------------------------------------------------

    @_serialized
    def stat(self, agent: str, path: str) -> os.stat_result | None:
        """The backing file's stat (size corrected for unflushed writes), or None."""
        try:
            st = os.stat(self._disk(agent, path))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise os_error(e, path) from None
        return st

    @_serialized
    def size(self, agent: str, path: str, st: os.stat_result) -> int:
        block = self.blocks.get((agent, path))
        if block is not None and block.data is not None and block.dirty:
            return len(block.data)
        return st.st_size

    @_serialized
    def listdir(self, agent: str, path: str) -> list[str]:
        try:
            names = os.listdir(self._disk(agent, path))
            return sorted(n for n in names if not n.endswith(TMP_SUFFIX))
        except NotADirectoryError:
            raise NotADirectory(f"{path} is not a directory") from None
        except FileNotFoundError:
            raise NotFound(f"no such memory directory {path!r}") from None

    # ---- namespace operations ---------------------------------------------------------------

    def _settle(
        self,
        disk: Path,
        fd: int | None,
        mode: int,
        owner: tuple[int, int] | None,
        setgid_parent: bool = True,
    ) -> None:
        """Give a new entry its owner and mode. Without ``owner`` it takes its directory's; in a
        setgid directory it takes the directory's group, and a new directory stays setgid. The
        owner goes first: changing it clears setuid/setgid on the host."""
        parent = os.stat(disk.parent)
        uid, gid = owner if owner is not None else (parent.st_uid, parent.st_gid)
        if setgid_parent and parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
            if fd is None:  # a directory
                mode |= stat.S_ISGID
        current = os.fstat(fd) if fd is not None else os.stat(disk)
        if (current.st_uid, current.st_gid) != (uid, gid):
            try:
                if fd is not None:
                    os.fchown(fd, uid, gid)
                else:
                    os.chown(disk, uid, gid)
            except PermissionError:
                if os.geteuid() == 0:
                    raise
                # Not root: the entry stays the daemon's, as anything the daemon makes does.
        if fd is not None:
            os.fchmod(fd, mode & 0o7777)
        else:
            os.chmod(disk, mode & 0o7777)

    @_serialized
    def create(
        self, agent: str, path: str, mode: int = 0o644, owner: tuple[int, int] | None = None
    ) -> None:
        """A new empty block with ``mode`` as given (no umask: the caller applied its own) and
        ``owner`` (uid, gid), or its directory's owner."""
        disk = self._disk(agent, path)
        try:
            fd = os.open(disk, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            raise AlreadyExists(f"{path} exists") from None
        except OSError as e:
            raise os_error(e, path) from None
        try:
            self._settle(disk, fd, mode, owner)
        except OSError as e:
            os.unlink(disk)
            raise os_error(e, path) from None
        finally:
            os.close(fd)
        self.blocks[(agent, path)] = Block(bytearray())
        self._touch(agent, path)

    @_serialized
    def mkdir(
        self, agent: str, path: str, mode: int = 0o755, owner: tuple[int, int] | None = None
    ) -> None:
        """A new directory; ``mode`` and ``owner`` as for ``create``."""
        disk = self._disk(agent, path)
        try:
            os.mkdir(disk, 0o700)
        except FileExistsError:
            raise AlreadyExists(f"{path} exists") from None
        except OSError as e:
            raise os_error(e, path) from None
        try:
            self._settle(disk, None, mode, owner)
        except OSError as e:
            os.rmdir(disk)
            raise os_error(e, path) from None

    @_serialized
    def set_metadata(
        self,
        agent: str,
        path: str,
        mode: int | None = None,
        uid: int = -1,
        gid: int = -1,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        """chmod, chown (-1 leaves a field alone) and utimensat on a file or directory. Who may
        do it is checked before (the FUSE kernel's ``default_permissions``) and again by the
        host. New times go on after pending writes are saved: a later save would replace them
        with the time of the save."""
        disk = self._disk(agent, path)
        try:
            if uid != -1 or gid != -1:
                os.chown(disk, uid, gid)
            if mode is not None:
                os.chmod(disk, mode & 0o7777)
            if atime_ns is not None or mtime_ns is not None:
                self.flush(agent, path)
                st = os.stat(disk)
                os.utime(
                    disk,
                    ns=(
                        st.st_atime_ns if atime_ns is None else atime_ns,
                        st.st_mtime_ns if mtime_ns is None else mtime_ns,
                    ),
                )
        except FileNotFoundError:
            raise NotFound(f"no such memory entry {path!r}") from None
        except OSError as e:
            raise os_error(e, path) from None

    @_serialized
    def unlink(self, agent: str, path: str) -> None:
        disk = self._disk(agent, path)
        if disk.is_dir():
            raise IsADirectory(f"{path} is a directory")
        try:
            os.unlink(disk)
        except FileNotFoundError:
            raise NotFound(f"no such memory block {path!r}") from None
        except OSError as e:
            raise os_error(e, path) from None
        self._drop((agent, path))

    @_serialized
    def rmdir(self, agent: str, path: str) -> None:
        try:
            os.rmdir(self._disk(agent, path))
        except OSError as e:
            if e.errno == errno.ENOTEMPTY:
                raise NotEmpty(f"{path} is not empty") from None
            raise os_error(e, path) from None

    @_serialized
    def rename(self, agent: str, old: str, new_agent: str, new: str) -> None:
        src, dst = self._disk(agent, old), self._disk(new_agent, new)
        if (agent, old) in self.blocks:
            self.flush(agent, old)
        try:
            os.rename(src, dst)
        except OSError as e:
            raise os_error(e, f"{old} -> {new}") from None
        # re-key cached blocks under the old path (a file, or everything below a directory)
        for key in [
            k for k in self.blocks if k[0] == agent and (k[1] == old or k[1].startswith(old + "/"))
        ]:
            block = self.blocks.pop(key)
            self._account(agent, -block.resident)
            if (new_agent, new) in self.blocks:
                self._drop((new_agent, new))
            new_key = (new_agent, new + key[1][len(old) :])
            self.blocks[new_key] = block
            self._account(new_agent, block.resident)
        self._enforce(new_agent)

    # ---- contents ---------------------------------------------------------------------------

    def _block(self, agent: str, path: str) -> Block:
        """The block, loaded into RAM if it was evicted or never loaded."""
        key = (agent, path)
        st = self.stats.setdefault(agent, AgentMemStats())
        block = self.blocks.get(key)
        if block is not None and block.data is not None:
            st.hits += 1
            self._touch(agent, path)
            return block
        start = time.perf_counter()
        disk = self._disk(agent, path)
        try:
            data = bytearray(disk.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"no such memory block {path!r}") from None
        except IsADirectoryError:
            raise IsADirectory(f"{path} is a directory") from None
        except OSError as e:
            raise os_error(e, path) from None
        self.load_seconds += time.perf_counter() - start
        st.misses += 1
        st.loads += 1
        if block is None:
            block = Block(data)
            self.blocks[key] = block
        else:
            block.data = data
        self._account(agent, len(data))
        self._touch(agent, path)
        self._enforce(agent, keep=key)
        return block

    @_serialized
    def read(self, agent: str, path: str, offset: int, size: int) -> bytes:
        block = self._block(agent, path)
        assert block.data is not None
        return bytes(block.data[offset : offset + size])

    @_serialized
    def read_all(self, agent: str, path: str) -> bytes:
        block = self._block(agent, path)
        assert block.data is not None
        return bytes(block.data)

    @_serialized
    def write(self, agent: str, path: str, offset: int, data: bytes) -> int:
        self._check_size(path, offset + len(data))
        block = self._block(agent, path)
        assert block.data is not None
        before = len(block.data)
        if offset > before:
            block.data.extend(b"\0" * (offset - before))
        block.data[offset : offset + len(data)] = data
        block.dirty = True
        self._account(agent, len(block.data) - before)
        self._enforce(agent, keep=(agent, path))
        return len(data)

    @_serialized
    def truncate(self, agent: str, path: str, size: int, save: bool = True) -> None:
        """Resize a block. ``save=False`` (O_TRUNC at open) leaves the disk copy alone until the
        writer closes, so a crash in between keeps the last closed content."""
        self._check_size(path, size)
        block = self._block(agent, path)
        assert block.data is not None
        before = len(block.data)
        if size < before:
            del block.data[size:]
        else:
            block.data.extend(b"\0" * (size - before))
        block.dirty = True
        self._account(agent, size - before)
        if save:
            self.flush(agent, path)

    def _check_size(self, path: str, size: int) -> None:
        """A block lives whole in RAM while in use, so none may be larger than an agent's
        budget: refuse (EFBIG) before allocating anything, and leave the block as it was."""
        if size > self.agent_budget:
            raise TooLarge(
                f"{path}: {size} bytes is over the {self.agent_budget}-byte memory file limit "
                "(mem_agent_mb)"
            )

    @_serialized
    def flush(self, agent: str, path: str) -> None:
        """Write a dirty block to disk (atomically: temp file, fsync, rename). The new file takes
        the old one's mode, owner and atime (its mtime is the save's)."""
        block = self.blocks.get((agent, path))
        if block is None or block.data is None or not block.dirty:
            return
        disk = self._disk(agent, path)
        # A fixed-length name: the block's own may already be 255 bytes, the most a name can be.
        # Calls are serialised, so two saves never share a temporary file.
        digest = hashlib.sha256(disk.name.encode()).hexdigest()[:24]
        tmp = disk.with_name(f".{digest}{TMP_SUFFIX}")
        try:
            try:
                old: os.stat_result | None = os.stat(disk)
            except FileNotFoundError:
                old = None
            with open(tmp, "wb") as f:
                f.write(block.data)
                f.flush()
                if old is not None:
                    self._carry_over(f.fileno(), old)
                os.fsync(f.fileno())
            os.replace(tmp, disk)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"no space left to save {path}") from None
            raise os_error(e, path) from None
        block.dirty = False

    @staticmethod
    def _carry_over(fd: int, old: os.stat_result) -> None:
        """Give a save's new file the metadata of the file it replaces. The owner goes first
        (changing it clears setuid/setgid); a daemon that is not root may fail to set it only
        where the old file was not its to give, and then the new file is the daemon's."""
        new = os.fstat(fd)
        if (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                if os.geteuid() == 0:
                    raise
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
        os.utime(fd, ns=(old.st_atime_ns, os.fstat(fd).st_mtime_ns))

    # ---- whole-file helpers for syscalls ------------------------------------------------------

    @_serialized
    def write_file(self, agent: str, path: str, data: bytes, append: bool = False) -> int:
        """Create or replace (or extend) a memory file and save it; returns its size."""
        if (agent, path) not in self.blocks and self.stat(agent, path) is None:
            self.create(agent, path)
        if append:
            self.write(agent, path, len(self._block(agent, path).data or b""), data)
        else:
            self.truncate(agent, path, 0)
            self.write(agent, path, 0, data)
        self.flush(agent, path)
        return len(self._block(agent, path).data or b"")

    @_serialized
    def list_entries(self, agent: str, path: str) -> list[dict[str, Any]]:
        out = []
        for name in self.listdir(agent, path):
            child = f"{path}/{name}" if path else name
            st = self.stat(agent, child)
            if st is None:
                continue
            is_dir = os.path.isdir(self._disk(agent, child))
            out.append(
                {
                    "name": name,
                    "kind": "dir" if is_dir else "file",
                    "size": 0 if is_dir else self.size(agent, child, st),
                    "mtime": st.st_mtime,
                }
            )
        return out

    @_serialized
    def delete(self, agent: str, path: str) -> None:
        """Remove a file, or an empty directory."""
        if os.path.isdir(self._disk(agent, path)):
            self.rmdir(agent, path)
        else:
            self.unlink(agent, path)

    @_serialized
    def flush_all(self) -> None:
        for agent, path in list(self.blocks):
            with contextlib.suppress(KernelError):
                self.flush(agent, path)

    # ---- K-LRU ------------------------------------------------------------------------------

    def _touch(self, agent: str, path: str) -> None:
        block = self.blocks[(agent, path)]
        now = time.monotonic()
        # Correlated with the previous reference, however long the burst has lasted: one call
        # that touches a block several times (create, write, save with fsync) is one use.
        correlated = bool(block.uses) and now - block.last_ref < self.correlation
        block.last_ref = now
        if correlated:
            return  # the same use, still going on
        block.uses.append(now)
        while len(block.uses) > self.k:
            block.uses.popleft()

    def _account(self, agent: str, delta: int) -> None:
        self.resident[agent] = self.resident.get(agent, 0) + delta

    def _kth_use(self, block: Block) -> tuple[int, float]:
        """Eviction order: blocks used fewer than K times first (by last use), then by the
        K-th most recent use; the smallest key is evicted first."""
        if len(block.uses) < self.k:
            return (0, block.uses[-1] if block.uses else 0.0)
        return (1, block.uses[0])

    def _enforce(self, agent: str, keep: tuple[str, str] | None = None) -> None:
        def victims(owner: str | None) -> list[tuple[str, str]]:
            keys = [
                k
                for k, b in self.blocks.items()
                if b.data is not None and k != keep and (owner is None or k[0] == owner)
            ]
            return sorted(keys, key=lambda k: self._kth_use(self.blocks[k]))

        if self.resident.get(agent, 0) > self.agent_budget:
            for key in victims(agent):
                if self.resident.get(agent, 0) <= self.agent_budget:
                    break
                self._evict(key)
        if sum(self.resident.values()) > self.global_budget:
            for key in victims(None):
                if sum(self.resident.values()) <= self.global_budget:
                    break
                self._evict(key)

    def _evict(self, key: tuple[str, str]) -> None:
        block = self.blocks[key]
        start = time.perf_counter()
        if block.dirty:
            try:
                self.flush(*key)
            except KernelError:
                return  # cannot save it: keep it in RAM rather than lose it
        self._account(key[0], -block.resident)
        block.data = None
        self.stats.setdefault(key[0], AgentMemStats()).evictions += 1
        self.evict_seconds += time.perf_counter() - start

    def _drop(self, key: tuple[str, str]) -> None:
        block = self.blocks.pop(key, None)
        if block is not None:
            self._account(key[0], -block.resident)

    # ---- views ------------------------------------------------------------------------------

    @_serialized
    def info(self) -> dict[str, Any]:
        agents: dict[str, Any] = {}
        for agent in self.agents():
            base = self.root / agent
            on_disk = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
            st = self.stats.get(agent, AgentMemStats())
            resident = self.resident.get(agent, 0)
            agents[agent] = {
                "resident_bytes": resident,
                "evicted_bytes": max(0, on_disk - resident),
                "blocks_resident": sum(
                    1 for k, b in self.blocks.items() if k[0] == agent and b.data is not None
                ),
                "hits": st.hits,
                "misses": st.misses,
                "evictions": st.evictions,
            }
        return {
            "agent_budget_bytes": self.agent_budget,
            "global_budget_bytes": self.global_budget,
            "k": self.k,
            "resident_bytes": sum(self.resident.values()),
            "evict_seconds": round(self.evict_seconds, 4),
            "load_seconds": round(self.load_seconds, 4),
            "agents": agents,
        }
