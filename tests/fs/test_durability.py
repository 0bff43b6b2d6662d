"""What a writer has closed survives a kill -9 of the daemon at any moment (store/ and mem/), and
a restart finds every file, version, memory block and index entry again."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mounting import Mount, eventually, mounted, write_config

pytestmark = [pytest.mark.mount, pytest.mark.timeout(600)]

# Writes files in a loop. "BEGIN path digest token" before opening, "DONE path" once close()
# returned: from then on the content must survive. Stops at the first error (daemon gone).
WRITER = r"""
import hashlib, os, random, sys
root, rnd = sys.argv[1], int(sys.argv[2])
rng = random.Random(rnd)
i = 0
while True:
    path = rng.choice(["store/d", "mem/dur"]) + f"/f{rng.randrange(12)}"
    token = f"tok{rnd}x{i}"
    data = (token + " ").encode() + os.urandom(rng.randrange(1, 200_000)).hex().encode()
    print("BEGIN", path, hashlib.sha256(data).hexdigest(), token, flush=True)
    try:
        with open(os.path.join(root, path), "wb") as f:
            f.write(data)
    except OSError:
        break
    print("DONE", path, flush=True)
    i += 1
"""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_or_none(m: Mount, path: str) -> str | None:
    """The digest of a file the writer was writing when the daemon died. Its close never
    returned, so if this was the path's first write, the file may rightly not exist at all."""
    try:
        return digest(m.read_bytes(path))
    except FileNotFoundError:
        return None


def check(
    m: Mount, committed: dict[str, tuple[str, str]], maybe: dict[str, tuple[str, str]]
) -> None:
    for path, (want, _token) in committed.items():
        got = digest(m.read_bytes(path))
        alt = maybe.get(path, ("", ""))[0]  # written when the daemon died: either is right
        assert got in (want, alt), f"{path} lost its closed content"


def test_closed_files_survive_kill_9_in_a_loop(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, store_embedder="hashing")
    rng = random.Random(4)
    committed: dict[str, tuple[str, str]] = {}  # path -> (digest, token) of the last closed write
    maybe: dict[str, tuple[str, str]] = {}
    rounds = int(os.environ.get("AIOSFS_DURABILITY_ROUNDS", "3"))  # `make crash`: 20
    for rnd in range(rounds):
        with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
            os.makedirs(m.p("store/d"), exist_ok=True)
            os.makedirs(m.p("mem/dur"), exist_ok=True)
            check(m, committed, maybe)
            for path, (got, token) in list(maybe.items()):  # settle what the last kill left
                if digest_or_none(m, path) == got:
                    committed[path] = (got, token)
            maybe.clear()
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(m.path), str(rnd)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            time.sleep(rng.uniform(0.5, 2.0))
            m.proc.kill()  # kill -9, at whatever moment the writer has reached
            out, _ = writer.communicate(timeout=60)
            begun: dict[str, tuple[str, str]] = {}
            for line in out.splitlines():
                word, path, *rest = line.split()
                if word == "BEGIN":
                    begun[path] = (rest[0], rest[1])
                else:
                    committed[path] = begun.pop(path)
            maybe.update(begun)
            assert len(committed) > 0

    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        check(m, committed, maybe)
        for path, (got, token) in maybe.items():
            if digest_or_none(m, path) == got:
                committed[path] = (got, token)
        # every store file's earlier content is in its history
        store_files = [p for p in committed if p.startswith("store/")]
        assert any(os.listdir(m.p("store/.versions/d", p.rsplit("/", 1)[1])) for p in store_files)
        # the index catches up with everything written before the kills, and finds it
        eventually(
            lambda: m.json("sys/store")["pending_index"] == 0,
            timeout=120,
            what="the index to catch up",
        )
        for path in store_files:
            token = committed[path][1]
            hits = [n for n in os.listdir(m.p(f"store/.grep/{token}")) if not n.startswith(".")]
            assert hits == [f"1-{path.rsplit('/', 1)[1]}"], f"index lost {path}"
    db = sqlite3.connect(tmp_path / "data" / "store.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
