"""A disk that really fills up, for the full-disk faults: a small tmpfs of its own mounted on a
folder (root only), and a way to take every free byte of it.

A real filesystem, not a mocked ``write``: SQLite, the audit log and the daemon's own log file
meet ENOSPC from the OS kernel exactly where they would on a full disk."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path]:
    """``path`` (made if missing) as a tmpfs of ``size``, unmounted afterwards; skips the test
    where it cannot be mounted (not root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to mount a small tmpfs that can fill up")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "aiosfs-small", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Take every free byte of the filesystem ``path`` is on, into the file ``path`` (delete it
    to give them back)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 1 << 20
        while size:
            try:
                os.write(fd, bytes(size))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    assert os.statvfs(path).f_bavail == 0
