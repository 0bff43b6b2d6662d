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

# The size of a content block. A file's content is its blocks: a missing block is a hole
# (zeros), so a sparse file costs nothing for its holes, and a change rewrites only the blocks it
# touched. 64 KiB keeps the rows few for large files and the waste small for small ones (a file's
# last block is stored only as long as it needs to be).
BLOCK = 64 << 10

# The on-disk format, as on a Unix filesystem: an inode per file, directory, symbolic link or
# special file (``inodes``: kind, size, content version, permission bits, owner, times in integer
# nanoseconds, link count, device number, a symbolic link's target), names that refer to inodes
# (``names``: the directory tree; a hard link is a second name of one inode), the content in
# ``blocks``, and extended attributes in ``xattrs``. ``versions`` and ``vblocks`` keep earlier
# contents by name, ``chunks`` the passages of the index (``embedding`` NULL until embedded)
# with their full-text index ``chunks_fts`` kept in step by triggers, and ``pending`` the names
# whose current version is not yet fully indexed. ``staged`` holds blocks a writer has not
# committed yet (a large write goes to disk before its close commits it); nothing in it
# survives a restart. ``root`` is the one row of the root's mode and owner (the root is no
# inode: it has no name, no content and no history).
SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY, kind TEXT NOT NULL, size INTEGER NOT NULL,
    version INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL, rdev INTEGER NOT NULL DEFAULT 0, target BLOB);
CREATE TABLE IF NOT EXISTS names (path TEXT PRIMARY KEY, ino INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS names_ino ON names(ino);
CREATE TABLE IF NOT EXISTS blocks (
    ino INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (ino, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ino, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    path TEXT NOT NULL, version INTEGER NOT NULL, mtime REAL NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (path, version));
CREATE TABLE IF NOT EXISTS vblocks (
    path TEXT NOT NULL, version INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (path, version, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS staged (
    stage INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (stage, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, version INTEGER NOT NULL, start INTEGER NOT NULL,
    text TEXT NOT NULL, embedding BLOB);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE INDEX IF NOT EXISTS chunks_unembedded ON chunks(id) WHERE embedding IS NULL;
CREATE TABLE IF NOT EXISTS pending (path TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS root (
    id INTEGER PRIMARY KEY CHECK (id = 0), mode INTEGER NOT NULL, uid INTEGER NOT NULL,
    gid INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
"""

# Columns the first format's ``files`` table gained in the second, in the order they were
# added. A database of the first format gains them before it is converted (``migrate``).
METADATA_COLUMNS = ("mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns")


def split_blocks(content: bytes) -> list[tuple[int, bytes]]:
    """``content`` as (index, block) rows, leaving out blocks that are all zeros (holes)."""
    out = []
    for i in range(0, len(content), BLOCK):
        block = content[i : i + BLOCK]
        if block.count(0) != len(block):
            out.append((i // BLOCK, block))
    return out


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def migrate(db: sqlite3.Connection) -> None:
    """Convert a database of an earlier format, in one transaction, once the schema's new
    tables exist.

    The first two formats kept one row per path in ``files`` with the content inline (the
    first without metadata: its files read 0o666 and directories 0o777, owned by root, all
    three times the old ``mtime``), and versions with their content inline. Each row becomes
    one inode and one name, content in blocks. Paths and version numbers do not change, so the
    index (passages by path and version) stays valid as it is."""
    tables = _tables(db)
    version_columns = {row[1] for row in db.execute("PRAGMA table_info(versions)")}
    if "files" not in tables and "content" not in version_columns:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        converted = 0
        if "files" in tables:
            converted = _convert_files(db)
        if "content" in version_columns:
            db.execute("ALTER TABLE versions RENAME TO old_versions")
            db.execute(
                "CREATE TABLE versions (path TEXT NOT NULL, version INTEGER NOT NULL, "
                "mtime REAL NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (path, version))"
            )
            for path, version, mtime, size, content in db.execute(
                "SELECT path, version, mtime, size, content FROM old_versions"
            ).fetchall():
                db.execute(
                    "INSERT INTO versions (path, version, mtime, size) VALUES (?, ?, ?, ?)",
                    (path, version, mtime, size),
                )
                db.executemany(
                    "INSERT INTO vblocks (path, version, idx, data) VALUES (?, ?, ?, ?)",
                    [(path, version, i, b) for i, b in split_blocks(bytes(content or b""))],
                )
            db.execute("DROP TABLE old_versions")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    log.info("store database converted to inodes and blocks (%d entries)", converted)


def _convert_files(db: sqlite3.Connection) -> int:
    """The first formats' ``files`` rows as inodes, names and blocks (inside a transaction)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(files)")}
    missing = [c for c in METADATA_COLUMNS if c not in have]
    for column in missing:
        db.execute(f"ALTER TABLE files ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
    if missing:
        db.execute(
            "UPDATE files SET mode = CASE kind WHEN 'dir' THEN ? ELSE ? END, uid = 0, gid = 0, "
            "atime_ns = CAST(mtime * 1e9 AS INTEGER), mtime_ns = CAST(mtime * 1e9 AS INTEGER), "
            "ctime_ns = CAST(mtime * 1e9 AS INTEGER)",
            (0o777, 0o666),
        )
    rows = db.execute(
        "SELECT path, kind, size, version, content, mode, uid, gid, atime_ns, mtime_ns, "
        "ctime_ns FROM files"
    ).fetchall()
    for path, kind, size, version, content, mode, uid, gid, at, mt, ct in rows:
        cur = db.execute(
            "INSERT INTO inodes (kind, size, version, mode, uid, gid, atime_ns, mtime_ns, "
            "ctime_ns, nlink) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (kind, size, version, mode, uid, gid, at, mt, ct),
        )
        db.execute("INSERT INTO names (path, ino) VALUES (?, ?)", (path, cur.lastrowid))
        if kind == "file":
            db.executemany(
                "INSERT INTO blocks (ino, idx, data) VALUES (?, ?, ?)",
                [(cur.lastrowid, i, b) for i, b in split_blocks(bytes(content or b""))],
            )
    db.execute("DROP TABLE files")
    return len(rows)


ROOT_MODE = 0o1777  # like /tmp: anyone may create, only an entry's owner may remove it


def root_metadata(db: sqlite3.Connection) -> tuple[int, int, int]:
    """The store root's (mode, uid, gid), made at first open: 0o1777 and root's. A store from
    before the root was kept had an implicit 0o777 root, which let anyone delete anyone's
    files in it; a root that is still exactly 0o777 is made sticky (one chmod'ed to anything
    else stays as it is)."""
    row = db.execute("SELECT mode, uid, gid FROM root WHERE id = 0").fetchone()
    if row is None or row[0] == 0o777:
        uid, gid = (row[1], row[2]) if row is not None else (0, 0)
        db.execute(
            "INSERT OR REPLACE INTO root (id, mode, uid, gid) VALUES (0, ?, ?, ?)",
            (ROOT_MODE, uid, gid),
        )
        return ROOT_MODE, uid, gid
    return int(row[0]), int(row[1]), int(row[2])


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


def read_range(
    db: sqlite3.Connection, source: str, key: tuple[object, ...], off: int, size: int, total: int
) -> bytes:
    """Bytes ``[off, off + size)`` of content kept as blocks, never past ``total`` (its size):
    ``source`` is ``"blocks WHERE ino = ?"`` or ``"vblocks WHERE path = ? AND version = ?"``
    with ``key`` its arguments. Missing blocks, and the part of a block past its stored end,
    are holes and read as zeros."""
    end = min(off + size, total)
    if end <= off:
        return b""
    out = bytearray(end - off)
    first, last = off // BLOCK, (end - 1) // BLOCK
    for idx, data in db.execute(
        f"SELECT idx, data FROM {source} AND idx BETWEEN ? AND ?", (*key, first, last)
    ):
        base = idx * BLOCK
        lo, hi = max(off, base), min(end, base + len(data))
        if lo < hi:
            out[lo - off : hi - off] = data[lo - base : hi - base]
    return bytes(out)
