"""The store's file tree as kept in memory: each path's kind, size, version and metadata (mode,
owner, times).

The database holds the truth (the ``files`` table); ``Tree`` is a copy of its metadata, loaded at
open and updated after every committed change, so that ``stat``, ``lookup`` and ``ls`` never
touch the database and the filesystem can answer them on its trio thread.

Paths are stored normalised (see ``normalize``): components checked, no leading or trailing
slash, and '' for the root.

Threads. ``Tree`` guards its dicts with its own lock, held for a few dictionary operations at a
time and never across I/O, so a reader on the trio thread never waits for a transaction. It does
not serialise changes: the storage manager makes every change under the database lock, from the
checks it reads here to the update it makes here after committing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from kernel.errors import NotADirectory, NotFound
from kernel.names import split_store_path


@dataclass(frozen=True)
class Entry:
    """What the tree knows of a path; never changed in place (a change stores a new Entry).

    It carries the whole of ``stat`` (but the inode and link count, which the filesystem owns)
    so that ``stat`` never waits for the database."""

    kind: str  # "file" or "dir"
    size: int
    version: int
    mode: int  # permission bits: 0o7777, setuid/setgid/sticky included; the kind is ``kind``
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @classmethod
    def new(cls, kind: str, mode: int, uid: int, gid: int, now_ns: int, version: int) -> Entry:
        """A new empty entry, all three times ``now_ns``."""
        return cls(kind, 0, version, mode & 0o7777, uid, gid, now_ns, now_ns, now_ns)


def normalize(path: str) -> str:
    """A stored path: components checked, no leading or trailing slash; '' is the root."""
    return "/".join(split_store_path(path))


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def is_below(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or inside it."""
    return path == top or path.startswith(top + "/")


class Tree:
    """Every path's Entry and every directory's children, in memory."""

    def __init__(self, root: Entry, rows: Iterable[tuple[str, Entry]]) -> None:
        """``root``: the root's entry, which is not in the database (it is never changed)."""
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {"": root}
        self._children: dict[str, set[str]] = {}
        for path, entry in rows:
            self._entries[path] = entry
        for path in self._entries:
            if path:
                self._children.setdefault(parent_of(path), set()).add(path)

    def get(self, path: str) -> Entry | None:
        with self._lock:
            return self._entries.get(path)

    def __contains__(self, path: str) -> bool:
        with self._lock:
            return path in self._entries

    def listdir(self, path: str) -> list[str]:
        """The names in directory ``path``, sorted."""
        with self._lock:
            self._need_dir(path)
            below = list(self._children.get(path, ()))
        return sorted(p.rsplit("/", 1)[-1] for p in below)

    def need_dir(self, path: str) -> None:
        """Raise NotFound or NotADirectory unless ``path`` is a directory."""
        with self._lock:
            self._need_dir(path)

    def _need_dir(self, path: str) -> None:
        entry = self._entries.get(path)
        if entry is None:
            raise NotFound(f"no such directory {path!r} in the store")
        if entry.kind != "dir":
            raise NotADirectory(f"{path} is not a directory")

    def has_children(self, path: str) -> bool:
        with self._lock:
            return bool(self._children.get(path))

    def at_and_below(self, path: str) -> list[str]:
        """``path`` and every path inside it."""
        with self._lock:
            return [p for p in self._entries if is_below(p, path)]

    def add(self, path: str, entry: Entry) -> None:
        with self._lock:
            self._add(path, entry)

    def remove(self, path: str) -> None:
        with self._lock:
            self._remove(path)

    def move(self, old: str, new: str, moved: list[str]) -> None:
        """After a rename of ``old`` to ``new``: re-key ``moved`` (``old`` and everything inside
        it) under ``new``, in one step, so no reader sees a half-moved directory. Whatever was
        at ``new`` goes first."""
        with self._lock:
            if new in self._entries:
                self._remove(new)
            entries = {p: self._entries[p] for p in moved}
            for p in sorted(moved, key=len, reverse=True):
                self._remove(p)
            for p in sorted(moved, key=len):
                self._add(new + p[len(old) :], entries[p])

    def _add(self, path: str, entry: Entry) -> None:
        self._entries[path] = entry
        self._children.setdefault(parent_of(path), set()).add(path)

    def _remove(self, path: str) -> None:
        self._entries.pop(path, None)
        self._children.get(parent_of(path), set()).discard(path)
        self._children.pop(path, None)

    def totals(self) -> tuple[int, int, int]:
        """(files, directories not counting the root, bytes in files)."""
        with self._lock:
            entries = list(self._entries.values())
        files = [e for e in entries if e.kind == "file"]
        dirs = sum(1 for e in entries if e.kind == "dir") - 1
        return len(files), dirs, sum(e.size for e in files)
