"""Kept versions: every committed change of a store file keeps the previous content.

A version is kept also when a file is deleted (so a removed file can be restored) or replaced by
a rename, unless its content was empty (a file just created, or emptied, is nothing worth
keeping); the newest ``keep`` of each path are kept. Versions move with their file on rename.
Rolling back writes an old version as the newest one, so a rollback loses nothing either.

``keep_version`` runs inside the transaction of the change that makes a version, so the copy and
the change happen together or not at all; ``Versions`` reads them back.
"""

from __future__ import annotations

import sqlite3

from kernel.errors import NotFound
from kernel.store.db import Database, like_prefix
from kernel.store.tree import normalize


def keep_version(db: sqlite3.Connection, path: str, keep: int) -> None:
    """Copy the current content of ``path`` into its history and trim the history to ``keep``."""
    db.execute(  # an empty file (just created, or emptied) is no content worth keeping
        "INSERT OR REPLACE INTO versions (path, version, mtime, size, content) "
        "SELECT path, version, mtime, size, content FROM files WHERE path = ? AND size > 0",
        (path,),
    )
    db.execute(
        "DELETE FROM versions WHERE path = ? AND version NOT IN "
        "(SELECT version FROM versions WHERE path = ? ORDER BY version DESC LIMIT ?)",
        (path, path, keep),
    )


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

    def content(self, path: str, version: int) -> bytes:
        path = normalize(path)
        row = self.db.row(
            "SELECT content FROM versions WHERE path = ? AND version = ?", (path, version)
        )
        if row is None:
            raise NotFound(f"{path} has no kept version {version}")
        return bytes(row[0] or b"")

    def paths(self, prefix: str) -> list[str]:
        """Paths under ``prefix`` that have versions (deleted files included)."""
        rows = self.db.rows(
            "SELECT DISTINCT path FROM versions WHERE path LIKE ? ESCAPE '\\'",
            (like_prefix(prefix) if prefix else "%",),
        )
        return [r[0] for r in rows]
