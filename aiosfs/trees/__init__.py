"""The trees of the mount, one module each: ``agents``, ``sys``, ``approvals``
(``sys/approvals/``), ``mem``, ``store``, ``tools`` and ``search`` (store queries). Each builds
its nodes and handles on ``aiosfs.vfs`` and talks to the kernel facade it is given. No tree
imports another (``store`` reaches ``search``, whose query directories hang below it), and only
``aiosfs.fs`` imports them.

This package module holds the helpers more than one tree needs.
"""

from __future__ import annotations

from collections.abc import Callable

import pyfuse3

from kernel.syscalls import is_incomplete


def creator(mode: int, ctx: pyfuse3.RequestContext) -> tuple[int, tuple[int, int]]:
    """The permission bits (less the caller's umask) and the owner (uid, gid) that a new file or
    directory gets from the process that makes it, in every tree that keeps metadata."""
    return mode & 0o7777 & ~ctx.umask, (ctx.uid, ctx.gid)


def when_complete(check: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """Validate a control file's input only once it is complete (a JSON object still being
    written in several chunks is not yet an error)."""

    def checked(data: bytes) -> object:
        return None if is_incomplete(data) else check(data)

    return checked
