"""The filesystem's foundation, independent of what is mounted on it.

``inodes`` (numbers and reference counts), ``node`` (the node base classes and the narrow
environment nodes receive), ``handle`` (open-file handles), ``paths`` (the path cache of
path-addressed trees) and ``interrupts`` (blocked reads that a signal ends). The trees in
``aiosfs.trees`` build on these; nothing here imports a tree, the operations layer, or any part
of the kernel except its error types.
"""

from aiosfs.vfs.handle import POLLIN, POLLOUT, BytesHandle, Handle, notify_later
from aiosfs.vfs.inodes import InodeTable
from aiosfs.vfs.interrupts import InterruptWatcher, process_alive
from aiosfs.vfs.node import (
    Dir,
    FixedFile,
    GeneratedFile,
    Metadata,
    Node,
    StaticDir,
    Symlink,
    VfsEnv,
    acting_for,
    as_json,
    check_access,
    fuse_error,
    requester,
)
from aiosfs.vfs.paths import PathCache

__all__ = [
    "POLLIN",
    "POLLOUT",
    "BytesHandle",
    "Dir",
    "FixedFile",
    "GeneratedFile",
    "Handle",
    "InodeTable",
    "InterruptWatcher",
    "Metadata",
    "Node",
    "PathCache",
    "StaticDir",
    "Symlink",
    "VfsEnv",
    "acting_for",
    "as_json",
    "check_access",
    "fuse_error",
    "notify_later",
    "process_alive",
    "requester",
]
