"""A real aiosfs daemon in a subprocess, for callers that drive it with plain file operations.

The test suite and ``aiosfs bench`` both need the same thing: a daemon started the way a user
starts it (``python -m aiosfs mount … --foreground``), a wait until it is mounted and its models
are loaded, and a teardown that leaves no mount and no process behind whatever happened. The
daemon runs in its own process because pyfuse3 allows one mount per process, and a caller that
touched a mount served by its own process would deadlock.

It also reads the daemon's logs back: :meth:`Mount.log_problems` returns the records logged at
ERROR or above and any traceback, so a test can fail when the filesystem hid an unexpected
exception behind an EIO (``guarded`` logs it, then answers EIO) although every assertion held.

Nothing here imports torch or pytest: the benchmark drives a daemon without loading a model
itself, and the tests add their pytest layer in ``tests/mounting.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from aiosfs.mountpoint import fuse_mounts

READY_TIMEOUT = 180.0
"""Seconds to wait for the mount and its models (tiny-random loads in seconds)."""
STOP_TIMEOUT = 10.0
"""Seconds the daemon gets to exit after SIGTERM before it is killed."""
LOG_NAME = "daemon.out"
"""The daemon's stdout and stderr, in the directory given to :func:`start_mount`."""
DATA_LOG_NAME = "aiosfs.log"
"""The log the daemon itself keeps in its data directory (appended to across mounts)."""


class DaemonProcess(Protocol):
    """The daemon's process as :class:`Mount` uses it (what ``subprocess.Popen`` offers)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


Spawn = Callable[[list[str], IO[bytes], "Path | None"], DaemonProcess]
"""Starts ``cmd`` (``python -m aiosfs mount ...``) with its output in the log file, in its own
session, in the directory given (None: the caller's)."""


def popen(cmd: list[str], log: IO[bytes], cwd: Path | None) -> DaemonProcess:
    """The default :data:`Spawn`: a fresh process."""
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
    )


class DaemonError(RuntimeError):
    """The daemon did not come up: it exited, never mounted, or a model failed to load."""


class DaemonLogError(AssertionError):
    """The daemon logged an error nobody expected; the message holds the offending records.

    An ``AssertionError`` because it is a finding about the code under test, not a failure to
    run it: the mount worked, but something inside it went wrong."""


def eventually(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Wait until ``check()`` is true (state that settles asynchronously, like engine queues)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def is_mounted(path: Path) -> bool:
    """Is anything mounted at ``path``, a dead FUSE mount included? (``os.path.ismount`` says
    no to a dead one, whose ``stat`` fails: a daemon killed with -9 leaves one until
    ``auto_unmount`` clears it, and a new mount there would fail meanwhile.)"""
    return os.path.ismount(path) or os.path.realpath(path) in fuse_mounts()


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


# ---- reading the daemon's logs back -----------------------------------------------------------

# The daemon's log format (aiosfs.daemon.setup_logging): "%(asctime)s %(levelname)s %(name)s: …".
# Lines that do not start a record continue the one before (a traceback, a multi-line message).
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) ")
_BAD_LEVELS = frozenset({"ERROR", "CRITICAL"})
# Printed by Python itself, outside logging: an uncaught exception in a thread or at exit, an
# exception in __del__ or a callback, a crash.
_ALARMS = ("Traceback (most recent call last):", "Exception ignored in", "Fatal Python error")


@dataclass
class _LogCursor:
    """How far one log file has been read, and what became of the record read last.

    A check may run while the daemon is half-way through writing a record (a traceback is
    written line by line), so the lines at the start of the next read may continue a record
    already judged: they are skipped if it was reported or expected, judged if it was clean."""

    path: Path
    offset: int = 0
    last_settled: bool = False


class LogWatch:
    """Unexpected errors in a daemon's log files, read incrementally.

    Each call to :meth:`problems` returns what was written since the previous call, so that a
    mount shared by many tests can blame the test during which an error was logged."""

    def __init__(self, *paths: Path) -> None:
        # A data directory may be reused by a second mount: only what this daemon writes counts.
        self._cursors = [_LogCursor(p, p.stat().st_size if p.exists() else 0) for p in paths]
        self._expected: list[re.Pattern[str]] = []

    def expect(self, pattern: str) -> None:
        """Records matching ``pattern`` (``re.search`` over the whole record, traceback
        included) are not problems."""
        self._expected.append(re.compile(pattern, re.MULTILINE))

    def forget_expected(self) -> None:
        """Drop the patterns given to :meth:`expect` (a shared mount, at the end of a test)."""
        self._expected.clear()

    def problems(self, final: bool = False) -> list[str]:
        """The unexpected error records written since the last call, oldest first.

        ``final`` reads a last line without its newline too (the daemon has exited); otherwise
        an incomplete line is left for the next call. The same record found in two files (the
        daemon logs to both) is returned once."""
        found: dict[str, None] = {}
        for cursor in self._cursors:
            for record in self._read(cursor, final):
                found.setdefault(record)
        return list(found)

    def _read(self, cursor: _LogCursor, final: bool) -> list[str]:
        try:
            with open(cursor.path, "rb") as f:
                f.seek(cursor.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        if not final:
            data = data[: data.rfind(b"\n") + 1]
        cursor.offset += len(data)
        bad = []
        for continued, record in _records(data.decode(errors="replace")):
            if continued and cursor.last_settled:
                continue
            # a record (or the rest of one already found clean) is settled once it is either
            # reported or expected; its continuation in the next read is then not looked at
            alarming = any(a in record for a in _ALARMS)
            if not continued:
                m = _RECORD.match(record)
                alarming = alarming or (m is not None and m["level"] in _BAD_LEVELS)
            expected = any(p.search(record) for p in self._expected)
            if alarming and not expected:
                bad.append(record)
            cursor.last_settled = alarming or expected
        return bad


def _records(text: str) -> Iterator[tuple[bool, str]]:
    """Split log text into records: ``(continued, text)``, where ``continued`` marks lines that
    came before the first record header (the rest of a record from an earlier read)."""
    lines: list[str] = []
    continued = True
    for line in text.splitlines():
        if _RECORD.match(line):
            if lines:
                yield continued, "\n".join(lines)
            lines, continued = [line], False
        else:
            lines.append(line)
    if lines:
        yield continued, "\n".join(lines)


# ---- the mount ----------------------------------------------------------------------------------


class Mount:
    """A live mount: paths, shell commands run inside it, small helpers, and its logs."""

    def __init__(
        self,
        path: Path,
        data_dir: Path,
        proc: DaemonProcess,
        log: Path,
        logs: LogWatch | None = None,
    ) -> None:
        self.path = path
        self.data_dir = data_dir
        self.proc = proc
        self.log = log
        self.logs = logs or LogWatch(log, data_dir / DATA_LOG_NAME)
        self._agents = 0

    def p(self, *parts: str) -> str:
        """The path of ``parts`` inside the mount (``"agents/a/out"`` works as one part)."""
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
        return json.loads(self.read_bytes(*parts))

    def write(self, rel: str, data: str | bytes) -> None:
        """Write ``data`` in one write and close: a syscall, a config, a whole file."""
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

    def expect_log(self, pattern: str) -> None:
        """Declare that the daemon may log an error record matching ``pattern``: for a test that
        provokes one on purpose. The regex is searched in the whole record, but should match its
        first line (the message): a check may read a record before its traceback is written."""
        self.logs.expect(pattern)

    def log_problems(self) -> list[str]:
        """Unexpected error records logged since the last call (see :class:`LogWatch`)."""
        return self.logs.problems(final=self.proc.poll() is not None)

    def check_log(self) -> None:
        """Raise :class:`DaemonLogError` if the daemon logged an unexpected error since the last
        check."""
        problems = self.log_problems()
        if problems:
            raise DaemonLogError(describe_log_problems(self, problems))


def describe_log_problems(mount: Mount, problems: list[str]) -> str:
    """A failure message that shows the offending records and says how to allow one."""
    shown = "\n\n".join(problems)
    return (
        f"the aiosfs daemon of {mount.path} logged {len(problems)} unexpected error "
        f"record(s) (full log: {mount.log}):\n\n{shown}\n\n"
        "If the test provokes this error on purpose, declare it with mount.expect_log(REGEX)."
    )


def start_mount(
    tmp: Path,
    model: str = "tiny-random",
    *extra: str,
    ready_timeout: float = READY_TIMEOUT,
    cwd: Path | None = None,
    need_ready: bool = False,
    spawn: Spawn = popen,
) -> Mount:
    """Start a daemon mounted at ``tmp/mnt`` with its data in ``tmp/data`` and its output in
    ``tmp/daemon.out``; return once the mount is up and every model has finished loading.

    A model that failed to load counts as finished (tests of that failure need the mount)
    unless ``need_ready``. ``cwd`` is where the daemon runs (the tests run it in the source
    tree, so that ``python -m aiosfs`` finds the code under test); ``spawn`` starts the
    process (the tests' own launcher forks it from a process that has the imports done)."""
    mp, data = tmp / "mnt", tmp / "data"
    eventually(lambda: not is_mounted(mp), what="the previous mount to go")
    mp.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    log = tmp / LOG_NAME
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
        # before the daemon starts: the watch skips what an earlier mount left in the data log
        logs = LogWatch(log, data / DATA_LOG_NAME)
        proc = spawn(cmd, out, cwd)
    mount = Mount(mp, data, proc, log, logs)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise DaemonError(f"daemon exited with {proc.returncode}:\n{mount.log_tail()}")
        if os.path.ismount(mp):
            try:
                # the models' own files: sys/status would also survey mem/ (its atimes)
                names = os.listdir(mp / "sys" / "models")
                models = {n: mount.json("sys", "models", n) for n in names}
                if all(m["state"] in ("ready", "failed") for m in models.values()):
                    break
            except (OSError, ValueError):
                pass
        if time.monotonic() > deadline:
            stop_mount(mount, check_log=False)
            raise DaemonError(f"mount not ready after {ready_timeout} s:\n{mount.log_tail()}")
        time.sleep(0.1)
    if need_ready and any(m["state"] == "failed" for m in models.values()):
        stop_mount(mount, check_log=False)
        raise DaemonError(f"model failed to load: {models}\n{mount.log_tail()}")
    return mount


def stop_mount(mount: Mount, timeout: float = STOP_TIMEOUT, check_log: bool = True) -> None:
    """Unmount and make sure the daemon is gone; then, unless ``check_log`` is false, raise
    :class:`DaemonLogError` if it logged an unexpected error since the last check.

    The lazy unmount comes first so that a daemon stuck in a request cannot keep the mount
    busy; the daemon is then stopped by its PID (never by name: other daemons may be running)."""
    subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], capture_output=True, check=False)
    if mount.proc.poll() is None:
        mount.proc.send_signal(signal.SIGTERM)
        try:
            mount.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            mount.proc.kill()
            mount.proc.wait(timeout=timeout)
    if check_log:
        mount.check_log()


@contextlib.contextmanager
def mounted(
    tmp: Path,
    model: str = "tiny-random",
    *extra: str,
    stop_timeout: float = STOP_TIMEOUT,
    check_log: bool = True,
    **kw: Any,
) -> Iterator[Mount]:
    """:func:`start_mount` for a ``with`` block: the mount is stopped however the block ends.

    When the block succeeded, unexpected error records in the log fail it
    (:class:`DaemonLogError`); when it raised, they are added to its exception as a note
    instead, so that the first failure stays the one reported."""
    mount = start_mount(tmp, model, *extra, **kw)
    try:
        yield mount
    except BaseException as e:
        stop_mount(mount, stop_timeout, check_log=False)
        if check_log:
            problems = mount.log_problems()
            if problems:
                e.add_note(describe_log_problems(mount, problems))
        raise
    stop_mount(mount, stop_timeout, check_log=check_log)
