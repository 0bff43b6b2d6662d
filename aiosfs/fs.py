"""The pyfuse3 Operations: each FUSE request is routed to a node or an open handle.

Every handler is wrapped by ``guarded``: a KernelError becomes its errno, and any other exception
is logged and answered with EIO. A non-FUSEError escaping a handler would end ``pyfuse3.main``
and leave a dead mount, so nothing may escape.

This is the only module that imports the trees: it builds the root (README, agents/, sys/,
mem/, store/, tools/) and gives each tree the kernel facade; the trees' nodes get the inode
table and the interrupt watcher through ``VfsEnv``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from aiosfs.trees.agents import AgentsDir
from aiosfs.trees.approvals import ApprovalsDir
from aiosfs.trees.mem import MemRoot
from aiosfs.trees.store import StoreDir
from aiosfs.trees.sys import build_sys
from aiosfs.trees.tools import ToolsDir
from aiosfs.vfs import (
    Dir,
    FixedFile,
    Handle,
    InodeTable,
    InterruptWatcher,
    Node,
    StaticDir,
    VfsEnv,
    acting_for,
    fuse_error,
)
from kernel import Kernel
from kernel.errors import KernelError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

README = b"""aiosfs: an LLM agent operating system as a filesystem.

  mkdir agents/NAME                 create an agent
  echo "question" > agents/NAME/syscall
  cat agents/NAME/out               the answer (blocks until complete)
  cat agents/NAME/stream            the running answer, token by token
  ls agents/NAME/results/           every finished answer
  mem/NAME/                         the agent's memory: ordinary files, kept across mounts
  store/                            documents for everyone; ls store/.search/QUERY/ finds them
  tools/NAME/                       a tool: cat schema, doc, status; call it through call:
                                      exec 3<>tools/calculator/call
                                      echo '{"expression": "2+2"}' >&3; cat <&3
  cat sys/status                    kernel state
  cat sys/metrics                   the same counters for Prometheus

The full contract: docs/filesystem.md in the aiosfs source.
"""


def forget_names(stale: Sequence[tuple[int, str]]) -> None:
    """Make the OS kernel forget each cached (directory inode, name) and the directory's cached
    attributes. Run in a thread of its own, never on the trio thread: to drop a name the OS
    kernel takes the directory's lock, which a request waiting for the trio thread may hold.
    A name or directory it has nothing cached for is ENOENT, and fine."""
    for parent, name in stale:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry(parent, os.fsencode(name))
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(parent, attr_only=True)


def guarded(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn kernel errors into errnos and unexpected exceptions into a logged EIO."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except KernelError as e:
            log.debug("%s: %s (errno %d)", fn.__name__, e.message, e.errno)
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            log.exception("unexpected error in %s%r", fn.__name__, args[1:])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def decode_name(name: bytes) -> str:
    """A name to look up. Names are UTF-8 (the store keeps them as text, and one rule holds
    for every tree), so nothing is ever called a name that is not: ENOENT, as for any name
    that is not there. (``os.fsdecode`` would smuggle the bytes in as lone surrogates, which
    fail later wherever the name is encoded again.)"""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise fuse_error(errno.ENOENT) from None


def name_to_create(name: bytes) -> str:
    """A name to create (mkdir, create, symlink, mknod, the new name of a link or a rename):
    one that is not UTF-8 is refused with EINVAL, everywhere, before any tree sees it."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        log.debug("refused a name that is not UTF-8: %r", name)
        raise fuse_error(errno.EINVAL) from None


class AiosFS(pyfuse3.Operations):
    """The mounted tree: README, agents/, sys/, mem/, store/, tools/."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # a write must reach us; never cache it in the kernel

    def __init__(self, kernel: Kernel, mountpoint: str = "") -> None:
        super().__init__()
        self.kernel = kernel
        self.mountpoint = mountpoint
        self.inodes = InodeTable()
        self.interrupts = InterruptWatcher()
        self.handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._dir_handles: dict[int, list[tuple[str, Node]]] = {}
        self._dir_nodes: dict[int, Dir] = {}
        env = VfsEnv(self.inodes, self.interrupts, max_write=kernel.limits.max_bytes)
        self.root = root = StaticDir("", None, env=env)
        assert root.inode == pyfuse3.ROOT_INODE
        root.add(FixedFile("README", root, lambda: README, time.time()))
        root.add(AgentsDir("agents", root, kernel))
        sys_dir = build_sys(root, kernel, self.stats, mountpoint)
        sys_dir.add(ApprovalsDir("approvals", sys_dir, kernel))  # what waits for a person
        root.add(sys_dir)
        self.mem = MemRoot("mem", root, kernel)
        self.store = StoreDir.root("store", root, kernel)
        root.add(self.mem)
        root.add(self.store)
        root.add(ToolsDir("tools", root, kernel))
        kernel.watch_names(self.names_changed)

    async def names_changed(self, tree: str, path: str) -> None:
        """An agent's call (``mem_write``, ``mem_delete``, ``store_write``, a rollback) added or
        removed ``tree``'s name ``path``; no request of ours did, so the OS kernel may still
        hold the old name and its directories' old attributes (for ``entry_timeout`` and
        ``attr_timeout``). Tell it to forget them before the call is answered, so whoever reads
        the answer and then looks sees the change (docs/filesystem.md, "Names an agent
        changes")."""
        top = self.mem if tree == "mem" else self.store
        stale = top.cached_names(path)
        if stale:
            await trio.to_thread.run_sync(forget_names, stale)

    def stats(self) -> dict[str, Any]:
        return {
            "open_handles": len(self.handles),
            "blocked_reads": self.interrupts.blocked,
            **self.inodes.stats(),
        }

    def _dir(self, inode: int) -> Dir:
        node = self.inodes.get(inode)
        if not isinstance(node, Dir):
            raise fuse_error(errno.ENOTDIR)
        return node

    def _handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise fuse_error(errno.EBADF) from None

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        self.inodes.looked_up(node)
        return node.attributes()

    # ---- names --------------------------------------------------------------------------------

    @guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        text = decode_name(name)
        if text == ".":
            return self._entry(parent)
        if text == "..":
            return self._entry(parent.parent or parent)
        with acting_for(ctx):  # search results depend on who asks
            return self._entry(await parent.find(text))

    @guarded
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, n in inode_list:
            self.inodes.forget(inode, n)

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.inodes.get(inode).attributes()

    @guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        await node.set_metadata(attr, fields, ctx)  # mode, owner, times: the node decides
        if fields.update_size:
            if node.is_dir:
                raise fuse_error(errno.EISDIR)
            if not node.writable:
                raise fuse_error(errno.EACCES)
            handle = self.handles.get(fh) if fh is not None else None
            if handle is not None:
                await handle.truncate(attr.st_size)
            else:
                await node.atruncate(attr.st_size)
        return node.attributes()

    @guarded
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        node = await parent.mkdir(name_to_create(name), mode, ctx)
        return self._entry(node)

    @guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._dir(parent_inode)
        text = decode_name(name)
        if not (await parent.find(text)).is_dir:
            raise fuse_error(errno.ENOTDIR)
        await parent.rmdir(text, ctx)

    @guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._dir(parent_inode).unlink(decode_name(name), ctx)

    @guarded
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._dir(parent_inode)
        node, handle = await parent.create(name_to_create(name), mode, flags, ctx)
        return self._register(node, handle), self._entry(node)

    @guarded
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._dir(parent_inode_old)
        new_parent = self._dir(parent_inode_new)
        await old_parent.rename_from(
            decode_name(name_old), new_parent, name_to_create(name_new), flags, ctx
        )

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.inodes.get(inode).readlink()

    @guarded
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        if node.is_dir:
            raise fuse_error(errno.EPERM)  # no hard links to directories, as link(2) says
        parent = self._dir(new_parent_inode)
        return self._entry(await parent.link(name_to_create(new_name), node, ctx))

    @guarded
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        return self._entry(await parent.symlink(name_to_create(name), target, ctx))

    @guarded
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        return self._entry(await parent.mknod(name_to_create(name), mode, rdev, ctx))

    # ---- extended attributes --------------------------------------------------------------------

    @guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.inodes.get(inode).getxattr(name)

    @guarded
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.inodes.get(inode).setxattr(name, value, ctx)

    @guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self.inodes.get(inode).listxattr()

    @guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.inodes.get(inode).removexattr(name, ctx)

    # ---- directories --------------------------------------------------------------------------

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        directory = self._dir(inode)
        fh = next(self._fh)
        with acting_for(ctx):
            named = await directory.named()
        self._dir_handles[fh] = sorted(named, key=lambda entry: entry[0])
        self._dir_nodes[fh] = directory
        return fh

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dir_handles.get(fh, [])
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), node.attributes(), i + 1):
                return
            self.inodes.looked_up(node)

    @guarded
    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)
        self._dir_nodes.pop(fh, None)

    @guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        directory = self._dir_nodes.get(fh)
        if directory is None:
            raise fuse_error(errno.EBADF)
        await directory.fsync_dir()

    # ---- files --------------------------------------------------------------------------------

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        if node.is_dir:
            raise fuse_error(errno.EISDIR)
        return self._register(node, await node.open(flags, ctx))

    def _register(self, node: Node, handle: Handle) -> pyfuse3.FileInfo:
        fh = next(self._fh)
        self.handles[fh] = handle
        self.inodes.opened(node)
        return pyfuse3.FileInfo(
            fh=fh,
            direct_io=handle.direct_io,
            keep_cache=handle.keep_cache,
            nonseekable=handle.nonseekable,
        )

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._handle(fh).read(off, size)

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._handle(fh).write(off, buf)

    @guarded
    async def flush(self, fh: int) -> None:
        await self._handle(fh).flush()

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._handle(fh).fsync()

    @guarded
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        self.inodes.closed(handle.node)
        await handle.release()

    @guarded
    async def poll(
        self, inode: int, fh: int, poll_handle: pyfuse3.PollHandle | None, ctx: Any
    ) -> int:
        return self._handle(fh).poll(poll_handle)

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """The truth about room: what the disk under the data dir (where mem/ and store/ keep
        everything) has, so `df` and programs that check for space see real numbers."""
        space = self.kernel.space()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = space.f_frsize
        s.f_blocks, s.f_bfree, s.f_bavail = space.f_blocks, space.f_bfree, space.f_bavail
        s.f_files, s.f_ffree, s.f_favail = space.f_files, space.f_ffree, space.f_favail
        s.f_namemax = 255
        return s
