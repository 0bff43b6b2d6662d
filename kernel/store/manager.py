"""The storage manager: the /store tree as one object, whose every change is one transaction.

It puts together the parts that live in the modules beside it: the database (``db``), the tree
kept in memory (``tree``), kept versions (``versions``), the background index (``index``),
search (``search``), the embedders (``embedders``) and the disk-full reserve (``ballast``). What
it owns itself is how a change of the tree (create, mkdir, mknod, symlink, link, write, unlink,
rmdir, rename) touches all of them at once: the inode, its names, its blocks, the kept version,
the old passages and the index queue change in one transaction, so a crash or a full disk
leaves all or none of it.

The model is a Unix filesystem's. An inode (file, directory, symbolic link, FIFO, socket or
device node) has its metadata, a link count and, for a file, content in blocks; names refer to
inodes, and a hard link is one more name. Content and metadata calls take the inode number
(``read_at``, ``commit``, ``set_metadata``, the xattr calls), so they work through any name and
after the last one is gone; namespace calls take paths. An inode whose last name is unlinked
while it is open (``hold``) lives on, nameless, until its last ``release``; one left so by a
crash is removed at the next open. Versions, passages and search belong to names.

Metadata. The caller of ``mkdir``/``create``/``mknod``/``symlink`` gives the mode and owner
(the filesystem passes the requesting process's, with its umask applied); what the kernel's
own ``store_write`` creates is 0o644 (directories on the way 0o755) and belongs to the ``Cred``
it acts for. Inside a setgid directory a new entry takes the directory's group, and a new
directory its setgid bit, as on any Unix filesystem. The root is no inode: its mode and owner
are one row (``root``), sticky 0o1777 and root's unless changed.
``set_metadata`` (chmod, chown, utimensat) is not a new version of the content. A committed
write sets mtime and ctime, any change ctime (a link or unlink: the inode's), and adding,
removing or renaming an entry sets its directory's mtime and ctime; reads never update atime
(as if mounted ``noatime``).

Access. Who may change what through the filesystem is checked by the OS kernel before a
request arrives (``default_permissions``), so the namespace and metadata calls check nothing.
The kernel's own calls (``read``, ``write``, ``versions``, ``rollback``, ``search``, ``grep``,
``resolve``) take an optional ``Cred`` and capability check (``Allow``) and apply them as the OS
kernel would for a process of that user: symbolic links followed within the store (never out
of it), search permission on every directory traversed, read or write on the file, write and
search on the directory a new entry goes in; checks and the operation happen under one hold of
the database lock. Searches leave out the hits the caller could not read.

Threads: one documented way in.

* Changes (``mkdir``, ``create``, ``mknod``, ``symlink``, ``link``, ``commit``, ``write``,
  ``set_metadata``, the xattr setters, ``unlink``, ``rmdir``, ``rename``, ``rollback``,
  ``remove_unlinked``) block on SQLite and the disk; run them off the trio thread (the kernel's
  ``Services.store`` does). Each holds the database lock from its checks, through its
  transaction, to its update of the in-memory tree, so changes are serialised and the checks a
  change made still hold when it commits: two creates of one path give one file and EEXIST,
  never a constraint error.
* ``entry``, ``inode``, ``paths_of``, ``listdir``, ``hold``, ``release`` and ``generation``
  touch only memory, under locks held for a few dictionary operations and never across I/O:
  safe and cheap on the trio thread, where the filesystem calls them for ``lookup``, ``stat``,
  ``ls`` and ``close``.
* ``read``, ``read_at``, ``versions``, ``version_read``, ``versioned_paths``, ``search``,
  ``grep``, ``getxattr``, ``listxattr``, ``pending`` and ``info`` query the shared connection
  under the database lock, so they wait while a change commits (a large write: milliseconds).
  The filesystem calls ``pending`` and ``info`` on its trio thread all the same, accepting
  that wait.
* Locks are taken in one order: the search's vector lock, then the database lock, then any of
  the leaf locks (the tree's, the open-file counts', the search's generation lock, the
  indexer's counters, the ballast's), which are never held while taking another.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from kernel.access import R_OK, W_OK, X_OK, Cred
from kernel.errors import (
    AccessDenied,
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NoAttribute,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    TooLarge,
    TooManyLinks,
)
from kernel.store.ballast import Ballast
from kernel.store.db import (
    BLOCK,
    Database,
    like_prefix,
    read_range,
    root_metadata,
    split_blocks,
)
from kernel.store.embedders import EMBEDDERS, Embedder
from kernel.store.index import Indexer
from kernel.store.search import Hit, Search
from kernel.store.tree import ROOT, Entry, Tree, is_below, normalize, parent_of
from kernel.store.versions import Versions, keep_version

log = logging.getLogger(__name__)

T = TypeVar("T")

Allow = Callable[[str, bool], None]
"""A capability check: ``allow(path, write)`` raises (``AccessDenied``) unless the caller may
read (or write) the normalised store path ``path``, reached after every symbolic link. The
kernel's handlers pass ``Actor.need_store``."""

MAX_LINKS = 40  # symbolic links one path may follow, as on Linux (then ELOOP)

# renameat2 flags, as Linux numbers them.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# The tables whose rows belong to a name (and so move with it on rename).
NAME_TABLES = ("names", "versions", "vblocks", "chunks", "pending")
# Where a subtree waits during RENAME_EXCHANGE: a reserved name no user can create.
EXCHANGE_TMP = "exchange.aiosfs-tmp"

INODE_COLUMNS = (
    "ino, kind, size, version, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink, rdev, target"
)


def _renamed(db: sqlite3.Connection, table: str, old: str, new: str) -> None:
    """Inside a transaction: every row of ``table`` at or below name ``old`` moves to ``new``."""
    db.execute(
        f"UPDATE {table} SET path = ? || substr(path, ?) WHERE path = ? OR path LIKE ? ESCAPE '\\'",
        (new, len(old) + 1, old, like_prefix(old)),
    )


def _entry(row: tuple[Any, ...]) -> Entry:
    """An ``inodes`` row (``INODE_COLUMNS``) as an Entry."""
    ino, kind, size, version, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink, rdev, t = row
    target = bytes(t) if t is not None else None
    return Entry(
        ino, kind, size, version, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink, rdev, target
    )


def _cut_blocks(db: sqlite3.Connection, ino: int, at: int) -> None:
    """Inside a transaction: inode ``ino``'s blocks hold nothing from byte ``at`` on."""
    db.execute("DELETE FROM blocks WHERE ino = ? AND idx >= ?", (ino, (at + BLOCK - 1) // BLOCK))
    if at % BLOCK:
        db.execute(
            "UPDATE blocks SET data = substr(data, 1, ?) WHERE ino = ? AND idx = ? "
            "AND length(data) > ?",
            (at % BLOCK, ino, at // BLOCK, at % BLOCK),
        )


class StorageManager:
    """The /store tree. Thread-safe; see the module docstring for which calls may block."""

    def __init__(
        self,
        db_path: Path,
        versions_keep: int = 20,
        max_file_bytes: int = 64 << 20,
        embedder: str = "minilm",
        index: bool = True,
    ) -> None:
        self.db_path = db_path
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.versions_keep = versions_keep
        self.max_file_bytes = max_file_bytes
        self.embedder_name = embedder
        chosen = EMBEDDERS[embedder]()
        self.db = Database(db_path)
        self._collect_garbage()
        # The root is no inode: the shared top of the tree, sticky (0o1777) and root's unless
        # chmod'ed or chown'ed (kept in the ``root`` row); its times are when the store opened.
        mode, uid, gid = root_metadata(self.db.conn)
        root = Entry.new(ROOT, "dir", mode, uid, gid, time.time_ns(), 0)
        self.tree = Tree(
            root,
            (_entry(row) for row in self.db.rows(f"SELECT {INODE_COLUMNS} FROM inodes")),
            self.db.rows("SELECT path, ino FROM names"),
        )
        self._held_lock = threading.Lock()  # a leaf lock: guards ``_held`` only
        self._held: dict[int, int] = {}  # inode -> open files
        self._stages = itertools.count(1)
        self._versions = Versions(self.db)
        self._search = Search(self.db, chosen)
        self.ballast = Ballast(db_path.parent / "store.reserve")
        self.ballast.restore()
        self._index = Indexer(self.db, chosen, self._search.invalidate, start=index)

    def _collect_garbage(self) -> None:
        """What a crash can leave: inodes no name refers to (unlinked while open) and blocks
        staged by writers that never committed."""

        def tx(db: sqlite3.Connection) -> int:
            gone = [
                r[0]
                for r in db.execute(
                    "SELECT ino FROM inodes WHERE ino NOT IN (SELECT ino FROM names)"
                ).fetchall()
            ]
            for ino in gone:
                self._delete_inode(db, ino)
            db.execute("DELETE FROM staged")
            return len(gone)

        gone = self.db.tx("collect unlinked inodes", tx)
        if gone:
            log.info("store: removed %d inodes left unlinked by a crash", gone)

    @property
    def embedder(self) -> Embedder:
        return self._search.embedder

    @embedder.setter
    def embedder(self, embedder: Embedder) -> None:
        """Replace the embedder for indexing and searching alike (tests use a gated one)."""
        self._search.embedder = embedder
        self._index.embedder = embedder

    @property
    def generation(self) -> int:
        """Bumped whenever search results may change."""
        return self._search.generation

    def close(self) -> None:
        """Stop the indexer, checkpoint the WAL and close the database."""
        self._index.close()
        self.db.close()

    def _freeing(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A transaction that frees space (delete, rmdir): if the disk is too full even for it,
        release the ballast and try once more."""
        try:
            return self.db.tx(what, fn)
        except NoSpace:
            if not self.ballast.exists():
                raise
            log.warning("disk full: releasing the store's ballast to %s", what)
            self.ballast.release()
            return self.db.tx(what, fn)

    def _changed(self) -> None:
        """Passages were removed or moved: search results may differ."""
        self._search.invalidate()

    def _dir_inos(self, dirs: set[str]) -> dict[str, int]:
        """The inodes of directories ``dirs`` (the root, which is not a row, left out)."""
        out = {}
        for d in dirs - {""}:
            entry = self.tree.get(d)
            if entry is not None:
                out[d] = entry.ino
        return out

    @staticmethod
    def _touch_dirs(db: sqlite3.Connection, inos: Mapping[str, int], now: int) -> None:
        """Inside a change's transaction: its directories' contents changed (mtime and ctime
        become ``now``)."""
        for ino in inos.values():
            db.execute(
                "UPDATE inodes SET mtime_ns = ?, ctime_ns = ? WHERE ino = ?", (now, now, ino)
            )

    def _dirs_touched(self, inos: Mapping[str, int], now: int) -> None:
        """After the commit: the same in the tree."""
        for ino in inos.values():
            entry = self.tree.inode(ino)
            if entry is not None:
                self.tree.put(replace(entry, mtime_ns=now, ctime_ns=now))

    @staticmethod
    def _delete_inode(db: sqlite3.Connection, ino: int) -> None:
        for table in ("inodes", "blocks", "xattrs"):
            db.execute(f"DELETE FROM {table} WHERE ino = ?", (ino,))

    # ---- the tree (in memory) ---------------------------------------------------------------

    def entry(self, path: str) -> Entry | None:
        return self.tree.get(path)

    def inode(self, ino: int) -> Entry | None:
        return self.tree.inode(ino)

    def paths_of(self, ino: int) -> list[str]:
        return self.tree.paths_of(ino)

    def listdir(self, path: str) -> list[str]:
        return self.tree.listdir(path)

    # ---- namespace --------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
        """A new directory with these permission bits and owner (see ``inherit``)."""
        return self._new(path, "dir", mode, uid, gid, "mkdir")

    def create(self, path: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
        """An empty file (version 1) with these permission bits and owner (see ``inherit``)."""
        return self._new(path, "file", mode, uid, gid, "create")

    def mknod(
        self, path: str, kind: str, mode: int, rdev: int = 0, uid: int = 0, gid: int = 0
    ) -> Entry:
        """A FIFO, socket or device node: an entry with metadata and no content (the OS kernel
        opens such files itself; it never asks the filesystem to read them)."""
        if kind not in ("fifo", "socket", "chr", "blk"):
            raise InvalidArgument(f"cannot make a node of kind {kind!r}")
        return self._new(path, kind, mode, uid, gid, "mknod", rdev=rdev)

    def symlink(self, path: str, target: bytes, uid: int = 0, gid: int = 0) -> Entry:
        """A symbolic link to ``target`` (any bytes: relative, absolute or dangling; the store
        never follows it, the OS kernel does)."""
        if not target or b"\0" in target or len(target) > 4095:
            raise InvalidArgument("a symbolic link's target is 1 to 4095 bytes without NUL")
        return self._new(path, "symlink", 0o777, uid, gid, "symlink", target=target)

    def _new(
        self,
        path: str,
        kind: str,
        mode: int,
        uid: int,
        gid: int,
        what: str,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> Entry:
        """Add a new inode with one name, ``path``, whose parent must exist."""
        path = normalize(path)
        with self.db.lock:
            if path in self.tree:
                raise AlreadyExists(f"{path} exists")
            self.tree.need_dir(parent_of(path))
            mode, gid = self.inherit(self.tree.get(parent_of(path)), kind, mode, gid)
            now, parent = time.time_ns(), self._dir_inos({parent_of(path)})
            size = len(target) if target is not None else 0
            version = 1 if kind == "file" else 0

            def tx(db: sqlite3.Connection) -> int:
                nonlocal version
                if kind == "file":  # a file made where one was deleted: its numbers go on
                    version = self._history_top(db, path) + 1
                cur = db.execute(
                    "INSERT INTO inodes (kind, size, version, mode, uid, gid, atime_ns, "
                    "mtime_ns, ctime_ns, nlink, rdev, target) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    (kind, size, version, mode, uid, gid, now, now, now, rdev, target),
                )
                assert cur.lastrowid is not None
                db.execute("INSERT INTO names (path, ino) VALUES (?, ?)", (path, cur.lastrowid))
                self._touch_dirs(db, parent, now)
                return cur.lastrowid

            ino = self.db.tx(f"{what} {path}", tx)
            entry = Entry(ino, kind, size, version, mode, uid, gid, now, now, now, 1, rdev, target)
            self.tree.put(entry)
            self.tree.add_name(path, ino)
            self._dirs_touched(parent, now)
        return entry

    @staticmethod
    def inherit(parent: Entry | None, kind: str, mode: int, gid: int) -> tuple[int, int]:
        """The mode and group of a new entry in ``parent``: inside a setgid directory it takes
        the directory's group, and a new directory the setgid bit too (so a shared project
        directory stays shared all the way down)."""
        mode &= 0o7777
        if parent is not None and parent.mode & stat.S_ISGID:
            gid = parent.gid
            if kind == "dir":
                mode |= stat.S_ISGID
        return mode, gid

    def link(self, ino: int, path: str) -> Entry:
        """A new name ``path`` for inode ``ino`` (a hard link): one more link, a new ctime."""
        path = normalize(path)
        with self.db.lock:
            entry = self.tree.inode(ino)
            if entry is None or not self.tree.paths_of(ino):
                raise NotFound("the file to link to no longer exists")
            if entry.kind == "dir":
                raise NotPermitted("a directory cannot have a second name")
            if path in self.tree:
                raise AlreadyExists(f"{path} exists")
            self.tree.need_dir(parent_of(path))
            now, parent = time.time_ns(), self._dir_inos({parent_of(path)})
            bumped: dict[int, int] = {}

            def tx(db: sqlite3.Connection) -> None:
                bumped.clear()
                top = self._history_top(db, path) if entry.kind == "file" else 0
                if top >= entry.version:  # the name had a history: number on after it
                    self._bump(db, entry, top + 1 - entry.version, bumped)
                db.execute(
                    "UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? WHERE ino = ?",
                    (now, ino),
                )
                db.execute("INSERT INTO names (path, ino) VALUES (?, ?)", (path, ino))
                self._touch_dirs(db, parent, now)
                if entry.kind == "file":  # the new name is found by search too
                    db.execute(
                        "INSERT OR REPLACE INTO pending (path, version) VALUES (?, ?)",
                        (path, entry.version + bumped.get(ino, 0)),
                    )

            self.db.tx(f"link {path}", tx)
            self._bumped(bumped)
            current = self.tree.inode(ino)
            assert current is not None
            new = replace(current, nlink=current.nlink + 1, ctime_ns=now)
            self.tree.put(new)
            self.tree.add_name(path, ino)
            self._dirs_touched(parent, now)
        self._index.wake()
        return new

    def hold(self, ino: int) -> None:
        """A file of inode ``ino`` was opened: keep the inode while it is open, even if its
        last name goes. Memory only: cheap on the trio thread."""
        with self._held_lock:
            self._held[ino] = self._held.get(ino, 0) + 1

    def _is_held(self, ino: int) -> bool:
        with self._held_lock:
            return bool(self._held.get(ino))

    def release(self, ino: int) -> bool:
        """An open file of ``ino`` was closed. Memory only, so a close never waits for the
        disk (nor for a transaction in progress); returns True when this was the last close of
        an inode with no name left, which ``remove_unlinked`` must then remove."""
        with self._held_lock:
            left = self._held.get(ino, 0) - 1
            if left > 0:
                self._held[ino] = left
                return False
            self._held.pop(ino, None)
        return self.tree.inode(ino) is not None and not self.tree.paths_of(ino)

    def remove_unlinked(self, ino: int) -> None:
        """Remove inode ``ino`` if no name refers to it and no file is open on it."""
        with self.db.lock:
            if self.tree.inode(ino) is None or self.tree.paths_of(ino) or self._is_held(ino):
                return
            self._freeing("remove an unlinked file", lambda db: self._delete_inode(db, ino))
            self.tree.drop(ino)

    def _unname(self, db: sqlite3.Connection, path: str, entry: Entry, now: int) -> bool:
        """Inside a transaction: name ``path`` of ``entry`` is gone. Returns whether the inode
        goes too (its last name, and not open)."""
        db.execute("DELETE FROM names WHERE path = ?", (path,))
        db.execute("DELETE FROM chunks WHERE path = ?", (path,))
        db.execute("DELETE FROM pending WHERE path = ?", (path,))
        last = entry.kind == "dir" or entry.nlink <= 1
        if last and not self._is_held(entry.ino):
            self._delete_inode(db, entry.ino)
            return True
        db.execute(
            "UPDATE inodes SET nlink = ?, ctime_ns = ? WHERE ino = ?",
            (max(0, entry.nlink - 1), now, entry.ino),
        )
        return False

    def _unnamed(self, path: str, entry: Entry, gone: bool, now: int) -> None:
        """After the commit: the same in the tree."""
        self.tree.remove_name(path)
        if gone:
            self.tree.drop(entry.ino)
            return
        self.tree.put(replace(entry, nlink=max(0, entry.nlink - 1), ctime_ns=now))
        # Its last close may have come between the check in ``_unname`` and now (``release``
        # saw the name still here): then nothing else would remove it.
        self.remove_unlinked(entry.ino)

    def rmdir(self, path: str) -> None:
        path = normalize(path)
        with self.db.lock:
            entry = self.tree.get(path)
            if entry is None or not path:
                raise NotFound(f"no such directory {path!r}")
            if entry.kind != "dir":
                raise NotADirectory(f"{path} is not a directory")
            if self.tree.has_children(path):
                raise NotEmpty(f"{path} is not empty")
            now, parent = time.time_ns(), self._dir_inos({parent_of(path)})

            def tx(db: sqlite3.Connection) -> bool:
                gone = self._unname(db, path, entry, now)
                self._touch_dirs(db, parent, now)
                return gone

            gone = self._freeing(f"rmdir {path}", tx)
            self._unnamed(path, entry, gone, now)
            self._dirs_touched(parent, now)

    def unlink(self, path: str) -> bool:
        """Remove a name that is not a directory; a file's content stays in the name's version
        history (restorable). Returns whether its inode went too (it was the last name and the
        file is not open)."""
        path = normalize(path)
        with self.db.lock:
            entry = self.tree.get(path)
            if entry is None or not path:
                raise NotFound(f"no such file {path!r} in the store")
            if entry.kind == "dir":
                raise IsADirectory(f"{path} is a directory")
            now, parent = time.time_ns(), self._dir_inos({parent_of(path)})

            def tx(db: sqlite3.Connection, keep: bool = True) -> bool:
                if keep:
                    keep_version(db, path, entry.ino, self.versions_keep)
                gone = self._unname(db, path, entry, now)
                self._touch_dirs(db, parent, now)
                return gone

            try:
                gone = self.db.tx(f"unlink {path}", tx)
            except NoSpace:
                # Keeping the last version needs room the disk does not have. Removing files
                # must always work (it is how a full disk is fixed), so remove it without the
                # copy.
                log.warning("disk full: %s removed without keeping its last version", path)
                gone = self._freeing(f"unlink {path}", lambda db: tx(db, keep=False))
            self._unnamed(path, entry, gone, now)
            self._dirs_touched(parent, now)
        self._changed()
        return gone

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """Rename a name (a whole directory included) atomically, replacing what ``new`` named
        unless ``flags`` says otherwise: ``RENAME_NOREPLACE`` fails if ``new`` exists,
        ``RENAME_EXCHANGE`` swaps the two."""
        old, new = normalize(old), normalize(new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise InvalidArgument("unknown or contradictory rename flags")
        with self.db.lock:
            src = self.tree.get(old)
            if src is None or not old:
                raise NotFound(f"no such path {old!r} in the store")
            if not new:
                raise AlreadyExists("the store's root exists")
            dst = self.tree.get(new)
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise NotFound(f"no such path {new!r} in the store")
                self._exchange(old, new)
                return
            if new == old:
                return
            if is_below(new, old):
                raise InvalidArgument("cannot move a directory into itself")
            self.tree.need_dir(parent_of(new))
            if dst is not None:
                if flags & RENAME_NOREPLACE:
                    raise AlreadyExists(f"{new} exists")
                if dst.ino == src.ino:
                    return  # two names of one file: POSIX says rename does nothing
                if dst.kind == "dir":
                    if src.kind != "dir":
                        raise IsADirectory(f"{new} is a directory")
                    if self.tree.has_children(new):
                        raise NotEmpty(f"{new} is not empty")
                elif src.kind == "dir":
                    raise NotADirectory(f"{new} is not a directory")
            if src.kind == "dir" and is_below(old, new):
                raise NotEmpty(f"{new} is not empty")  # renaming a directory over an ancestor
            moved = self.tree.at_and_below(old)
            now = time.time_ns()  # a rename changes the moved entry's ctime, as on Linux
            parents = self._dir_inos({parent_of(old), parent_of(new)})
            # Each name's history goes on: over a file, the replaced content becomes a version
            # of the name, and the moved histories continue after the ones already there.
            histories = sorted(set(moved) | set(self._versions.paths_below(old)))
            bumped: dict[int, int] = {}

            def tx(db: sqlite3.Connection) -> bool:
                bumped.clear()
                gone = False
                if dst is not None:
                    if dst.kind == "file":
                        keep_version(db, new, dst.ino, self.versions_keep)
                    gone = self._unname(db, new, dst, now)
                for q in histories:
                    self._continue_history(db, q, new + q[len(old) :], bumped)
                db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, src.ino))
                self._touch_dirs(db, parents, now)
                for table in NAME_TABLES:
                    _renamed(db, table, old, new)
                return gone

            gone = self.db.tx(f"rename {old}", tx)
            if dst is not None:
                self._unnamed(new, dst, gone, now)
            self.tree.move(old, new, moved)
            self._bumped(bumped)
            moved_entry = self.tree.inode(src.ino)
            if moved_entry is not None:
                self.tree.put(replace(moved_entry, ctime_ns=now))
            self._dirs_touched(parents, now)
        self._changed()

    @staticmethod
    def _history_top(db: sqlite3.Connection, path: str) -> int:
        """The newest version number in name ``path``'s history (0: none)."""
        row = db.execute("SELECT max(version) FROM versions WHERE path = ?", (path,)).fetchone()
        return int(row[0] or 0)

    def _continue_history(
        self, db: sqlite3.Connection, name: str, onto: str, bumped: dict[int, int]
    ) -> None:
        """Inside a transaction, before ``name`` becomes ``onto``: if ``onto`` has a history
        (an earlier file there, since deleted or replaced), renumber ``name``'s versions, and
        its file's current version, to follow it, so that no number means two contents."""
        top = self._history_top(db, onto)
        if not top:
            return
        for table in ("versions", "vblocks"):
            db.execute(f"UPDATE {table} SET version = version + ? WHERE path = ?", (top, name))
        entry = self.tree.get(name)
        if entry is not None and entry.kind == "file":
            self._bump(db, entry, top, bumped)

    def _bump(self, db: sqlite3.Connection, entry: Entry, by: int, bumped: dict[int, int]) -> None:
        """Inside a transaction: inode ``entry``'s version number goes up by ``by``, and with it
        the version its names' passages and index queue entries are for."""
        db.execute("UPDATE inodes SET version = version + ? WHERE ino = ?", (by, entry.ino))
        for p in self.tree.paths_of(entry.ino):
            for table in ("chunks", "pending"):
                db.execute(f"UPDATE {table} SET version = version + ? WHERE path = ?", (by, p))
        bumped[entry.ino] = bumped.get(entry.ino, 0) + by

    def _bumped(self, bumped: dict[int, int]) -> None:
        """After the commit: the bumped version numbers in the tree."""
        for ino, by in bumped.items():
            entry = self.tree.inode(ino)
            if entry is not None:
                self.tree.put(replace(entry, version=entry.version + by))

    def _exchange(self, a: str, b: str) -> None:
        """RENAME_EXCHANGE (under the database lock): names ``a`` and ``b`` swap inodes, each
        with what is below it and its versions and passages."""
        if a == b:
            return
        if is_below(a, b) or is_below(b, a):
            raise InvalidArgument("cannot exchange a directory with one inside it")
        ea, eb = self.tree.get(a), self.tree.get(b)
        assert ea is not None and eb is not None
        moved_a, moved_b = self.tree.at_and_below(a), self.tree.at_and_below(b)
        now = time.time_ns()
        parents = self._dir_inos({parent_of(a), parent_of(b)})

        def tx(db: sqlite3.Connection) -> None:
            for table in NAME_TABLES:
                _renamed(db, table, a, EXCHANGE_TMP)
                _renamed(db, table, b, a)
                _renamed(db, table, EXCHANGE_TMP, b)
            for ino in (ea.ino, eb.ino):
                db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, ino))
            self._touch_dirs(db, parents, now)

        self.db.tx(f"exchange {a} and {b}", tx)
        self.tree.exchange(a, b, moved_a, moved_b)
        for e in (ea, eb):
            current = self.tree.inode(e.ino)
            if current is not None:
                self.tree.put(replace(current, ctime_ns=now))
        self._dirs_touched(parents, now)
        self._changed()

    # ---- metadata -----------------------------------------------------------------------------

    def set_metadata(
        self,
        target: int | str,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Entry:
        """chmod, chown and utimensat in one, of inode ``target`` (or the one path ``target``
        names): what is not None changes, ctime becomes now. Not a new version: the content,
        its history and the index stay as they are."""
        if isinstance(target, str):
            named = self.tree.get(normalize(target))
            if named is None:
                raise NotFound(f"no such path {target!r} in the store")
            target = named.ino
        ino = target
        with self.db.lock:
            entry = self.tree.inode(ino)
            if entry is None:
                raise NotFound("no such entry in the store")
            new = replace(
                entry,
                mode=entry.mode if mode is None else mode & 0o7777,
                uid=entry.uid if uid is None else uid,
                gid=entry.gid if gid is None else gid,
                atime_ns=entry.atime_ns if atime_ns is None else atime_ns,
                mtime_ns=entry.mtime_ns if mtime_ns is None else mtime_ns,
                ctime_ns=time.time_ns(),
            )
            if ino == ROOT:  # its mode and owner are kept; its times are the mount's
                self.db.tx(
                    "set the root's metadata",
                    lambda db: db.execute(
                        "UPDATE root SET mode = ?, uid = ?, gid = ? WHERE id = 0",
                        (new.mode, new.uid, new.gid),
                    ),
                )
                self.tree.put(new)
            else:
                self.db.tx(
                    "set metadata",
                    lambda db: db.execute(
                        "UPDATE inodes SET mode = ?, uid = ?, gid = ?, atime_ns = ?, "
                        "mtime_ns = ?, ctime_ns = ? WHERE ino = ?",
                        (new.mode, new.uid, new.gid, new.atime_ns, new.mtime_ns, new.ctime_ns, ino),
                    ),
                )
                self.tree.put(new)
        if (new.mode, new.uid, new.gid) != (entry.mode, entry.uid, entry.gid):
            self._search.touch()  # who may see a file in search results may have changed
        return new

    # ---- extended attributes --------------------------------------------------------------

    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if not name or len(name) > 255:
            raise InvalidArgument("an extended attribute's name is 1 to 255 bytes")
        if name.startswith(b"system."):  # POSIX ACLs: not kept, so never pretend to
            raise NotSupported("system.* attributes (POSIX ACLs) are not supported")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        row = self.db.row("SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
        if row is None:
            raise NoAttribute(f"no attribute {name!r}")
        return bytes(row[0])

    def listxattr(self, ino: int) -> list[bytes]:
        return [bytes(r[0]) for r in self.db.rows("SELECT name FROM xattrs WHERE ino = ?", (ino,))]

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        """Set (create or replace) an attribute; ctime becomes now."""
        self._check_xattr_name(name)
        self._xattr_change(ino, "set attribute", name, value)

    def removexattr(self, ino: int, name: bytes) -> None:
        self._check_xattr_name(name)
        self._xattr_change(ino, "remove attribute", name, None)

    def _xattr_change(self, ino: int, what: str, name: bytes, value: bytes | None) -> None:
        with self.db.lock:
            if ino == ROOT:
                raise NotPermitted("the store's root keeps no attributes")
            entry = self.tree.inode(ino)
            if entry is None:
                raise NotFound("no such entry in the store")
            now = time.time_ns()

            def tx(db: sqlite3.Connection) -> None:
                if value is None:
                    cur = db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
                    if not cur.rowcount:
                        raise NoAttribute(f"no attribute {name!r}")
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)",
                        (ino, name, value),
                    )
                db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, ino))

            self.db.tx(what, tx)
            self.tree.put(replace(entry, ctime_ns=now))

    # ---- access: the kernel's calls, for the owner of the calling agent ------------------------

    def resolve(
        self,
        path: str,
        cred: Cred | None = None,
        allow: Allow | None = None,
        write: bool = False,
        parents: bool = False,
    ) -> str:
        """The normalised path ``path`` leads to, every symbolic link on the way (the last one
        included) followed as a process would, with ``cred``'s search permission checked on
        every directory traversed, and ``allow(result, write)`` applied to where it leads. The
        result may not exist (a file to create); with ``parents`` neither may its directories.
        A link's relative target is resolved against the link's directory; ``..`` may climb
        but never above the store's root, and an absolute target is refused likewise (EACCES:
        the store cannot know what is outside it); more than ``MAX_LINKS`` links is ELOOP."""
        with self.db.lock:
            real = self._resolve(path, cred, parents)
            if allow is not None:
                allow(real, write)
            return real

    def _resolve(self, path: str, cred: Cred | None, parents: bool = False) -> str:
        """``resolve`` under the database lock, without the capability check."""
        asked = normalize(path)
        todo = list(reversed(asked.split("/"))) if asked else []  # next component last
        cur, links = "", 0  # cur: a directory, reached without links
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            self._need_search(cred, cur, asked)
            if part == "..":
                if not cur:
                    raise AccessDenied(f"store/{asked} leads outside the store")
                cur = parent_of(cur)
                continue
            nxt = f"{cur}/{part}" if cur else part
            entry = self.tree.peek(nxt)
            rest = [p for p in reversed(todo) if p not in ("", ".")]
            if entry is None:
                if not rest or (parents and ".." not in rest):
                    return normalize("/".join([nxt, *rest]))
                raise NotFound(f"no such directory store/{nxt} (on the way to store/{asked})")
            if entry.kind == "symlink":
                links += 1
                if links > MAX_LINKS:
                    raise TooManyLinks(f"store/{asked}: more than {MAX_LINKS} symbolic links")
                target = os.fsdecode(entry.target or b"")
                if target.startswith("/"):
                    raise AccessDenied(
                        f"store/{asked} leads outside the store (store/{nxt} -> {target})"
                    )
                todo.extend(reversed(target.split("/")))
                continue
            if rest and entry.kind != "dir":
                raise NotADirectory(f"store/{nxt} is not a directory")
            cur = nxt
        return cur

    def _need_search(self, cred: Cred | None, directory: str, asked: str) -> None:
        if cred is None:
            return
        entry = self.tree.peek(directory)
        if entry is not None and not self._permits(cred, entry, X_OK):
            raise AccessDenied(
                f"{cred.describe()} may not search store/{directory} "
                f"(on the way to store/{asked}): permission denied"
            )

    @staticmethod
    def _permits(cred: Cred, entry: Entry, want: int) -> bool:
        return cred.permits(entry.type_bits | entry.mode, entry.uid, entry.gid, want)

    def _may(self, cred: Cred | None, entry: Entry, want: int, what: str, path: str) -> None:
        """Raise AccessDenied unless ``cred`` (None: no check) may ``want`` on ``entry``."""
        if cred is not None and not self._permits(cred, entry, want):
            raise AccessDenied(f"{cred.describe()} may not {what} store/{path}: permission denied")

    def readable(self, path: str, cred: Cred) -> bool:
        """Could ``cred`` open the name ``path`` (no links in it) for reading: search on every
        directory above it, read on it? What a search shows of a file needs exactly that."""
        parts = path.split("/")
        for i in range(len(parts)):
            entry = self.tree.peek("/".join(parts[:i]))
            if entry is None or not self._permits(cred, entry, X_OK):
                return False
        entry = self.tree.peek(path)
        return entry is not None and self._permits(cred, entry, R_OK)

    def _visible(self, cred: Cred | None, allow: Allow | None) -> Callable[[str], bool] | None:
        """The filter of search hits for ``cred`` and ``allow`` (None: nothing to filter)."""
        if cred is None and allow is None:
            return None

        def visible(path: str) -> bool:
            if allow is not None:
                try:
                    allow(path, False)
                except AccessDenied:
                    return False
            return cred is None or self.readable(path, cred)

        return visible

    # ---- content ----------------------------------------------------------------------------

    def _file(self, path: str) -> Entry:
        entry = self.tree.get(path)
        if entry is None:
            raise NotFound(f"no such file {path!r} in the store")
        if entry.kind == "dir":
            raise IsADirectory(f"{path} is a directory")
        if entry.kind != "file":
            raise InvalidArgument(f"{path} is not a regular file")
        return entry

    def read(self, path: str, cred: Cred | None = None, allow: Allow | None = None) -> bytes:
        """The whole content of a file (the kernel's ``store_read``; files are read by range),
        symbolic links followed, checked for ``cred`` and ``allow`` (see ``resolve``)."""
        with self.db.lock:
            real = self._resolve(path, cred)
            if allow is not None:
                allow(real, False)
            entry = self._file(real)
            self._may(cred, entry, R_OK, "read", real)
            return self.read_at(entry.ino, 0, entry.size)

    def read_at(self, ino: int, off: int, size: int) -> bytes:
        """Bytes ``[off, off + size)`` of inode ``ino``'s committed content (holes as zeros)."""
        with self.db.lock:
            entry = self.tree.inode(ino)
            if entry is None:
                raise NotFound("no such file in the store")
            return read_range(self.db.conn, "blocks WHERE ino = ?", (ino,), off, size, entry.size)

    def new_stage(self) -> int:
        """A number for a writer's staged blocks (see ``stage``)."""
        return next(self._stages)

    def stage(self, stage: int, blocks: Mapping[int, bytes]) -> None:
        """Put a writer's uncommitted blocks on disk, so a large write is not held in memory
        until its close; ``commit`` moves them into the file at once. Not durable on purpose:
        a crash drops them, as it drops an uncommitted write."""
        self.db.tx(
            "stage blocks",
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO staged (stage, idx, data) VALUES (?, ?, ?)",
                [(stage, idx, data) for idx, data in blocks.items()],
            ),
        )

    def read_staged(self, stage: int, idx: int) -> bytes:
        row = self.db.row("SELECT data FROM staged WHERE stage = ? AND idx = ?", (stage, idx))
        return bytes(row[0]) if row is not None else b""

    def drop_stage(self, stage: int) -> None:
        """A writer gave up (failed write, or closed without committing)."""
        self.db.tx(
            "drop staged blocks",
            lambda db: db.execute("DELETE FROM staged WHERE stage = ?", (stage,)),
        )

    def open_file(self, ino: int, snapshot_bytes: int) -> tuple[Entry, bytes | None]:
        """A file of ``ino`` is opened: hold the inode while it is open (see ``hold``), and
        return its entry and, if it is at most ``snapshot_bytes`` long, its whole content."""
        with self.db.lock:
            entry = self.tree.inode(ino)
            if entry is None:
                raise NotFound("no such file in the store")
            self.hold(ino)
            if entry.size > snapshot_bytes:
                return entry, None
            return entry, self.read_at(ino, 0, entry.size)

    def commit(
        self,
        ino: int,
        size: int,
        blocks: Mapping[int, bytes],
        stage: int | None = None,
        staged: list[int] | None = None,
        cut: int | None = None,
        via: str | None = None,
        mtime_ns: int | None = 0,
    ) -> Entry:
        """A writer's close: inode ``ino`` becomes ``size`` bytes long, as one transaction and
        one new version. In order: what was committed from byte ``cut`` on is dropped (the
        writer truncated there), blocks ``staged`` of its stage are put in, then ``blocks``
        (index -> content, zeros past a short block's end). The previous content becomes a
        version of ``via`` (the name the writer opened; else the inode's first name).
        ``mtime_ns``: when the writer last wrote (0, the default: now; None: keep the mtime,
        which utimensat set after the writes); ctime becomes now."""
        if size > self.max_file_bytes:
            raise TooLarge(f"file of {size} bytes is over the {self.max_file_bytes}-byte limit")
        with self.db.lock:
            entry = self.tree.inode(ino)
            if entry is None:
                raise NotFound("no such file in the store")
            if entry.kind != "file":
                raise InvalidArgument("not a regular file")
            new = self._commit(entry, size, blocks, stage, staged or [], cut, via, mtime_ns)
        self.ballast.restore()
        self._index.wake()
        return new

    def _commit(
        self,
        entry: Entry,
        size: int,
        blocks: Mapping[int, bytes],
        stage: int | None,
        staged: list[int],
        cut: int | None,
        via: str | None,
        mtime_ns: int | None = 0,
    ) -> Entry:
        """Under the database lock: the transaction of a new content (see ``commit``; a
        ``mtime_ns`` of 0 means now), then the tree's update."""
        ino = entry.ino
        names = self.tree.paths_of(ino)
        name = via if via in names else (names[0] if names else None)
        now = time.time_ns()
        mtime = entry.mtime_ns if mtime_ns is None else (mtime_ns or now)
        new = replace(entry, size=size, version=entry.version + 1, mtime_ns=mtime, ctime_ns=now)

        def tx(db: sqlite3.Connection) -> None:
            if name is not None:
                keep_version(db, name, ino, self.versions_keep)
            if cut is not None:
                _cut_blocks(db, ino, cut)
            if stage is not None:
                db.executemany(
                    "INSERT OR REPLACE INTO blocks (ino, idx, data) "
                    "SELECT ?, idx, data FROM staged WHERE stage = ? AND idx = ?",
                    [(ino, stage, idx) for idx in staged],
                )
                db.execute("DELETE FROM staged WHERE stage = ?", (stage,))
            for idx, data in blocks.items():
                if data.count(0) == len(data):  # all zeros: a hole
                    db.execute("DELETE FROM blocks WHERE ino = ? AND idx = ?", (ino, idx))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO blocks (ino, idx, data) VALUES (?, ?, ?)",
                        (ino, idx, data),
                    )
            _cut_blocks(db, ino, size)  # nothing past the end
            db.execute(
                "UPDATE inodes SET size = ?, version = ?, mtime_ns = ?, ctime_ns = ? WHERE ino = ?",
                (size, new.version, mtime, now, ino),
            )
            for p in names:  # no stale passages under any name; index the new text
                db.execute("DELETE FROM chunks WHERE path = ?", (p,))
                db.execute(
                    "INSERT OR REPLACE INTO pending (path, version) VALUES (?, ?)",
                    (p, new.version),
                )

        self.db.tx(f"write {name or 'an unlinked file'}", tx)
        self.tree.put(new)
        return new

    def truncate(self, ino: int, size: int) -> Entry:
        """truncate(2) without an open file: a new version of ``size`` bytes. Growing makes a
        hole, which costs nothing."""
        return self.commit(ino, size, {}, cut=size)

    def write(
        self,
        path: str,
        content: bytes,
        create: bool = True,
        parents: bool = False,
        cred: Cred | None = None,
        allow: Allow | None = None,
    ) -> Entry:
        """Replace a file's content as one transaction; the old content becomes a version.
        ``parents``: create missing directories on the way (in the same transaction). Symbolic
        links are followed and ``cred`` and ``allow`` checked as ``resolve`` says: write
        permission on an existing file, write and search on the directory a new entry goes in.
        An existing file keeps its mode, owner and atime; mtime and ctime become now. What this
        creates is ``cred``'s (root's without one), 0o644 files and 0o755 directories (a 022
        umask), the group inherited from a setgid directory (see ``inherit``)."""
        if not normalize(path):
            raise IsADirectory("the store's root is a directory")
        if len(content) > self.max_file_bytes:
            raise TooLarge(
                f"file of {len(content)} bytes is over the {self.max_file_bytes}-byte limit"
            )
        with self.db.lock:
            path = self._resolve(path, cred, parents)
            if allow is not None:
                allow(path, True)
            if not path:
                raise IsADirectory("the store's root is a directory")
            entry = self.tree.get(path)
            if entry is not None:
                self._file(path)
                self._may(cred, entry, W_OK, "write", path)
                new = self._commit(
                    entry, len(content), dict(split_blocks(content)), None, [], 0, path
                )
            else:
                if not create:
                    raise NotFound(f"no such file {path!r} in the store")
                new = self._write_new(path, content, parents, cred)
        self.ballast.restore()
        self._index.wake()
        return new

    def _write_new(self, path: str, content: bytes, parents: bool, cred: Cred | None) -> Entry:
        """``write`` of a path that does not exist (under the database lock): the file, and
        with ``parents`` its missing directories, in one transaction, owned by ``cred``."""
        missing: list[str] = []
        d = parent_of(path)
        while parents and d and d not in self.tree:
            missing.append(d)
            d = parent_of(d)
        self.tree.need_dir(d if missing else parent_of(path))
        top = parent_of(missing[-1] if missing else path)
        top_entry = self.tree.get(top)
        assert top_entry is not None
        self._may(cred, top_entry, W_OK | X_OK, "create entries in", top)
        uid, gid0 = (cred.uid, cred.gid) if cred is not None else (0, 0)
        now, touched = time.time_ns(), self._dir_inos({top})
        made: list[tuple[str, Entry]] = []  # the directories, then the file

        def tx(db: sqlite3.Connection) -> None:
            made.clear()
            parent = self.tree.get(top)
            for p in [*reversed(missing), path]:
                kind = "dir" if p != path else "file"
                mode, gid = self.inherit(parent, kind, 0o755 if kind == "dir" else 0o644, gid0)
                size, version = 0, 0
                if kind == "file":  # a file made where one was deleted: its numbers go on
                    size, version = len(content), self._history_top(db, p) + 1
                cur = db.execute(
                    "INSERT INTO inodes (kind, size, version, mode, uid, gid, atime_ns, "
                    "mtime_ns, ctime_ns, nlink) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (kind, size, version, mode, uid, gid, now, now, now),
                )
                assert cur.lastrowid is not None
                db.execute("INSERT INTO names (path, ino) VALUES (?, ?)", (p, cur.lastrowid))
                parent = replace(
                    Entry.new(cur.lastrowid, kind, mode, uid, gid, now, version), size=size
                )
                made.append((p, parent))
            db.executemany(
                "INSERT INTO blocks (ino, idx, data) VALUES (?, ?, ?)",
                [(made[-1][1].ino, i, b) for i, b in split_blocks(content)],
            )
            db.execute(
                "INSERT OR REPLACE INTO pending (path, version) VALUES (?, ?)",
                (path, made[-1][1].version),
            )
            self._touch_dirs(db, touched, now)

        self.db.tx(f"write {path}", tx)
        for p, e in made:
            self.tree.put(e)
            self.tree.add_name(p, e.ino)
        self._dirs_touched(touched, now)
        return made[-1][1]

    def sync(self) -> None:
        """fsync: make committed transactions durable against power loss too."""
        self.db.checkpoint("FULL")

    # ---- versions ---------------------------------------------------------------------------

    def versions(
        self, path: str, cred: Cred | None = None, allow: Allow | None = None
    ) -> list[tuple[int, float, int]]:
        """(version, mtime, size) of every kept earlier version, oldest first. Links are
        followed for a kernel call (with ``cred`` or ``allow``; ``.versions/`` lists a name's own
        history); ``cred`` needs read permission on the file (see ``_history_of``)."""
        with self.db.lock:
            real = normalize(path) if cred is None and allow is None else self._resolve(path, cred)
            if allow is not None:
                allow(real, False)
            kept = self._versions.kept(real)
            if kept:
                self._history_of(cred, real, R_OK, "read the versions of")
            return kept

    def _history_of(self, cred: Cred | None, path: str, want: int, what: str) -> None:
        """May ``cred`` reach name ``path``'s history: ``want`` on the file it names now; a
        removed file's history (its owner and mode are not kept with it) root's alone."""
        if cred is None:
            return
        entry = self.tree.get(path)
        if entry is None:
            if not cred.root:
                raise AccessDenied(
                    f"{cred.describe()} may not {what} store/{path}: the file was removed, and "
                    "only root may reach the history of a removed file"
                )
            return
        self._may(cred, entry, want, what, path)

    def version_content(self, path: str, version: int) -> bytes:
        return self._versions.content(path, version)

    def version_read(self, path: str, version: int, off: int, size: int) -> bytes:
        return self._versions.read(path, version, off, size)

    def versioned_paths(self, prefix: str) -> list[str]:
        """Paths under ``prefix`` that have versions (deleted files included)."""
        return self._versions.paths(prefix)

    def rollback(
        self, path: str, version: int, cred: Cred | None = None, allow: Allow | None = None
    ) -> Entry:
        """Make an earlier version current again (as a new version; nothing is lost). Links
        are followed; ``cred`` needs write permission on the file."""
        with self.db.lock:
            real = self._resolve(path, cred)
            if allow is not None:
                allow(real, True)
            self._history_of(cred, real, W_OK, "restore a version of")
            content = self.version_content(real, version)
            return self.write(real, content, cred=cred)

    # ---- index and search -------------------------------------------------------------------

    def pending(self) -> int:
        """How many files wait to be found by meaning."""
        return self._index.pending()

    def wait_indexed(self, timeout: float = 60.0) -> bool:
        return self._index.wait_indexed(timeout)

    def search(
        self,
        query: str,
        k: int = 5,
        under: str = "",
        cred: Cred | None = None,
        allow: Allow | None = None,
    ) -> list[Hit]:
        """The files whose passages are closest in meaning to ``query`` (one hit per name),
        up to ``k`` of those ``cred`` could read and ``allow`` lets it read: a search never
        shows the name or a passage of a file its caller could not open."""
        under = self.resolve(under, cred) if under else ""
        return self._search.search(query, k, under, self._visible(cred, allow))

    def grep(
        self,
        word: str,
        k: int = 20,
        under: str = "",
        cred: Cred | None = None,
        allow: Allow | None = None,
    ) -> list[Hit]:
        """Files containing ``word`` (full-text index, ranked by BM25), filtered as ``search``."""
        under = self.resolve(under, cred) if under else ""
        return self._search.grep(word, k, under, self._visible(cred, allow))

    def info(self) -> dict[str, Any]:
        files, directories, size = self.tree.totals()
        with self.db.lock:  # one snapshot of the three counts
            versions = self.db.row("SELECT count(*) FROM versions")[0]
            chunks = self.db.row("SELECT count(*) FROM chunks")[0]
            unembedded = self.db.row("SELECT count(*) FROM chunks WHERE embedding IS NULL")[0]
        return {
            "files": files,
            "directories": directories,
            "bytes": size,
            "versions_kept": versions,
            "versions_per_file": self.versions_keep,
            "pending_index": self.pending(),
            "chunks": chunks,
            "chunks_to_embed": unembedded,
            "embedder": self.embedder_name,
            "index_seconds": round(self._index.index_seconds, 2),
            "index_error": self._index.error(),
            "database": str(self.db_path),
        }
