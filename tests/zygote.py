"""A daemon launcher for the tests that skips Python's start: a process that has imported what
an ``aiosfs mount`` imports (torch, transformers' Llama, the kernel, pyfuse3) forks a daemon
for each mount, so a test's mount comes up in about a second instead of the six it takes a
fresh interpreter to import those libraries (most of the suite's time went there).

The child is a real daemon: ``aiosfs.cli.main`` with the mount's arguments, in its own session,
its output in the mount's log, its working directory and environment the test's, a FUSE mount
of its own. Only the interpreter's start and imports are shared. The server does nothing before
a fork but import: no torch operation runs, so no thread pool exists to be torn by the fork
(the idle native threads that importing torch leaves are not copied, and the child makes its
own pool at its first operation); before each fork it checks that no thread was added since.
What a fresh process would read at its start does not reach a forked daemon: ``LD_PRELOAD``,
the ``PYTHON*`` variables (the hash seed is the server's), anything a library reads once when
imported; a test that needs those starts the command itself.
The tests that start ``aiosfs`` as a user would (``tests/fs/test_lifecycle.py``,
``test_service.py``, ``test_make_run.py``) still run the command itself, and
``AIOSFS_TEST_ZYGOTE=0`` makes every mount a fresh process again.

Protocol, one JSON line each way: the client sends ``{"argv", "cwd", "env", "log"}`` and reads
``{"pid": N}``; the server reports each child's end as ``{"exit": PID, "code": C}`` (C negative
for a signal, as ``subprocess`` has it) whenever it happens.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

from aiosfs.harness import Spawn

ROOT = Path(__file__).resolve().parent.parent
# the environment the session started with: the server imports under it, whatever a test that
# happens to mount first has set (each daemon then gets its own test's environment)
_SESSION_ENV = dict(os.environ)


# ---- the server ---------------------------------------------------------------------------------


def _preload() -> None:
    """What a tiny-random mount imports, imported once (and nothing run)."""
    import pyfuse3  # noqa: F401
    import torch  # noqa: F401
    import trio  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: F401  # noqa: F401

    import aiosfs.cli
    import aiosfs.daemon  # noqa: F401
    import kernel.kernel
    import kernel.llm.core
    import kernel.llm.packed  # noqa: F401


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the daemon the request describes; never returns."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        random.seed()  # a fresh process's own random state, not the server's copy
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [sys.executable, *request["argv"]]
        from aiosfs.cli import main

        code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Read requests on stdin until it closes; fork one daemon per request."""
    _preload()
    threads = _threads()
    out = sys.stdout
    print(json.dumps({"ready": os.getpid()}), file=out, flush=True)
    children: set[int] = set()
    buffered = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            print(json.dumps({"exit": pid, "code": code}), file=out, flush=True)
        if not readable:
            continue
        data = os.read(0, 65536)
        if not data:
            return  # the tests are over; the daemons are theirs to stop
        buffered += data
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            request = json.loads(line)
            if _threads() > threads:  # a running thread would be cut in half by the fork
                error = f"{_threads()} threads, not the {threads} after the imports"
                print(json.dumps({"error": error}), file=out, flush=True)
                continue
            pid = os.fork()
            if pid == 0:
                _child(request)
            children.add(pid)
            print(json.dumps({"pid": pid}), file=out, flush=True)


# ---- the client ---------------------------------------------------------------------------------


class Daemon:
    """A forked daemon as ``subprocess.Popen`` shows a child: pid, poll, wait, signals."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.exits.get(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.zygote.changed:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"daemon {self.pid}", timeout or 0)
                self.zygote.changed.wait(left)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Zygote:
    """The server process, started once, and the spawning of daemons through it."""

    def __init__(self) -> None:
        env = {**_SESSION_ENV, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout
        first = json.loads(self._out.readline() or b"{}")
        if "ready" not in first:
            raise RuntimeError("the test zygote did not start")
        self.exits: dict[int, int] = {}
        self.changed = threading.Condition()
        self._replies: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # one request at a time
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._out:
            message = json.loads(line)
            with self.changed:
                if "exit" in message:
                    self.exits[message["exit"]] = message["code"]
                else:
                    self._replies.append(message)
                self.changed.notify_all()
        with self.changed:
            self._replies.append({"error": "the test zygote exited"})
            self.changed.notify_all()

    def spawn(self, cmd: list[str], log: IO[bytes], cwd: Path | None) -> Daemon:
        """A daemon for ``cmd`` (``python -m aiosfs ARGS``), its output appended to ``log``."""
        assert cmd[1:3] == ["-m", "aiosfs"], cmd
        request = {
            "argv": cmd[3:],
            "cwd": str(cwd or os.getcwd()),
            "env": dict(os.environ),
            "log": log.name,
        }
        log.flush()
        with self._lock:
            self._in.write(json.dumps(request).encode() + b"\n")
            self._in.flush()
            with self.changed:
                while not self._replies:
                    self.changed.wait()
                reply = self._replies.pop(0)
        if "pid" not in reply:
            raise RuntimeError(f"the test zygote could not fork: {reply.get('error')}")
        return Daemon(self, reply["pid"])

    def close(self) -> None:
        self._in.close()
        self.proc.wait(timeout=10)


_zygote: Zygote | None = None


def spawner() -> Spawn | None:
    """The zygote's ``spawn``, the zygote started on first use; None where it is off."""
    global _zygote
    if os.environ.get("AIOSFS_TEST_ZYGOTE", "1") == "0":
        return None
    if _zygote is None:
        _zygote = Zygote()
    return _zygote.spawn


def close() -> None:
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None


if __name__ == "__main__":
    serve()
