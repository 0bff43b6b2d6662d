"""What the stateful test (``test_stateful.py``) believes must be in the mount, and what each
operation must answer.

The model is deliberately small and literal: a dict from path (a tuple of byte-string names
below the mount) to what is there — a directory, a file's inode, a symbolic link — with the
semantics docs/filesystem.md promises for ``mem/`` and ``store/`` and the Linux VFS rules that
come before the daemon is asked (name lengths, PATH_MAX, the order of ``rename(2)``'s checks).
An operation first asks the model for its verdict: an ``Expect`` of success (with the change to
make to the model) or of the errno it must fail with. Nothing here touches the mount.

Symbolic links the test makes never lead anywhere that exists (their targets are dangling,
absolute, above the mount's root, non-UTF-8 or long), so a path through one is ENOENT and the
model never has to follow one; that keeps every operation on the mount inside the test's own
directories, whatever the target says.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Key = tuple[bytes, ...]  # a path below the mount, one name a component

TMP_SUFFIX = b".aiosfs-tmp"  # names the memory manager reserves for its saves
STORE_MAGIC = (b".search", b".grep")  # found in every store directory, never listed
STORE_RESERVED = (b".versions",)  # reserved store names that are not found below its root
NAME_MAX = 255
FUSE_NAME_MAX = 1024  # the FUSE kernel module refuses longer names itself
PATH_MAX = 4096


@dataclass(eq=False)
class File:
    """A file's inode: every name of a hard-linked file refers to the same object."""

    data: bytearray
    perm: int


@dataclass(eq=False)
class Link:
    """A symbolic link's inode (hard links to links are allowed: they share it)."""

    target: bytes


@dataclass(eq=False)
class Directory:
    perm: int


Node = File | Link | Directory


class Magic:
    """A store query directory (``.search``, ``.grep``): found by name, never listed."""


MAGIC = Magic()


@dataclass(frozen=True)
class Expect:
    """The model's verdict on one operation: ``errnos`` it may fail with (empty: it must
    succeed), and on success ``apply`` changes the model."""

    errnos: frozenset[int] = frozenset()
    apply: Callable[[], object] | None = None
    # a write across a size limit may instead write the part below the limit and return
    # that count, as POSIX allows: ``partial(n)`` makes the model's change for it
    partial: Callable[[int], object] | None = None

    @property
    def ok(self) -> bool:
        return not self.errnos


def fail(*codes: int) -> Expect:
    return Expect(frozenset(codes))


def succeed(apply: Callable[[], object] | None = None) -> Expect:
    return Expect(frozenset(), apply)


class Refused(Exception):
    """Raised inside the model's walk: the operation fails with this errno."""

    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.code = code


def is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass
class Model:
    """The namespace below the test's roots: ``store/RUN`` and ``mem/AGENT`` for its agents."""

    mount: bytes
    limits: dict[bytes, int]  # tree ("mem"/"store") -> the largest file it allows
    nodes: dict[Key, Node] = field(default_factory=dict)

    # ---- looking things up ----------------------------------------------------------------

    @staticmethod
    def tree(key: Key) -> bytes:
        return key[0]

    @staticmethod
    def root(key: Key) -> Key:
        return key[:2]

    def abs(self, key: Key) -> bytes:
        return self.mount + b"/" + b"/".join(key)

    def children(self, key: Key) -> list[Key]:
        n = len(key) + 1
        return sorted(k for k in self.nodes if len(k) == n and k[:-1] == key)

    def subtree(self, key: Key) -> list[Key]:
        n = len(key)
        return [k for k in self.nodes if k[:n] == key]

    def names(self, key: Key) -> list[Key]:
        """Every name of ``key``'s inode (one for a directory)."""
        node = self.nodes[key]
        return sorted(k for k, v in self.nodes.items() if v is node)

    def nlink(self, key: Key) -> int:
        node = self.nodes[key]
        if isinstance(node, Directory):
            return 2 + sum(isinstance(self.nodes[c], Directory) for c in self.children(key))
        return len(self.names(key))

    def check_length(self, key: Key) -> None:
        """The OS kernel copies a path in before anything else: PATH_MAX bytes with its NUL."""
        if len(self.abs(key)) >= PATH_MAX:
            raise Refused(errno.ENAMETOOLONG)

    def parent_of(self, comps: list[bytes], root: Key) -> tuple[Key, bytes]:
        """Walk to the directory that holds the last of ``comps`` (below ``root``), as the OS
        kernel walks: each directory on the way must exist and be one; ``..`` goes back up
        (the test only writes ``NAME/..`` pairs, so never above ``root``). A symbolic link on
        the way is followed to nothing (ENOENT): the test's links all dangle."""
        cur = root
        for name in comps[:-1]:
            if name == b".":
                continue
            if name == b"..":
                cur = cur[:-1]
                continue
            node = self.nodes.get((*cur, name))
            if node is None or isinstance(node, Link):
                raise Refused(errno.ENOENT)
            if isinstance(node, File):
                raise Refused(errno.ENOTDIR)
            cur = (*cur, name)
        return cur, comps[-1]

    def lookup(self, parent: Key, name: bytes) -> Node | Magic | None:
        """What the last name finds: a node, a store query directory, or nothing (ENOENT).
        A name the daemon cannot have is refused or not found, as its lookup answers."""
        if len(name) > NAME_MAX:
            raise Refused(errno.ENAMETOOLONG)
        if self.tree(parent) == b"store" and name in STORE_MAGIC:
            return MAGIC
        return self.nodes.get((*parent, name))

    def creatable(self, parent: Key, name: bytes) -> None:
        """Refuse a name nobody may create (EINVAL): not UTF-8, the memory manager's
        temporary suffix, a reserved store name."""
        if not is_utf8(name) or name.endswith(TMP_SUFFIX):
            raise Refused(errno.EINVAL)
        if self.tree(parent) == b"store" and name in STORE_RESERVED:
            raise Refused(errno.EINVAL)

    # ---- changing it ------------------------------------------------------------------------

    def add(self, key: Key, node: Node) -> None:
        self.nodes[key] = node

    def inherit_dir_perm(self, parent: Key, perm: int) -> int:
        """A new directory in a setgid directory is setgid too (the group is inherited: the
        test runs as root, whose group every entry has anyway)."""
        parent_node = self.nodes.get(parent)
        if isinstance(parent_node, Directory) and parent_node.perm & 0o2000:
            return perm | 0o2000
        return perm

    def remove_tree(self, key: Key) -> None:
        for k in self.subtree(key):
            del self.nodes[k]

    def move(self, src: Key, dst: Key) -> None:
        """``rename(src, dst)``: whatever ``dst`` named is replaced (an empty directory, or a
        name of a file), and everything below ``src`` moves with it."""
        moving = {k: self.nodes[k] for k in self.subtree(src)}
        self.remove_tree(dst)
        for k in moving:
            del self.nodes[k]
        for k, v in moving.items():
            self.nodes[dst + k[len(src) :]] = v

    def exchange(self, a: Key, b: Key) -> None:
        sub_a = {k[len(a) :]: v for k, v in self.nodes.items() if k[: len(a)] == a}
        sub_b = {k[len(b) :]: v for k, v in self.nodes.items() if k[: len(b)] == b}
        self.remove_tree(a)
        self.remove_tree(b)
        for rest, v in sub_a.items():
            self.nodes[b + rest] = v
        for rest, v in sub_b.items():
            self.nodes[a + rest] = v


# ---- the documented errnos of each operation ------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "filesystem.md"
SECTION = "## Errors by operation"


def documented_errnos(doc: Path = DOC) -> dict[str, frozenset[int]]:
    """The table of docs/filesystem.md's section "Errors by operation": operation -> the
    errnos it may fail with. Read from the contract itself, so the test and the page can
    never disagree: an errno the page does not list for an operation fails the test."""
    text = doc.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    table: dict[str, frozenset[int]] = {}
    for line in text[start : end if end >= 0 else len(text)].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        codes = re.findall(r"\bE[A-Z0-9]+\b", cells[1])
        for op in re.findall(r"`([^`]+)`", cells[0]):
            table[op] = frozenset(getattr(errno, c) for c in codes)
    if not table:
        raise AssertionError(f"no errno table under {SECTION!r} in {doc}")
    return table
