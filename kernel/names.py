"""Validation of every name a user chooses: agent names, and the paths of memory and the store.

One module owns these rules so that the kernel's managers and the filesystem refuse the same
names with the same message and errno, whichever way a name arrives (a syscall, ``mkdir`` on the
mount, a rename). Only checks live here; what a valid path means (a file on disk, a row in the
store's database) belongs to the manager that stores it. Imports nothing heavy (no torch, no
numpy), so the filesystem may check names on its trio thread for free.
"""

from __future__ import annotations

import re

from kernel.errors import InvalidArgument, NameTooLong

AGENT_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

NAME_MAX = 255  # bytes in one path component, as in POSIX filesystems

# The memory manager saves a block as ``.NAME`` + TMP_SUFFIX and renames it into place; a user
# name with this suffix could collide with (or be overwritten by) such a temporary file.
TMP_SUFFIX = ".aiosfs-tmp"

# Names the store tree answers with generated views (search, keyword search, kept versions);
# a file of one of these names could never be reached, so none may be created.
STORE_RESERVED = (".search", ".grep", ".versions")


def validate_agent_name(name: str) -> str:
    """Return ``name`` if it is a legal agent name, else raise InvalidArgument saying why.

    Names are 1-64 characters from ``[A-Za-z0-9._-]``, and never ``.`` or ``..`` (which would
    alias directories). Keeping names this plain means they are safe in paths, JSON and shells.
    """
    if name in (".", ".."):
        raise InvalidArgument(f"agent name {name!r} is reserved")
    if not AGENT_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid agent name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -"
        )
    return name


def check_name(name: str) -> str:
    """Return ``name`` if a user may create a file or directory of that name (one component of a
    memory or store path), else raise InvalidArgument (or NameTooLong past NAME_MAX bytes). A
    name is UTF-8 text: a string with lone surrogates (``os.fsdecode`` of bytes that are not
    UTF-8) is refused, since the store keeps names as text."""
    if name in ("", ".", "..") or name.endswith(TMP_SUFFIX):
        raise InvalidArgument(f"invalid name {name!r}")
    if "/" in name or "\0" in name:
        raise InvalidArgument(f"a name may not contain '/' or NUL: {name!r}")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8, smuggled in
        raise InvalidArgument(f"a name must be UTF-8 text: {name!r}") from None
    if size > NAME_MAX:
        raise NameTooLong(f"name longer than {NAME_MAX} bytes")
    return name


def split_path(path: str) -> list[str]:
    """Components of a relative memory path, each checked with ``check_name``; '' is the root.
    Empty components (``a//b``, a trailing ``/``) are skipped."""
    return [check_name(p) for p in path.split("/") if p] if path else []


def split_store_path(path: str) -> list[str]:
    """Components of a store path, each checked; leading, trailing and doubled slashes are
    ignored and [] is the root.

    Stricter than ``split_path``: the reserved names of STORE_RESERVED are refused. The whole
    path is not bounded: PATH_MAX (4096 bytes) limits the path one system call names (the OS
    kernel checks it, relative to the caller's directory), not the depth of a tree, and the
    store, like tmpfs, keeps trees of any depth. The checks run in this order, so that each bad
    path gets the message that names its first problem.
    """
    if "\0" in path:
        raise InvalidArgument("a path may not contain NUL")
    parts = [p for p in path.strip("/").split("/") if p]
    for p in parts:
        if p in (".", ".."):
            raise InvalidArgument(f"path {path!r} may not contain '.' or '..'")
        check_name(p)
        if p in STORE_RESERVED:
            raise InvalidArgument(f"{p!r} is reserved for search and versions")
    return parts
