#!/usr/bin/env python3
"""Talk to a mounted aiosfs with nothing but ``open()`` and ``os``: no aiosfs imports.

usage: python_client.py [--max-tokens N] MOUNTPOINT [PROMPT]

The clients' common task (the Node.js, Go, C and bash clients do the same steps):

1. ``mkdir agents/py-PID`` creates an agent; its ``config`` takes ``{"max_tokens": N}``;
2. the transaction file: ``agents/NAME/syscall`` opened read-write. Write the prompt, then read
   the same file object: the read submits the syscall and returns the answer to exactly that
   syscall, whatever else the agent has in flight;
3. ``agents/NAME/stream`` read in a loop while a JSON syscall runs: its tokens as they are
   generated, then EOF; ``out`` then hands out the same answer;
4. a note written into ``store/NAME/``, indexed (``sys/store`` says ``"pending_index": 0``),
   then found by meaning: ``ls store/NAME/.search/QUERY/``;
5. ``rmdir agents/NAME`` removes the agent (and the note goes too), even when something fails.

Exit status 0; 1 with ``STEP PATH: ERRNO (message)`` when a file operation fails (EINVAL: the
kernel rejected a config or a syscall, and its reason from ``status`` follows); 2 on bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

PROG = "python_client"
NOTE = (
    "Agents talk to the kernel through files: write a request to syscall, "
    "read the answer from out.\n"
)
QUERY = "how do agents talk to the kernel"
INDEX_TIMEOUT_S = 60.0


class StepError(Exception):
    """A failed step: what the client was doing, on which path, and the errno's name."""

    def __init__(self, step: str, path: str, code: int, detail: str | None = None) -> None:
        self.code = code
        name = errno.errorcode.get(code, f"errno {code}")
        super().__init__(f"{step} {path}: {name} ({detail or os.strerror(code)})")


def step(what: str, path: str, fn: Callable[[], T]) -> T:
    """Run one file operation; an OSError becomes a StepError naming the step and the path."""
    try:
        return fn()
    except OSError as e:
        raise StepError(what, path, e.errno or errno.EIO) from None


def write_file(path: str, data: bytes, create: bool = False) -> None:
    """Write a whole file and close it. The kernel acts on a config or syscall at the close (or
    at the write, once the bytes look complete) and reports a rejection from either."""
    flags = os.O_WRONLY | os.O_TRUNC | (os.O_CREAT if create else 0)
    fd = step("open", path, lambda: os.open(path, flags, 0o644))
    with closing(fd, path):
        step("write", path, lambda: os.write(fd, data))


@contextlib.contextmanager
def closing(fd: int, path: str) -> Iterator[None]:
    """Close ``fd`` after the block. Its error counts (the kernel reports a rejected syscall at
    close too) unless the block already failed: then that first error is the one reported."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    step("close", path, lambda: os.close(fd))


def read_file(path: str) -> bytes:
    """Read a whole file. On ``out`` the read blocks until the answer is complete."""
    with step("open", path, lambda: open(path, "rb")) as f:
        return step("read", path, f.read)


def read_all(fd: int, on_chunk: Callable[[bytes], None] = lambda chunk: None) -> bytes:
    """Read ``fd`` until EOF, handing each chunk to ``on_chunk`` as it arrives."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
        on_chunk(chunk)
    return b"".join(chunks)


def transaction(agent_dir: str, prompt: str) -> bytes:
    """2. One syscall on one descriptor: write the prompt, read back its answer.

    O_RDWR without O_TRUNC or O_CREAT: the descriptor that asks is the one that hears. Plain
    descriptors, so that nothing is buffered between the write and the read: the read is what
    submits the syscall. It blocks until the answer is complete, which comes back whole, then EOF.
    """
    path = os.path.join(agent_dir, "syscall")
    fd = step("open", path, lambda: os.open(path, os.O_RDWR))
    with closing(fd, path):
        # A trailing newline marks the text complete, so a bad syscall fails this write (EINVAL).
        step("write", path, lambda: os.write(fd, prompt.encode() + b"\n"))
        return step("read", path, lambda: read_all(fd))


def streamed(agent_dir: str, prompt: str, max_tokens: int) -> tuple[int, int]:
    """3. A JSON syscall, its tokens read live from ``stream``; returns (reads, bytes).

    A read of stream attaches to the agent's oldest unfinished answer, or waits for the next
    syscall when none is; so the read starts (in a thread) before the syscall is submitted,
    never after (an answer that finished first would be missed, and the read would wait for
    the next one). Should the submission fail, main removes the agent and the read ends with
    ENOENT.
    """
    stream_path = os.path.join(agent_dir, "stream")
    fd = step("open", stream_path, lambda: os.open(stream_path, os.O_RDONLY))
    reads = 0
    live: dict[str, bytes | StepError] = {}

    def show(chunk: bytes) -> None:
        nonlocal reads
        reads += 1
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    def reader() -> None:
        try:
            live["text"] = step("read", stream_path, lambda: read_all(fd, show))
        except StepError as e:
            live["text"] = e
        finally:
            os.close(fd)

    sys.stdout.flush()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    call = {"call": "llm", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    # write-and-close submits it
    write_file(os.path.join(agent_dir, "syscall"), json.dumps(call).encode() + b"\n")
    thread.join()
    text = live["text"]
    if isinstance(text, StepError):
        raise text
    # out hands out undelivered answers oldest first; the transaction's answer was delivered on
    # its own descriptor, so this is the streamed one, whole.
    out_path = os.path.join(agent_dir, "out")
    if read_file(out_path) != text:
        raise StepError("compare", out_path, errno.EIO, "out differs from what stream showed")
    return reads, len(text)


def search(mount: str, name: str) -> None:
    """4. Write a note into store/, wait until it is indexed, find it by meaning."""
    directory = os.path.join(mount, "store", name)
    note = os.path.join(directory, "notes.txt")
    step("mkdir", directory, lambda: os.mkdir(directory))
    # store/ is an ordinary filesystem: create, write, close (the close commits it).
    write_file(note, NOTE.encode(), create=True)
    start = time.monotonic()
    store_info = os.path.join(mount, "sys", "store")
    while json.loads(read_file(store_info))["pending_index"] > 0:  # files not yet searchable
        if time.monotonic() - start > INDEX_TIMEOUT_S:
            raise StepError("wait for the index of", note, errno.ETIMEDOUT, "still not indexed")
        time.sleep(0.05)
    print(f"wrote store/{name}/notes.txt; indexed after {time.monotonic() - start:.1f} s")
    # A query is a directory; its entries are symbolic links RANK-FILENAME to the matches.
    results = os.path.join(directory, ".search", QUERY)
    ranked = sorted(n for n in step("list", results, lambda: os.listdir(results)) if n[0] != ".")
    for entry in ranked:
        link = os.path.join(results, entry)
        print(f"{entry} -> {step('readlink', link, lambda link=link: os.readlink(link))}")
    if "1-notes.txt" not in ranked:
        raise StepError("search", results, errno.ENOENT, "notes.txt is not the best match")


def last_error(agent_dir: str) -> str | None:
    """The message of ``status``'s "last_error", or None if it cannot be read."""
    try:
        with open(os.path.join(agent_dir, "status"), encoding="utf-8") as f:
            return (json.load(f).get("last_error") or {}).get("message")
    except (OSError, ValueError):
        return None


def run(mount: str, name: str, prompt: str, max_tokens: int) -> None:
    """Steps 2 to 4 on an agent that exists; main creates and removes it."""
    agent_dir = os.path.join(mount, "agents", name)
    config = os.path.join(agent_dir, "config")
    # config takes a JSON object (or key=value lines); only the keys named change.
    write_file(config, json.dumps({"max_tokens": max_tokens}).encode())
    print(f"config: max_tokens={json.loads(read_file(config))['max_tokens']}")

    print(f"--- transaction: agents/{name}/syscall ---", flush=True)
    sys.stdout.buffer.write(transaction(agent_dir, prompt))

    print(f"--- stream: agents/{name}/stream ---")
    reads, size = streamed(agent_dir, f"In one sentence: {prompt}", max_tokens)
    print(f"(stream: {reads} reads, {size} bytes; out has the same answer)")

    print(f"--- search: store/{name}/.search/{QUERY}/ ---")
    search(mount, name)


def main() -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("mountpoint", help="where aiosfs is mounted, e.g. ./mnt")
    parser.add_argument("prompt", nargs="?", default="What is a file system? Answer briefly.")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length (default 32)")
    args = parser.parse_args()
    if args.max_tokens < 1:
        parser.error("--max-tokens takes a positive integer")

    name = f"py-{os.getpid()}"  # unique, so concurrent runs never share an agent
    agent_dir = os.path.join(args.mountpoint, "agents", name)
    try:
        os.mkdir(agent_dir)  # 1. mkdir creates the agent
    except OSError as e:
        hint = f"; is aiosfs mounted at {args.mountpoint}?" if e.errno == errno.ENOENT else ""
        print(
            f"{PROG}: {StepError('mkdir', agent_dir, e.errno or errno.EIO)}{hint}", file=sys.stderr
        )
        return 1
    print(f"created agent {name}")

    rc = 0
    try:
        run(args.mountpoint, name, args.prompt, args.max_tokens)
    except StepError as e:
        sys.stdout.flush()
        print(f"{PROG}: {e}", file=sys.stderr)
        if e.code == errno.EINVAL and (reason := last_error(agent_dir)):
            # The kernel's reason for rejecting a config or a syscall is in the agent's status.
            print(f"{PROG}: the kernel said: {reason}", file=sys.stderr)
        rc = 1
    finally:
        store_dir = os.path.join(args.mountpoint, "store", name)
        if os.path.lexists(store_dir):
            try:
                shutil.rmtree(store_dir)
                print(f"removed store/{name}")
            except OSError as e:
                print(
                    f"{PROG}: {StepError('rm', store_dir, e.errno or errno.EIO)}", file=sys.stderr
                )
                rc = 1
        try:
            os.rmdir(agent_dir)  # 5. rmdir removes the agent and cancels anything it still runs
            print(f"removed agent {name}")
        except OSError as e:
            print(f"{PROG}: {StepError('rmdir', agent_dir, e.errno or errno.EIO)}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
