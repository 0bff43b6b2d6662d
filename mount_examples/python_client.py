#!/usr/bin/env python3
"""Talk to a mounted aiosfs with nothing but ``open()`` and ``os``: no aiosfs imports.

usage: python_client.py MOUNTPOINT [PROMPT] [--max-tokens N]

It creates its own agent, then shows three ways to use it:

(a) the transaction file: ``agents/NAME/syscall`` opened read-write. Write the question, then
    read the same file object: the read submits the syscall and returns the answer to exactly
    that syscall, whatever else the agent has in flight;
(b) a structured JSON syscall written with a plain write-and-close (submitted at close), its
    answer read from ``agents/NAME/out``;
(c) ``agents/NAME/status`` (JSON) and the ``agents/NAME/results/`` directory.

The agent is removed at the end, even when something fails.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys


def write_text(path: str, text: str) -> None:
    """Write a whole file in one go. The kernel acts on it at close (or at the write, once the
    bytes look complete), and rejects bad input with EINVAL from write() or close(); the error
    is re-raised naming the file, which Python leaves out for errors from write and close."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def read_text(path: str) -> str:
    """Read a whole file. On ``out`` and ``syscall`` the read blocks until the answer is done."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def transaction(agent_dir: str, prompt: str) -> str:
    """(a) One syscall on one descriptor: write the question, read back its answer.

    Mode "r+b" is O_RDWR without O_TRUNC or O_CREAT. Bytes are used rather than text so that
    nothing is buffered between the write and the read: the read is what submits the syscall.
    """
    with open(os.path.join(agent_dir, "syscall"), "r+b", buffering=0) as f:
        f.write(prompt.encode("utf-8") + b"\n")
        # The first read submits what was written and blocks until the answer is complete; it
        # comes back whole, then EOF. Loop anyway, as one should with any read().
        chunks = []
        while chunk := f.read(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")


def json_syscall(agent_dir: str, prompt: str, max_tokens: int) -> str:
    """(b) A structured syscall: write-and-close submits it; ``out`` delivers its answer.

    Without ``"chat": true`` an ``llm`` call is stateless: it does not see or join the agent's
    conversation history. An invalid syscall (say, a misspelt field) fails the write or the
    close with EINVAL.
    """
    call = {"call": "llm", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    path = os.path.join(agent_dir, "syscall")
    try:
        write_text(path, json.dumps(call) + "\n")
    except OSError as e:
        if e.errno == errno.EINVAL:
            # The kernel's reason for rejecting a syscall is in the agent's status.
            status = json.loads(read_text(os.path.join(agent_dir, "status")))
            reason = (status.get("last_error") or {}).get("message", "")
            raise OSError(e.errno, f"{e.strerror}: {reason}", path) from None
        raise
    # `out` hands out the agent's undelivered answers oldest first. The answer from (a) was
    # delivered on its own descriptor, so this is the answer to the JSON syscall.
    return read_text(os.path.join(agent_dir, "out"))


def show(title: str, answer: str) -> None:
    print(f"--- {title} ---")
    print(answer, end="" if answer.endswith("\n") else "\n")
    # A failed syscall still has an answer; its last line is "error: MESSAGE".
    last = answer.rstrip("\n").rpartition("\n")[2]
    if last.startswith("error: "):
        print(f"(that syscall failed: {last[len('error: ') :]})", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mountpoint", help="where aiosfs is mounted, e.g. ./mnt")
    parser.add_argument("prompt", nargs="?", default="What is a file system? Answer briefly.")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (default 64)")
    args = parser.parse_args()

    agents = os.path.join(args.mountpoint, "agents")
    if not os.path.isdir(agents):
        print(f"python_client: {agents} not found; is aiosfs mounted there?", file=sys.stderr)
        return 1

    # A unique agent name, so concurrent or repeated runs never share an agent.
    name = f"pyclient-{os.getpid()}"
    agent_dir = os.path.join(agents, name)
    try:
        os.mkdir(agent_dir)  # mkdir creates the agent
    except OSError as e:
        print(f"python_client: mkdir {agent_dir}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"created agent {name}")

    try:
        # config takes a JSON object (or key=value lines); only the keys named change.
        write_text(os.path.join(agent_dir, "config"), json.dumps({"max_tokens": args.max_tokens}))
        print("config:", json.dumps(json.loads(read_text(os.path.join(agent_dir, "config")))))

        show(f"(a) transaction on agents/{name}/syscall", transaction(agent_dir, args.prompt))

        answer = json_syscall(agent_dir, f"In one sentence: {args.prompt}", args.max_tokens)
        show(f"(b) JSON syscall, answer from agents/{name}/out", answer)

        status = json.loads(read_text(os.path.join(agent_dir, "status")))
        print("--- (c) status ---")
        print(
            f"state={status['state']} done={status['done']} failed={status['failed']} "
            f"tokens_in={status['tokens_in']} tokens_out={status['tokens_out']}"
        )
        # results/N is an answer, results/N.json its metadata (tokens, latency, finish reason).
        results_dir = os.path.join(agent_dir, "results")
        entries = sorted(os.listdir(results_dir), key=lambda n: (int(n.split(".")[0]), n))
        print("results/:", " ".join(entries))
        for entry in entries:
            if entry.endswith(".json"):
                meta = json.loads(read_text(os.path.join(results_dir, entry)))
                print(
                    f"  {entry}: {meta['state']}, {meta['tokens_out']} tokens, "
                    f"finish_reason={meta.get('finish_reason')}"
                )
        rc = 0
    except OSError as e:
        # e.g. EINVAL from a rejected syscall or config, ENOENT if the mount went away.
        where = f"{e.filename}: " if e.filename else ""
        print(f"python_client: {where}{e.strerror or e}", file=sys.stderr)
        rc = 1
    finally:
        try:
            os.rmdir(agent_dir)  # rmdir removes the agent (and cancels anything it still runs)
            print(f"removed agent {name}")
        except OSError as e:
            print(f"python_client: rmdir {agent_dir}: {e.strerror}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
