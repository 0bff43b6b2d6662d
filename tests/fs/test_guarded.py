"""No handler may let a non-FUSEError exception escape: it would end pyfuse3.main (dead mount)."""

from __future__ import annotations

import errno
import inspect

import pyfuse3
import pytest

from aiosfs.fs import AiosFS, guarded
from kernel.errors import NotFound


def test_every_handler_is_guarded() -> None:
    handlers = [
        name for name, fn in inspect.getmembers(pyfuse3.Operations, inspect.iscoroutinefunction)
    ]
    assert "read" in handlers and "lookup" in handlers
    for name in handlers:
        ours = getattr(AiosFS, name)
        if ours is getattr(pyfuse3.Operations, name):
            continue  # not implemented by us: pyfuse3's default raises FUSEError(ENOSYS)
        assert hasattr(ours, "__wrapped__"), f"AiosFS.{name} is not wrapped by @guarded"


async def test_unexpected_exceptions_become_eio() -> None:
    @guarded
    async def boom(self: object) -> None:
        raise ValueError("a bug")

    with pytest.raises(pyfuse3.FUSEError) as e:
        await boom(object())
    assert e.value.errno == errno.EIO


async def test_kernel_errors_become_their_errno() -> None:
    @guarded
    async def missing(self: object) -> None:
        raise NotFound("no such agent")

    with pytest.raises(pyfuse3.FUSEError) as e:
        await missing(object())
    assert e.value.errno == errno.ENOENT
