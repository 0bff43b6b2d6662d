"""The store's file tree as kept in memory: names, and the inodes they refer to.

As on a Unix filesystem, an *inode* is a file, directory, symbolic link or special file (its
kind, size, content version, metadata and link count: ``Entry``), and a *name* is a path that
refers to one. A hard link is a second name of the same inode; a directory has exactly one name.
The database holds the truth (``inodes`` and ``names``); ``Tree`` is a copy of it, loaded at
open and updated after every committed change, so that ``stat``, ``lookup`` and ``ls`` never
touch the database and the filesystem can answer them on its trio thread.

Paths are stored normalised (see ``normalize``): components checked, no leading or trailing
slash, and '' for the root, whose inode number is ``ROOT`` (0; the database numbers from 1).

Threads. ``Tree`` guards its dicts with its own lock, held for a few dictionary operations at a
time and never across I/O, so a reader on the trio thread never waits for a transaction. It does
not serialise changes: the storage manager makes every change under the database lock, from the
checks it reads here to the update it makes here after committing.
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from kernel.errors import NotADirectory, NotFound
from kernel.names import split_store_path

ROOT = 0  # the root's inode number: not a row of the database

# The kinds of inode, and the file type bits of each (``stat.S_IFMT``).
KINDS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "chr": stat.S_IFCHR,
    "blk": stat.S_IFBLK,
}
KIND_OF_TYPE = {bits: kind for kind, bits in KINDS.items()}


@dataclass(frozen=True)
class Entry:
    """What the tree knows of an inode; never changed in place (a change stores a new Entry).

    It carries the whole of ``stat`` (but the filesystem's own inode number) so that ``stat``
    never waits for the database. A directory's ``nlink`` is computed (2 + its subdirectories),
    as on any Unix filesystem."""

    ino: int
    kind: str  # a key of KINDS
    size: int
    version: int
    mode: int  # permission bits: 0o7777, setuid/setgid/sticky included; the type is ``kind``
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int = 1
    rdev: int = 0
    target: bytes | None = None  # a symbolic link's target

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def type_bits(self) -> int:
        return KINDS[self.kind]

    @classmethod
    def new(
        cls, ino: int, kind: str, mode: int, uid: int, gid: int, now_ns: int, version: int
    ) -> Entry:
        """A new empty inode with one name, all three times ``now_ns``."""
        return cls(ino, kind, 0, version, mode & 0o7777, uid, gid, now_ns, now_ns, now_ns)


def normalize(path: str) -> str:
    """A stored path: components checked, no leading or trailing slash; '' is the root."""
    return "/".join(split_store_path(path))


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def is_below(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or inside it."""
    return path == top or path.startswith(top + "/")


class Tree:
    """Every name's inode, every inode's names, and every directory's children, in memory."""

    def __init__(
        self, root: Entry, inodes: Iterable[Entry], names: Iterable[tuple[str, int]]
    ) -> None:
        """``root``: the root's entry, which is not in the database (it is never changed)."""
        self._lock = threading.Lock()
        self._inodes: dict[int, Entry] = {ROOT: root}
        self._names: dict[str, int] = {"": ROOT}
        self._paths: dict[int, set[str]] = {ROOT: {""}}
        self._children: dict[str, set[str]] = {}
        self._subdirs: dict[str, int] = {}
        for entry in inodes:
            self._inodes[entry.ino] = entry
        for path, ino in names:
            if ino in self._inodes:
                self._add_name(path, ino)

    # ---- reading ----------------------------------------------------------------------------

    def get(self, path: str) -> Entry | None:
        """The inode ``path`` names, or None."""
        with self._lock:
            ino = self._names.get(path)
            return None if ino is None else self._entry(ino)

    def peek(self, path: str) -> Entry | None:
        """The inode ``path`` names as kept, its link count not worked out (a directory's
        counts its subdirectories, which costs a copy): for the permission checks of a path
        walk, which read only kind, mode, owner and a link's target, many times a call."""
        with self._lock:
            ino = self._names.get(path)
            return None if ino is None else self._inodes[ino]

    def inode(self, ino: int) -> Entry | None:
        """Inode ``ino`` (with no name left, if it is open after its last unlink), or None."""
        with self._lock:
            return self._entry(ino) if ino in self._inodes else None

    def _entry(self, ino: int) -> Entry:
        entry = self._inodes[ino]
        if entry.kind == "dir":
            path = next(iter(self._paths.get(ino, ())), None)
            subdirs = self._subdirs.get(path, 0) if path is not None else 0
            return replace(entry, nlink=2 + subdirs)
        return entry

    def paths_of(self, ino: int) -> list[str]:
        """Every name of inode ``ino``, sorted (none for an inode open after its last unlink)."""
        with self._lock:
            return sorted(self._paths.get(ino, ()))

    def __contains__(self, path: str) -> bool:
        with self._lock:
            return path in self._names

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
        ino = self._names.get(path)
        if ino is None:
            raise NotFound(f"no such directory {path!r} in the store")
        if self._inodes[ino].kind != "dir":
            raise NotADirectory(f"{path} is not a directory")

    def has_children(self, path: str) -> bool:
        with self._lock:
            return bool(self._children.get(path))

    def at_and_below(self, path: str) -> list[str]:
        """``path`` and every path inside it."""
        with self._lock:
            if self._inodes[self._names[path]].kind != "dir":
                return [path]
            return [p for p in self._names if is_below(p, path)]

    # ---- changing (after the database committed the same change) -------------------------

    def put(self, entry: Entry) -> None:
        """Add or replace an inode's entry (its names do not change)."""
        with self._lock:
            self._inodes[entry.ino] = entry

    def add_name(self, path: str, ino: int) -> None:
        with self._lock:
            self._add_name(path, ino)

    def remove_name(self, path: str) -> None:
        """Remove one name; its inode stays (``drop`` removes an inode)."""
        with self._lock:
            self._remove_name(path)

    def drop(self, ino: int) -> None:
        """Forget an inode that has no name left and is no longer open."""
        with self._lock:
            for path in list(self._paths.get(ino, ())):
                self._remove_name(path)
            self._inodes.pop(ino, None)
            self._paths.pop(ino, None)

    def move(self, old: str, new: str, moved: list[str]) -> None:
        """After a rename of ``old`` to ``new``: re-key ``moved`` (``old`` and everything inside
        it) under ``new``, in one step, so no reader sees a half-moved directory. The name
        ``new`` must be free (the caller removed what it named)."""
        with self._lock:
            inos = {p: self._names[p] for p in moved}
            for p in sorted(moved, key=len, reverse=True):
                self._remove_name(p)
            for p in sorted(moved, key=len):
                self._add_name(new + p[len(old) :], inos[p])

    def exchange(self, a: str, b: str, moved_a: list[str], moved_b: list[str]) -> None:
        """After RENAME_EXCHANGE of ``a`` and ``b``: each subtree takes the other's place."""
        with self._lock:
            inos = {p: self._names[p] for p in moved_a + moved_b}
            for p in sorted(moved_a + moved_b, key=len, reverse=True):
                self._remove_name(p)
            for p in sorted(moved_a, key=len):
                self._add_name(b + p[len(a) :], inos[p])
            for p in sorted(moved_b, key=len):
                self._add_name(a + p[len(b) :], inos[p])

    def _add_name(self, path: str, ino: int) -> None:
        self._names[path] = ino
        self._paths.setdefault(ino, set()).add(path)
        if path:
            parent = parent_of(path)
            self._children.setdefault(parent, set()).add(path)
            if self._inodes[ino].kind == "dir":
                self._subdirs[parent] = self._subdirs.get(parent, 0) + 1

    def _remove_name(self, path: str) -> None:
        ino = self._names.pop(path, None)
        if ino is None:
            return
        names = self._paths.get(ino)
        if names is not None:
            names.discard(path)
        parent = parent_of(path)
        self._children.get(parent, set()).discard(path)
        if self._inodes[ino].kind == "dir":
            self._subdirs[parent] = self._subdirs.get(parent, 1) - 1
            self._children.pop(path, None)
            self._subdirs.pop(path, None)

    def totals(self) -> tuple[int, int, int]:
        """(files, directories not counting the root, bytes in files), each inode once."""
        with self._lock:
            entries = [e for ino, e in self._inodes.items() if self._paths.get(ino)]
        files = [e for e in entries if e.kind == "file"]
        dirs = sum(1 for e in entries if e.kind == "dir") - 1
        return len(files), dirs, sum(e.size for e in files)
