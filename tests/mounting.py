"""Mounting a real aiosfs in a subprocess for tests, and tearing it down whatever happens.

The daemon runs in its own process (pyfuse3 allows one mount per process, and a test that
touched its own mount would deadlock). Teardown unmounts lazily and then kills the daemon by PID,
so a hung test never leaves a mount or a process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def eventually(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Wait until ``check()`` is true (state that settles asynchronously, like engine queues)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def require_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse (FUSE is not available on this machine)")
    if shutil.which("fusermount3") is None:
        pytest.skip("needs fusermount3 (Debian package fuse3)")


class Mount:
    """A live mount: paths, shell commands run inside it, and small helpers."""

    def __init__(
        self, path: Path, data_dir: Path, proc: subprocess.Popen[bytes], log: Path
    ) -> None:
        self.path = path
        self.data_dir = data_dir
        self.proc = proc
        self.log = log
        self._agents = 0

    def p(self, *parts: str) -> str:
        return str(self.path.joinpath(*parts))

    def sh(
        self, script: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script with the mount as working directory."""
        result = subprocess.run(
            ["bash", "-c", script], cwd=self.path, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"script failed ({result.returncode}): {script}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def read(self, *parts: str) -> str:
        with open(self.p(*parts)) as f:
            return f.read()

    def read_bytes(self, *parts: str) -> bytes:
        with open(self.p(*parts), "rb") as f:
            return f.read()

    def json(self, *parts: str) -> Any:
        return json.loads(self.read(*parts))

    def write(self, rel: str, data: str | bytes) -> None:
        with open(self.p(rel), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    def agent(self, max_tokens: int = 4, name: str | None = None) -> str:
        """Create a fresh agent with a small max_tokens and return its name."""
        self._agents += 1
        name = name or f"t{self._agents}-{time.monotonic_ns() % 10**6}"
        os.mkdir(self.p("agents", name))
        self.write(f"agents/{name}/config", f"max_tokens={max_tokens}\n")
        return name

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def write_config(tmp: Path, **settings: object) -> str:
    """A --config TOML file with these [kernel] settings; returns its path."""
    lines = ["[kernel]"]
    for key, value in settings.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    path = tmp / "aiosfs.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def start_mount(
    tmp: Path, model: str = "tiny-random", *extra: str, ready_timeout: float = 180
) -> Mount:
    require_fuse()
    mp, data = tmp / "mnt", tmp / "data"
    eventually(lambda: not os.path.ismount(mp), what="the previous mount to go")
    mp.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    log = tmp / "daemon.out"
    cmd = [
        sys.executable,
        "-m",
        "aiosfs",
        "mount",
        str(mp),
        "--foreground",
        "--model",
        model,
        "--data-dir",
        str(data),
        *extra,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    mount = Mount(mp, data, proc, log)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{mount.log_tail()}")
        if os.path.ismount(mp):
            try:
                models = json.loads((mp / "sys" / "models").read_text())
                if all(m["state"] in ("ready", "failed") for m in models.values()):
                    break
            except (OSError, ValueError):
                pass
        if time.monotonic() > deadline:
            stop_mount(mount)
            raise AssertionError(f"mount not ready after {ready_timeout} s:\n{mount.log_tail()}")
        time.sleep(0.1)
    return mount


@contextlib.contextmanager
def mounted(tmp: Path, model: str = "tiny-random", *extra: str, **kw: float) -> Iterator[Mount]:
    """``start_mount`` for a ``with`` block: the mount is stopped however the block ends."""
    mount = start_mount(tmp, model, *extra, **kw)
    try:
        yield mount
    finally:
        stop_mount(mount)


def stop_mount(mount: Mount) -> None:
    """Unmount and make sure the daemon is gone."""
    subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], capture_output=True, check=False)
    if mount.proc.poll() is None:
        mount.proc.send_signal(signal.SIGTERM)
        try:
            mount.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mount.proc.kill()
            mount.proc.wait(timeout=10)
