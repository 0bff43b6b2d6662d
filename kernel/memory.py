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

**Never outside the data dir, at any depth.** No host call is given a whole backing path: the
daemon walks to an entry's directory one component at a time, each opened ``O_PATH |
O_NOFOLLOW | O_DIRECTORY`` relative to the one before (a symbolic link on the way is ELOOP, a
file ENOTDIR), and names the entry by that directory descriptor and its own name (the ``*at``
calls, ``follow_symlinks=False``, ``O_NOFOLLOW``). So a tree deeper than PATH_MAX works (the
data dir's path in front of a path near PATH_MAX within the mount would be over it: ENAMETOOLONG,
as pjdfstest's ``*/03.t`` found), and no link can be swapped in between a check and a use. What
has no ``*at`` form (chmod without following, which Linux lacks; extended attributes) goes
through ``/proc/self/fd/N`` of an ``O_PATH | O_NOFOLLOW`` descriptor of the entry itself, which the
OS kernel resolves to exactly that inode, a link included. Content is read only from regular
files (never opening a FIFO or a device node), so a link in memory that points at ``/etc/passwd``
is only ever a link: the OS kernel follows it, on the client's side, with the client's rights.
Every descriptor is closed before the call returns (none is cached: a cached one could outlive a
rename); an open file whose last name is gone keeps one until its last handle closes.

**Durability.** After each change to a directory (create, mkdir, unlink, rename, link, symlink,
mknod, a save's rename) the backing directory is fsynced, and after chmod, chown or utimensat the
entry (or, for what cannot be opened safely, its directory), so that whatever a call has
answered survives a power loss, not only a crash of the daemon.

Entries made without an explicit owner take their directory's owner; the kernel gives a new
agent's directory, mode 0700, to the agent's owner when it creates the agent (``ensure_agent``
with an owner, ``claim_agent`` for one the daemon made earlier: the manager itself knows no
agents), so an agent's memory is closed to other users until its owner opens it with ``chmod``.

**Kernel calls check permissions.** The filesystem's own calls are checked before they arrive
(the OS kernel's ``default_permissions``), but the kernel's calls for an agent (``read_all``,
``write_file``, ``list_entries``, ``delete``: the ``mem_*`` syscalls and tools, an ``llm``
call's ``memory``) run as the daemon, which may be root. Given a ``Cred`` (the agent's owner's),
these check the backing entries' modes as the OS kernel would for that user: search on every
directory of the walk (checked on the descriptor the walk opened, so the check and the use see
the same directory), read on a file to read it, read and search on a directory to list it,
write on a file to change it, write on its directory to create or delete in it (and the sticky
bit's rule there). A refusal is ``AccessDenied`` (EACCES) naming the path. ``None`` checks
nothing: the filesystem's path, already checked.

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

from kernel.access import R_OK, W_OK, X_OK, Cred
from kernel.errors import (
    AccessDenied,
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


# A directory on the way, opened only to name things relative to it: O_PATH needs no read
# permission on it (search on its parent, as a path walk), and O_NOFOLLOW | O_DIRECTORY refuse
# a symbolic link (ENOTDIR, told apart from a file with one fstatat).
O_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_ENTRY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # an entry itself, a link or a FIFO included


@dataclass(frozen=True)
class At:
    """An entry named as the ``*at`` calls name it: a descriptor of its directory (``O_PATH``,
    owned by whoever made this, closed when they are done) and its own name, so that no host
    call sees a path longer than one name, however deep the tree."""

    dir: int
    name: str

    def stat(self) -> os.stat_result | None:
        """The entry's own stat (never a link's target), or None if there is no such name."""
        try:
            return os.stat(self.name, dir_fd=self.dir, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise os_error(e, self.name) from None

    def open(self, flags: int, mode: int = 0o777) -> int:
        """openat(2) of the entry; the caller closes it (add ``O_NOFOLLOW``: it is not implied)."""
        return os.open(self.name, flags | os.O_CLOEXEC, mode, dir_fd=self.dir)


@contextlib.contextmanager
def entry_path(place: At | int) -> Iterator[str | int]:
    """What chmod and the xattr calls may be given for the entry itself: a descriptor held for
    an unlinked file, else ``/proc/self/fd/N`` of an ``O_PATH | O_NOFOLLOW`` descriptor of it,
    which resolves to exactly that inode (a link itself, never its target), at any depth."""
    if isinstance(place, int):
        yield place
        return
    fd = place.open(O_ENTRY)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def chmod_at(at: At, mode: int) -> None:
    """chmod(2) of the entry itself, race-free (Linux has no lchmod, and a mode on a link is
    EOPNOTSUPP, as fchmodat says)."""
    fd = at.open(O_ENTRY)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.EOPNOTSUPP, "a symbolic link has no mode of its own")
        os.chmod(f"/proc/self/fd/{fd}", mode & 0o7777)
    finally:
        os.close(fd)


def renameat2(src: At, dst: At, flags: int) -> None:
    """renameat(2), or renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE through libc (glibc
    2.28+; Python has no binding). Without it in libc, flags are EINVAL, as an old kernel says."""
    if not flags:
        os.rename(src.name, dst.name, src_dir_fd=src.dir, dst_dir_fd=dst.dir)
        return
    if _renameat2 is None:
        raise OSError(errno.EINVAL, "renameat2 is not available")
    names = os.fsencode(src.name), os.fsencode(dst.name)
    if _renameat2(src.dir, names[0], dst.dir, names[1], flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def sync_dir(dir_fd: int) -> None:
    """fsync a backing directory (given by any descriptor of it, ``O_PATH`` included, which
    cannot be fsynced itself): the entries it holds now survive a power loss."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_dir(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


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


def bytes_on_disk(top: Path) -> int:
    """The sizes of the regular files below ``top``, by directory descriptors (one open per
    level of the tree, as ``os.fwalk``), never following a link: not even to look at what it
    names, which ``os.fwalk`` does (its ``DirEntry.is_dir()`` follows), so that a link in
    memory pointing into the mount never makes the daemon wait for an answer from itself."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(top, flags)
    except OSError:
        return 0
    total = 0
    levels = [(fd, os.scandir(fd))]
    while levels:
        fd, entries = levels[-1]
        entry = next(entries, None)
        if entry is None:
            entries.close()
            os.close(fd)
            levels.pop()
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            if entry.is_dir(follow_symlinks=False):
                child = os.open(entry.name, flags, dir_fd=fd)
                try:
                    levels.append((child, os.scandir(child)))
                except OSError:
                    os.close(child)
                    raise
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


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
        self, agent: str, mode: int = 0o700, owner: tuple[int, int] | None = None
    ) -> None:
        """Make ``AGENT/`` unless it exists (an existing one keeps its metadata), owned by
        ``owner`` or else by the daemon (see ``claim_agent``). 0700 unless told otherwise (a
        ``mkdir mem/NAME`` gives its own mode): an agent's memory is its owner's to share."""
        validate_agent_name(agent)
        with self._at(agent, "") as at:
            try:
                os.mkdir(at.name, 0o700, dir_fd=at.dir)
            except FileExistsError:
                return
            except OSError as e:
                raise os_error(e, agent) from None
            try:
                owner = owner or (os.geteuid(), os.getegid())
                self._settle(at, None, mode, owner, setgid_parent=False)
                sync_dir(at.dir)
            except OSError as e:
                os.rmdir(at.name, dir_fd=at.dir)
                raise os_error(e, agent) from None

    @_serialized
    def claim_agent(self, agent: str, owner: tuple[int, int]) -> None:
        """Give ``AGENT/`` to the agent's owner if it is still the daemon's: memory made before
        the agent existed (by the daemon, e.g. a ``mem_*`` call or an earlier run) goes to
        whoever creates the agent, closed to others (0700, as a new one is: what the daemon
        made was never the owner's choice); memory a user made stays theirs, with its mode.
        Called by the kernel when it creates an agent. One stat and at most one chown, no
        fsync: cheap enough for the trio thread, as ``stat`` is. A daemon that is not root
        cannot give it away and leaves it."""
        try:
            with self._at(agent, "") as at:
                st = at.stat()
                if st is None or not stat.S_ISDIR(st.st_mode):
                    return
                if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()) != owner:
                    os.chown(at.name, *owner, dir_fd=at.dir, follow_symlinks=False)
                    chmod_at(at, 0o700)
        except PermissionError:
            if os.geteuid() == 0:
                raise
        except FileNotFoundError:
            pass
        except OSError as e:
            raise os_error(e, agent) from None

    @_serialized
    def remove_agent(self, agent: str) -> None:
        """``rm -r mem/AGENT`` done in one step (also used when the tree is removed). rmtree
        works by directory descriptors on Linux, so it reaches any depth without following
        links."""
        validate_agent_name(agent)
        for block in list(self.blocks.values()):
            block.names = {n for n in block.names if n[0] != agent}
            if not block.names and not block.opens:
                self._drop(block)
        shutil.rmtree(self.root / agent, ignore_errors=True)

    def _walk_step(self, dir_fd: int | None, name: str, path: str) -> int:
        """Open one directory on the way (``O_WALK``), with the errno a path walk would give:
        ENOENT if missing, ELOOP for a symbolic link (never followed), ENOTDIR for a file."""
        try:
            return os.open(name, O_WALK, dir_fd=dir_fd)
        except FileNotFoundError:
            raise NotFound(f"no such memory entry {path!r}") from None
        except NotADirectoryError:
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise error(errno.ELOOP, f"{path}: a symbolic link on the way") from None
            raise NotADirectory(f"{path}: not a directory on the way") from None
        except OSError as e:
            raise os_error(e, path) from None

    @staticmethod
    def _search(fd: int, cred: Cred | None, agent: str, path: str, upto: list[str]) -> None:
        """Refuse the walk unless ``cred`` may search the directory ``fd`` (``AGENT/upto``),
        checked on the descriptor the walk goes on from, so the check and the use see the
        same directory."""
        if cred is None:
            return
        st = os.fstat(fd)
        if not cred.permits(st.st_mode, st.st_uid, st.st_gid, X_OK):
            where = "/".join([agent, *upto])
            raise AccessDenied(
                f"mem/{agent}/{path}: permission denied ({cred.describe()} may not search "
                f"mem/{where})"
            )

    def _open_at(self, agent: str, path: str, cred: Cred | None = None) -> At:
        """``AGENT/path`` as an ``At`` whose directory descriptor the caller closes. The walk
        starts at the agent's directory (the data dir itself is the daemon's configuration and
        may be reached through links) and opens one component at a time, so no host call sees
        more than the data dir's path and one name: any depth works, and nothing on the way can
        be a symbolic link (ELOOP). ``''`` is the agent's directory itself, named in the data
        dir. A missing directory on the way is NotFound (ENOENT), as the operation would say.
        With ``cred``, each directory on the way must be searchable by it (AccessDenied), as
        the OS kernel's path walk would check: a missing name behind a closed directory is
        EACCES, not ENOENT, so nothing about it leaks."""
        parts = split_path(path)
        if not parts:
            return At(os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), agent)
        fd = self._walk_step(None, os.fspath(self.root / agent), path)
        try:
            self._search(fd, cred, agent, path, [])
            for i, part in enumerate(parts[:-1]):
                step = self._walk_step(fd, part, path)
                os.close(fd)
                fd = step
                self._search(fd, cred, agent, path, parts[: i + 1])
        except BaseException:
            os.close(fd)
            raise
        return At(fd, parts[-1])

    @contextlib.contextmanager
    def _at(self, agent: str, path: str, cred: Cred | None = None) -> Iterator[At]:
        """``_open_at`` for a ``with`` block: the directory descriptor is closed at its end."""
        at = self._open_at(agent, path, cred)
        try:
            yield at
        finally:
            os.close(at.dir)

    def _lstat(self, agent: str, path: str) -> os.stat_result | None:
        """The backing entry's own stat, or None if it or a directory on the way is missing."""
        try:
            with self._at(agent, path) as at:
                return at.stat()
        except NotFound:
            return None

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

    def _fresh(self, agent: str, path: str, st: os.stat_result) -> int:
        """The id of an entry just made (``st``): its inode is new, so a block still recorded
        under the same key (an inode number the host reused) is stale and goes."""
        stale = self._by_key.get((st.st_dev, st.st_ino))
        if stale is not None:
            self._drop(stale)
        return self._record(agent, path, st).id

    def _resolve(self, agent: str, path: str) -> Block:
        """The block a name (not a directory) refers to."""
        st = self._lstat(agent, path)
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

    @contextlib.contextmanager
    def _host(self, block: Block) -> Iterator[tuple[At | int, os.stat_result]]:
        """Where the block's inode is now: a backing name that still names it (names that no
        longer do are forgotten), its directory open for the ``with`` block, else the
        descriptor held for an open, unlinked file."""
        for name in sorted(block.names):
            try:
                at = self._open_at(*name)
            except KernelError:
                block.names.discard(name)
                continue
            try:
                st = at.stat()
            except KernelError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == block.key:
                try:
                    yield at, st
                finally:
                    os.close(at.dir)
                return
            os.close(at.dir)
            block.names.discard(name)
        if block.fd is not None:
            yield block.fd, os.fstat(block.fd)
            return
        raise NotFound("the memory file has no name left")

    @contextlib.contextmanager
    def _where(self, where: Where) -> Iterator[tuple[At | int, os.stat_result, Block | None]]:
        """A block id's or an (agent, path)'s entry, as ``_host`` gives it, and its block."""
        if isinstance(where, int):
            found = self._get(where)
            with self._host(found) as (place, st):
                yield place, st, found
            return
        with self._at(*where) as at:
            found_st = at.stat()
            if found_st is None:
                raise NotFound(f"no such memory entry {where[1]!r}")
            block = None if stat.S_ISDIR(found_st.st_mode) else self._record(*where, found_st)
            yield at, found_st, block

    @_serialized
    def is_dir(self, agent: str, path: str) -> bool:
        st = self._lstat(agent, path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    @_serialized
    def lookup(self, agent: str, path: str) -> tuple[int, int] | None:
        """What ``AGENT/path`` is: (file type bits, block id; 0 for a directory), or None. The
        id is the same for every name of a hard-linked file, and across saves."""
        st = self._lstat(agent, path)
        if st is None:
            return None
        fmt = stat.S_IFMT(st.st_mode)
        return (fmt, 0) if fmt == stat.S_IFDIR else (fmt, self._record(agent, path, st).id)

    # ---- metadata ---------------------------------------------------------------------------

    @_serialized
    def stat(self, agent: str, path: str) -> os.stat_result | None:
        """The backing entry's lstat (its own, never a link's target), or None."""
        return self._lstat(agent, path)

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
            with self._host(block) as (_, st):
                pass
        except (KernelError, OSError):
            return None
        size = len(block.data) if block.data is not None and block.dirty else st.st_size
        return st, size

    @_serialized
    def listdir(self, agent: str, path: str) -> list[str]:
        """The names in a directory; a symbolic link is ELOOP (never listed through)."""
        try:
            with self._at(agent, path) as at:
                try:
                    fd = at.open(os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                except NotADirectoryError:
                    st = at.stat()
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        raise error(errno.ELOOP, f"{path} is a symbolic link") from None
                    raise
            try:
                names = os.listdir(fd)
            finally:
                os.close(fd)
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
        with self._where(where) as (place, st, _):
            if not stat.S_ISLNK(st.st_mode) or isinstance(place, int):
                raise error(errno.EINVAL, "not a symbolic link")
            with host_errors("readlink"):
                return os.readlink(os.fsencode(place.name), dir_fd=place.dir)

    # ---- namespace operations ---------------------------------------------------------------

    def _settle(
        self,
        at: At,
        fd: int | None,
        mode: int,
        owner: tuple[int, int] | None,
        setgid_parent: bool = True,
    ) -> None:
        """Give a new entry its owner and mode. Without ``owner`` it takes its directory's; in a
        setgid directory it takes the directory's group, and a new directory stays setgid. The
        owner goes first: changing it clears setuid/setgid on the host. A symbolic link gets
        only its owner (its mode is always 0777)."""
        parent = os.fstat(at.dir)
        uid, gid = owner if owner is not None else (parent.st_uid, parent.st_gid)
        current = os.fstat(fd) if fd is not None else at.stat()
        if current is None:
            raise FileNotFoundError(errno.ENOENT, "the new entry is gone")
        if setgid_parent and parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
            if stat.S_ISDIR(current.st_mode):
                mode |= stat.S_ISGID
        if (current.st_uid, current.st_gid) != (uid, gid):
            try:
                if fd is not None:
                    os.fchown(fd, uid, gid)
                else:
                    os.chown(at.name, uid, gid, dir_fd=at.dir, follow_symlinks=False)
            except PermissionError:
                if os.geteuid() == 0:
                    raise
                # Not root: the entry stays the daemon's, as anything the daemon makes does.
        if fd is not None:
            os.fchmod(fd, mode & 0o7777)
        elif not stat.S_ISLNK(current.st_mode):
            chmod_at(at, mode)

    def _new_entry(
        self,
        at: At,
        path: str,
        make: Callable[[], int | None],
        mode: int,
        owner: tuple[int, int] | None,
    ) -> os.stat_result:
        """Make an entry with ``make`` (which returns a descriptor or None), give it its owner
        and mode, undo it if that fails, and fsync its directory. Returns its stat."""
        try:
            fd = make()
        except FileExistsError:
            raise AlreadyExists(f"{path} exists") from None
        except OSError as e:
            raise os_error(e, path) from None
        try:
            self._settle(at, fd, mode, owner)
            if fd is not None:
                os.fsync(fd)
            st = os.fstat(fd) if fd is not None else at.stat()
            if st is None:
                raise FileNotFoundError(errno.ENOENT, "the new entry is gone")
            sync_dir(at.dir)
            return st
        except OSError as e:
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.stat(at.name, dir_fd=at.dir, follow_symlinks=False).st_mode):
                    os.rmdir(at.name, dir_fd=at.dir)
                else:
                    os.unlink(at.name, dir_fd=at.dir)
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
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
        with self._at(agent, path) as at:
            st = self._new_entry(at, path, lambda: at.open(flags, 0o600), mode, owner)
        block = self._get(self._fresh(agent, path, st))
        block.data, block.dirty = bytearray(), False
        self._touch(block)
        return block.id

    @_serialized
    def mkdir(
        self, agent: str, path: str, mode: int = 0o755, owner: tuple[int, int] | None = None
    ) -> None:
        """A new directory; ``mode`` and ``owner`` as for ``create``."""
        with self._at(agent, path) as at:

            def make() -> None:
                os.mkdir(at.name, 0o700, dir_fd=at.dir)

            self._new_entry(at, path, make, mode, owner)

    @_serialized
    def symlink(
        self, agent: str, path: str, target: bytes, owner: tuple[int, int] | None = None
    ) -> int:
        """A symbolic link to ``target`` (relative, absolute or dangling: it is never followed
        here), owned by ``owner``. Returns its id."""
        with self._at(agent, path) as at:

            def make() -> None:
                os.symlink(target, os.fsencode(at.name), dir_fd=at.dir)

            st = self._new_entry(at, path, make, 0o777, owner)
        return self._fresh(agent, path, st)

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
        with self._at(agent, path) as at:

            def make() -> None:
                os.mknod(at.name, fmt | 0o600, rdev, dir_fd=at.dir)

            st = self._new_entry(at, path, make, stat.S_IMODE(mode), owner)
        return self._fresh(agent, path, st)

    @_serialized
    def link(self, fid: int, agent: str, path: str) -> None:
        """A new name ``AGENT/path`` for block ``fid`` (a hard link on the backing files: one
        inode, one block in RAM, one link count). A file whose every name is gone cannot get a
        new one (ENOENT, as link(2) says)."""
        block = self._get(fid)
        with self._host(block) as (place, _), self._at(agent, path) as at:
            if isinstance(place, int):
                raise NotFound("the memory file has no name left")
            try:
                os.link(
                    place.name,
                    at.name,
                    src_dir_fd=place.dir,
                    dst_dir_fd=at.dir,
                    follow_symlinks=False,
                )
            except FileExistsError:
                raise AlreadyExists(f"{path} exists") from None
            except OSError as e:
                raise os_error(e, path) from None
            block.names.add((agent, path))
            with host_errors(path):
                sync_dir(at.dir)

    def _set(
        self,
        place: At | int,
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
                os.chown(place.name, uid, gid, dir_fd=place.dir, follow_symlinks=False)
        if mode is not None:
            if stat.S_ISLNK(st.st_mode):
                raise error(errno.EOPNOTSUPP, "a symbolic link has no mode of its own")
            if isinstance(place, int):
                os.fchmod(place, mode & 0o7777)
            else:
                chmod_at(place, mode)
        if atime_ns is not None or mtime_ns is not None:
            if block is not None:
                # A later save would replace the times with its own. A save keeps the name
                # (a rename over it in the same directory), so ``place`` still names the file.
                self._save(block)
            now = os.fstat(place) if isinstance(place, int) else place.stat()
            if now is None:
                raise FileNotFoundError(errno.ENOENT, "the memory entry is gone")
            st = now
            times = (
                st.st_atime_ns if atime_ns is None else atime_ns,
                st.st_mtime_ns if mtime_ns is None else mtime_ns,
            )
            if isinstance(place, int):
                os.utime(place, ns=times)
            else:
                os.utime(place.name, ns=times, dir_fd=place.dir, follow_symlinks=False)
        self._sync_entry(place, st)

    @staticmethod
    def _sync_entry(place: At | int, st: os.stat_result) -> None:
        """Make an entry's metadata durable: fsync the entry where it can be opened without
        side effects (a regular file, a directory), else its directory (on a journalling host
        that commits the entry's inode with it)."""
        if isinstance(place, int):
            os.fsync(place)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            fd = place.open(os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            sync_dir(place.dir)

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
        with host_errors("setattr"), self._where(where) as (place, st, block):
            self._set(place, st, block, mode, uid, gid, atime_ns, mtime_ns)

    def _name_gone(self, block: Block, name: Name, place: At, nlink_left: int) -> bool:
        """Before ``name`` of ``block`` goes (at ``place``): an open file about to lose its last
        name keeps a descriptor, so it works until closed. True if it is its last name."""
        if nlink_left > 0:
            return False
        now = place.stat()
        if block.opens and block.fd is None and now is not None and stat.S_ISREG(now.st_mode):
            flags = os.O_NOFOLLOW | os.O_NONBLOCK
            try:
                block.fd = place.open(os.O_RDWR | flags)
            except PermissionError:
                block.fd = place.open(os.O_RDONLY | flags)
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
        with self._at(agent, path) as at:
            st = at.stat()
            if st is None:
                raise NotFound(f"no such memory block {path!r}")
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(f"{path} is a directory")
            block = self._record(agent, path, st)
            with host_errors(path):
                last = self._name_gone(block, (agent, path), at, st.st_nlink - 1)
                os.unlink(at.name, dir_fd=at.dir)
            gone = self._forget_name(block, (agent, path), last)
            with host_errors(path):
                sync_dir(at.dir)
        return gone

    @_serialized
    def rmdir(self, agent: str, path: str) -> None:
        with self._at(agent, path) as at:
            try:
                os.rmdir(at.name, dir_fd=at.dir)
            except OSError as e:
                if e.errno == errno.ENOTEMPTY:
                    raise NotEmpty(f"{path} is not empty") from None
                raise os_error(e, path) from None
            with host_errors(path):
                sync_dir(at.dir)

    @_serialized
    def rename(self, agent: str, old: str, new_agent: str, new: str, flags: int = 0) -> int | None:
        """rename(2) on the backing tree (renameat2 with ``flags``: RENAME_NOREPLACE fails with
        EEXIST if ``new`` exists, RENAME_EXCHANGE swaps the two atomically). Blocks follow their
        names; returns the id of a file whose last name was replaced, else None."""
        with self._at(agent, old) as src, self._at(new_agent, new) as dst:
            return self._rename(src, dst, (agent, old), (new_agent, new), flags)

    def _rename(self, src: At, dst: At, a: Name, b: Name, flags: int) -> int | None:
        sst, dst_st = src.stat(), dst.stat()
        if sst is None:
            raise NotFound(f"no such memory entry {a[1]!r}")
        moving = None if stat.S_ISDIR(sst.st_mode) else self._record(*a, sst)
        replaced = None
        if dst_st is not None and not stat.S_ISDIR(dst_st.st_mode):
            replaced = self._record(*b, dst_st)
        if moving is not None and moving is replaced:  # two names of one file: a no-op
            return None
        last = False
        with host_errors(f"{a[1]} -> {b[1]}"):
            if replaced is not None and dst_st is not None and not flags:
                last = self._name_gone(replaced, b, dst, dst_st.st_nlink - 1)
            renameat2(src, dst, flags)
        exchange = bool(flags & RENAME_EXCHANGE)
        for block in self.blocks.values():
            block.names = {self._moved(n, a, b, exchange) for n in block.names}
        gone = None
        if replaced is not None and not exchange:
            gone = self._forget_name(replaced, b, last)
            if moving is not None:
                moving.names.add(b)
        with host_errors(f"{a[1]} -> {b[1]}"):
            sync_dir(src.dir)
            if not same_dir(src.dir, dst.dir):
                sync_dir(dst.dir)
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
        with host_errors(path), self._at(agent, path) as at:
            fd = at.open(os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # ---- extended attributes ----------------------------------------------------------------

    @staticmethod
    def _xattr_name(name: bytes, setting: bool) -> None:
        if not name.startswith(XATTR_NAMESPACES):
            raise error(errno.EOPNOTSUPP if setting else errno.ENODATA, "xattr namespace")

    @_serialized
    def getxattr(self, where: Where, name: bytes) -> bytes:
        """An extended attribute of the backing entry itself (never a link's target)."""
        self._xattr_name(name, setting=False)
        with (
            host_errors("getxattr"),
            self._where(where) as (place, _, _),
            entry_path(place) as target,
        ):
            return os.getxattr(target, name)

    @_serialized
    def setxattr(self, where: Where, name: bytes, value: bytes) -> None:
        """Set an extended attribute; the host answers for what it refuses (EPERM for user.* on a
        link or a special file, ENOSPC/E2BIG for a value too big, ENOTSUP without support)."""
        self._xattr_name(name, setting=True)
        with host_errors("setxattr"), self._where(where) as (place, st, _):
            with entry_path(place) as target:
                os.setxattr(target, name, value)
            self._sync_entry(place, st)

    @_serialized
    def listxattr(self, where: Where) -> list[bytes]:
        with (
            host_errors("listxattr"),
            self._where(where) as (place, _, _),
            entry_path(place) as target,
        ):
            names = os.listxattr(target)
        encoded = [os.fsencode(n) for n in names]
        return [n for n in encoded if n.startswith(XATTR_NAMESPACES)]

    @_serialized
    def removexattr(self, where: Where, name: bytes) -> None:
        self._xattr_name(name, setting=False)
        with host_errors("removexattr"), self._where(where) as (place, st, _):
            with entry_path(place) as target:
                os.removexattr(target, name)
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
        with host_errors("load"), self._host(block) as (place, info):
            if stat.S_ISLNK(info.st_mode):
                raise error(errno.ELOOP, "a symbolic link is never followed in memory")
            if not stat.S_ISREG(info.st_mode):
                raise error(errno.EINVAL, "not a regular file")
            if isinstance(place, int):
                fd = os.dup(place)
            else:
                fd = place.open(os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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
        with host_errors("save"), self._host(block) as (place, old):
            if isinstance(place, int):
                write_in_place(place, block.data)
            elif old.st_nlink > 1:
                fd = place.open(os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    write_in_place(fd, block.data)
                finally:
                    os.close(fd)
            else:
                self._replace(block, place, old)
        block.dirty = False

    def _replace(self, block: Block, at: At, old: os.stat_result) -> None:
        """Save atomically: a temporary file in the same directory (by its descriptor), renamed
        over the old one, then the directory fsynced."""
        # A fixed-length name: the block's own may already be 255 bytes, the most a name can be.
        # Calls are serialised, so two saves never share a temporary file.
        digest = hashlib.sha256(os.fsencode(at.name)).hexdigest()[:24]
        tmp = At(at.dir, f".{digest}{TMP_SUFFIX}")
        assert block.data is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp.name, dir_fd=at.dir)  # a crash's leftover
        fd = tmp.open(os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        try:
            write_sparse(fd, block.data)
            self._carry_over(fd, at, old)
            os.fsync(fd)
            new = os.fstat(fd)
            os.replace(tmp.name, at.name, src_dir_fd=at.dir, dst_dir_fd=at.dir)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp.name, dir_fd=at.dir)
            raise
        finally:
            os.close(fd)
        del self._by_key[block.key]
        block.key = (new.st_dev, new.st_ino)
        self._by_key[block.key] = block
        sync_dir(at.dir)

    @staticmethod
    def _carry_over(fd: int, at: At, old: os.stat_result) -> None:
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
        with contextlib.suppress(OSError), entry_path(at) as source:  # none without xattrs
            for name in os.listxattr(source):
                value = os.getxattr(source, name)
                with contextlib.suppress(OSError):
                    os.setxattr(fd, name, value)
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
        os.utime(fd, ns=(old.st_atime_ns, os.fstat(fd).st_mtime_ns))

    # ---- whole-file helpers for syscalls ------------------------------------------------------

    def _checked(
        self, agent: str, path: str, cred: Cred
    ) -> tuple[os.stat_result | None, os.stat_result]:
        """Walk to ``AGENT/path`` as ``cred`` (search on every directory on the way): the
        entry's own lstat (None if there is no such name) and its directory's."""
        with self._at(agent, path, cred) as at:
            return at.stat(), os.fstat(at.dir)

    @staticmethod
    def _need(cred: Cred, st: os.stat_result, want: int, what: str, agent: str, path: str) -> None:
        if not cred.permits(st.st_mode, st.st_uid, st.st_gid, want):
            raise AccessDenied(
                f"mem/{agent}/{path}: permission denied ({cred.describe()} may not {what})"
            )

    def _may_read(self, agent: str, path: str, cred: Cred | None) -> None:
        """Refuse unless ``cred`` may read the file ``AGENT/path``. What is not a regular file
        is left to the read itself, which refuses it with its own errno (a link ELOOP)."""
        if cred is None:
            return
        st, _ = self._checked(agent, path, cred)
        if st is not None and stat.S_ISREG(st.st_mode):
            self._need(cred, st, R_OK, "read it", agent, path)

    @_serialized
    def read_all(self, agent: str, path: str, cred: Cred | None = None) -> bytes:
        """A whole memory file; with ``cred``, only if that user may read it."""
        self._may_read(agent, path, cred)
        return bytes(self._load(self._resolve(agent, path)))

    @_serialized
    def write_file(
        self,
        agent: str,
        path: str,
        data: bytes,
        append: bool = False,
        cred: Cred | None = None,
    ) -> int:
        """Create or replace (or extend) a memory file and save it; returns its size. With
        ``cred``: a new file needs write permission on its directory and is that user's (mode
        0644), an existing one needs write permission on itself. Without: a new file takes its
        directory's owner."""
        owner = None
        if cred is not None:
            st, parent = self._checked(agent, path, cred)
            if st is None:
                self._need(cred, parent, W_OK, "create files in its directory", agent, path)
                owner = (cred.uid, cred.gid)
            elif stat.S_ISREG(st.st_mode):
                self._need(cred, st, W_OK, "write it", agent, path)
        if self.stat(agent, path) is None:
            self.create(agent, path, 0o644, owner)
        block = self._resolve(agent, path)
        if append:
            self.write_id(block.id, len(self._load(block)), data)
        else:
            self.truncate_id(block.id, 0, save=False)
            self.write_id(block.id, 0, data)
        self._save(block)
        return len(self._load(block))

    @_serialized
    def list_entries(self, agent: str, path: str, cred: Cred | None = None) -> list[dict[str, Any]]:
        """One entry a name of a directory (``''``: the agent's own); with ``cred``, only if
        that user may read and search the directory."""
        if cred is not None:
            st, _ = self._checked(agent, path, cred)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self._need(cred, st, R_OK | X_OK, "list it", agent, path)
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
    def delete(self, agent: str, path: str, cred: Cred | None = None) -> None:
        """Remove a file, or an empty directory. With ``cred``: write permission on its
        directory, and in a sticky directory ownership of the entry or of the directory."""
        if cred is not None:
            st, parent = self._checked(agent, path, cred)
            if st is not None:
                self._need(cred, parent, W_OK, "delete in its directory", agent, path)
                sticky = parent.st_mode & stat.S_ISVTX
                if sticky and not cred.root and cred.uid not in (st.st_uid, parent.st_uid):
                    raise AccessDenied(
                        f"mem/{agent}/{path}: permission denied ({cred.describe()} may not "
                        "delete another user's entry in a sticky directory)"
                    )
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
            on_disk = bytes_on_disk(self.root / agent)
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
            "evicted_bytes": sum(a["evicted_bytes"] for a in agents.values()),
            # over every agent there has been, so that they only grow (counters)
            "hits": sum(s.hits for s in self.stats.values()),
            "misses": sum(s.misses for s in self.stats.values()),
            "evictions": sum(s.evictions for s in self.stats.values()),
            "evict_seconds": round(self.evict_seconds, 4),
            "load_seconds": round(self.load_seconds, 4),
            "agents": agents,
        }
