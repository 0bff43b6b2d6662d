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

**The host filesystem is the truth** for everything but unsaved content: the tree, file types
(directories, regular files, symbolic links, FIFOs, sockets, device nodes), hard links, link
counts, modes, owners, times and extended attributes are those of the backing entries, so that
nothing can drift out of step with a sidecar and the host enforces what it enforces for any
file (a daemon that is not root may give a file only to itself and its own groups, and may not
make device nodes: EPERM, as on the host).

**Blocks are keyed by the backing inode** (``st_dev``, ``st_ino``), not by path, so that the
names of a hard-linked file share one block in RAM: a write through one name is read through the
other before any save. Each block has a small integer ``id`` that stays the same across saves
(the filesystem's inode for it) and remembers the names it was reached by (checked against the
host before use). A save replaces the backing file atomically (temporary file, fsync, rename)
when the file has one name; a file with several names is saved in place (write, truncate, fsync),
because a rename would split the link, so a crash in the middle of such a save can leave a mix of
old and new bytes. ``flush`` carries mode, owner and atime over to the file that replaces the old
one; ctime is the host's.

**Never outside the data dir.** Every backing path is checked component by component with
``lstat`` (a symbolic link in the middle of a path is ELOOP), final components are never followed
(``O_NOFOLLOW``, ``lstat``, ``follow_symlinks=False``), and content is read only from regular
files (never opening a FIFO or a device node), so a link in memory that points at ``/etc/passwd``
is only ever a link: the OS kernel follows it, on the client's side, with the client's rights.

**Durability.** After each change to a directory (create, mkdir, unlink, rename, link, symlink,
mknod, a save's rename) the backing directory is fsynced, and after chmod, chown or utimensat the
entry (or, for what cannot be opened safely, its directory), so that whatever a call has
answered survives a power loss, not only a crash of the daemon.

Entries made without an explicit owner (the ``mem_write`` syscall) take their directory's owner;
the kernel gives a new agent's directory to the agent's owner when it creates the agent
(``ensure_agent`` with an owner, ``claim_agent`` for one the daemon made earlier: the manager
itself knows no agents).

Threads: one documented way in. Every public method takes the manager's lock (a re-entrant
``threading.RLock``, so public methods may call each other), which makes the manager safe to call
from any thread: syscalls run it on a worker thread, while the filesystem asks for metadata
(``lookup``, ``stat``, ``entry_id``, ``listdir``, ``agents``, ``ensure_agent``, ``info``) straight
from its trio thread, because those cost microseconds and a thread hop would cost more. Such a
caller may wait for the call that holds the lock to finish: milliseconds where that call saves
blocks (each save ends in an fsync). Private helpers (``_load``, ``_enforce``, ...) assume the
lock is held.
The attributes ``blocks``, ``stats`` and ``resident`` are for inspection where nothing else runs
(tests, benchmarks); read them through ``info()`` otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import shutil
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
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

RENAME_NOREPLACE = 1  # renameat2(2) flags
RENAME_EXCHANGE = 2
AT_FDCWD = -100
HOLE = 4096  # a run of zeros this long and aligned is left as a hole in a saved file
_ZEROS = bytes(HOLE)
# Extended-attribute namespaces kept on the backing files. ``system.*`` (POSIX ACLs) is not: the
# mount does not enable ACLs, so the kernel's ``default_permissions`` would ignore them.
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
BlockKey = tuple[int, int]  # the backing inode: (st_dev, st_ino)
Name = tuple[str, str]  # (agent, path)
Where = int | tuple[str, str]  # a block id (anything but a directory) or (agent, path)


def os_error(e: OSError, what: str) -> KernelError:
    """Translate an OSError from the backing directory, keeping its errno."""
    err = KernelError(f"{what}: {e.strerror}")
    err.errno = e.errno or errno.EIO
    return err


def error(code: int, what: str) -> KernelError:
    err = KernelError(f"{what}: {os.strerror(code)}")
    err.errno = code
    return err


@contextlib.contextmanager
def host_errors(what: str) -> Iterator[None]:
    """Every host failure as a KernelError with the host's errno (never an unexpected EIO)."""
    try:
        yield
    except KernelError:
        raise
    except FileNotFoundError:
        raise NotFound(f"no such memory entry {what!r}") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoSpace(f"no space left for {what}") from None
        raise os_error(e, what) from None


_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    _renameat2.argtypes.append(ctypes.c_uint)
    _renameat2.restype = ctypes.c_int


def renameat2(src: Path, dst: Path, flags: int) -> None:
    """rename(2), or renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE through libc (glibc
    2.28+; Python has no binding). Without it in libc, flags are EINVAL, as an old kernel says."""
    if not flags:
        os.rename(src, dst)
        return
    if _renameat2 is None:
        raise OSError(errno.EINVAL, "renameat2 is not available")
    if _renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def sync_dir(path: Path) -> None:
    """fsync a backing directory: the entries it holds now survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_sparse(fd: int, data: bytes | bytearray) -> None:
    """Write ``data`` to a new, empty file, leaving aligned runs of HOLE zero bytes as holes,
    so a file with a hole costs no disk for it. Zero runs are found with ``find`` (C speed: a
    dense block costs little more than writing it)."""
    view = memoryview(data)
    n = len(data)
    pos = search = 0  # pos: the first byte not yet written or skipped
    while (found := data.find(_ZEROS, search)) >= 0:
        start = end = -(-found // HOLE) * HOLE  # the first aligned chunk it may cover
        while end + HOLE <= n and data.startswith(_ZEROS, end):
            end += HOLE
        if end == start:  # a run too short to cover an aligned chunk: look past it
            search = found + HOLE
            continue
        _pwrite_all(fd, view[pos:start], pos)
        pos = search = end
    _pwrite_all(fd, view[pos:], pos)
    os.ftruncate(fd, n)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def write_in_place(fd: int, data: bytes | bytearray) -> None:
    _pwrite_all(fd, memoryview(data), 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)


def _serialized(
    method: Callable[Concatenate[MemoryManager, P], R],
) -> Callable[Concatenate[MemoryManager, P], R]:
    """Run a public method of the manager holding its lock: the one way into its state."""

    @functools.wraps(method)
    def locked(manager: MemoryManager, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with manager._lock:
            return method(manager, *args, **kwargs)

    return locked


@dataclass(eq=False)
class Block:
    """One backing inode (a memory file, or a link, FIFO, socket or device node: anything but a
    directory). ``data`` is None while evicted or never loaded (the disk copy is the truth)."""

    id: int
    agent: str  # whose budget its RAM counts against (the agent it was first reached through)
    key: BlockKey
    data: bytearray | None = None
    dirty: bool = False
    uses: deque[float] = field(default_factory=deque)  # the last K uncorrelated uses
    last_ref: float = 0.0  # the last reference of any kind, correlated ones included
    names: set[Name] = field(default_factory=set)  # names it was reached by (checked on use)
    opens: int = 0  # open file handles
    fd: int | None = None  # held once its last name is gone while it is open

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
        self.blocks: dict[int, Block] = {}  # by id
        self._by_key: dict[BlockKey, Block] = {}
        self._ids = 0
        self.stats: dict[str, AgentMemStats] = {}
        self.resident: dict[str, int] = {}
        self.evict_seconds = 0.0
        self.load_seconds = 0.0
        self._lock = threading.RLock()  # held by every public method; see the module docstring

    # ---- paths ------------------------------------------------------------------------------

    @_serialized
    def agents(self) -> list[str]:
        names = []
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False):
                names.append(entry.name)
        return sorted(names)

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
            sync_dir(self.root)
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
            st = os.lstat(disk)
            if not stat.S_ISDIR(st.st_mode):
                return
            if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()) != owner:
                os.chown(disk, *owner, follow_symlinks=False)
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
        for block in list(self.blocks.values()):
            block.names = {n for n in block.names if n[0] != agent}
            if not block.names and not block.opens:
                self._drop(block)
        shutil.rmtree(self.root / agent, ignore_errors=True)

    def _disk(self, agent: str, path: str) -> Path:
        """The backing path of ``AGENT/path``, with no symbolic link on the way to it: each
        directory on the way is checked with lstat (ELOOP if one is a link), so the daemon
        never leaves the data dir, whatever a link in memory points at. A missing component is
        left for the operation itself to report (ENOENT)."""
        base = self.root / agent
        parts = split_path(path)
        here = base
        for part in [None, *parts[:-1]]:
            if part is not None:
                here = here / part
            try:
                mode = os.lstat(here).st_mode
            except FileNotFoundError:
                break
            except OSError as e:
                raise os_error(e, path) from None
            if stat.S_ISLNK(mode):
                raise error(errno.ELOOP, f"{path}: a symbolic link on the way")
            if not stat.S_ISDIR(mode):
                raise NotADirectory(f"{path}: not a directory on the way")
        return base.joinpath(*parts) if parts else base

    def _lstat(self, agent: str, path: str) -> tuple[Path, os.stat_result | None]:
        disk = self._disk(agent, path)
        try:
            return disk, os.lstat(disk)
        except FileNotFoundError:
            return disk, None
        except OSError as e:
            raise os_error(e, path) from None

    def _record(self, agent: str, path: str, st: os.stat_result) -> Block:
        """The block of the backing inode ``st`` (made on first sight), reached by ``path``."""
        key = (st.st_dev, st.st_ino)
        block = self._by_key.get(key)
        if block is None:
            self._ids += 1
            block = Block(self._ids, agent, key)
            self.blocks[block.id] = block
            self._by_key[key] = block
        block.names.add((agent, path))
        return block

    def _fresh(self, agent: str, path: str) -> int:
        """The id of an entry just made: its inode is new, so a block still recorded under
        the same key (an inode number the host reused) is stale and goes."""
        _, st = self._lstat(agent, path)
        assert st is not None
        stale = self._by_key.get((st.st_dev, st.st_ino))
        if stale is not None:
            self._drop(stale)
        return self._record(agent, path, st).id

    def _resolve(self, agent: str, path: str) -> Block:
        """The block a name (not a directory) refers to."""
        _, st = self._lstat(agent, path)
        if st is None:
            raise NotFound(f"no such memory block {path!r}")
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectory(f"{path} is a directory")
        return self._record(agent, path, st)

    def _get(self, fid: int) -> Block:
        block = self.blocks.get(fid)
        if block is None:
            raise NotFound(f"memory file {fid} is gone")
        return block

    def _host(self, block: Block) -> tuple[Path | int, os.stat_result]:
        """Where the block's inode is now: a backing path that still names it (names that no
        longer do are forgotten), else the descriptor held for an open, unlinked file."""
        for name in sorted(block.names):
            try:
                disk, st = self._lstat(*name)
            except KernelError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == block.key:
                return disk, st
            block.names.discard(name)
        if block.fd is not None:
            return block.fd, os.fstat(block.fd)
        raise NotFound("the memory file has no name left")

    def _where(self, where: Where) -> tuple[Path | int, os.stat_result, Block | None]:
        if isinstance(where, int):
            found = self._get(where)
            return (*self._host(found), found)
        disk, st = self._lstat(*where)
        if st is None:
            raise NotFound(f"no such memory entry {where[1]!r}")
        return disk, st, None if stat.S_ISDIR(st.st_mode) else self._record(*where, st)

    @_serialized
    def is_dir(self, agent: str, path: str) -> bool:
        st = self._lstat(agent, path)[1]
        return st is not None and stat.S_ISDIR(st.st_mode)

    @_serialized
    def lookup(self, agent: str, path: str) -> tuple[int, int] | None:
        """What ``AGENT/path`` is: (file type bits, block id; 0 for a directory), or None. The
        id is the same for every name of a hard-linked file, and across saves."""
        _, st = self._lstat(agent, path)
        if st is None:
            return None
        fmt = stat.S_IFMT(st.st_mode)
        return (fmt, 0) if fmt == stat.S_IFDIR else (fmt, self._record(agent, path, st).id)

    # ---- metadata ---------------------------------------------------------------------------

    @_serialized
    def stat(self, agent: str, path: str) -> os.stat_result | None:
        """The backing entry's lstat (its own, never a link's target), or None."""
        return self._lstat(agent, path)[1]

    @_serialized
    def size(self, agent: str, path: str, st: os.stat_result) -> int:
        """``st``'s size corrected for unsaved writes."""
        block = self._by_key.get((st.st_dev, st.st_ino))
        if block is not None and block.data is not None and block.dirty:
            return len(block.data)
        return st.st_size

    @_serialized
    def entry_id(self, fid: int) -> tuple[os.stat_result, int] | None:
        """A block's backing lstat and its size with unsaved writes, or None once gone."""
        block = self.blocks.get(fid)
        if block is None:
            return None
        try:
            _, st = self._host(block)
        except (KernelError, OSError):
            return None
        size = len(block.data) if block.data is not None and block.dirty else st.st_size
        return st, size

    @_serialized
    def listdir(self, agent: str, path: str) -> list[str]:
        try:
            names = os.listdir(self._disk(agent, path))
            return sorted(n for n in names if not n.endswith(TMP_SUFFIX))
        except NotADirectoryError:
            raise NotADirectory(f"{path} is not a directory") from None
        except FileNotFoundError:
            raise NotFound(f"no such memory directory {path!r}") from None
        except OSError as e:
            raise os_error(e, path) from None

    @_serialized
    def readlink(self, where: Where) -> bytes:
        """A symbolic link's target, as bytes (never followed: it may point anywhere)."""
        place, st, _ = self._where(where)
        if not stat.S_ISLNK(st.st_mode) or isinstance(place, int):
            raise error(errno.EINVAL, "not a symbolic link")
        with host_errors("readlink"):
            return os.readlink(os.fsencode(place))

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
        owner goes first: changing it clears setuid/setgid on the host. A symbolic link gets
        only its owner (its mode is always 0777)."""
        parent = os.lstat(disk.parent)
        uid, gid = owner if owner is not None else (parent.st_uid, parent.st_gid)
        current = os.fstat(fd) if fd is not None else os.lstat(disk)
        if setgid_parent and parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
            if stat.S_ISDIR(current.st_mode):
                mode |= stat.S_ISGID
        if (current.st_uid, current.st_gid) != (uid, gid):
            try:
                if fd is not None:
                    os.fchown(fd, uid, gid)
                else:
                    os.chown(disk, uid, gid, follow_symlinks=False)
            except PermissionError:
                if os.geteuid() == 0:
                    raise
                # Not root: the entry stays the daemon's, as anything the daemon makes does.
        if fd is not None:
            os.fchmod(fd, mode & 0o7777)
        elif not stat.S_ISLNK(current.st_mode):
            os.chmod(disk, mode & 0o7777)

    def _new_entry(
        self,
        disk: Path,
        path: str,
        make: Callable[[], int | None],
        mode: int,
        owner: tuple[int, int] | None,
    ) -> None:
        """Make an entry with ``make`` (which returns a descriptor or None), give it its owner
        and mode, undo it if that fails, and fsync its directory."""
        try:
            fd = make()
        except FileExistsError:
            raise AlreadyExists(f"{path} exists") from None
        except OSError as e:
            raise os_error(e, path) from None
        try:
            self._settle(disk, fd, mode, owner)
            if fd is not None:
                os.fsync(fd)
            sync_dir(disk.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(disk).st_mode):
                    os.rmdir(disk)
                else:
                    os.unlink(disk)
            raise os_error(e, path) from None
        finally:
            if fd is not None:
                os.close(fd)

    @_serialized
    def create(
        self, agent: str, path: str, mode: int = 0o644, owner: tuple[int, int] | None = None
    ) -> int:
        """A new empty block with ``mode`` as given (no umask: the caller applied its own) and
        ``owner`` (uid, gid), or its directory's owner. Returns its id."""
        disk = self._disk(agent, path)
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        self._new_entry(disk, path, lambda: os.open(disk, flags, 0o600), mode, owner)
        block = self._get(self._fresh(agent, path))
        block.data, block.dirty = bytearray(), False
        self._touch(block)
        return block.id

    @_serialized
    def mkdir(
        self, agent: str, path: str, mode: int = 0o755, owner: tuple[int, int] | None = None
    ) -> None:
        """A new directory; ``mode`` and ``owner`` as for ``create``."""
        disk = self._disk(agent, path)

        def make() -> None:
            os.mkdir(disk, 0o700)

        self._new_entry(disk, path, make, mode, owner)

    @_serialized
    def symlink(
        self, agent: str, path: str, target: bytes, owner: tuple[int, int] | None = None
    ) -> int:
        """A symbolic link to ``target`` (relative, absolute or dangling: it is never followed
        here), owned by ``owner``. Returns its id."""
        disk = self._disk(agent, path)

        def make() -> None:
            os.symlink(target, os.fsencode(disk))

        self._new_entry(disk, path, make, 0o777, owner)
        return self._fresh(agent, path)

    @_serialized
    def mknod(
        self, agent: str, path: str, mode: int, rdev: int = 0, owner: tuple[int, int] | None = None
    ) -> int:
        """A FIFO, socket, character or block device (or an empty regular file); ``mode`` holds
        the type and the bits. The host decides who may make device nodes (root). Returns its
        id."""
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFREG:
            return self.create(agent, path, stat.S_IMODE(mode), owner)
        if fmt not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise error(errno.EINVAL, f"{path}: cannot make a node of type {fmt:o}")
        disk = self._disk(agent, path)

        def make() -> None:
            os.mknod(disk, fmt | 0o600, rdev)

        self._new_entry(disk, path, make, stat.S_IMODE(mode), owner)
        return self._fresh(agent, path)

    @_serialized
    def link(self, fid: int, agent: str, path: str) -> None:
        """A new name ``AGENT/path`` for block ``fid`` (a hard link on the backing files: one
        inode, one block in RAM, one link count). A file whose every name is gone cannot get a
        new one (ENOENT, as link(2) says)."""
        block = self._get(fid)
        place, _ = self._host(block)
        if isinstance(place, int):
            raise NotFound("the memory file has no name left")
        disk = self._disk(agent, path)
        try:
            os.link(place, disk, follow_symlinks=False)
        except FileExistsError:
            raise AlreadyExists(f"{path} exists") from None
        except OSError as e:
            raise os_error(e, path) from None
        block.names.add((agent, path))
        with host_errors(path):
            sync_dir(disk.parent)

    def _set(
        self,
        place: Path | int,
        st: os.stat_result,
        block: Block | None,
        mode: int | None,
        uid: int,
        gid: int,
        atime_ns: int | None,
        mtime_ns: int | None,
    ) -> None:
        if uid != -1 or gid != -1:
            if isinstance(place, int):
                os.fchown(place, uid, gid)
            else:
                os.chown(place, uid, gid, follow_symlinks=False)
        if mode is not None:
            if stat.S_ISLNK(st.st_mode):
                raise error(errno.EOPNOTSUPP, "a symbolic link has no mode of its own")
            if isinstance(place, int):
                os.fchmod(place, mode & 0o7777)
            else:
                os.chmod(place, mode & 0o7777)  # not a link (lstat): nothing to follow
        if atime_ns is not None or mtime_ns is not None:
            if block is not None:
                self._save(block)  # a later save would replace the times with its own
                place, st = self._host(block)
            else:
                st = os.lstat(place) if not isinstance(place, int) else os.fstat(place)
            times = (
                st.st_atime_ns if atime_ns is None else atime_ns,
                st.st_mtime_ns if mtime_ns is None else mtime_ns,
            )
            if isinstance(place, int):
                os.utime(place, ns=times)
            else:
                os.utime(place, ns=times, follow_symlinks=False)
        self._sync_entry(place, st)

    @staticmethod
    def _sync_entry(place: Path | int, st: os.stat_result) -> None:
        """Make an entry's metadata durable: fsync the entry where it can be opened without
        side effects (a regular file, a directory), else its directory (on a journalling host
        that commits the entry's inode with it)."""
        if isinstance(place, int):
            os.fsync(place)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            fd = os.open(place, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            sync_dir(place.parent)

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
        """chmod, chown (-1 leaves a field alone) and utimensat on any entry, never through a
        link (a link's own owner and times; chmod of a link is EOPNOTSUPP, as on Linux). Who
        may do it is checked before (the FUSE kernel's ``default_permissions``) and again by
        the host. New times go on after pending writes are saved: a later save would replace
        them with the time of the save."""
        self.set_metadata_of((agent, path), mode, uid, gid, atime_ns, mtime_ns)

    @_serialized
    def set_metadata_of(
        self,
        where: Where,
        mode: int | None = None,
        uid: int = -1,
        gid: int = -1,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        """``set_metadata`` on a block id or an (agent, path)."""
        with host_errors("setattr"):
            self._set(*self._where(where), mode, uid, gid, atime_ns, mtime_ns)

    def _name_gone(self, block: Block, name: Name, place: Path, nlink_left: int) -> bool:
        """Before ``name`` of ``block`` goes (at ``place``): an open file about to lose its last
        name keeps a descriptor, so it works until closed. True if it is its last name."""
        if nlink_left > 0:
            return False
        if block.opens and block.fd is None and stat.S_ISREG(os.lstat(place).st_mode):
            flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                block.fd = os.open(place, os.O_RDWR | flags)
            except PermissionError:
                block.fd = os.open(place, os.O_RDONLY | flags)
        return True

    def _forget_name(self, block: Block, name: Name, last: bool) -> int | None:
        block.names.discard(name)
        if not last:
            return None
        block.names.clear()
        if not block.opens:
            self._drop(block)
        return block.id

    @_serialized
    def unlink(self, agent: str, path: str) -> int | None:
        """Remove a name; returns the block id if it was the file's last name (an open file
        lives on until closed), else None."""
        disk, st = self._lstat(agent, path)
        if st is None:
            raise NotFound(f"no such memory block {path!r}")
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectory(f"{path} is a directory")
        block = self._record(agent, path, st)
        with host_errors(path):
            last = self._name_gone(block, (agent, path), disk, st.st_nlink - 1)
            os.unlink(disk)
        gone = self._forget_name(block, (agent, path), last)
        with host_errors(path):
            sync_dir(disk.parent)
        return gone

    @_serialized
    def rmdir(self, agent: str, path: str) -> None:
        disk = self._disk(agent, path)
        try:
            os.rmdir(disk)
        except OSError as e:
            if e.errno == errno.ENOTEMPTY:
                raise NotEmpty(f"{path} is not empty") from None
            raise os_error(e, path) from None
        with host_errors(path):
            sync_dir(disk.parent)

    @_serialized
    def rename(self, agent: str, old: str, new_agent: str, new: str, flags: int = 0) -> int | None:
        """rename(2) on the backing tree (renameat2 with ``flags``: RENAME_NOREPLACE fails with
        EEXIST if ``new`` exists, RENAME_EXCHANGE swaps the two atomically). Blocks follow their
        names; returns the id of a file whose last name was replaced, else None."""
        src, sst = self._lstat(agent, old)
        dst, dst_st = self._lstat(new_agent, new)
        if sst is None:
            raise NotFound(f"no such memory entry {old!r}")
        moving = None if stat.S_ISDIR(sst.st_mode) else self._record(agent, old, sst)
        replaced = None
        if dst_st is not None and not stat.S_ISDIR(dst_st.st_mode):
            replaced = self._record(new_agent, new, dst_st)
        if moving is not None and moving is replaced:  # two names of one file: a no-op
            return None
        last = False
        with host_errors(f"{old} -> {new}"):
            if replaced is not None and dst_st is not None and not flags:
                last = self._name_gone(replaced, (new_agent, new), dst, dst_st.st_nlink - 1)
            renameat2(src, dst, flags)
        exchange = bool(flags & RENAME_EXCHANGE)
        a, b = (agent, old), (new_agent, new)
        for block in self.blocks.values():
            block.names = {self._moved(n, a, b, exchange) for n in block.names}
        gone = None
        if replaced is not None and not exchange:
            gone = self._forget_name(replaced, b, last)
            if moving is not None:
                moving.names.add(b)
        with host_errors(f"{old} -> {new}"):
            sync_dir(src.parent)
            if dst.parent != src.parent:
                sync_dir(dst.parent)
        return gone

    @staticmethod
    def _moved(name: Name, a: Name, b: Name, exchange: bool) -> Name:
        """``name`` after ``a`` was renamed to ``b`` (or swapped with it)."""

        def under(n: Name, top: Name) -> bool:
            return n[0] == top[0] and (n[1] == top[1] or n[1].startswith(top[1] + "/"))

        if under(name, a):
            return (b[0], b[1] + name[1][len(a[1]) :])
        if exchange and under(name, b):
            return (a[0], a[1] + name[1][len(b[1]) :])
        return name

    @_serialized
    def fsync_dir(self, agent: str, path: str) -> None:
        """fsync(2) of a directory: its backing directory, and the blocks saved meanwhile."""
        with host_errors(path):
            sync_dir(self._disk(agent, path))

    # ---- extended attributes ----------------------------------------------------------------

    @staticmethod
    def _xattr_name(name: bytes, setting: bool) -> None:
        if not name.startswith(XATTR_NAMESPACES):
            raise error(errno.EOPNOTSUPP if setting else errno.ENODATA, "xattr namespace")

    @_serialized
    def getxattr(self, where: Where, name: bytes) -> bytes:
        """An extended attribute of the backing entry itself (never a link's target)."""
        self._xattr_name(name, setting=False)
        with host_errors("getxattr"):
            place = self._where(where)[0]
            if isinstance(place, int):
                return os.getxattr(place, name)
            return os.getxattr(place, name, follow_symlinks=False)

    @_serialized
    def setxattr(self, where: Where, name: bytes, value: bytes) -> None:
        """Set an extended attribute; the host answers for what it refuses (EPERM for user.* on a
        link or a special file, ENOSPC/E2BIG for a value too big, ENOTSUP without support)."""
        self._xattr_name(name, setting=True)
        with host_errors("setxattr"):
            place, st, _ = self._where(where)
            if isinstance(place, int):
                os.setxattr(place, name, value)
            else:
                os.setxattr(place, name, value, follow_symlinks=False)
            self._sync_entry(place, st)

    @_serialized
    def listxattr(self, where: Where) -> list[bytes]:
        with host_errors("listxattr"):
            place = self._where(where)[0]
            if isinstance(place, int):
                names = os.listxattr(place)
            else:
                names = os.listxattr(place, follow_symlinks=False)
        encoded = [os.fsencode(n) for n in names]
        return [n for n in encoded if n.startswith(XATTR_NAMESPACES)]

    @_serialized
    def removexattr(self, where: Where, name: bytes) -> None:
        self._xattr_name(name, setting=False)
        with host_errors("removexattr"):
            place, st, _ = self._where(where)
            if isinstance(place, int):
                os.removexattr(place, name)
            else:
                os.removexattr(place, name, follow_symlinks=False)
            self._sync_entry(place, st)

    # ---- contents ---------------------------------------------------------------------------

    def _load(self, block: Block) -> bytearray:
        """The block's bytes, loaded into RAM if it was evicted or never loaded. Only a regular
        file is ever opened (a FIFO or a device node never is: that could block or touch a
        device)."""
        st = self.stats.setdefault(block.agent, AgentMemStats())
        if block.data is not None:
            st.hits += 1
            self._touch(block)
            return block.data
        start = time.perf_counter()
        with host_errors("load"):
            place, info = self._host(block)
            if stat.S_ISLNK(info.st_mode):
                raise error(errno.ELOOP, "a symbolic link is never followed in memory")
            if not stat.S_ISREG(info.st_mode):
                raise error(errno.EINVAL, "not a regular file")
            if isinstance(place, int):
                fd = os.dup(place)
            else:
                fd = os.open(place, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != block.key:
                    raise NotFound("the memory file changed under us")
                f.seek(0)
                data = bytearray(f.read())
        self.load_seconds += time.perf_counter() - start
        st.misses += 1
        st.loads += 1
        block.data = data
        self._account(block.agent, len(data))
        self._touch(block)
        self._enforce(block.agent, keep=block)
        return data

    @_serialized
    def open_id(self, fid: int) -> None:
        """An open file handle on the block: it keeps working after its last name is gone."""
        self._get(fid).opens += 1

    @_serialized
    def close_id(self, fid: int) -> None:
        """The handle is released; an unlinked file goes with its last handle."""
        block = self.blocks.get(fid)
        if block is None:
            return
        block.opens = max(0, block.opens - 1)
        if not block.opens and not block.names:
            self._drop(block)

    @_serialized
    def read(self, agent: str, path: str, offset: int, size: int) -> bytes:
        return self.read_id(self._resolve(agent, path).id, offset, size)

    @_serialized
    def read_id(self, fid: int, offset: int, size: int) -> bytes:
        data = self._load(self._get(fid))
        return bytes(data[offset : offset + size])

    @_serialized
    def read_all(self, agent: str, path: str) -> bytes:
        return bytes(self._load(self._resolve(agent, path)))

    @_serialized
    def write(self, agent: str, path: str, offset: int, data: bytes) -> int:
        return self.write_id(self._resolve(agent, path).id, offset, data)

    @_serialized
    def write_id(self, fid: int, offset: int, data: bytes) -> int:
        self._check_size(offset + len(data))
        block = self._get(fid)
        buf = self._load(block)
        before = len(buf)
        if offset > before:
            buf.extend(bytes(offset - before))
        buf[offset : offset + len(data)] = data
        block.dirty = True
        self._account(block.agent, len(buf) - before)
        self._enforce(block.agent, keep=block)
        return len(data)

    @_serialized
    def truncate(self, agent: str, path: str, size: int, save: bool = True) -> None:
        self.truncate_id(self._resolve(agent, path).id, size, save)

    @_serialized
    def truncate_id(self, fid: int, size: int, save: bool = True) -> None:
        """Resize a block. ``save=False`` (O_TRUNC at open) leaves the disk copy alone until the
        writer closes, so a crash in between keeps the last closed content."""
        self._check_size(size)
        block = self._get(fid)
        buf = self._load(block)
        before = len(buf)
        if size < before:
            del buf[size:]
        else:
            buf.extend(bytes(size - before))
        block.dirty = True
        self._account(block.agent, size - before)
        if save:
            self._save(block)

    def _check_size(self, size: int) -> None:
        """A block lives whole in RAM while in use, so none may be larger than an agent's
        budget: refuse (EFBIG) before allocating anything, and leave the block as it was."""
        if size > self.agent_budget:
            raise TooLarge(
                f"{size} bytes is over the {self.agent_budget}-byte memory file limit "
                "(mem_agent_mb)"
            )

    @_serialized
    def flush(self, agent: str, path: str) -> None:
        self._save(self._resolve(agent, path))

    @_serialized
    def flush_id(self, fid: int) -> None:
        """Save a dirty block (the writer's close or fsync)."""
        block = self.blocks.get(fid)
        if block is not None:
            self._save(block)

    def _save(self, block: Block) -> None:
        """Write a dirty block to disk. A file with one name: atomically (temporary file, fsync,
        rename, fsync of the directory), the new file taking the old one's mode, owner, atime and
        extended attributes; its mtime is the save's. A file with several names (or none left)
        in place, since a rename would split the link."""
        if block.data is None or not block.dirty:
            return
        with host_errors("save"):
            place, old = self._host(block)
            if isinstance(place, int):
                write_in_place(place, block.data)
            elif old.st_nlink > 1:
                fd = os.open(place, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    write_in_place(fd, block.data)
                finally:
                    os.close(fd)
            else:
                self._replace(block, place, old)
        block.dirty = False

    def _replace(self, block: Block, disk: Path, old: os.stat_result) -> None:
        # A fixed-length name: the block's own may already be 255 bytes, the most a name can be.
        # Calls are serialised, so two saves never share a temporary file.
        digest = hashlib.sha256(disk.name.encode()).hexdigest()[:24]
        tmp = disk.with_name(f".{digest}{TMP_SUFFIX}")
        assert block.data is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a crash's leftover
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            write_sparse(fd, block.data)
            self._carry_over(fd, disk, old)
            os.fsync(fd)
            new = os.fstat(fd)
            os.replace(tmp, disk)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        del self._by_key[block.key]
        block.key = (new.st_dev, new.st_ino)
        self._by_key[block.key] = block
        sync_dir(disk.parent)

    @staticmethod
    def _carry_over(fd: int, disk: Path, old: os.stat_result) -> None:
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
        with contextlib.suppress(OSError):  # a host without xattrs has none to carry
            for name in os.listxattr(disk, follow_symlinks=False):
                value = os.getxattr(disk, name, follow_symlinks=False)
                with contextlib.suppress(OSError):
                    os.setxattr(fd, name, value)
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
        os.utime(fd, ns=(old.st_atime_ns, os.fstat(fd).st_mtime_ns))

    # ---- whole-file helpers for syscalls ------------------------------------------------------

    @_serialized
    def write_file(self, agent: str, path: str, data: bytes, append: bool = False) -> int:
        """Create or replace (or extend) a memory file and save it; returns its size."""
        if self.stat(agent, path) is None:
            self.create(agent, path)
        block = self._resolve(agent, path)
        if append:
            self.write_id(block.id, len(self._load(block)), data)
        else:
            self.truncate_id(block.id, 0, save=False)
            self.write_id(block.id, 0, data)
        self._save(block)
        return len(self._load(block))

    @_serialized
    def list_entries(self, agent: str, path: str) -> list[dict[str, Any]]:
        out = []
        kinds = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}
        for name in self.listdir(agent, path):
            child = f"{path}/{name}" if path else name
            st = self.stat(agent, child)
            if st is None:
                continue
            kind = kinds.get(stat.S_IFMT(st.st_mode), "special")
            out.append(
                {
                    "name": name,
                    "kind": kind,
                    "size": 0 if kind == "dir" else self.size(agent, child, st),
                    "mtime": st.st_mtime,
                }
            )
        return out

    @_serialized
    def delete(self, agent: str, path: str) -> None:
        """Remove a file, or an empty directory."""
        if self.is_dir(agent, path):
            self.rmdir(agent, path)
        else:
            self.unlink(agent, path)

    @_serialized
    def flush_all(self) -> None:
        for block in list(self.blocks.values()):
            with contextlib.suppress(KernelError):
                self._save(block)

    # ---- K-LRU ------------------------------------------------------------------------------

    def _touch(self, block: Block) -> None:
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

    def _enforce(self, agent: str, keep: Block | None = None) -> None:
        def victims(owner: str | None) -> list[Block]:
            found = [
                b
                for b in self.blocks.values()
                if b.data is not None and b is not keep and (owner is None or b.agent == owner)
            ]
            return sorted(found, key=self._kth_use)

        if self.resident.get(agent, 0) > self.agent_budget:
            for block in victims(agent):
                if self.resident.get(agent, 0) <= self.agent_budget:
                    break
                self._evict(block)
        if sum(self.resident.values()) > self.global_budget:
            for block in victims(None):
                if sum(self.resident.values()) <= self.global_budget:
                    break
                self._evict(block)

    def _evict(self, block: Block) -> None:
        start = time.perf_counter()
        if block.dirty:
            try:
                self._save(block)
            except KernelError:
                return  # cannot save it: keep it in RAM rather than lose it
        self._account(block.agent, -block.resident)
        block.data = None
        self.stats.setdefault(block.agent, AgentMemStats()).evictions += 1
        self.evict_seconds += time.perf_counter() - start

    def _drop(self, block: Block) -> None:
        if self.blocks.pop(block.id, None) is None:
            return
        if self._by_key.get(block.key) is block:
            del self._by_key[block.key]
        self._account(block.agent, -block.resident)
        block.data = None
        if block.fd is not None:
            os.close(block.fd)
            block.fd = None

    # ---- views ------------------------------------------------------------------------------

    @_serialized
    def info(self) -> dict[str, Any]:
        agents: dict[str, Any] = {}
        for agent in self.agents():
            on_disk = 0
            for top, _dirs, files in os.walk(self.root / agent):  # never into a link
                for name in files:
                    with contextlib.suppress(OSError):
                        st = os.lstat(os.path.join(top, name))
                        if stat.S_ISREG(st.st_mode):
                            on_disk += st.st_size
            st_agent = self.stats.get(agent, AgentMemStats())
            resident = self.resident.get(agent, 0)
            agents[agent] = {
                "resident_bytes": resident,
                "evicted_bytes": max(0, on_disk - resident),
                "blocks_resident": sum(
                    1 for b in self.blocks.values() if b.agent == agent and b.data is not None
                ),
                "hits": st_agent.hits,
                "misses": st_agent.misses,
                "evictions": st_agent.evictions,
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
