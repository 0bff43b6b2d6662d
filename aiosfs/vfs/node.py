"""The node base classes: every path in the mount is a Node with an inode number.

A node maps filesystem operations onto its tree's collaborators; it holds no state of the
kernel's beyond what identifies it (an agent name, a path). Directories list their children on
demand, so a dynamic directory (``agents/``, ``results/``) always shows what the kernel has now.

A node receives the narrow ``VfsEnv`` (the inode table, the interrupt watcher, the write limit
for control files) from its parent; the trees give their nodes the kernel facade themselves. No
node holds the whole filesystem object.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import functools
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyfuse3

from aiosfs.vfs.inodes import InodeTable
from aiosfs.vfs.interrupts import InterruptWatcher

if TYPE_CHECKING:
    from aiosfs.vfs.handle import Handle

STABLE_TIMEOUT = 1.0  # seconds the kernel may cache attributes that do not change


@dataclass(frozen=True)
class VfsEnv:
    """What every node may use: the only ways from a node to the rest of the filesystem."""

    inodes: InodeTable
    interrupts: InterruptWatcher
    max_write: int  # the most bytes one close of a control file (config, ctl, …) may carry


@dataclass(frozen=True)
class Metadata:
    """What a tree that keeps metadata (``mem/``, ``store/``) keeps for an entry: permission
    bits (setuid, setgid and sticky included), owner and the three times in nanoseconds."""

    perm: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


# The request being answered, for the few nodes whose answer depends on who asks (search
# results show each reader only what it could read). A context variable, because ``find`` and
# ``named`` take no context: each request runs in its own trio task, so one request's caller
# never shows through in another's.
_REQUESTER: ContextVar[pyfuse3.RequestContext | None] = ContextVar("requester", default=None)


@contextlib.contextmanager
def acting_for(ctx: pyfuse3.RequestContext) -> Iterator[None]:
    """While answering one request (lookup, opendir): ``requester()`` is its context."""
    token = _REQUESTER.set(ctx)
    try:
        yield
    finally:
        _REQUESTER.reset(token)


def requester() -> pyfuse3.RequestContext | None:
    """The context of the lookup or opendir being answered (None outside one)."""
    return _REQUESTER.get()


def fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def as_json(obj: Any) -> bytes:
    """How generated files render JSON: indented, UTF-8, one trailing newline."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


class Node:
    """Base node. Subclasses set ``mode`` (type and permission bits)."""

    mode = stat.S_IFREG | 0o444
    dynamic = False  # a file whose content or size changes: its attributes are never cached
    env: VfsEnv
    uid: int
    gid: int
    # Where this node's metadata comes from when a directory above governs it (an agent's
    # files follow ``agents/NAME``: its owner, modes cut to its directory's); None: its own.
    governed: Callable[[Node], Metadata | None] | None
    # what the nodes built below this one inherit as theirs; a governing directory sets it
    governs: Callable[[Node], Metadata | None] | None

    def __init__(self, name: str, parent: Dir | None, env: VfsEnv | None = None) -> None:
        """Children take their parent's environment; only the root is given one."""
        if env is None:
            assert parent is not None, "the root node needs an environment"
            env = parent.env
        self.env = env
        self.name = name
        self.parent = parent
        self.uid = parent.uid if parent else os.getuid()
        self.gid = parent.gid if parent else os.getgid()
        self.mtime_ns = time.time_ns()
        self.governed = parent.governs if parent else None
        self.governs = self.governed
        self.detached = False
        self.inode = env.inodes.add(self)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def writable(self) -> bool:
        return bool(self.mode & 0o222)

    def size(self) -> int:
        return 0

    def nlink(self) -> int:
        """How many names the node has (trees with hard links override it)."""
        return 2 if self.is_dir else 1

    def rdev(self) -> int:
        """The device number of a device node; 0 for everything else."""
        return 0

    def times_ns(self) -> int:
        return self.mtime_ns

    def metadata(self) -> Metadata | None:
        """The kept mode bits, owner and times, for nodes of trees that keep them, or those the
        governing directory above gives (``governed``). ``None``: the node's own fixed
        ``mode``, ``uid`` and ``gid``, and ``times_ns()`` for all times."""
        return None if self.governed is None else self.governed(self)

    def attributes(self) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self.inode
        a.st_nlink = self.nlink()
        a.st_rdev = self.rdev()
        size = self.size()
        a.st_size = size
        a.st_blksize = 4096
        a.st_blocks = (size + 511) // 512
        meta = self.metadata()
        if meta is None:
            a.st_mode = self.mode
            a.st_uid, a.st_gid = self.uid, self.gid
            t = self.times_ns()
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        else:
            a.st_mode = stat.S_IFMT(self.mode) | meta.perm
            a.st_uid, a.st_gid = meta.uid, meta.gid
            a.st_atime_ns, a.st_mtime_ns = meta.atime_ns, meta.mtime_ns
            a.st_ctime_ns = meta.ctime_ns
        a.generation = 0
        # A file whose size or content changes must be re-read each time. A directory's
        # attributes may be cached: its listing never is, and with default_permissions the kernel
        # checks every directory on a path, so uncached directory attributes would cost a
        # request per path component on every access. A governed node's modes change with a
        # chmod of another node (its governing directory), which the kernel's cache of this
        # one would not see: never cached.
        changing = (self.dynamic and not self.is_dir) or self.governed is not None
        timeout = 0.0 if changing else STABLE_TIMEOUT
        a.entry_timeout = STABLE_TIMEOUT
        a.attr_timeout = timeout
        return a

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        raise fuse_error(errno.EISDIR if self.is_dir else errno.EACCES)

    async def set_metadata(
        self,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """chmod, chown and utimensat (the non-size part of setattr). Nodes whose tree keeps
        metadata override this; elsewhere modes and owners are fixed (EPERM) and time updates
        (``touch``) are accepted and ignored. The kernel has already checked, under
        ``default_permissions``, that the caller may make the change."""
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise fuse_error(errno.EPERM)

    async def readlink(self) -> bytes:
        """The target of a symbolic link; anything else is EINVAL, as readlink(2) says."""
        raise fuse_error(errno.EINVAL)

    # Extended attributes. Trees that keep them override all four; elsewhere there are none
    # and setting one is ENOTSUP. (Never ENOSYS: the FUSE kernel would then turn xattrs off for
    # the whole mount.)
    async def getxattr(self, name: bytes) -> bytes:
        raise fuse_error(errno.ENODATA)

    async def setxattr(self, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise fuse_error(errno.ENOTSUP)

    async def listxattr(self) -> list[bytes]:
        return []

    async def removexattr(self, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise fuse_error(errno.ENODATA)

    def truncate(self, size: int) -> None:
        """Called for O_TRUNC and truncate(2). Special files accept and ignore it."""

    async def atruncate(self, size: int) -> None:
        """truncate(2) by path; files backed by storage override this."""
        self.truncate(size)

    def mark_detached(self) -> None:
        """The path of this one node no longer exists; the inode lives on until nothing refers
        to it (the inode table decides)."""
        self.detached = True
        self.env.inodes.release(self)

    def detach(self) -> None:
        """The path no longer exists (directories detach what they contain too)."""
        self.mark_detached()


class Dir(Node):
    """A directory. The synchronous ``children``/``lookup`` serve fixed and in-memory trees;
    trees backed by I/O (search results) override the async ``list``/``find`` instead. The
    namespace operations are refused unless a subclass allows them."""

    mode = stat.S_IFDIR | 0o755

    def children(self) -> dict[str, Node]:
        return {}

    def lookup(self, name: str) -> Node:
        try:
            return self.children()[name]
        except KeyError:
            raise fuse_error(errno.ENOENT) from None

    async def list(self) -> list[Node]:
        """What readdir shows (magic entries such as ``.search`` may be left out)."""
        return list(self.children().values())

    async def find(self, name: str) -> Node:
        """What lookup finds (magic entries included)."""
        return self.lookup(name)

    async def named(self) -> builtins.list[tuple[str, Node]]:
        """What readdir shows, as (name, node): a node with several names (a hard link) is
        listed under each of them. By default each node under its own ``name``."""
        return [(node.name, node) for node in await self.list()]

    async def mkdir(self, name: str, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        raise fuse_error(errno.EACCES)

    async def rmdir(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        await self.find(name)
        raise fuse_error(errno.EACCES)

    async def create(
        self, name: str, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[Node, Handle]:
        if name in self.children():
            raise fuse_error(errno.EEXIST)
        raise fuse_error(errno.EACCES)

    async def unlink(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        node = await self.find(name)
        raise fuse_error(errno.EISDIR if node.is_dir else errno.EACCES)

    async def rename_from(
        self, name: str, new_parent: Dir, new_name: str, flags: int, ctx: pyfuse3.RequestContext
    ) -> None:
        """``flags``: 0, ``RENAME_NOREPLACE`` or ``RENAME_EXCHANGE`` (renameat2)."""
        raise fuse_error(errno.EACCES)

    async def link(self, name: str, target: Node, ctx: pyfuse3.RequestContext) -> Node:
        """A new name ``name`` here for the existing ``target`` (never a directory: the
        operations layer refuses that); returns the node the name now refers to."""
        raise fuse_error(errno.EACCES)

    async def symlink(self, name: str, target: bytes, ctx: pyfuse3.RequestContext) -> Node:
        raise fuse_error(errno.EACCES)

    async def mknod(self, name: str, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> Node:
        """A FIFO, socket, device node (or regular file) named ``name``; ``mode`` has the type."""
        raise fuse_error(errno.EACCES)

    async def fsync_dir(self) -> None:
        """fsync(2) on the directory: make its entries durable. Nothing to do for trees that
        keep nothing."""

    def detach(self) -> None:
        for child in self.children().values():
            child.detach()
        super().detach()


class StaticDir(Dir):
    """A directory whose entries are fixed when it is built."""

    def __init__(
        self, name: str, parent: Dir | None, mode: int = 0o755, env: VfsEnv | None = None
    ) -> None:
        super().__init__(name, parent, env)
        self.mode = stat.S_IFDIR | mode
        self.entries: dict[str, Node] = {}

    def add(self, node: Node) -> Node:
        self.entries[node.name] = node
        return node

    def children(self) -> dict[str, Node]:
        return self.entries


class GeneratedFile(Node):
    """A small file whose bytes are rendered on open (status, config, sys/...).

    ``apply`` receives what a writer wrote, once per close (flush), and may raise a KernelError
    to fail that close; ``check`` validates what has been written so far without applying it,
    so that a complete but invalid write fails at write() already (shells ignore errors from
    close) — it returns quietly for input that is merely incomplete; ``on_truncate`` is called
    for O_TRUNC / truncate(2). A file whose rules depend on who writes (an agent's ``config``:
    some keys are its owner's alone) passes ``apply_as`` and ``check_as`` instead, which also
    receive the uid of the process that opened the file.
    """

    dynamic = True

    def __init__(
        self,
        name: str,
        parent: Dir,
        render: Callable[[], bytes],
        apply: Callable[[bytes, bool], None] | None = None,
        on_truncate: Callable[[], None] | None = None,
        mode: int = 0o444,
        check: Callable[[bytes], object] | None = None,
        apply_as: Callable[[int, bytes, bool], None] | None = None,
        check_as: Callable[[int, bytes], object] | None = None,
    ) -> None:
        super().__init__(name, parent)
        self.render = render
        self.apply = apply
        self.check = check
        self.apply_as = apply_as
        self.check_as = check_as
        self.on_truncate = on_truncate
        writable = apply is not None or apply_as is not None
        self.mode = stat.S_IFREG | (mode if writable else mode & 0o555)

    def size(self) -> int:
        return len(self.render())

    def times_ns(self) -> int:
        return time.time_ns()

    def truncate(self, size: int) -> None:
        if size == 0 and self.on_truncate is not None:
            self.on_truncate()

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        from aiosfs.vfs.handle import BytesHandle

        check_access(self, flags)
        if flags & os.O_TRUNC:
            self.truncate(0)
        apply, check = self.apply, self.check
        if self.apply_as is not None:
            apply = functools.partial(self.apply_as, ctx.uid)
        if self.check_as is not None:
            check = functools.partial(self.check_as, ctx.uid)
        return BytesHandle(self, flags, ctx.pid, self.render, apply, check)


class FixedFile(Node):
    """An ordinary read-only file with fixed bytes (a finished result): true size, page-cached,
    so ``cp``, ``sendfile`` and ``mmap`` work on it."""

    def __init__(
        self, name: str, parent: Dir, content: Callable[[], bytes], mtime: float, mode: int = 0o444
    ) -> None:
        super().__init__(name, parent)
        self.content = content
        self.mtime_ns = int(mtime * 1e9)
        self.mode = stat.S_IFREG | mode

    def size(self) -> int:
        return len(self.content())

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        from aiosfs.vfs.handle import BytesHandle

        check_access(self, flags)
        return BytesHandle(self, flags, ctx.pid, self.content, None, direct_io=False)


def check_access(node: Node, flags: int) -> None:
    """Refuse writes to read-only files even for root, who bypasses permission bits."""
    if flags & os.O_ACCMODE != os.O_RDONLY and not node.writable:
        raise fuse_error(errno.EACCES)


class Symlink(Node):
    """A symbolic link (search results point at the files they found)."""

    mode = stat.S_IFLNK | 0o777

    def __init__(self, name: str, parent: Dir, target: str) -> None:
        super().__init__(name, parent)
        self.target = target

    def size(self) -> int:
        return len(self.target.encode())

    async def readlink(self) -> bytes:
        return os.fsencode(self.target)
