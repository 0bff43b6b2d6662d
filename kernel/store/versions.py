"""Kept versions: every committed change of a store file keeps the previous content.

Versions belong to names, not inodes: ``.versions/PATH/`` is the history of what PATH held. A
version is kept also when a name is unlinked (so a removed file can be restored) or replaced by
a rename, unless its content was empty (a file just created, or emptied, is nothing worth
keeping); the newest ``keep`` of each path are kept. Versions move with their name on rename.
Rolling back writes an old version as the newest one, so a rollback loses nothing either. A
version's content is kept as blocks (``vblocks``), copied inside the database, so keeping a
version of a large file never holds it in memory.

``keep_version`` runs inside the transaction of the change that makes a version, so the copy and
the change happen together or not at all; ``Versions`` reads them back.
"""

from __future__ import annotations

import sqlite3

from kernel.errors import NotFound
from kernel.store.db import Database, like_prefix, read_range
from kernel.store.tree import normalize


def keep_version(db: sqlite3.Connection, path: str, ino: int, keep: int) -> None:
    """Copy the current content of inode ``ino`` into the history of name ``path`` and trim
    that history to ``keep``."""
    row = db.execute(
        "SELECT version, mtime_ns, size FROM inodes WHERE ino = ? AND kind = 'file'", (ino,)
    ).fetchone()
    if row is None or not row[2]:  # an empty file is no content worth keeping
        return
    version, mtime_ns, size = row
    db.execute(
        "INSERT OR REPLACE INTO versions (path, version, mtime, size) VALUES (?, ?, ?, ?)",
        (path, version, mtime_ns / 1e9, size),
    )
    db.execute("DELETE FROM vblocks WHERE path = ? AND version = ?", (path, version))
    db.execute(
        "INSERT INTO vblocks (path, version, idx, data) "
        "SELECT ?, ?, idx, data FROM blocks WHERE ino = ?",
        (path, version, ino),
    )
    old = db.execute(
        "SELECT version FROM versions WHERE path = ? ORDER BY version DESC LIMIT -1 OFFSET ?",
        (path, keep),
    ).fetchall()
    for (v,) in old:
        db.execute("DELETE FROM versions WHERE path = ? AND version = ?", (path, v))
        db.execute("DELETE FROM vblocks WHERE path = ? AND version = ?", (path, v))


class Versions:
    """The kept versions in the database, read through the shared connection."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def kept(self, path: str) -> list[tuple[int, float, int]]:
        """(version, mtime, size) of every kept earlier version, oldest first."""
        path = normalize(path)
        return [
            (v, t, n)
            for v, t, n in self.db.rows(
                "SELECT version, mtime, size FROM versions WHERE path = ? ORDER BY version",
                (path,),
            )
        ]

    def size(self, path: str, version: int) -> int:
        row = self.db.row(
            "SELECT size FROM versions WHERE path = ? AND version = ?", (normalize(path), version)
        )
        if row is None:
            raise NotFound(f"{path} has no kept version {version}")
        return int(row[0])

    def read(self, path: str, version: int, off: int, size: int) -> bytes:
        """Bytes ``[off, off + size)`` of a kept version."""
        path = normalize(path)
        total = self.size(path, version)
        with self.db.lock:
            return read_range(
                self.db.conn,
                "vblocks WHERE path = ? AND version = ?",
                (path, version),
                off,
                size,
                total,
            )

    def content(self, path: str, version: int) -> bytes:
        return self.read(path, version, 0, self.size(path, version))

    def paths_below(self, top: str) -> list[str]:
        """``top`` and the paths inside it that have versions (deleted files included)."""
        top = normalize(top)
        rows = self.db.rows(
            "SELECT DISTINCT path FROM versions WHERE path = ? OR path LIKE ? ESCAPE '\\'",
            (top, like_prefix(top)),
        )
        return [r[0] for r in rows]

    def paths(self, prefix: str) -> list[str]:
        """Paths under ``prefix`` that have versions (deleted files included)."""
        rows = self.db.rows(
            "SELECT DISTINCT path FROM versions WHERE path LIKE ? ESCAPE '\\'",
            (like_prefix(prefix) if prefix else "%",),
        )
        return [r[0] for r in rows]
