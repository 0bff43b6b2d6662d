"""``mem/``: every agent's managed memory as an ordinary POSIX directory tree.

    mem/AGENT/              appears with the agent (and stays after it is removed)
    mem/AGENT/any/path      files, directories, symbolic and hard links, FIFOs, sockets and
                            device nodes, extended attributes: what a local filesystem has

Reads and writes go to the kernel's memory manager, which keeps blocks in RAM within budgets
(K-LRU eviction to disk) and saves a file when its writer closes or fsyncs it. Content calls run
on the manager's worker thread; metadata (stat, listing) is read directly from the data dir,
which is the truth for everything but unsaved content.

Identity: a directory's node is cached by path (``PathCache``: a directory has one name), every
other entry's node by the manager's block id, which stands for the backing inode and survives
saves. So the names of a hard-linked file are one node, one FUSE inode, one block in RAM, and a
rename or an unlink of one name leaves the node to the others; a file opened and then unlinked
keeps its node until the last close.

Mode, owner and times are the manager's (kept on the backing files): ``create``, ``mkdir``,
``mknod`` and ``symlink`` give the caller's mode less its umask and the caller's uid and gid,
``chmod``/``chown``/``utimensat`` change them, and the FUSE kernel's ``default_permissions``
checks every access against them, so a mem file's permission bits mean what they mean on any
filesystem. The kernel follows symbolic links itself; the daemon never does.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import stat
from collections.abc import Callable
from typing import Any, TypeVar

import pyfuse3

from aiosfs.trees import creator
from aiosfs.vfs import Dir, Handle, Metadata, Node, PathCache, check_access, fuse_error
from kernel import Kernel
from kernel.errors import KernelError
from kernel.memory import RENAME_EXCHANGE, RENAME_NOREPLACE, MemoryManager, Where
from kernel.names import TMP_SUFFIX, check_name

T = TypeVar("T")
MemPaths = PathCache["MemDir"]
MemFiles = dict[int, "MemFile"]
SWAP = "\0swap"  # a key no path can have, to swap two subtrees of the path cache


def join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class MemNode:
    """What every node of ``mem/`` shares: the kernel and the tree's two node caches."""

    kernel: Kernel
    paths: MemPaths
    files: MemFiles

    @property
    def memory(self) -> MemoryManager:
        return self.kernel.memory

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a memory-manager call that does I/O on the kernel's memory worker."""
        return await self.kernel.workers.mem(fn, *args)

    def node_for(self, parent: Dir, path: str, name: str) -> MemDir | MemFile:
        """The (cached) node for ``mem/path``: a directory by path, anything else by block id
        (one node for all the names of a hard-linked file). ENOENT if nothing is there."""
        agent, _, rel = path.partition("/")
        found = self.memory.lookup(agent, rel)
        if found is None:
            raise fuse_error(errno.ENOENT)
        fmt, fid = found
        if fmt == stat.S_IFDIR:
            return self.paths.node(
                path, True, lambda: MemDir(name, parent, self.kernel, self.paths, self.files, path)
            )
        node = self.files.get(fid)
        if node is None or node.detached:
            node = MemFile(name, parent, self.kernel, self.paths, self.files, fid, fmt)
            self.files[fid] = node
        return node

    def gone(self, fid: int | None) -> None:
        """The file ``fid`` lost its last name: its node lives on only while referred to."""
        if fid is not None:
            node = self.files.pop(fid, None)
            if node is not None:
                node.mark_detached()


class MemEntry(MemNode):
    """What the entries below ``mem/`` (directories and the rest) share: metadata, links and
    extended attributes, all the backing entry's."""

    _snapshot: tuple[os.stat_result, int] | None = None

    def where(self) -> Where:
        raise NotImplementedError

    def host_stat(self) -> tuple[os.stat_result, int] | None:
        """The backing lstat and the size with unsaved writes (one look per ``attributes``)."""
        raise NotImplementedError

    def current(self) -> tuple[os.stat_result, int] | None:
        return self._snapshot if self._snapshot is not None else self.host_stat()

    def attributes(self) -> pyfuse3.EntryAttributes:
        """One lstat for all the fields (size, links, device, metadata), not one each."""
        self._snapshot = self.host_stat()
        try:
            attrs: pyfuse3.EntryAttributes = Node.attributes(self)  # type: ignore[arg-type]
            now = self._snapshot
            if now is not None:
                attrs.st_blocks = now[0].st_blocks  # a sparse file's true allocation
            return attrs
        finally:
            self._snapshot = None

    def size(self) -> int:
        now = self.current()
        return now[1] if now is not None else 0

    def nlink(self) -> int:
        """The host's count: a file's names, a directory's 2 + subdirectories."""
        now = self.current()
        return now[0].st_nlink if now is not None else 0

    def rdev(self) -> int:
        now = self.current()
        return now[0].st_rdev if now is not None else 0

    def metadata(self) -> Metadata | None:
        """Mode bits, owner and times as kept on the backing entry."""
        now = self.current()
        if now is None:  # gone from disk under us: what the node knew
            return None
        st = now[0]
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
            self.memory.set_metadata_of,
            self.where(),
            stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
            attr.st_uid if fields.update_uid else -1,
            attr.st_gid if fields.update_gid else -1,
            attr.st_atime_ns if times and fields.update_atime else None,
            attr.st_mtime_ns if times and fields.update_mtime else None,
        )

    # Extended attributes live on the backing entry (never a link's target); the OS kernel has
    # already checked the caller may (user.* needs write permission, trusted.* CAP_SYS_ADMIN).
    async def getxattr(self, name: bytes) -> bytes:
        return await self.call(self.memory.getxattr, self.where(), name)

    async def setxattr(self, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not name.startswith(b"user.") and ctx.uid != 0:
            raise fuse_error(errno.EPERM)  # trusted.* and security.*: root's, as on Linux
        await self.call(self.memory.setxattr, self.where(), name, value)

    async def listxattr(self) -> list[bytes]:
        return await self.call(self.memory.listxattr, self.where())

    async def removexattr(self, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not name.startswith(b"user.") and ctx.uid != 0:
            raise fuse_error(errno.EPERM)
        await self.call(self.memory.removexattr, self.where(), name)


class MemDirBase(MemNode, Dir):
    """A directory of ``mem/`` addressed by its path (``AGENT/rel``; ``""`` for ``mem/``)."""

    dynamic = True
    path: str

    @property
    def agent(self) -> str:
        return self.path.partition("/")[0]

    @property
    def rel(self) -> str:
        return self.path.partition("/")[2]

    def names(self) -> list[str]:
        return self.memory.listdir(self.agent, self.rel)

    def children(self) -> dict[str, Node]:
        out: dict[str, Node] = {}
        for name in self.names():
            try:
                out[name] = self.node_for(self, join(self.path, name), name)
            except (pyfuse3.FUSEError, KernelError):
                # removed between the listing and the look, or a name no client could have
                # made (bytes that are not UTF-8, put in the data dir by hand)
                continue
        return out

    async def named(self) -> builtins.list[tuple[str, Node]]:
        """Each name with its node: a hard-linked file under every one of its names."""
        return list(self.children().items())

    def lookup(self, name: str) -> Node:
        if name.endswith(TMP_SUFFIX):
            raise fuse_error(errno.ENOENT)
        return self.node_for(self, join(self.path, name), name)


class MemRoot(MemDirBase):
    """``mem/``: one directory per agent that has (or had) memory."""

    def __init__(self, name: str, parent: Dir, kernel: Kernel) -> None:
        Dir.__init__(self, name, parent)
        self.kernel = kernel
        self.paths = PathCache()
        self.files = {}
        self.path = ""

    def names(self) -> list[str]:
        return self.memory.agents()

    def nlink(self) -> int:
        return 2 + len(self.memory.agents())

    async def mkdir(self, name: str, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        memory = self.memory
        if name in memory.agents():
            raise fuse_error(errno.EEXIST)
        bits, owner = creator(mode, ctx)
        await self.call(memory.ensure_agent, name, bits, owner)
        return self.node_for(self, name, name)

    def cached_names(self, path: str) -> list[tuple[int, str]]:
        """(directory inode, name) for each name on the way to ``AGENT/PATH`` whose
        directory has a node, so possibly a name the OS kernel caches; a directory no longer
        there (an agent's ``mem_delete``) is forgotten here too, so that a new one made at
        its path gets a node of its own."""
        parts = path.split("/")
        out = []
        for i in range(1, len(parts)):
            parent = self.paths.get("/".join(parts[:i]))
            if parent is None:
                break
            out.append((parent.inode, parts[i]))
        agent, rel = parts[0], "/".join(parts[1:])
        with contextlib.suppress(KernelError):  # changed again meanwhile: looked up afresh
            if self.memory.lookup(agent, rel) is None:
                self.paths.forget(path)
        return out

    async def rmdir(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        """``rm -r mem/NAME`` ends here, once the tree below is gone."""
        node = self.lookup(name)
        assert isinstance(node, MemDir)
        await self.call(self.memory.rmdir, name, "")
        node.detach()


class MemDir(MemEntry, MemDirBase):
    """A directory below ``mem/`` (``mem/AGENT`` included): its metadata is kept."""

    def __init__(
        self, name: str, parent: Dir, kernel: Kernel, paths: MemPaths, files: MemFiles, path: str
    ) -> None:
        Dir.__init__(self, name, parent)
        self.kernel, self.paths, self.files, self.path = kernel, paths, files, path
        self.mode = stat.S_IFDIR | 0o755  # the type; the bits shown are the kept ones

    def where(self) -> Where:
        return (self.agent, self.rel)

    def host_stat(self) -> tuple[os.stat_result, int] | None:
        st = self.memory.stat(self.agent, self.rel)
        return (st, 0) if st is not None and stat.S_ISDIR(st.st_mode) else None

    def detach(self) -> None:
        """Gone from disk already: forget the cached nodes at and below by path."""
        self.paths.forget(self.path)
        self.mark_detached()

    def lookup(self, name: str) -> Node:
        if self.detached:  # its path may name something else by now
            raise fuse_error(errno.ENOENT)
        return super().lookup(name)

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

    async def symlink(self, name: str, target: bytes, ctx: pyfuse3.RequestContext) -> Node:
        check_name(name)
        owner = (ctx.uid, ctx.gid)
        await self.call(self.memory.symlink, self.agent, join(self.rel, name), target, owner)
        return self.lookup(name)

    async def mknod(self, name: str, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> Node:
        check_name(name)
        bits, owner = creator(mode, ctx)
        rel = join(self.rel, name)
        await self.call(self.memory.mknod, self.agent, rel, stat.S_IFMT(mode) | bits, rdev, owner)
        return self.lookup(name)

    async def link(self, name: str, target: Node, ctx: pyfuse3.RequestContext) -> Node:
        if not isinstance(target, MemFile):
            raise fuse_error(errno.EXDEV)  # a hard link stays within mem/
        check_name(name)
        await self.call(self.memory.link, target.fid, self.agent, join(self.rel, name))
        return target

    async def unlink(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        node = self.lookup(name)
        if node.is_dir:
            raise fuse_error(errno.EISDIR)
        self.gone(await self.call(self.memory.unlink, self.agent, join(self.rel, name)))

    async def rename_from(
        self, name: str, new_parent: Dir, new_name: str, flags: int, ctx: pyfuse3.RequestContext
    ) -> None:
        """rename(2) and renameat2(2) (RENAME_NOREPLACE, RENAME_EXCHANGE); the nodes follow
        their entries, so every inode number stays with its file or directory."""
        if not isinstance(new_parent, MemDir):
            raise fuse_error(errno.EXDEV)  # memory files move only within mem/
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise fuse_error(errno.EINVAL)  # as renameat2(2) says
        check_name(new_name)
        node = self.lookup(name)
        other = None
        if flags & RENAME_EXCHANGE:
            other = new_parent.lookup(new_name)
        old_rel, new_rel = join(self.rel, name), join(new_parent.rel, new_name)
        gone = await self.call(
            self.memory.rename, self.agent, old_rel, new_parent.agent, new_rel, flags
        )
        old_path, new_path = join(self.path, name), join(new_parent.path, new_name)
        if other is not None:  # swap the two subtrees of the path cache
            self.paths.move(old_path, SWAP)
            self.paths.move(new_path, old_path)
            self.paths.move(SWAP, new_path)
            other.name, other.parent = name, self
        else:
            # The kernel keeps the same inode under the new name: move the nodes, don't drop
            # them; a file replaced by the rename is gone if that was its last name.
            self.paths.move(old_path, new_path)
            self.gone(gone)
        node.name, node.parent = new_name, new_parent


class MemFile(MemEntry, Node):
    """Anything in ``mem/`` but a directory: a regular file, a symbolic link, a FIFO, a socket
    or a device node, by the block id of its backing inode."""

    dynamic = True

    def __init__(
        self,
        name: str,
        parent: Dir,
        kernel: Kernel,
        paths: MemPaths,
        files: MemFiles,
        fid: int,
        fmt: int,
    ) -> None:
        Node.__init__(self, name, parent)
        self.kernel, self.paths, self.files, self.fid = kernel, paths, files, fid
        self.mode = fmt | 0o644  # the type; the bits shown are the kept ones

    def where(self) -> Where:
        return self.fid

    def host_stat(self) -> tuple[os.stat_result, int] | None:
        return self.memory.entry_id(self.fid)

    @property
    def writable(self) -> bool:
        """The kept permission bits decide, and the FUSE kernel checks them before a request
        comes here (root may write a read-only file, as on the host)."""
        return True

    async def readlink(self) -> bytes:
        return await self.call(self.memory.readlink, self.fid)

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        if not stat.S_ISREG(self.mode):
            # The OS kernel opens FIFOs and device nodes itself and follows links; anything
            # else that reaches us has no content here.
            raise fuse_error(errno.ENXIO)
        check_access(self, flags)
        if flags & os.O_TRUNC:  # saved with what is written, at close
            await self.call(self.memory.truncate_id, self.fid, 0, False)
        await self.call(self.memory.open_id, self.fid)
        return MemHandle(self, flags, ctx.pid)

    async def atruncate(self, size: int) -> None:
        await self.call(self.memory.truncate_id, self.fid, size)


class MemHandle(Handle):
    """An open memory file: reads and writes at offsets; close (flush) saves it."""

    direct_io = False  # an ordinary file: the page cache, mmap and sendfile work
    keep_cache = False  # but never keep stale pages across opens

    def __init__(self, node: MemFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.file = node

    async def read(self, off: int, size: int) -> bytes:
        f = self.file
        return await f.call(f.memory.read_id, f.fid, off, size)

    async def write(self, off: int, buf: bytes) -> int:
        if not self.writable:
            raise fuse_error(errno.EBADF)
        f = self.file
        return await f.call(f.memory.write_id, f.fid, off, buf)

    async def truncate(self, size: int) -> None:
        await self.file.atruncate(size)

    async def flush(self) -> None:
        if self.writable:
            f = self.file
            await f.call(f.memory.flush_id, f.fid)

    async def release(self) -> None:
        f = self.file
        await f.call(f.memory.close_id, f.fid)
