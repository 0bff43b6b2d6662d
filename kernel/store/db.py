"""The store's one SQLite database: its schema, how a connection is opened, how a change becomes
one transaction, and how SQLite's errors become kernel errors.

Durability. Every change is one SQLite transaction in WAL mode, so what a writer has closed
survives a ``kill -9`` of the daemon at any moment; ``checkpoint("FULL")`` (fsync) also copies
the WAL into the database file. Nothing is written in place: a transaction happened or did not.

Threads. ``Database`` is the connection shared by everyone but the indexer threads, which open
their own with ``connect``. Every use of it holds ``Database.lock``: an sqlite3 connection must
not run two statements at once, and a transaction must not see another thread's statements.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kernel.errors import KernelError, NoSpace

log = logging.getLogger(__name__)

T = TypeVar("T")

# The on-disk format. ``files`` holds the tree (content inline) with each entry's metadata
# (permission bits, owner, times in integer nanoseconds; ``mtime`` in seconds is kept beside
# ``mtime_ns`` because versions copy it), ``versions`` the kept earlier contents,
# ``chunks`` the passages of the index (``embedding`` NULL until embedded) with their
# full-text index ``chunks_fts`` kept in step by triggers, and ``pending`` the files whose
# current version is not yet fully indexed.
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, kind TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    version INTEGER NOT NULL, content BLOB,
    mode INTEGER NOT NULL DEFAULT 0, uid INTEGER NOT NULL DEFAULT 0,
    gid INTEGER NOT NULL DEFAULT 0, atime_ns INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0, ctime_ns INTEGER NOT NULL DEFAULT 0);
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

# Columns added to ``files`` after its first release, in the order they were added. A database
# made before them gains them at open (``migrate``).
METADATA_COLUMNS = ("mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns")


def migrate(db: sqlite3.Connection) -> None:
    """Give a database made before entries had metadata its columns, in one transaction.

    Existing rows get what the store showed for them until then, so nothing appears to change:
    files 0o666 and directories 0o777, owned by root (uid and gid 0), and all three times from
    the old ``mtime``."""
    have = {row[1] for row in db.execute("PRAGMA table_info(files)")}
    missing = [c for c in METADATA_COLUMNS if c not in have]
    if not missing:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for column in missing:
            db.execute(f"ALTER TABLE files ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        db.execute(
            "UPDATE files SET mode = CASE kind WHEN 'dir' THEN ? ELSE ? END, uid = 0, gid = 0, "
            "atime_ns = CAST(mtime * 1e9 AS INTEGER), mtime_ns = CAST(mtime * 1e9 AS INTEGER), "
            "ctime_ns = CAST(mtime * 1e9 AS INTEGER)",
            (0o777, 0o666),
        )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    log.info("store database migrated: added %s", ", ".join(missing))


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from any thread."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: commits survive a process crash
    # Checkpoint often and keep the WAL file small, so that on a full disk the WAL is short
    # and a delete fits in it; space freed by deletes is reused by the next writes.
    db.execute("PRAGMA wal_autocheckpoint=256")
    db.execute("PRAGMA journal_size_limit=4194304")
    db.execute("PRAGMA busy_timeout=10000")
    return db


def sql_error(e: sqlite3.Error, what: str) -> KernelError:
    """A full disk is ENOSPC (the caller can fix it by deleting); anything else is EIO."""
    text = str(e)
    if "full" in text:  # "database or disk is full"
        return NoSpace(f"{what}: no space left ({text})")
    err = KernelError(f"{what}: {text}")
    err.errno = errno.EIO
    return err


def like_prefix(path: str) -> str:
    """A LIKE pattern for everything below directory ``path``."""
    return path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"


class Database:
    """The shared connection and its lock. Opening it creates the schema if it is missing and
    migrates one made by an earlier release."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Re-entrant: a change holds it from its checks to its in-memory update, and runs its
        # transaction (which takes it too) inside.
        self.lock = threading.RLock()
        self.conn = connect(path)
        self.conn.executescript(SCHEMA)
        migrate(self.conn)

    def tx(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` as one write transaction (BEGIN IMMEDIATE: it takes SQLite's write lock at
        once, so it cannot fail half-way for lack of it). Any exception rolls it back; an
        SQLite error is raised as a KernelError saying ``what`` failed."""
        with self.lock:
            db = self.conn
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return out
            except sqlite3.Error as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise sql_error(e, what) from None

    def rows(self, sql: str, args: Any = ()) -> list[Any]:
        """Every row of a query."""
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def row(self, sql: str, args: Any = ()) -> Any:
        """The first row of a query, or None."""
        with self.lock:
            return self.conn.execute(sql, args).fetchone()

    def checkpoint(self, mode: str) -> None:
        """Copy the WAL into the database file (``FULL``: and fsync it)."""
        with self.lock:
            self.conn.execute(f"PRAGMA wal_checkpoint({mode})")

    def close(self) -> None:
        """Checkpoint (so the WAL is empty and the database file alone is the store) and close."""
        with self.lock:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:  # e.g. a full disk: the WAL stays, nothing is lost
                log.warning("store checkpoint at close failed: %s", e)
            self.conn.close()
