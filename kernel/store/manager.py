"""The storage manager: the /store tree as one object, whose every change is one transaction.

It puts together the parts that live in the modules beside it: the database (``db``), the tree
kept in memory (``tree``), kept versions (``versions``), the background index (``index``),
search (``search``), the embedders (``embedders``) and the disk-full reserve (``ballast``). What
it owns itself is how a change of the tree (create, mkdir, write, unlink, rmdir, rename) touches
all of them at once: the file's row, its kept version, its old passages and its place in the
index queue change in one transaction, so a crash or a full disk leaves all or none of it.

Metadata. Every entry has permission bits, an owner and three times (``Entry``), kept in its
row. The caller of ``mkdir``/``create`` gives the mode and owner (the filesystem passes the
requesting process's, with its umask applied); the defaults, 0o644 files and 0o755 directories
owned by root (uid/gid 0), are what the kernel's own ``store_write`` gets, since agents have no
identity of their own yet. Inside a setgid directory a new entry takes the directory's group, and
a new directory its setgid bit, as on any Unix filesystem. ``set_metadata`` (chmod, chown,
utimensat) is not a new version of the content. A committed write sets mtime and ctime, any
change ctime, and adding, removing or renaming an entry sets its directory's mtime and ctime;
reads never update atime (as if mounted ``noatime``). Who may change what is
checked by the OS kernel before a request reaches the filesystem (``default_permissions``),
so none of it is checked here.

Threads: one documented way in.

* Changes (``mkdir``, ``create``, ``write``, ``set_metadata``, ``unlink``, ``rmdir``,
  ``rename``, ``rollback``)
  block on SQLite and the disk; run them off the trio thread (the kernel's ``Services.store``
  does). Each holds the database lock from its checks, through its transaction, to its update of
  the in-memory tree, so changes are serialised and the checks a change made still hold when it
  commits: two creates of one path give one file and EEXIST, never a constraint error.
* ``entry``, ``listdir`` and ``generation`` read only memory, under locks held for a few
  dictionary operations and never across I/O: safe and cheap on the trio thread, where the
  filesystem calls them for ``lookup``, ``stat`` and ``ls``.
* ``read``, ``versions``, ``version_content``, ``versioned_paths``, ``search``, ``grep``,
  ``pending`` and ``info`` query the shared connection under the database lock, so they wait
  while a change commits (a large write: milliseconds). The filesystem calls ``pending`` and
  ``info`` on its trio thread all the same, accepting that wait.
* Locks are taken in one order: the search's vector lock, then the database lock, then any of
  the leaf locks (the tree's, the search's generation lock, the indexer's counters, the
  ballast's), which are never held while taking another.
"""

from __future__ import annotations

import logging
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from kernel.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    TooLarge,
)
from kernel.store.ballast import Ballast
from kernel.store.db import Database, like_prefix
from kernel.store.embedders import EMBEDDERS, Embedder
from kernel.store.index import Indexer
from kernel.store.search import Hit, Search
from kernel.store.tree import Entry, Tree, normalize, parent_of
from kernel.store.versions import Versions, keep_version

log = logging.getLogger(__name__)

T = TypeVar("T")

# Every column of a ``files`` row, in the order ``_row`` gives their values.
ROW = (
    "INTO files (path, kind, size, mtime, version, content, mode, uid, gid, atime_ns, mtime_ns, "
    "ctime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row(path: str, e: Entry, content: bytes | None) -> tuple[object, ...]:
    return (
        path, e.kind, e.size, e.mtime, e.version, content,
        e.mode, e.uid, e.gid, e.atime_ns, e.mtime_ns, e.ctime_ns,
    )  # fmt: skip


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
        # The root is not a row: it is the shared top of the tree, 0o777 and root's, never
        # changed (its times are when the store was opened).
        root = Entry.new("dir", 0o777, 0, 0, time.time_ns(), 0)
        self.tree = Tree(
            root,
            (
                (row[0], Entry(*row[1:]))
                for row in self.db.rows(
                    "SELECT path, kind, size, version, mode, uid, gid, atime_ns, mtime_ns, "
                    "ctime_ns FROM files"
                )
            ),
        )
        self._versions = Versions(self.db)
        self._search = Search(self.db, chosen)
        self.ballast = Ballast(db_path.parent / "store.reserve")
        self.ballast.restore()
        self._index = Indexer(self.db, chosen, self._search.invalidate, start=index)

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

    @staticmethod
    def _touch_dirs(db: sqlite3.Connection, dirs: set[str], now: int) -> None:
        """Inside a change's transaction: its directories' contents changed (mtime and ctime
        become ``now``; the root is not a row and keeps its times)."""
        for d in dirs - {""}:
            db.execute(
                "UPDATE files SET mtime_ns = ?, mtime = ?, ctime_ns = ? WHERE path = ?",
                (now, now / 1e9, now, d),
            )

    def _dirs_touched(self, dirs: set[str], now: int) -> None:
        """After the commit: the same in the tree."""
        for d in dirs - {""}:
            entry = self.tree.get(d)
            if entry is not None:
                self.tree.add(d, replace(entry, mtime_ns=now, ctime_ns=now))

    # ---- the tree (in memory) ---------------------------------------------------------------

    def entry(self, path: str) -> Entry | None:
        return self.tree.get(path)

    def listdir(self, path: str) -> list[str]:
        return self.tree.listdir(path)

    # ---- namespace --------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
        """A new directory with these permission bits and owner (see ``inherit``)."""
        return self._new(path, "dir", mode, uid, gid, "mkdir")

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
            now, parent = time.time_ns(), {parent_of(path)}

            def tx(db: sqlite3.Connection) -> None:
                db.execute("DELETE FROM files WHERE path = ?", (path,))
                self._touch_dirs(db, parent, now)

            self._freeing(f"rmdir {path}", tx)
            self.tree.remove(path)
            self._dirs_touched(parent, now)

    def create(self, path: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
        """An empty file (version 1) with these permission bits and owner (see ``inherit``)."""
        return self._new(path, "file", mode, uid, gid, "create")

    def _new(self, path: str, kind: str, mode: int, uid: int, gid: int, what: str) -> Entry:
        """Add a new empty file or directory at ``path``, whose parent must exist."""
        path = normalize(path)
        with self.db.lock:
            if path in self.tree:
                raise AlreadyExists(f"{path} exists")
            self.tree.need_dir(parent_of(path))
            mode, gid = self.inherit(self.tree.get(parent_of(path)), kind, mode, gid)
            now, parent = time.time_ns(), {parent_of(path)}
            entry = Entry.new(kind, mode, uid, gid, now, 1 if kind == "file" else 0)
            content = b"" if kind == "file" else None

            def tx(db: sqlite3.Connection) -> None:
                db.execute("INSERT " + ROW, _row(path, entry, content))
                self._touch_dirs(db, parent, now)

            self.db.tx(f"{what} {path}", tx)
            self.tree.add(path, entry)
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

    def set_metadata(
        self,
        path: str,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Entry:
        """chmod, chown and utimensat in one: what is not None changes, ctime becomes now. Not a
        new version: the content, its history and the index stay as they are."""
        path = normalize(path)
        if not path:
            raise InvalidArgument("the store's root has fixed metadata")
        with self.db.lock:
            entry = self.tree.get(path)
            if entry is None:
                raise NotFound(f"no such path {path!r} in the store")
            new = replace(
                entry,
                mode=entry.mode if mode is None else mode & 0o7777,
                uid=entry.uid if uid is None else uid,
                gid=entry.gid if gid is None else gid,
                atime_ns=entry.atime_ns if atime_ns is None else atime_ns,
                mtime_ns=entry.mtime_ns if mtime_ns is None else mtime_ns,
                ctime_ns=time.time_ns(),
            )
            self.db.tx(
                f"set metadata of {path}",
                lambda db: db.execute(
                    "UPDATE files SET mode = ?, uid = ?, gid = ?, atime_ns = ?, mtime_ns = ?, "
                    "mtime = ?, ctime_ns = ? WHERE path = ?",
                    (
                        new.mode,
                        new.uid,
                        new.gid,
                        new.atime_ns,
                        new.mtime_ns,
                        new.mtime,
                        new.ctime_ns,
                        path,
                    ),
                ),
            )
            self.tree.add(path, new)
        return new

    def unlink(self, path: str) -> None:
        """Delete a file; its content stays in its version history (restorable)."""
        path = normalize(path)
        with self.db.lock:
            entry = self.tree.get(path)
            if entry is None:
                raise NotFound(f"no such file {path!r} in the store")
            if entry.kind == "dir":
                raise IsADirectory(f"{path} is a directory")

            now, parent = time.time_ns(), {parent_of(path)}

            def tx(db: sqlite3.Connection, keep: bool = True) -> None:
                if keep:
                    keep_version(db, path, self.versions_keep)
                db.execute("DELETE FROM files WHERE path = ?", (path,))
                self._touch_dirs(db, parent, now)
                db.execute("DELETE FROM chunks WHERE path = ?", (path,))
                db.execute("DELETE FROM pending WHERE path = ?", (path,))

            try:
                self.db.tx(f"unlink {path}", tx)
            except NoSpace:
                # Keeping the last version needs room the disk does not have. Removing files
                # must always work (it is how a full disk is fixed), so remove it without the
                # copy.
                log.warning("disk full: %s removed without keeping its last version", path)
                self._freeing(f"unlink {path}", lambda db: tx(db, keep=False))
            self.tree.remove(path)
            self._dirs_touched(parent, now)
            self._changed()

    def rename(self, old: str, new: str) -> None:
        """Rename a file or a whole directory (replacing a file at ``new``), atomically."""
        old, new = normalize(old), normalize(new)
        with self.db.lock:
            src = self.tree.get(old)
            if src is None or not old:
                raise NotFound(f"no such path {old!r} in the store")
            if new == old:
                return
            if new.startswith(old + "/"):
                raise InvalidArgument("cannot move a directory into itself")
            self.tree.need_dir(parent_of(new))
            dst = self.tree.get(new)
            if dst is not None:
                if dst.kind == "dir":
                    if src.kind != "dir":
                        raise IsADirectory(f"{new} is a directory")
                    if self.tree.has_children(new):
                        raise NotEmpty(f"{new} is not empty")
                elif src.kind == "dir":
                    raise NotADirectory(f"{new} is not a directory")
            moved = self.tree.at_and_below(old)
            now = time.time_ns()  # a rename changes the moved entry's ctime, as on Linux
            parents = {parent_of(old), parent_of(new)}
            # Over a file, the name's history goes on: the replaced content becomes a version,
            # and the moved file's own versions and number continue after it (``after``).
            after = 0

            def tx(db: sqlite3.Connection) -> None:
                nonlocal after
                if dst is not None:
                    if dst.kind == "file":
                        keep_version(db, new, self.versions_keep)
                        row = db.execute(
                            "SELECT max(version) FROM versions WHERE path = ?", (new,)
                        ).fetchone()
                        after = max(dst.version, row[0] or 0)
                        for table in ("files", "versions", "chunks", "pending"):
                            db.execute(
                                f"UPDATE {table} SET version = version + ? WHERE path = ?",
                                (after, old),
                            )
                    for table in ("files", "chunks", "pending"):
                        db.execute(f"DELETE FROM {table} WHERE path = ?", (new,))
                db.execute("UPDATE files SET ctime_ns = ? WHERE path = ?", (now, old))
                self._touch_dirs(db, parents, now)
                for table in ("files", "versions", "chunks", "pending"):
                    db.execute(
                        f"UPDATE {table} SET path = ? || substr(path, ?) "
                        "WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                        (new, len(old) + 1, old, like_prefix(old)),
                    )

            self.db.tx(f"rename {old}", tx)
            self.tree.move(old, new, moved)
            self.tree.add(new, replace(src, version=src.version + after, ctime_ns=now))
            self._dirs_touched(parents, now)
            self._changed()

    # ---- content ----------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        path = normalize(path)
        entry = self.tree.get(path)
        if entry is None:
            raise NotFound(f"no such file {path!r} in the store")
        if entry.kind == "dir":
            raise IsADirectory(f"{path} is a directory")
        row = self.db.row("SELECT content FROM files WHERE path = ?", (path,))
        if row is None:
            raise NotFound(f"no such file {path!r} in the store")
        return bytes(row[0] or b"")

    def write(self, path: str, content: bytes, create: bool = True, parents: bool = False) -> Entry:
        """Replace a file's content as one transaction; the old content becomes a version.
        ``parents``: create missing directories on the way (in the same transaction). An
        existing file keeps its mode, owner and atime; mtime and ctime become now. What this
        creates gets the defaults (0o644 files, 0o755 directories, root's), since only the
        kernel's own ``store_write`` and rollback create by writing."""
        path = normalize(path)
        if not path:
            raise IsADirectory("the store's root is a directory")
        if len(content) > self.max_file_bytes:
            raise TooLarge(
                f"file of {len(content)} bytes is over the {self.max_file_bytes}-byte limit"
            )
        with self.db.lock:
            entry = self.tree.get(path)
            if entry is not None and entry.kind == "dir":
                raise IsADirectory(f"{path} is a directory")
            missing: list[str] = []
            if entry is None:
                if not create:
                    raise NotFound(f"no such file {path!r} in the store")
                d = parent_of(path)
                while parents and d and d not in self.tree:
                    missing.append(d)
                    d = parent_of(d)
                self.tree.need_dir(d if missing else parent_of(path))
            now = time.time_ns()
            dirs: list[tuple[str, Entry]] = []
            for d in reversed(missing):
                mode, gid = self.inherit(
                    dirs[-1][1] if dirs else self.tree.get(parent_of(d)), "dir", 0o755, 0
                )
                dirs.append((d, Entry.new("dir", mode, 0, gid, now, 0)))
            if entry is None:
                parent = dirs[-1][1] if dirs else self.tree.get(parent_of(path))
                mode, gid = self.inherit(parent, "file", 0o644, 0)
                base = Entry.new("file", mode, 0, gid, now, 0)
            else:
                base = entry
            # A new file changes the directory it is made in (new directories are made now).
            touched = {parent_of(missing[-1] if missing else path)} if entry is None else set()
            new = replace(
                base,
                size=len(content),
                version=base.version + 1,
                mtime_ns=now,
                ctime_ns=now,
            )

            def tx(db: sqlite3.Connection) -> None:
                for d, e in dirs:
                    db.execute("INSERT " + ROW, _row(d, e, None))
                if entry is not None:
                    keep_version(db, path, self.versions_keep)
                    db.execute("DELETE FROM chunks WHERE path = ?", (path,))  # no stale passages
                db.execute("INSERT OR REPLACE " + ROW, _row(path, new, content))
                self._touch_dirs(db, touched, now)
                db.execute(
                    "INSERT OR REPLACE INTO pending (path, version) VALUES (?, ?)",
                    (path, new.version),
                )

            self.db.tx(f"write {path}", tx)
            for d, e in dirs:
                self.tree.add(d, e)
            self.tree.add(path, new)
            self._dirs_touched(touched, now)
        self.ballast.restore()
        self._index.wake()
        return new

    def sync(self) -> None:
        """fsync: make committed transactions durable against power loss too."""
        self.db.checkpoint("FULL")

    # ---- versions ---------------------------------------------------------------------------

    def versions(self, path: str) -> list[tuple[int, float, int]]:
        """(version, mtime, size) of every kept earlier version, oldest first."""
        return self._versions.kept(path)

    def version_content(self, path: str, version: int) -> bytes:
        return self._versions.content(path, version)

    def versioned_paths(self, prefix: str) -> list[str]:
        """Paths under ``prefix`` that have versions (deleted files included)."""
        return self._versions.paths(prefix)

    def rollback(self, path: str, version: int) -> Entry:
        """Make an earlier version current again (as a new version; nothing is lost)."""
        return self.write(path, self.version_content(path, version))

    # ---- index and search -------------------------------------------------------------------

    def pending(self) -> int:
        """How many files wait to be found by meaning."""
        return self._index.pending()

    def wait_indexed(self, timeout: float = 60.0) -> bool:
        return self._index.wait_indexed(timeout)

    def search(self, query: str, k: int = 5, under: str = "") -> list[Hit]:
        """The files whose passages are closest in meaning to ``query`` (one hit per file)."""
        return self._search.search(query, k, under)

    def grep(self, word: str, k: int = 20, under: str = "") -> list[Hit]:
        """Files containing ``word`` (full-text index, ranked by BM25)."""
        return self._search.grep(word, k, under)

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
            "database": str(self.db_path),
        }
