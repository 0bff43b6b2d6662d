"""What the stateful machine (``test_stateful.py``) found, each pinned by a test of its own.

Every one of these was an unexpected exception in the daemon (logged, and answered EIO, or not
answered at all) or a mount that showed something else than what was there; the autouse
``daemon_log_is_clean`` fixture fails a test here whose daemon logged an error.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fs.test_stateful import op_transaction
from tests.mounting import Mount, mounted, write_config

pytestmark = pytest.mark.mount

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    tmp = tmp_path_factory.mktemp("hostile")
    cfg = write_config(tmp, store_embedder="hashing", mem_agent_mb=1, store_max_file_mb=1)
    with mounted(tmp, "tiny-random", "--config", cfg) as mount:
        os.mkdir(mount.p("agents/h"))
        mount.write("agents/h/config", "max_tokens=1\ncapabilities.store_write=/\n")
        yield mount


def errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or 0
    return 0


def transaction(m: Mount, body: bytes) -> bytes:
    return op_transaction(m.p("agents/h/syscall"), body)


@pytest.mark.parametrize("tree", ["mem/h", "store"])
def test_a_name_that_is_not_utf8_is_refused_and_never_found(m: Mount, tree: str) -> None:
    """It was let in as lone surrogates (``os.fsdecode``), then failed where it was encoded
    again: EIO and a logged UnicodeEncodeError, for a lookup in ``mem/`` too."""
    top = os.fsencode(m.p(tree))
    bad = top + b"/\xff\xfe"
    open(m.p(tree, "ok"), "w").close()
    os.mkdir(m.p(tree, "dir"))
    assert errno_of(lambda: os.close(os.open(bad, os.O_CREAT | os.O_WRONLY))) == errno.EINVAL
    assert errno_of(lambda: os.mkdir(bad)) == errno.EINVAL
    assert errno_of(lambda: os.symlink(b"x", bad)) == errno.EINVAL
    assert errno_of(lambda: os.link(top + b"/ok", bad)) == errno.EINVAL
    assert errno_of(lambda: os.rename(top + b"/ok", bad)) == errno.EINVAL
    assert errno_of(lambda: os.lstat(bad)) == errno.ENOENT
    assert errno_of(lambda: os.lstat(top + b"/dir/a\x80b/c")) == errno.ENOENT
    assert errno_of(lambda: os.unlink(bad)) == errno.ENOENT
    assert errno_of(lambda: os.rename(bad, top + b"/x")) == errno.ENOENT
    assert b"\xff\xfe" not in os.listdir(top)


def test_a_json_escape_that_is_not_a_character_is_refused(m: Mount) -> None:
    """A ``\\udcff`` escape parsed into a lone surrogate, which failed later: a memory write
    logged UnicodeEncodeError, the tokenizer a TypeError, the journal's writer thread died
    (every later ``mkdir agents/…`` hung), and ``ls results/`` was EIO for good, since the
    prompt could not be rendered into ``N.json``."""
    for body in (
        b'{"call": "mem_write", "path": "n", "content": "\\udcff"}\n',
        b'{"call": "mem_write", "path": "\\ud800", "content": "x"}\n',
        b'{"call": "llm", "prompt": "\\udcff", "max_tokens": 1}\n',
        b'{"call": "llm", "messages": [{"role": "user", "content": "a\\ud800"}]}\n',
    ):
        assert errno_of(lambda body=body: transaction(m, body)) == errno.EINVAL, body
    assert os.listdir(m.p("agents/h/results"))  # every refusal left its error result
    status = m.json("agents/h/status")
    assert "surrogate" in status["last_error"]["message"]
    for path, body in (
        ("agents/h/config", b'{"system": "\\udcff"}\n'),
        ("agents/h/history", b'{"role": "user", "content": "\\udcff"}\n'),
        ("tools/calculator/call", b'{"expression": "\\ud800"}\n'),
    ):
        assert errno_of(lambda path=path, body=body: m.write(path, body)) == errno.EINVAL, path
    assert m.json("agents/h/config")["system"] is None
    # a proper pair is a character, and welcome
    out = transaction(m, b'{"call": "mem_write", "path": "pair", "content": "\\ud83d\\ude42"}\n')
    assert out.startswith(b"ok:") and m.read("mem/h/pair") == "🙂"
    os.mkdir(m.p("agents/after"))  # the journal still writes: this does not hang
    os.rmdir(m.p("agents/after"))


def test_names_an_agent_changes_are_seen_at_once(m: Mount) -> None:
    """The OS kernel cached names and directory attributes for a second, and dropped them only
    for changes made through the mount: a file an agent deleted still answered ``stat``
    (with no links), one it made again in the same place stayed hidden, a directory it made
    was not in its parent's link count."""
    m.write("mem/h/gone", b"x")
    assert os.stat(m.p("mem/h/gone")).st_size == 1  # the OS kernel now holds the name
    assert transaction(m, b'{"call": "mem_delete", "path": "gone"}\n').startswith(b"ok:")
    assert errno_of(lambda: os.stat(m.p("mem/h/gone"))) == errno.ENOENT
    assert (
        transaction(m, b'{"call": "mem_write", "path": "gone", "content": "abc"}\n')[:3] == b"ok:"
    )
    assert os.stat(m.p("mem/h/gone")).st_size == 3
    os.mkdir(m.p("mem/h/empty"))
    assert os.stat(m.p("mem/h/empty")).st_nlink == 2
    assert transaction(m, b'{"call": "mem_delete", "path": "empty"}\n').startswith(b"ok:")
    assert errno_of(lambda: os.stat(m.p("mem/h/empty"))) == errno.ENOENT
    os.mkdir(m.p("store/top"))
    assert os.stat(m.p("store/top")).st_nlink == 2
    out = transaction(m, b'{"call": "store_write", "path": "top/sub/f", "content": "y"}\n')
    assert out.startswith(b"ok:"), out
    assert os.stat(m.p("store/top")).st_nlink == 3
    assert Path(m.p("store/top/sub/f")).read_text() == "y"


@pytest.mark.parametrize("tree", ["mem/h", "store"])
def test_sizes_far_past_the_limit_are_efbig(m: Mount, tree: str) -> None:
    """Known from the issue: a truncate to 2**62 (a MemoryError once), a write at 2**62, a
    255-byte name whose save adds a temporary suffix: each its errno, nothing logged."""
    path = m.p(tree, "big")
    m.write(f"{tree}/big", b"keep")
    for size in (LIMIT + 1, 2**40, 2**62, 2**63 - 1):
        assert errno_of(lambda size=size: os.truncate(path, size)) == errno.EFBIG
    fd = os.open(path, os.O_WRONLY)
    try:
        assert errno_of(lambda: os.ftruncate(fd, 2**62)) == errno.EFBIG
        assert errno_of(lambda: os.pwrite(fd, b"x", 2**62)) == errno.EFBIG
    finally:
        # the store refuses the whole descriptor at its close; mem saves it as it was
        closed = errno_of(lambda: os.close(fd))
    assert closed == (errno.EFBIG if tree == "store" else 0)
    assert m.read_bytes(tree, "big") == b"keep"
    long = "L" * 255
    m.write(f"{tree}/{long}", b"saved")
    m.write(f"{tree}/{long}", b"saved again")  # mem: replaced through a temporary file
    assert m.read_bytes(tree, long) == b"saved again"


def test_a_link_into_the_mount_never_makes_the_daemon_wait_for_itself(m: Mount) -> None:
    """``sys/mem`` sums each agent's memory on disk; ``os.fwalk`` looked at what every link
    names (its ``DirEntry.is_dir()`` follows), so a link in memory pointing into the mount
    had the daemon ask itself, on the trio thread that answers: the whole mount hung, and
    ``aiosfs mount`` of the same data dir hung at its first look at ``sys/status``."""
    os.symlink(m.p("mem/h/nothing-there"), m.p("mem/h/into-the-mount"))
    os.mkdir(m.p("mem/h/sub"))
    os.symlink(m.p("mem"), m.p("mem/h/sub/up"))
    got = m.sh("timeout 20 cat sys/mem sys/status", check=False)
    assert got.returncode == 0, f"sys/mem did not answer: {got.returncode} {got.stderr}"
    assert "h" in json.loads(m.read("sys/mem"))["agents"]
