"""``store/``: a persistent tree for everyone's documents, searchable by meaning.

    store/any/path                ordinary files and directories (saved when the writer closes)
    store/DIR/.search/QUERY/      the best matches for QUERY below DIR, ranked: links to the
                                  files, named RANK-NAME; .summary has scores and passages
    store/DIR/.grep/WORD/         files containing WORD below DIR, ranked, likewise
    store/.versions/PATH/         the kept earlier versions of PATH: N (content), mtime = when

``.search``, ``.grep`` and ``.versions`` are found by name but not listed, so ``find``, ``cp -r``
and ``du`` never walk into them. Every call into the storage manager runs on its worker threads.

Files and directories report the mode, owner and times the store keeps for them (read from its
in-memory tree, so ``stat`` never waits for the database), and chmod, chown and utimensat change
them. ``store/`` itself is not an entry of the store: it stays 0o777 and root's, fixed.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TypeVar

import pyfuse3

from aiosfs.trees import creator
from aiosfs.trees.search import QueryRoot, StoreCalls
from aiosfs.vfs import (
    BytesHandle,
    Dir,
    Handle,
    Metadata,
    Node,
    PathCache,
    check_access,
    fuse_error,
)
from kernel import Kernel
from kernel.names import check_name
from kernel.store import normalize

T = TypeVar("T")
StorePaths = PathCache["StoreDir | StoreFile"]


def join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


class StoreNode(StoreCalls):
    """What store files and directories share: their path cache and their metadata."""

    paths: StorePaths
    path: str

    def metadata(self) -> Metadata | None:
        entry = self.storage.entry(self.path)
        if entry is None:
            return None
        return Metadata(
            entry.mode, entry.uid, entry.gid, entry.atime_ns, entry.mtime_ns, entry.ctime_ns
        )

    async def set_metadata(
        self,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """chmod, chown/chgrp and utimensat, as one change of the entry's row. The OS kernel
        has checked who may do it (``default_permissions``), pyfuse3 has turned UTIME_NOW into
        a time, and UTIME_OMIT arrives as a field not to update."""
        if not self.path:  # store/ itself: fixed
            await super().set_metadata(attr, fields, ctx)  # type: ignore[misc]
            return
        changes = {
            "mode": attr.st_mode & 0o7777 if fields.update_mode else None,
            "uid": attr.st_uid if fields.update_uid else None,
            "gid": attr.st_gid if fields.update_gid else None,
            "atime_ns": attr.st_atime_ns if fields.update_atime else None,
            "mtime_ns": attr.st_mtime_ns if fields.update_mtime else None,
        }
        if fields.update_size and all(changes[k] is None for k in ("mode", "uid", "gid")):
            return  # a truncate (and the times it implies): its write sets mtime and ctime
        if all(v is None for v in changes.values()):
            return
        await self.call(self._set_metadata, changes)

    def _set_metadata(self, changes: dict[str, int | None]) -> None:
        self.storage.set_metadata(self.path, **changes)

    def node_for(self, parent: Dir, path: str, name: str) -> StoreDir | StoreFile:
        """The (cached) node for ``store/path``, as the storage says it is now."""
        entry = self.storage.entry(path)
        if entry is None:
            raise fuse_error(errno.ENOENT)
        cls = StoreDir if entry.kind == "dir" else StoreFile
        return self.paths.node(
            path, cls is StoreDir, lambda: cls(name, parent, self.kernel, self.paths, path)
        )


class StoreDir(StoreNode, Dir):
    dynamic = True

    def __init__(
        self, name: str, parent: Dir, kernel: Kernel, paths: StorePaths, path: str
    ) -> None:
        Dir.__init__(self, name, parent)
        self.kernel, self.paths, self.path = kernel, paths, path
        self.mode = stat.S_IFDIR | 0o777  # a shared tree, like /tmp without the sticky bit
        self.magic: dict[tuple[str, str], Node] = {}  # (path when made, name) -> node

    @classmethod
    def root(cls, name: str, parent: Dir, kernel: Kernel) -> StoreDir:
        """``store/`` itself, with a new path cache for the tree below it."""
        return cls(name, parent, kernel, PathCache(), "")

    def children(self) -> dict[str, Node]:
        return {
            name: self.node_for(self, join(self.path, name), name)
            for name in self.storage.listdir(self.path)
        }

    def lookup(self, name: str) -> Node:
        if name in (".search", ".grep") or (name == ".versions" and not self.path):
            # Keyed by the path too: after this directory moves, queries search the new path.
            key = (self.path, name)
            node = self.magic.get(key)
            if node is None or node.detached:
                if name == ".versions":
                    node = VersionsDir(name, self, self.kernel, "")
                else:
                    node = QueryRoot(name, self, self.kernel, self.path, name[1:])
                self.magic[key] = node
            return node
        return self.node_for(self, join(self.path, name), name)

    async def find(self, name: str) -> Node:
        return self.lookup(name)

    def _child_path(self, name: str) -> str:
        check_name(name)
        return normalize(join(self.path, name))  # refuses reserved names such as .search

    async def mkdir(self, name: str, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        bits, (uid, gid) = creator(mode, ctx)
        await self.call(self.storage.mkdir, self._child_path(name), bits, uid, gid)
        return self.lookup(name)

    async def rmdir(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        path = self._child_path(name)
        await self.call(self.storage.rmdir, path)
        self.paths.forget(path)

    async def create(
        self, name: str, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[Node, Handle]:
        bits, (uid, gid) = creator(mode, ctx)
        await self.call(self.storage.create, self._child_path(name), bits, uid, gid)
        node = self.lookup(name)
        return node, await node.open(flags, ctx)

    async def unlink(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        path = self._child_path(name)
        await self.call(self.storage.unlink, path)
        self.paths.forget(path)

    async def rename_from(
        self, name: str, new_parent: Dir, new_name: str, flags: int, ctx: pyfuse3.RequestContext
    ) -> None:
        if not isinstance(new_parent, StoreDir):
            raise fuse_error(errno.EXDEV)
        if flags:
            raise fuse_error(errno.EINVAL)  # RENAME_NOREPLACE / RENAME_EXCHANGE: not supported
        old, new = self._child_path(name), new_parent._child_path(new_name)
        node = self.lookup(name)
        await self.call(self.storage.rename, old, new)
        # The kernel keeps the same inode under the new name: move the nodes, don't drop them.
        self.paths.move(old, new)
        node.name, node.parent = new_name, new_parent


class StoreFile(StoreNode, Node):
    dynamic = True

    def __init__(
        self, name: str, parent: Dir, kernel: Kernel, paths: StorePaths, path: str
    ) -> None:
        Node.__init__(self, name, parent)
        self.kernel, self.paths, self.path = kernel, paths, path
        self.mode = stat.S_IFREG | 0o666
        self.writers: set[StoreHandle] = set()

    def size(self) -> int:
        dirty = [len(h.buf) for h in self.writers if h.dirty]
        if dirty:
            return max(dirty)  # the writer's own view until it closes
        entry = self.storage.entry(self.path)
        return entry.size if entry else 0

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        truncate = bool(flags & os.O_TRUNC)
        content = b"" if truncate else await self.call(self.storage.read, self.path)
        handle = StoreHandle(self, flags, ctx.pid, content, dirty=truncate)
        if handle.writable:
            self.writers.add(handle)
        return handle

    def check_size(self, size: int) -> None:
        """Refuse (EFBIG) a size over the store's file limit before allocating any of it."""
        if size > self.storage.max_file_bytes:
            raise fuse_error(errno.EFBIG)

    async def atruncate(self, size: int) -> None:
        self.check_size(size)
        content = await self.call(self.storage.read, self.path)
        content = content[:size] + b"\0" * max(0, size - len(content))
        await self.call(self.storage.write, self.path, content, False)


class StoreHandle(Handle):
    """An open store file: a private copy of its content; close commits it as one version."""

    direct_io = False
    keep_cache = False

    def __init__(self, node: StoreFile, flags: int, pid: int, content: bytes, dirty: bool) -> None:
        super().__init__(node, flags, pid)
        self.file = node
        self.buf = bytearray(content)
        # dirty: differs from what is stored; written: by write() since the last commit. A close
        # commits what was written; a truncation alone (": > f") is committed at the last close,
        # because shells close a duplicate of the descriptor between open(O_TRUNC) and write.
        self.dirty = dirty and self.writable
        self.written = False
        self.failed = 0  # errno of a write that failed: nothing of this descriptor is committed

    async def read(self, off: int, size: int) -> bytes:
        return bytes(self.buf[off : off + size])

    async def write(self, off: int, data: bytes) -> int:
        if not self.writable:
            raise fuse_error(errno.EBADF)
        if self.failed:
            raise fuse_error(self.failed)
        limit = self.file.storage.max_file_bytes
        if off + len(data) > limit:
            # Refuse the whole file, not just this chunk: committing the part below the limit
            # at close would replace the old content with a truncated new one.
            self.failed = errno.EFBIG
            self.buf = bytearray()
            self.dirty = self.written = False
            raise fuse_error(errno.EFBIG)
        if off > len(self.buf):
            self.buf.extend(b"\0" * (off - len(self.buf)))
        self.buf[off : off + len(data)] = data
        self.dirty = self.written = True
        return len(data)

    async def truncate(self, size: int) -> None:
        if not self.writable:
            await self.file.atruncate(size)
            return
        self.file.check_size(size)
        del self.buf[size:]
        self.buf.extend(b"\0" * max(0, size - len(self.buf)))
        self.dirty = self.written = True  # ftruncate is an explicit change: commit at close

    async def _commit(self) -> None:
        await self.file.call(self.file.storage.write, self.file.path, bytes(self.buf), False)
        self.dirty = self.written = False

    async def flush(self) -> None:
        if self.failed:
            raise fuse_error(self.failed)  # the close fails too; the stored file is unchanged
        if self.written:
            await self._commit()

    async def fsync(self) -> None:
        if self.failed:
            raise fuse_error(self.failed)
        if self.dirty:
            await self._commit()
        await self.file.call(self.file.storage.sync)

    async def release(self) -> None:
        try:
            if self.dirty and not self.failed:
                await self._commit()
        finally:
            self.file.writers.discard(self)


# ---- versions ---------------------------------------------------------------------------------


class VersionsDir(StoreCalls, Dir):
    """``.versions/PREFIX/``: the paths below PREFIX that have earlier versions."""

    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel, prefix: str) -> None:
        Dir.__init__(self, name, parent)
        self.kernel = kernel
        self.prefix = prefix
        self.mode = stat.S_IFDIR | 0o555
        self.cache: dict[tuple[str, bool], Node] = {}  # (name, has versions) -> node

    async def _names(self) -> dict[str, bool]:
        """Immediate names below the prefix -> True if that name itself has versions."""
        paths = await self.call(self.storage.versioned_paths, self.prefix)
        names: dict[str, bool] = {}
        for p in paths:
            rest = p[len(self.prefix) + 1 :] if self.prefix else p
            head, _, tail = rest.partition("/")
            names[head] = names.get(head, False) or not tail
        return names

    async def list(self) -> list[Node]:
        return [await self.find(n) for n in await self._names()]

    async def find(self, name: str) -> Node:
        names = await self._names()
        if name not in names:
            raise fuse_error(errno.ENOENT)
        path = join(self.prefix, name)
        key = (name, names[name])
        node = self.cache.get(key)
        if node is None or node.detached:
            node = (
                VersionList(name, self, self.kernel, path)
                if names[name]
                else VersionsDir(name, self, self.kernel, path)
            )
            self.cache[key] = node
        return node


class VersionList(StoreCalls, Dir):
    """``.versions/PATH/``: one read-only file per kept version, named by its number."""

    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel, path: str) -> None:
        Dir.__init__(self, name, parent)
        self.kernel = kernel
        self.path = path
        self.mode = stat.S_IFDIR | 0o555
        self.entries: dict[str, VersionFile] = {}

    async def list(self) -> list[Node]:
        rows = await self.call(self.storage.versions, self.path)
        current = {str(v) for v, _, _ in rows}
        for name in [n for n in self.entries if n not in current]:
            self.entries.pop(name).detach()
        for version, mtime, size in rows:
            if str(version) not in self.entries:
                self.entries[str(version)] = VersionFile(
                    str(version), self, self.kernel, self.path, version, mtime, size
                )
        return list(self.entries.values())

    async def find(self, name: str) -> Node:
        if name not in self.entries:
            await self.list()
        try:
            return self.entries[name]
        except KeyError:
            raise fuse_error(errno.ENOENT) from None


class VersionFile(StoreCalls, Node):
    mode = stat.S_IFREG | 0o444

    def __init__(
        self,
        name: str,
        parent: Dir,
        kernel: Kernel,
        path: str,
        version: int,
        mtime: float,
        size: int,
    ) -> None:
        Node.__init__(self, name, parent)
        self.kernel = kernel
        self.path, self.version, self._size = path, version, size
        self.mtime_ns = int(mtime * 1e9)

    def size(self) -> int:
        return self._size

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        content = await self.call(self.storage.version_content, self.path, self.version)
        return BytesHandle(self, flags, ctx.pid, lambda: content, None, direct_io=False)
