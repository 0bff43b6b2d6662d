"""``store/``: a persistent tree for everyone's documents, searchable by meaning.

    store/any/path                files, directories, symbolic links, hard links, FIFOs and
                                  device nodes (a file is saved when its writer closes it)
    store/DIR/.search/QUERY/      the best matches for QUERY below DIR, ranked: links to the
                                  files, named RANK-NAME; .summary has scores and passages
    store/DIR/.grep/WORD/         files containing WORD below DIR, ranked, likewise
    store/.versions/PATH/         the kept earlier versions of PATH: N (content), mtime = when

``.search``, ``.grep`` and ``.versions`` are found by name but not listed, so ``find``, ``cp -r``
and ``du`` never walk into them. Every call into the storage manager that does I/O runs on its
worker threads.

Nodes are the store's inodes: one node per store inode number (``StoreNodes``), so the names
of a hard-linked file share one FUSE inode, a rename keeps it, and a file unlinked while open
keeps working through it. Entries report the mode, owner, times, link count and device number
the store keeps for them (read from its in-memory tree, so ``stat`` never waits for the
database); chmod, chown, utimensat and the xattr calls change them. ``store/`` itself is the
store's root: sticky (0o1777) and root's, like /tmp, so anyone may create in it and only an
entry's owner may remove or rename it; its mode and owner can be changed and are kept.

``.versions/`` shows each kept history with the mode and owner of what its name holds now (a
directory's, a file's without its write bits), so the OS kernel's permission check keeps an
old version as private as the file; a removed file's history, whose owner is not kept, is
root's alone.

An open file is a descriptor's own view (``StoreHandle``): the blocks it changed over what was
committed, kept in memory up to ``STAGE_BYTES`` and staged in the database beyond that, so a
large file is streamed, never held whole. Its close commits everything as one transaction. A
file of up to ``SNAPSHOT_BYTES`` is read whole at open, so a reader sees one version from its
first byte to its last; a larger one is read block by block as committed at the time, so a
reader of a large file that another writer commits meanwhile may see parts of both versions.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import pyfuse3

from aiosfs.trees import creator
from aiosfs.trees.search import QueryRoot, StoreCalls
from aiosfs.vfs import Dir, Handle, Metadata, Node, check_access, fuse_error
from kernel import Kernel
from kernel.names import NAME_MAX, check_name
from kernel.store import BLOCK, KIND_OF_TYPE, ROOT, Entry, StorageManager, normalize

T = TypeVar("T")

SNAPSHOT_BYTES = 1 << 20  # files up to this size are read whole at open (one version per reader)
STAGE_BYTES = 8 << 20  # changed bytes a writer keeps in memory before staging them on disk


def join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


class StoreNodes:
    """The store's nodes by store inode number: the only place that makes or drops one.

    A node lives as long as its store inode; when the inode goes (its last name removed and no
    file open on it) the node is detached, and the inode table drops it once the FUSE kernel
    forgets it."""

    def __init__(self) -> None:
        self._nodes: dict[int, StoreNode] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def node(self, entry: Entry, make: Callable[[], StoreNode]) -> StoreNode:
        """The node of ``entry``'s inode, made by ``make`` the first time."""
        node = self._nodes.get(entry.ino)
        if node is not None and not node.detached and node.kind == entry.kind:
            return node
        node = make()
        self._nodes[entry.ino] = node
        return node

    def put(self, node: StoreNode) -> None:
        self._nodes[node.ino] = node

    def get(self, ino: int) -> StoreNode | None:
        return self._nodes.get(ino)

    def gone(self, ino: int) -> None:
        """Inode ``ino`` no longer exists in the store."""
        node = self._nodes.pop(ino, None)
        if node is not None:
            node.mark_detached()


class StoreNode(StoreCalls):
    """What every store node shares: its store inode, the node cache, and the inode's
    metadata, link count and extended attributes."""

    dynamic = True  # attributes change (and are kept): never cached by the FUSE kernel
    nodes: StoreNodes
    ino: int
    kind: str

    if TYPE_CHECKING:  # what the Node each store node also is provides
        detached: bool
        name: str
        parent: Dir | None

        def mark_detached(self) -> None: ...

    @property
    def path(self) -> str:
        """The inode's first name ('' for the root and for a file with no name left); a
        directory's only name."""
        names = self.storage.paths_of(self.ino)
        return names[0] if names else ""

    def entry(self) -> Entry | None:
        return self.storage.inode(self.ino)

    def metadata(self) -> Metadata | None:
        entry = self.entry()
        if entry is None:
            return None
        mtime = max([entry.mtime_ns, *self.pending_mtimes()])
        return Metadata(entry.mode, entry.uid, entry.gid, entry.atime_ns, mtime, entry.ctime_ns)

    def pending_mtimes(self) -> list[int]:
        """When this node's open writers last wrote, not yet committed (files override)."""
        return []

    def times_set(self) -> None:
        """utimensat set the modification time explicitly (files override)."""

    def nlink(self) -> int:
        entry = self.entry()
        return entry.nlink if entry is not None else 0

    def rdev(self) -> int:
        entry = self.entry()
        return entry.rdev if entry is not None else 0

    async def set_metadata(
        self,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """chmod, chown/chgrp and utimensat, as one change of the inode's row. The OS kernel
        has checked who may do it (``default_permissions``), pyfuse3 has turned UTIME_NOW into
        a time, and UTIME_OMIT arrives as a field not to update."""
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
        if changes["mtime_ns"] is not None:
            self.times_set()

    def _set_metadata(self, changes: dict[str, int | None]) -> None:
        self.storage.set_metadata(self.ino, **changes)

    async def getxattr(self, name: bytes) -> bytes:
        return await self.call(self.storage.getxattr, self.ino, name)

    async def setxattr(self, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.call(self.storage.setxattr, self.ino, name, value)

    async def listxattr(self) -> list[bytes]:
        return await self.call(self.storage.listxattr, self.ino)

    async def removexattr(self, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.call(self.storage.removexattr, self.ino, name)

    def node_for(self, parent: Dir, path: str, name: str) -> StoreNode:
        """The node for ``store/path``, as the storage says it is now."""
        entry = self.storage.entry(path)
        if entry is None:
            raise fuse_error(errno.ENOENT)
        kernel, nodes, ino = self.kernel, self.nodes, entry.ino
        make: Callable[[], StoreNode]
        if entry.kind == "dir":
            make = lambda: StoreDir(name, parent, kernel, nodes, ino)  # noqa: E731
        elif entry.kind == "file":
            make = lambda: StoreFile(name, parent, kernel, nodes, ino)  # noqa: E731
        elif entry.kind == "symlink":
            make = lambda: StoreSymlink(name, parent, kernel, nodes, ino)  # noqa: E731
        else:
            make = lambda: StoreSpecial(name, parent, kernel, nodes, ino, entry.kind)  # noqa: E731
        return self.nodes.node(entry, make)

    def forget_if_gone(self, ino: int) -> None:
        """After a change that may have removed inode ``ino``: detach its node if it did."""
        if self.storage.inode(ino) is None:
            self.nodes.gone(ino)


class StoreDir(StoreNode, Dir):
    dynamic = True
    kind = "dir"

    def __init__(self, name: str, parent: Dir, kernel: Kernel, nodes: StoreNodes, ino: int) -> None:
        Dir.__init__(self, name, parent)
        self.kernel, self.nodes, self.ino = kernel, nodes, ino
        self.mode = stat.S_IFDIR | 0o777  # the type; the bits shown are the kept ones
        self.magic: dict[tuple[str, str], Node] = {}  # (path when made, name) -> node

    @classmethod
    def root(cls, name: str, parent: Dir, kernel: Kernel) -> StoreDir:
        """``store/`` itself, with a new node cache for the tree below it."""
        nodes = StoreNodes()
        root = cls(name, parent, kernel, nodes, ROOT)
        nodes.put(root)
        return root

    def cached_names(self, path: str) -> list[tuple[int, str]]:
        """(directory inode, name) for each name on the way to ``path`` (below this
        directory, the store's root) whose directory has a node: what the OS kernel may cache
        of a path an agent's call changed."""
        parts = [p for p in path.split("/") if p]
        out = []
        for i, name in enumerate(parts):
            entry = self.storage.entry("/".join(parts[:i]))
            parent = self.nodes.get(entry.ino) if entry is not None else None
            if parent is None or parent.detached or not isinstance(parent, Node):
                break
            out.append((parent.inode, name))
        return out

    def _node(self, name: str) -> Node:
        node = self.node_for(self, join(self.path, name), name)
        assert isinstance(node, Node)
        return node

    def children(self) -> dict[str, Node]:
        return {name: self._node(name) for name in self.storage.listdir(self.path)}

    async def named(self) -> list[tuple[str, Node]]:
        """Every name here with its node: the names of a hard-linked file each under its own."""
        return [(name, self._node(name)) for name in self.storage.listdir(self.path)]

    def lookup(self, name: str) -> Node:
        if len(os.fsencode(name)) > NAME_MAX:
            raise fuse_error(errno.ENAMETOOLONG)  # no such name can exist: say why
        path = self.path
        if name in (".search", ".grep") or (name == ".versions" and not path):
            # Keyed by the path too: after this directory moves, queries search the new path.
            key = (path, name)
            node = self.magic.get(key)
            if node is None or node.detached:
                if name == ".versions":
                    node = VersionsDir(name, self, self.kernel, "")
                else:
                    node = QueryRoot(name, self, self.kernel, path, name[1:])
                self.magic[key] = node
            return node
        return self._node(name)

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
        entry = self.storage.entry(path)
        await self.call(self.storage.rmdir, path)
        if entry is not None:
            self.forget_if_gone(entry.ino)

    async def create(
        self, name: str, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[Node, Handle]:
        bits, (uid, gid) = creator(mode, ctx)
        await self.call(self.storage.create, self._child_path(name), bits, uid, gid)
        node = self.lookup(name)
        return node, await node.open(flags, ctx)

    async def mknod(self, name: str, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> Node:
        """mknod(2) and mkfifo(3): a FIFO, socket or device node is an entry with metadata
        (the OS kernel opens it itself); a regular file is an empty file, as with create.
        Who may make a device node (CAP_MKNOD) the OS kernel checks before asking."""
        bits, (uid, gid) = creator(mode, ctx)
        path, kind = self._child_path(name), KIND_OF_TYPE.get(stat.S_IFMT(mode))
        if kind is None:
            raise fuse_error(errno.EINVAL)
        if kind == "file":
            await self.call(self.storage.create, path, bits, uid, gid)
        else:
            await self.call(self.storage.mknod, path, kind, bits, rdev, uid, gid)
        return self.lookup(name)

    async def symlink(self, name: str, target: bytes, ctx: pyfuse3.RequestContext) -> Node:
        await self.call(self.storage.symlink, self._child_path(name), target, ctx.uid, ctx.gid)
        return self.lookup(name)

    async def link(self, name: str, target: Node, ctx: pyfuse3.RequestContext) -> Node:
        if not isinstance(target, StoreNode) or target.nodes is not self.nodes:
            raise fuse_error(errno.EXDEV)  # hard links stay inside store/
        await self.call(self.storage.link, target.ino, self._child_path(name))
        return target

    async def unlink(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        path = self._child_path(name)
        entry = self.storage.entry(path)
        await self.call(self.storage.unlink, path)
        if entry is not None:
            self.forget_if_gone(entry.ino)

    async def rename_from(
        self, name: str, new_parent: Dir, new_name: str, flags: int, ctx: pyfuse3.RequestContext
    ) -> None:
        if not isinstance(new_parent, StoreDir) or new_parent.nodes is not self.nodes:
            raise fuse_error(errno.EXDEV)
        old, new = self._child_path(name), new_parent._child_path(new_name)
        src, dst = self.storage.entry(old), self.storage.entry(new)
        await self.call(self.storage.rename, old, new, flags)
        # The inode keeps its node (and so its FUSE inode) under the new name; what the new
        # name replaced may be gone.
        if dst is not None:
            self.forget_if_gone(dst.ino)
        if src is not None:
            moved = self.nodes.get(src.ino)
            if moved is not None:
                moved.name, moved.parent = new_name, new_parent

    async def fsync_dir(self) -> None:
        """Every change of a directory is committed already; fsync makes it durable against
        power loss too (a full checkpoint of the database)."""
        await self.call(self.storage.sync)


class StoreFile(StoreNode, Node):
    dynamic = True
    kind = "file"

    def __init__(self, name: str, parent: Dir, kernel: Kernel, nodes: StoreNodes, ino: int) -> None:
        Node.__init__(self, name, parent)
        self.kernel, self.nodes, self.ino = kernel, nodes, ino
        self.mode = stat.S_IFREG | 0o666  # root may write (the OS kernel checks the kept bits)
        self.writers: set[StoreHandle] = set()

    def size(self) -> int:
        dirty = [h.size for h in self.writers if h.dirty]
        if dirty:
            return max(dirty)  # the writer's own view until it closes
        entry = self.entry()
        return entry.size if entry else 0

    def pending_mtimes(self) -> list[int]:
        return [h.wrote_at for h in self.writers if h.dirty and h.wrote_at is not None]

    def times_set(self) -> None:
        """A time set after a write wins over the write's own when it is committed (``cp -p``
        and ``tar`` write, set the times on the open file, then close it)."""
        for h in self.writers:
            h.wrote_at = None

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        truncate = bool(flags & os.O_TRUNC)
        entry, base = await self.call(
            self.storage.open_file, self.ino, 0 if truncate else SNAPSHOT_BYTES
        )
        handle = StoreHandle(self, flags, ctx.pid, entry.size, base, truncate, self.path)
        if handle.writable:
            self.writers.add(handle)
        return handle

    def check_size(self, size: int) -> None:
        """Refuse (EFBIG) a size over the store's file limit before allocating any of it."""
        if size > self.storage.max_file_bytes:
            raise fuse_error(errno.EFBIG)

    async def atruncate(self, size: int) -> None:
        self.check_size(size)
        await self.call(self.storage.truncate, self.ino, size)


class StoreSymlink(StoreNode, Node):
    """A symbolic link: its target is kept, never followed here (the OS kernel follows it)."""

    kind = "symlink"

    def __init__(self, name: str, parent: Dir, kernel: Kernel, nodes: StoreNodes, ino: int) -> None:
        Node.__init__(self, name, parent)
        self.kernel, self.nodes, self.ino = kernel, nodes, ino
        self.mode = stat.S_IFLNK | 0o777

    def _target(self) -> bytes:
        entry = self.entry()
        return entry.target or b"" if entry is not None else b""

    def size(self) -> int:
        return len(self._target())

    async def readlink(self) -> bytes:
        return self._target()


class StoreSpecial(StoreNode, Node):
    """A FIFO, socket or device node: metadata only (the OS kernel opens it itself)."""

    def __init__(
        self, name: str, parent: Dir, kernel: Kernel, nodes: StoreNodes, ino: int, kind: str
    ) -> None:
        Node.__init__(self, name, parent)
        self.kernel, self.nodes, self.ino, self.kind = kernel, nodes, ino, kind
        entry = self.entry()
        self.mode = entry.type_bits if entry is not None else stat.S_IFIFO


class StoreHandle(Handle):
    """An open store file: this descriptor's changes over the committed content (see the
    module docstring); close commits them as one version.

    ``blocks`` are the changed blocks (index -> content; a block shorter than BLOCK is zeros
    past its end), ``staged`` those moved to the database to bound memory. ``cut``: committed
    content from this byte on no longer counts (the descriptor truncated there). ``base``: the
    whole committed content, read at open for a small file."""

    direct_io = False
    keep_cache = False

    def __init__(
        self,
        node: StoreFile,
        flags: int,
        pid: int,
        size: int,
        base: bytes | None,
        truncated: bool,
        via: str,
    ) -> None:
        super().__init__(node, flags, pid)
        self.file = node
        self.via = via  # the name the file had at open: where its old content is kept
        self.base = base
        self.committed = size  # the committed size this descriptor's view starts from
        self.size = 0 if truncated else size
        self.cut: int | None = 0 if truncated else None
        self.blocks: dict[int, bytes] = {}
        self.staged: set[int] = set()
        self.stage: int | None = None
        # dirty: differs from what is stored; written: by write() since the last commit. A close
        # commits what was written; a truncation alone (": > f") is committed at the last close,
        # because shells close a duplicate of the descriptor between open(O_TRUNC) and write.
        self.dirty = truncated and self.writable
        self.written = False
        self.failed = 0  # errno of a write that failed: nothing of this descriptor is committed
        # When this descriptor last wrote or truncated: the modification time its commit sets,
        # unless utimensat set one since (None: keep the inode's).
        self.wrote_at: int | None = time.time_ns() if truncated else None

    @property
    def storage(self) -> StorageManager:
        return self.file.storage

    def _changed(self) -> bool:
        return bool(self.blocks or self.staged) or self.cut is not None

    async def _committed_block(self, idx: int) -> bytes:
        """Block ``idx`` of the committed content, as far as it still counts for us."""
        lo = idx * BLOCK
        limit = self.committed if self.cut is None else min(self.cut, self.committed)
        hi = min(lo + BLOCK, limit)
        if hi <= lo:
            return b""
        if self.base is not None:
            return self.base[lo:hi]
        return await self.file.call(self.storage.read_at, self.file.ino, lo, hi - lo)

    async def _block(self, idx: int) -> bytes:
        """Block ``idx`` as this descriptor sees it (shorter than BLOCK: zeros after)."""
        if idx in self.blocks:
            return self.blocks[idx]
        if idx in self.staged and self.stage is not None:
            return await self.file.call(self.storage.read_staged, self.stage, idx)
        return await self._committed_block(idx)

    async def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if end <= off:
            return b""
        if not self._changed():
            if self.base is not None:
                return self.base[off:end]
            return await self.file.call(self.storage.read_at, self.file.ino, off, end - off)
        out = bytearray(end - off)
        for idx in range(off // BLOCK, (end - 1) // BLOCK + 1):
            base = idx * BLOCK
            data = await self._block(idx)
            lo, hi = max(off, base), min(end, base + len(data))
            if lo < hi:
                out[lo - off : hi - off] = data[lo - base : hi - base]
        return bytes(out)

    def _fail(self, code: int) -> pyfuse3.FUSEError:
        """Refuse the whole file, not just this chunk: committing the part below the limit at
        close would replace the old content with a truncated new one."""
        self.failed = code
        self.blocks.clear()
        self.dirty = self.written = False
        return fuse_error(code)

    async def write(self, off: int, data: bytes) -> int:
        if not self.writable:
            raise fuse_error(errno.EBADF)
        if self.failed:
            raise fuse_error(self.failed)
        if off + len(data) > self.storage.max_file_bytes:
            raise self._fail(errno.EFBIG)
        end = off + len(data)
        for idx in range(off // BLOCK, (end - 1) // BLOCK + 1):
            base = idx * BLOCK
            lo, hi = max(off, base), min(end, base + BLOCK)
            if lo == base and hi - lo == BLOCK:
                block = bytearray(data[lo - off : hi - off])  # the whole block: nothing to read
            else:
                block = bytearray(await self._block(idx))
                if len(block) < hi - base:
                    block.extend(bytes(hi - base - len(block)))
                block[lo - base : hi - base] = data[lo - off : hi - off]
            self.blocks[idx] = bytes(block)
            self.staged.discard(idx)
        self.size = max(self.size, end)
        self.dirty = self.written = True
        self.wrote_at = time.time_ns()
        if len(self.blocks) * BLOCK > STAGE_BYTES:
            await self._stage()
        return len(data)

    async def _stage(self) -> None:
        """Move the changed blocks to the database (bounded memory for a large write)."""
        if self.stage is None:
            self.stage = self.storage.new_stage()
        blocks, self.blocks = self.blocks, {}
        await self.file.call(self.storage.stage, self.stage, blocks)
        self.staged.update(blocks)

    async def truncate(self, size: int) -> None:
        if not self.writable:
            await self.file.atruncate(size)
            return
        self.file.check_size(size)
        if size < self.size:
            keep = size // BLOCK  # the block the new end falls in
            tail = (await self._block(keep))[: size - keep * BLOCK] if size % BLOCK else None
            for idx in [i for i in self.blocks if i >= keep]:
                del self.blocks[idx]
            dropped = {i for i in self.staged if i >= keep}
            self.staged -= dropped
            self.cut = size if self.cut is None else min(self.cut, size)
            if tail is not None:
                self.blocks[keep] = tail
        self.size = size
        self.dirty = self.written = True  # ftruncate is an explicit change: commit at close
        self.wrote_at = time.time_ns()

    async def _commit(self) -> None:
        f = self.file
        staged = sorted(self.staged) if self.stage is not None else None
        await f.call(
            self.storage.commit, f.ino, self.size, dict(self.blocks), self.stage, staged,
            self.cut, self.via, self.wrote_at,
        )  # fmt: skip
        self.blocks.clear()
        self.staged.clear()
        self.stage = None
        self.base, self.committed, self.cut = None, self.size, None
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
        await self.file.call(self.storage.sync)

    async def release(self) -> None:
        f = self.file
        try:
            if self.dirty and not self.failed:
                await self._commit()
        finally:
            f.writers.discard(self)
            if self.stage is not None:
                await f.call(self.storage.drop_stage, self.stage)
            if self.storage.release(f.ino):  # the last close of a file with no name left
                await f.call(self.storage.remove_unlinked, f.ino)
                f.forget_if_gone(f.ino)


# ---- versions ---------------------------------------------------------------------------------


def history_metadata(storage: StorageManager, path: str, is_dir: bool) -> Metadata:
    """How ``.versions/PATH`` shows: what ``store/PATH`` is now (read-only), or root's alone
    if nothing is there now (a removed file's or directory's history)."""
    entry = storage.entry(path)
    if entry is None or (entry.kind == "dir") != is_dir:
        perm, uid, gid, t = (0o500 if is_dir else 0o400), 0, 0, 0
    else:
        perm, uid, gid, t = entry.mode & 0o7555, entry.uid, entry.gid, entry.mtime_ns
    return Metadata(perm, uid, gid, t, t, t)


class VersionsDir(StoreCalls, Dir):
    """``.versions/PREFIX/``: the paths below PREFIX that have earlier versions."""

    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel, prefix: str) -> None:
        Dir.__init__(self, name, parent)
        self.kernel = kernel
        self.prefix = prefix
        self.mode = stat.S_IFDIR | 0o555
        self.cache: dict[tuple[str, bool], Node] = {}  # (name, has versions) -> node

    def metadata(self) -> Metadata | None:
        return history_metadata(self.storage, self.prefix, True)

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

    def metadata(self) -> Metadata | None:
        # a directory whose file's reader may enter: search where the file may be read
        meta = history_metadata(self.storage, self.path, False)
        perm = meta.perm | ((meta.perm & 0o444) >> 2)
        return Metadata(perm, meta.uid, meta.gid, meta.atime_ns, meta.mtime_ns, meta.ctime_ns)

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

    def metadata(self) -> Metadata | None:
        meta = history_metadata(self.storage, self.path, False)
        t = self.mtime_ns  # when this version was the content
        return Metadata(meta.perm & 0o444, meta.uid, meta.gid, t, t, t)

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        return VersionHandle(self, flags, ctx.pid)


class VersionHandle(Handle):
    """A kept version, read by range (a large one is never held whole)."""

    direct_io = False
    keep_cache = True  # a kept version never changes

    def __init__(self, node: VersionFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.version_file = node

    async def read(self, off: int, size: int) -> bytes:
        v = self.version_file
        return await v.call(v.storage.version_read, v.path, v.version, off, size)
