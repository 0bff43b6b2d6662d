from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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


class Cli:
    """``aiosfs ARGS`` run in this process (``aiosfs.cli.main``, what the command runs), for a
    user whose home is ``home`` and whose environment has no XDG_ or AIOSFS_ variables but
    those a test sets: quicker than a process per call, and the same code."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                 home: Path) -> None:  # fmt: skip
        self.monkeypatch, self.capsys, self.home = monkeypatch, capsys, home
        for name in list(os.environ):
            if name.startswith(("XDG_", "AIOSFS_")):
                monkeypatch.delenv(name)
        monkeypatch.setenv("HOME", str(home))

    def __call__(self, *args: str, **env: str) -> tuple[int, str, str]:
        """The exit status, stdout and stderr; ``env``: variables for this call only."""
        from aiosfs.cli import main

        with self.monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            self.capsys.readouterr()
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    return Cli(monkeypatch, capsys, tmp_path)
