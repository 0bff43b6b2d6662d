"""``mem/``: every agent's managed memory as an ordinary directory tree.

    mem/AGENT/              appears with the agent (and stays after it is removed)
    mem/AGENT/any/path      files and directories: create, write at offsets, append, read,
                            truncate, rename, unlink, mkdir, rmdir, ls -l

Reads and writes go to the kernel's memory manager, which keeps blocks in RAM within budgets
(K-LRU eviction to disk) and saves a file when its writer closes or fsyncs it. Content calls run
on the manager's worker thread; metadata (stat, listing) is read directly from the data dir.

Mode, owner and times are the manager's (kept on the backing files): ``create`` and ``mkdir``
give the caller's mode less its umask and the caller's uid and gid, ``chmod``/``chown``/
``utimensat`` change them, and the FUSE kernel's ``default_permissions`` checks every access
against them, so a mem file's permission bits mean what they mean on any filesystem.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any, TypeVar

import pyfuse3

from aiosfs.trees import creator
from aiosfs.vfs import Dir, Handle, Metadata, Node, PathCache, check_access, fuse_error
from kernel import Kernel
from kernel.memory import MemoryManager
from kernel.names import TMP_SUFFIX, check_name

T = TypeVar("T")
MemPaths = PathCache["MemDir | MemFile"]


def join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class MemNode:
    """What mem files and directories share: their path (``AGENT/rel``) and the kernel."""

    kernel: Kernel
    paths: MemPaths
    path: str

    @property
    def agent(self) -> str:
        return self.path.partition("/")[0]

    @property
    def rel(self) -> str:
        return self.path.partition("/")[2]

    @property
    def memory(self) -> MemoryManager:
        return self.kernel.memory

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a memory-manager call that does I/O on the kernel's memory worker."""
        return await self.kernel.workers.mem(fn, *args)

    def node_for(self, parent: Dir, path: str, name: str) -> MemDir | MemFile:
        """The (cached) node for ``mem/path``, a file or a directory as the disk says."""
        agent, _, rel = path.partition("/")
        cls = MemDir if self.memory.is_dir(agent, rel) else MemFile
        return self.paths.node(
            path, cls is MemDir, lambda: cls(name, parent, self.kernel, self.paths, path)
        )


class MemEntry(MemNode):
    """A file or directory below ``mem/AGENT`` (that included): its metadata is kept."""

    inode: int
    mode: int

    def metadata(self) -> Metadata | None:
        """Mode bits, owner and times as kept on the backing file."""
        st = self.memory.stat(self.agent, self.rel)
        if st is None:  # gone from disk under us: what the node knew
            return None
        return Metadata(
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )

    async def set_metadata(
        self,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """chmod, chown/chgrp and utimensat in one call on the manager's worker (pyfuse3 has
        already turned UTIME_NOW into the current time). A truncate comes with "mtime: now"
        from the OS kernel; the resize's own save sets it, and a refused one (EFBIG) must leave
        the file as it was, so times that come with a size are left to the resize."""
        times = (fields.update_atime or fields.update_mtime) and not fields.update_size
        if not (fields.update_mode or fields.update_uid or fields.update_gid or times):
            return
        await self.call(
            self.memory.set_metadata,
            self.agent,
            self.rel,
            stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
            attr.st_uid if fields.update_uid else -1,
            attr.st_gid if fields.update_gid else -1,
            attr.st_atime_ns if times and fields.update_atime else None,
            attr.st_mtime_ns if times and fields.update_mtime else None,
        )


class MemRoot(MemNode, Dir):
    """``mem/``: one directory per agent that has (or had) memory."""

    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel) -> None:
        Dir.__init__(self, name, parent)
        self.kernel = kernel
        self.paths = PathCache()
        self.path = ""

    def children(self) -> dict[str, Node]:
        return {a: self.node_for(self, a, a) for a in self.memory.agents()}

    async def mkdir(self, name: str, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        memory = self.memory
        if name in memory.agents():
            raise fuse_error(errno.EEXIST)
        bits, owner = creator(mode, ctx)
        await self.call(memory.ensure_agent, name, bits, owner)
        return self.node_for(self, name, name)

    async def rmdir(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        """``rm -r mem/NAME`` ends here, once the tree below is gone."""
        node = self.lookup(name)
        assert isinstance(node, MemDir)
        await self.call(self.memory.rmdir, name, "")
        node.detach()


class MemDir(MemEntry, Dir):
    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel, paths: MemPaths, path: str) -> None:
        Dir.__init__(self, name, parent)
        self.kernel, self.paths, self.path = kernel, paths, path
        self.mode = stat.S_IFDIR | 0o755  # the type; the bits shown are the kept ones

    def detach(self) -> None:
        """Gone from disk already: forget the cached nodes at and below by path."""
        self.paths.forget(self.path)
        self.mark_detached()

    def children(self) -> dict[str, Node]:
        return {
            name: self.node_for(self, join(self.path, name), name)
            for name in self.memory.listdir(self.agent, self.rel)
        }

    def lookup(self, name: str) -> Node:
        if name.endswith(TMP_SUFFIX) or self.memory.stat(self.agent, join(self.rel, name)) is None:
            raise fuse_error(errno.ENOENT)
        return self.node_for(self, join(self.path, name), name)

    async def mkdir(self, name: str, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        check_name(name)
        bits, owner = creator(mode, ctx)
        await self.call(self.memory.mkdir, self.agent, join(self.rel, name), bits, owner)
        return self.lookup(name)

    async def rmdir(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        node = self.lookup(name)
        await self.call(self.memory.rmdir, self.agent, join(self.rel, name))
        node.detach()

    async def create(
        self, name: str, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[Node, Handle]:
        check_name(name)
        bits, owner = creator(mode, ctx)
        await self.call(self.memory.create, self.agent, join(self.rel, name), bits, owner)
        node = self.lookup(name)
        return node, await node.open(flags, ctx)

    async def unlink(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        node = self.lookup(name)
        if node.is_dir:
            raise fuse_error(errno.EISDIR)
        await self.call(self.memory.unlink, self.agent, join(self.rel, name))
        node.detach()

    async def rename_from(
        self, name: str, new_parent: Dir, new_name: str, flags: int, ctx: pyfuse3.RequestContext
    ) -> None:
        if not isinstance(new_parent, MemDir):
            raise fuse_error(errno.EXDEV)  # memory files move only within mem/
        if flags:
            raise fuse_error(errno.EINVAL)  # RENAME_NOREPLACE / RENAME_EXCHANGE: not supported
        check_name(new_name)
        node = self.lookup(name)
        old_rel, new_rel = join(self.rel, name), join(new_parent.rel, new_name)
        await self.call(self.memory.rename, self.agent, old_rel, new_parent.agent, new_rel)
        # The kernel keeps the same inode under the new name: move the nodes, don't drop them.
        self.paths.move(join(self.path, name), join(new_parent.path, new_name))
        node.name, node.parent = new_name, new_parent


class MemFile(MemEntry, Node):
    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel, paths: MemPaths, path: str) -> None:
        Node.__init__(self, name, parent)
        self.kernel, self.paths, self.path = kernel, paths, path
        self.mode = stat.S_IFREG | 0o644  # the type; the bits shown are the kept ones

    @property
    def writable(self) -> bool:
        """The kept permission bits decide, and the FUSE kernel checks them before a request
        comes here (root may write a read-only file, as on the host)."""
        return True

    def size(self) -> int:
        st = self.memory.stat(self.agent, self.rel)
        return self.memory.size(self.agent, self.rel, st) if st else 0

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        if flags & os.O_TRUNC:  # saved with what is written, at close
            await self.call(self.memory.truncate, self.agent, self.rel, 0, False)
        return MemHandle(self, flags, ctx.pid)

    async def atruncate(self, size: int) -> None:
        await self.call(self.memory.truncate, self.agent, self.rel, size)


class MemHandle(Handle):
    """An open memory file: reads and writes at offsets; close (flush) saves it."""

    direct_io = False  # an ordinary file: the page cache, mmap and sendfile work
    keep_cache = False  # but never keep stale pages across opens

    def __init__(self, node: MemFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.file = node

    async def read(self, off: int, size: int) -> bytes:
        f = self.file
        return await f.call(f.memory.read, f.agent, f.rel, off, size)

    async def write(self, off: int, buf: bytes) -> int:
        if not self.writable:
            raise fuse_error(errno.EBADF)
        f = self.file
        return await f.call(f.memory.write, f.agent, f.rel, off, buf)

    async def truncate(self, size: int) -> None:
        await self.file.atruncate(size)

    async def flush(self) -> None:
        if self.writable:
            f = self.file
            await f.call(f.memory.flush, f.agent, f.rel)
