"""Kernel errors, each carrying the POSIX errno a filesystem (or any other front end) should answer.

The kernel never knows it is mounted, but errno values are the lingua franca of every client we
serve (shell, Python, C), so each error names the one that fits. Messages are written for the
person who made the mistake: say what was wrong and what would be right.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel.results import Result


class KernelError(Exception):
    """Base of every error the kernel raises on purpose. ``errno`` is the code to report."""

    errno: int = _errno.EIO

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # the failed result a rejected submission still recorded (so ``out`` is answered)
        self.result: Result | None = None


class InvalidArgument(KernelError):
    """Malformed input: bad JSON, unknown field, wrong type, bad name, value out of range."""

    errno = _errno.EINVAL


class NotFound(KernelError):
    """No such agent, result or model."""

    errno = _errno.ENOENT


class AlreadyExists(KernelError):
    """An agent of that name exists already."""

    errno = _errno.EEXIST


class TooLarge(KernelError):
    """A write over the configured size limit."""

    errno = _errno.EFBIG


class NotEmpty(KernelError):
    """rmdir of a directory in mem/ or store/ that still has entries."""

    errno = _errno.ENOTEMPTY


class IsADirectory(KernelError):
    """A file operation on a directory of mem/ or store/."""

    errno = _errno.EISDIR


class NotADirectory(KernelError):
    """A directory operation on a file, or a path that goes through a file."""

    errno = _errno.ENOTDIR


class NameTooLong(KernelError):
    """A path component over 255 bytes, or a path over 4096."""

    errno = _errno.ENAMETOOLONG


class NoSpace(KernelError):
    """The disk under the data dir is full; nothing already written was changed."""

    errno = _errno.ENOSPC


class WouldBlock(KernelError):
    """Nothing is ready and the caller asked not to wait (O_NONBLOCK)."""

    errno = _errno.EAGAIN


class AgentRemoved(KernelError):
    """The agent was removed while the caller waited on it."""

    errno = _errno.ENOENT


class ShuttingDown(KernelError):
    """The kernel is stopping; blocked callers are woken with this so nothing hangs."""

    errno = _errno.EIO


class NotPermitted(KernelError):
    """The operation is never allowed on this kind of entry (a hard link to a directory, a
    change of the store's fixed root), whoever asks."""

    errno = _errno.EPERM


class NoAttribute(KernelError):
    """No extended attribute of that name (ENODATA, which Linux also calls ENOATTR)."""

    errno = _errno.ENODATA


class NotSupported(KernelError):
    """The entry or namespace does not support the operation (e.g. ``system.*`` xattrs)."""

    errno = _errno.ENOTSUP


class AccessDenied(KernelError):
    """The caller may not do this: a file permission of the user the call acts for, or a
    capability of the calling agent (``capability`` names it; ``None`` for a file permission)."""

    errno = _errno.EACCES

    def __init__(self, message: str, capability: str | None = None) -> None:
        super().__init__(message)
        self.capability = capability


class TooManyLinks(KernelError):
    """A path that follows more symbolic links than a process may (40, as Linux allows)."""

    errno = _errno.ELOOP
