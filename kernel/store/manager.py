"""The storage manager: the /store tree as one object, whose every change is one transaction.

It puts together the parts that live in the modules beside it: the database (``db``), the tree
kept in memory (``tree``), kept versions (``versions``), the background index (``index``),
search (``search``), the embedders (``embedders``) and the disk-full reserve (``ballast``). What
it owns itself is how a change of the tree (create, mkdir, write, unlink, rmdir, rename) touches
all of them at once: the file's row, its kept version, its old passages and its place in the
index queue change in one transaction, so a crash or a full disk leaves all or none of it.

Threads: one documented way in.

* Changes (``mkdir``, ``create``, ``write``, ``unlink``, ``rmdir``, ``rename``, ``rollback``)
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
        self.tree = Tree(
            time.time(),
            (
                (path, Entry(kind, size, mtime, version))
                for path, kind, size, mtime, version in self.db.rows(
                    "SELECT path, kind, size, mtime, version FROM files"
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

    # ---- the tree (in memory) ---------------------------------------------------------------

    def entry(self, path: str) -> Entry | None:
        return self.tree.get(path)

    def listdir(self, path: str) -> list[str]:
        return self.tree.listdir(path)

    # ---- namespace --------------------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        self._new(path, Entry("dir", 0, time.time(), 0), "mkdir")

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
            self._freeing(
                f"rmdir {path}",
                lambda db: db.execute("DELETE FROM files WHERE path = ?", (path,)),
            )
            self.tree.remove(path)

    def create(self, path: str) -> Entry:
        """An empty file (version 1)."""
        return self._new(path, Entry("file", 0, time.time(), 1), "create")

    def _new(self, path: str, entry: Entry, what: str) -> Entry:
        """Add a new empty file or directory at ``path``, whose parent must exist."""
        path = normalize(path)
        with self.db.lock:
            if path in self.tree:
                raise AlreadyExists(f"{path} exists")
            self.tree.need_dir(parent_of(path))
            content = b"" if entry.kind == "file" else None
            self.db.tx(
                f"{what} {path}",
                lambda db: db.execute(
                    "INSERT INTO files (path, kind, size, mtime, version, content) "
                    "VALUES (?, ?, 0, ?, ?, ?)",
                    (path, entry.kind, entry.mtime, entry.version, content),
                ),
            )
            self.tree.add(path, entry)
        return entry

    def unlink(self, path: str) -> None:
        """Delete a file; its content stays in its version history (restorable)."""
        path = normalize(path)
        with self.db.lock:
            entry = self.tree.get(path)
            if entry is None:
                raise NotFound(f"no such file {path!r} in the store")
            if entry.kind == "dir":
                raise IsADirectory(f"{path} is a directory")

            def tx(db: sqlite3.Connection, keep: bool = True) -> None:
                if keep:
                    keep_version(db, path, self.versions_keep)
                db.execute("DELETE FROM files WHERE path = ?", (path,))
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
                for table in ("files", "versions", "chunks", "pending"):
                    db.execute(
                        f"UPDATE {table} SET path = ? || substr(path, ?) "
                        "WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                        (new, len(old) + 1, old, like_prefix(old)),
                    )

            self.db.tx(f"rename {old}", tx)
            self.tree.move(old, new, moved)
            if after:
                self.tree.add(new, replace(src, version=src.version + after))
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
        ``parents``: create missing directories on the way (in the same transaction)."""
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
            now = time.time()
            version = (entry.version + 1) if entry else 1

            def tx(db: sqlite3.Connection) -> None:
                for d in reversed(missing):
                    db.execute(
                        "INSERT INTO files (path, kind, size, mtime, version) "
                        "VALUES (?, 'dir', 0, ?, 0)",
                        (d, now),
                    )
                if entry is not None:
                    keep_version(db, path, self.versions_keep)
                    db.execute("DELETE FROM chunks WHERE path = ?", (path,))  # no stale passages
                db.execute(
                    "INSERT OR REPLACE INTO files (path, kind, size, mtime, version, content) "
                    "VALUES (?, 'file', ?, ?, ?, ?)",
                    (path, len(content), now, version, content),
                )
                db.execute(
                    "INSERT OR REPLACE INTO pending (path, version) VALUES (?, ?)",
                    (path, version),
                )

            self.db.tx(f"write {path}", tx)
            for d in reversed(missing):
                self.tree.add(d, Entry("dir", 0, now, 0))
            new = Entry("file", len(content), now, version)
            self.tree.add(path, new)
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
