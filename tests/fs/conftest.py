from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mounting import Mount, mounted


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One daemon on the tiny random model, shared by the tests of a module."""
    with mounted(tmp_path_factory.mktemp("aiosfs")) as m:
        yield m


@pytest.fixture
def fresh_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """A daemon of the test's own, for tests that stop or break it."""
    with mounted(tmp_path_factory.mktemp("aiosfs")) as m:
        yield m
