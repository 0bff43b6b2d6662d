"""Acting as a key's user for the file operations of one thread.

The mount's permission checks (``default_permissions``) and the owner of what ``mkdir`` makes
come from the credentials of the thread that makes the system call: its filesystem uid and gid
(``setfsuid``/``setfsgid``) and its supplementary groups. Linux keeps all three per thread, so a
serve-api running as root switches them in the worker thread that carries one request's file
operations, and puts them back before the thread does anything else. glibc's ``setgroups``
would change every thread of the process (it broadcasts set*id calls), so the groups are set
with the raw system call. ``setfsuid`` reports no error, so each change is read back.

Not root, serve-api acts as itself: ``keys`` refuses keys of other uids at start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import sys
from collections.abc import Iterator

from aiosfs.api.keys import Identity

_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "arm64": 159}
_UNCHANGED = 0xFFFFFFFF  # (uid_t)-1: set nothing, answer the current value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setfsuid.argtypes = [ctypes.c_uint32]
_libc.setfsgid.argtypes = [ctypes.c_uint32]
_libc.setfsuid.restype = ctypes.c_int
_libc.setfsgid.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


def switches() -> bool:
    """Does this process act for other users (it runs as root)?"""
    return os.geteuid() == 0


def _setfsuid(uid: int) -> None:
    _libc.setfsuid(uid)
    now = _libc.setfsuid(_UNCHANGED)
    if now != uid:
        raise PermissionError(errno.EPERM, f"setfsuid({uid}) did not take (fsuid is {now})")


def _setfsgid(gid: int) -> None:
    _libc.setfsgid(gid)
    now = _libc.setfsgid(_UNCHANGED)
    if now != gid:
        raise PermissionError(errno.EPERM, f"setfsgid({gid}) did not take (fsgid is {now})")


def _setgroups(groups: tuple[int, ...]) -> None:
    number = _SYS_SETGROUPS.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"no setgroups system call number for {platform.machine()}")
    array = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    if _libc.syscall(ctypes.c_long(number), ctypes.c_size_t(len(groups)), array) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setgroups: {os.strerror(code)}")
    if sorted(os.getgroups()) != sorted(set(groups)):  # getgroups reads this thread's own
        raise PermissionError(errno.EPERM, f"setgroups({list(groups)}) did not take")


@contextlib.contextmanager
def acting_as(ident: Identity) -> Iterator[None]:
    """Run the block's file operations, in this thread, with ``ident``'s uid, gid and groups
    (a no-op unless this process runs as root, where they are its own anyway)."""
    if not switches():
        yield
        return
    saved = tuple(os.getgroups())
    try:
        _setgroups(ident.groups)
        _setfsgid(ident.gid)
        _setfsuid(ident.uid)
    except BaseException:
        _restore(saved)
        raise
    try:
        yield
    finally:
        _restore(saved)


def _restore(groups: tuple[int, ...]) -> None:
    """Become root again in this thread; a thread that cannot must not serve anyone else."""
    try:
        _setfsuid(os.geteuid())
        _setfsgid(os.getegid())
        _setgroups(groups)
    except OSError as e:  # cannot happen to root; if it does, stop rather than serve wrongly
        print(f"aiosfs serve-api: cannot restore a thread's credentials: {e}", file=sys.stderr)
        os._exit(70)
