"""Checks on a mount point before we mount, each failure with a one-line reason and a remedy."""

from __future__ import annotations

import errno
import os


class MountError(Exception):
    """A mount point we must refuse; the message is shown to the user as is."""


def fuse_mounts() -> dict[str, str]:
    """Mount point -> filesystem type, for FUSE mounts in /proc/self/mounts."""
    out = {}
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2].startswith("fuse"):
                    out[parts[1].replace("\\040", " ")] = parts[2]
    except OSError:
        pass
    return out


def is_dead_mount(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def check_mountpoint(path: str) -> str:
    """Return the absolute path if we may mount there; raise MountError saying why not."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(
            f"mount point {path} does not exist (create it: mkdir -p {path})"
        ) from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(
                f"{path} is a dead FUSE mount (its daemon is gone); clear it with: "
                f"fusermount3 -u {path}"
            ) from None
        raise MountError(f"cannot use {path}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} is not a directory")
    if os.path.ismount(path) or path in fuse_mounts():
        raise MountError(f"{path} is already mounted; unmount it first: aiosfs umount {path}")
    try:
        if os.listdir(path):
            raise MountError(f"mount point {path} is not empty; use an empty directory")
    except PermissionError:
        raise MountError(f"cannot read mount point {path}: permission denied") from None
    if not os.access(path, os.W_OK) and os.getuid() != 0:
        raise MountError(f"mount point {path} is not writable by you")
    del st
    return path
