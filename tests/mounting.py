"""Mounting a real aiosfs in a subprocess for tests: the pytest layer over ``aiosfs.harness``.

The harness does the work (start, wait for the models, stop whatever happens, read the logs
back); this layer adds what only tests need: a skip where FUSE is missing, the daemon run in the
source tree, and unexpected errors in the daemon's log reported as test failures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiosfs import harness
from aiosfs.harness import DaemonLogError, Mount, eventually, stop_mount, write_config
from tests import zygote

__all__ = [
    "ROOT",
    "Mount",
    "check_daemon_log",
    "eventually",
    "mounted",
    "require_fuse",
    "start_mount",
    "stop_mount",
    "write_config",
]

ROOT = Path(__file__).resolve().parent.parent


def require_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse (FUSE is not available on this machine)")
    if shutil.which("fusermount3") is None:
        pytest.skip("needs fusermount3 (Debian package fuse3)")


def _spawn() -> harness.Spawn:
    """The tests' daemon launcher (``tests/zygote.py``), unless ``AIOSFS_TEST_ZYGOTE=0``."""
    return zygote.spawner() or harness.popen


def start_mount(
    tmp: Path, model: str = "tiny-random", *extra: str, ready_timeout: float = 180
) -> Mount:
    require_fuse()
    return harness.start_mount(
        tmp, model, *extra, ready_timeout=ready_timeout, cwd=ROOT, spawn=_spawn()
    )


@contextlib.contextmanager
def mounted(tmp: Path, model: str = "tiny-random", *extra: str, **kw: Any) -> Iterator[Mount]:
    """``start_mount`` for a ``with`` block: the mount is stopped however the block ends, and
    the test fails if the daemon logged an unexpected error (see ``Mount.expect_log``)."""
    require_fuse()
    problem = None
    try:
        with harness.mounted(tmp, model, *extra, cwd=ROOT, spawn=_spawn(), **kw) as m:
            yield m
    except DaemonLogError as e:
        problem = str(e)
    if problem:  # failed outside the except block, so the report shows the records only once
        pytest.fail(problem, pytrace=False)


def check_daemon_log(mount: Mount) -> None:
    """Fail the running test if ``mount``'s daemon logged an unexpected error since the last
    check; then forget the errors the test declared expected, which were the test's own."""
    try:
        problems = mount.log_problems()
    finally:
        mount.logs.forget_expected()
    if problems:
        pytest.fail(harness.describe_log_problems(mount, problems), pytrace=False)
