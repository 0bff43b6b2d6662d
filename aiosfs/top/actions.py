"""What the dashboard's keys do, as file operations on the mount: switch the policy (write
``sys/scheduler``), cancel an agent's syscalls (write ``cancel`` to ``agents/NAME/ctl``) and follow
an agent's answers (``agents/NAME/stream``).

Each action answers with a sentence for the status line, never an exception: a user who may not
do something is told so (the mount's EACCES and EPERM are the answer, not a crash), and the
dashboard goes on.
"""

from __future__ import annotations

import codecs
import errno
import os
import pwd
import select
import threading
from collections.abc import Callable

POLL_MS = 250
"""How long the stream's reader waits in ``poll`` before it looks whether it should stop."""
CHUNK = 65536


def _why(e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOENT:
        return "no such agent (removed?)"
    if e.errno == errno.EINVAL:
        return "the mount refused it as invalid"
    return os.strerror(e.errno) if e.errno else str(e)


def write_file(path: str, text: str) -> None:
    """One write and a close, as ``echo TEXT > PATH`` does (the mount acts at the close)."""
    with open(path, "w") as f:
        f.write(text)


def set_policy(mountpoint: str, policy: str) -> str:
    """Switch every model's scheduling policy; the sentence says what happened."""
    path = os.path.join(mountpoint, "sys", "scheduler")
    try:
        write_file(path, policy + "\n")
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            owner = _owner_of(path)
            return (
                f"cannot switch the policy to {policy}: permission denied "
                f"(sys/scheduler is writable by {owner} only)"
            )
        return f"cannot switch the policy to {policy}: {_why(e)}"
    return f"policy switched to {policy}"


def cancel(mountpoint: str, agent: str) -> str:
    """Cancel every queued and running syscall of ``agent``."""
    try:
        write_file(os.path.join(mountpoint, "agents", agent, "ctl"), "cancel\n")
    except OSError as e:
        return f"cannot cancel {agent}: {_why(e)}"
    return f"cancelled {agent}'s syscalls"


def _owner_of(path: str) -> str:
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return "the daemon's owner"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class StreamTail:
    """Follows ``agents/NAME/stream`` on a thread of its own, answer after answer, as
    ``while :; do cat stream; done`` would, until :meth:`stop`.

    The file is opened non-blocking and waited on with ``poll`` in short slices, so that a
    stop (the panel closed, the dashboard quitting) is seen within :data:`POLL_MS` even when
    no answer comes; a blocking read could not be interrupted short of a signal. ``emit``
    receives ``("text", chunk)`` as the answer grows, ``("end", "")`` when one is complete and
    ``("error", sentence)`` once if the stream cannot be read (then the tail stops)."""

    def __init__(self, mountpoint: str, agent: str, emit: Callable[[str, str], None]) -> None:
        self.path = os.path.join(mountpoint, "agents", agent, "stream")
        self.agent = agent
        self.emit = emit
        self._stop = threading.Event()
        # a daemon thread: a read the mount never answers must not keep the process alive
        self._thread = threading.Thread(target=self._run, name=f"stream-{agent}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as e:
                self.emit("error", f"cannot open {self.agent}'s stream: {_why(e)}")
                return
            try:
                if not self._follow(fd):
                    return
            except OSError as e:
                if not self._stop.is_set():
                    self.emit("error", f"{self.agent}'s stream failed: {_why(e)}")
                return
            finally:
                os.close(fd)
            self.emit("end", "")

    def _follow(self, fd: int) -> bool:
        """Read one answer to its end (True), or until stopped (False)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                self._stop.wait(POLL_MS / 1000 / 5)  # poll said ready too soon: do not spin
                continue
            if not data:
                tail = decoder.decode(b"", final=True)
                if tail:
                    self.emit("text", tail)
                return True
            text = decoder.decode(data)
            if text:
                self.emit("text", text)
        return False
