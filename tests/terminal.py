"""A real terminal for tests of full-screen programs: a detached tmux session of a fixed size.

Each :class:`Terminal` runs its own tmux server (``tmux -L NAME``, a private socket), so tests
never see or disturb anyone else's sessions, and ``close`` kills exactly that server. The pane
runs an interactive bash with a known prompt; a test types commands into it with :meth:`keys`,
reads the screen as text with :meth:`screen` (``capture-pane -p``) and polls it with
:meth:`wait_for` until a deadline, never with fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

import pytest

PROMPT = "term> "
"""The pane's shell prompt, so a test can tell the shell from the program it ran."""


class Terminal:
    def __init__(
        self, width: int, height: int, cwd: str, env: dict[str, str] | None = None
    ) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("needs tmux (Debian package tmux)")
        self.socket = f"aiosfs-test-{os.getpid()}-{time.monotonic_ns()}"
        settings = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **(env or {})}
        args = [f"-e{k}={v}" for k, v in settings.items()]
        # an interactive bash sets its own PS1 whatever the environment says: an rcfile sets it
        fd, self.rcfile = tempfile.mkstemp(prefix="aiosfs-term-", suffix=".bashrc")
        with os.fdopen(fd, "w") as f:
            f.write(f"PS1={shlex.quote(PROMPT)}\n")
        os.chmod(self.rcfile, 0o644)  # a program run as another user may start a shell too
        self.socket_path: str | None = None
        try:
            # -u: the detached server has no client to ask whether the terminal speaks UTF-8
            self.tmux(
                "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                "-c", cwd, *args, f"bash --noprofile --rcfile {shlex.quote(self.rcfile)}",
            )  # fmt: skip
            self.socket_path = self.show("#{socket_path}")
            self.wait_for(lambda s: PROMPT.rstrip() in s, what="the shell's prompt")
        except BaseException:
            self.close()
            raise

    def tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-u", "-f", "/dev/null", "-L", self.socket, *args],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def keys(self, *keys: str) -> None:
        """Press keys (tmux names: ``Enter``, ``Down``, ``Escape``; anything else is typed)."""
        self.tmux("send-keys", "-t", "t", *keys)

    def type_line(self, line: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", line)
        self.keys("Enter")

    def screen(self, joined: bool = False) -> str:
        """The pane's text, a line per row; ``joined``: lines the terminal wrapped are one."""
        return self.tmux("capture-pane", "-p", *(["-J"] if joined else []), "-t", "t")

    def show(self, fmt: str) -> str:
        """A pane variable (``#{alternate_on}``, ``#{pane_current_command}``...)."""
        return self.tmux("display-message", "-p", "-t", "t", fmt).strip()

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))

    def wait_for(
        self, check: Callable[[str], object], timeout: float = 20, what: str = "the screen"
    ) -> str:
        """Poll the screen until ``check(screen)`` is true; the screen it was true of."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not show within {timeout} s; screen:\n{screen}")
            time.sleep(0.1)

    def wait_text(self, pattern: str, timeout: float = 20) -> str:
        """Wait until ``pattern`` (a regex) matches somewhere on the screen."""
        return self.wait_for(lambda s: re.search(pattern, s), timeout, repr(pattern))

    def close(self) -> None:
        """Stop this terminal's tmux server, and remove its socket (tmux leaves it behind)."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)
        for path in (self.socket_path, self.rcfile):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
