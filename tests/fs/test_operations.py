"""The Operations layer in process, without a mount: the handle state machines and the inode
table driven exactly as FUSE would drive them (s3ql tests its operations class the same way
before it mounts anything). Faster and more precise than a mount: each test names the FUSE
request sequence it checks."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pyfuse3
import pytest

from aiosfs.fs import AiosFS
from aiosfs.vfs import PathCache
from kernel import Kernel
from kernel.llm.core import LLMCore
from tests.conftest import make_kernel

ROOT = pyfuse3.ROOT_INODE


@dataclass
class Ctx:
    """What a FUSE request context carries; the caller is this test process (no interrupt
    watcher runs here, so its pid only serves ``out``'s is-the-reader-alive check)."""

    uid: int = 0
    gid: int = 0
    pid: int = os.getpid()
    umask: int = 0o022


CTX = Ctx()


@pytest.fixture
async def fs(tiny_core: LLMCore) -> AsyncIterator[AiosFS]:
    kernel = make_kernel(tiny_core)
    await kernel.start()
    await kernel.wait_loaded()
    yield AiosFS(kernel, "/nowhere")
    await kernel.shutdown()


async def inode_of(fs: AiosFS, path: str) -> int:
    inode = ROOT
    for part in path.split("/"):
        inode = (await fs.lookup(inode, part.encode(), CTX)).st_ino
    return inode


async def open_path(fs: AiosFS, path: str, flags: int) -> int:
    return (await fs.open(await inode_of(fs, path), flags, CTX)).fh


async def new_agent(fs: AiosFS, name: str = "a") -> Kernel:
    await fs.mkdir(await inode_of(fs, "agents"), name.encode(), 0o755, CTX)
    fh = await open_path(fs, f"agents/{name}/config", os.O_WRONLY)
    await fs.write(fh, 0, b"max_tokens=3\n")
    await fs.flush(fh)
    await fs.release(fh)
    return fs.kernel


async def read_all(fs: AiosFS, fh: int) -> bytes:
    out, off = b"", 0
    while chunk := await fs.read(fh, off, 4096):
        out += chunk
        off += len(chunk)
    return out


# ---- agents/NAME/syscall: submit on flush, idempotently ---------------------------------------


async def test_syscall_is_submitted_at_flush_once(fs: AiosFS) -> None:
    kernel = await new_agent(fs)
    fh = await open_path(fs, "agents/a/syscall", os.O_WRONLY)
    await fs.write(fh, 0, b"Hello")
    await fs.write(fh, 5, b" there")
    assert kernel.counts["submitted"] == 0  # nothing happens per write() chunk
    await fs.flush(fh)
    assert kernel.counts["submitted"] == 1
    await fs.flush(fh)  # a second close of a dup'd descriptor: nothing new was written
    await fs.release(fh)
    assert kernel.counts["submitted"] == 1
    agent = kernel.agent("a")
    (result,) = agent.results.values()
    await kernel.wait_result(agent, result)
    assert result.syscall is not None


async def test_invalid_syscall_fails_the_write_and_the_close(fs: AiosFS) -> None:
    kernel = await new_agent(fs)
    fh = await open_path(fs, "agents/a/syscall", os.O_WRONLY)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.write(fh, 0, b'{"call": "llm", "bogus": 1}\n')
    assert e.value.errno == errno.EINVAL
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.flush(fh)  # the writer's close reports it too
    assert e.value.errno == errno.EINVAL
    await fs.flush(fh)  # reported once
    await fs.release(fh)
    assert kernel.counts["invalid"] == 1
    (result,) = kernel.agent("a").results.values()
    assert result.finished and "bogus" in (result.error or "")


async def test_incomplete_json_is_not_judged_until_complete(fs: AiosFS) -> None:
    kernel = await new_agent(fs)
    fh = await open_path(fs, "agents/a/syscall", os.O_WRONLY)
    await fs.write(fh, 0, b'{"call": "llm", ')  # half an object: no error yet
    await fs.write(fh, 16, b'"prompt": "hi"}')
    await fs.flush(fh)
    await fs.release(fh)
    assert kernel.counts == {**kernel.counts, "submitted": 1, "invalid": 0}


async def test_transaction_descriptor_reads_its_own_answers_in_order(fs: AiosFS) -> None:
    kernel = await new_agent(fs)
    fh = await open_path(fs, "agents/a/syscall", os.O_RDWR)
    for i, prompt in enumerate((b"one", b"two")):
        await fs.write(fh, 0, prompt)
        await fs.flush(fh)
        assert kernel.counts["submitted"] == i + 1
    first = await read_all(fs, fh)  # waits for the first answer, then end-of-file
    second = await read_all(fs, fh)
    assert await fs.read(fh, 0, 4096) == b""  # nothing more was written on this descriptor
    agent = kernel.agent("a")
    bodies = [r.body() for r in agent.results.values()]
    assert [first, second] == bodies
    assert all(r.delivered for r in agent.results.values())  # out will not answer them again
    await fs.release(fh)


async def test_reading_the_transaction_descriptor_submits_what_was_written(fs: AiosFS) -> None:
    kernel = await new_agent(fs)
    fh = await open_path(fs, "agents/a/syscall", os.O_RDWR)
    await fs.write(fh, 0, b"no close before the read")
    answer = await read_all(fs, fh)
    assert kernel.counts["submitted"] == 1
    assert answer == next(iter(kernel.agent("a").results.values())).body()
    await fs.release(fh)


async def test_unread_transaction_answers_go_to_out_on_release(fs: AiosFS) -> None:
    kernel = await new_agent(fs)
    fh = await open_path(fs, "agents/a/syscall", os.O_RDWR)
    await fs.write(fh, 0, b"never read here")
    await fs.flush(fh)
    await fs.release(fh)
    out = await open_path(fs, "agents/a/out", os.O_RDONLY)
    assert await read_all(fs, out) == next(iter(kernel.agent("a").results.values())).body()
    await fs.release(out)


async def test_invalid_config_fails_at_write(fs: AiosFS) -> None:
    kernel = await new_agent(fs)
    fh = await open_path(fs, "agents/a/config", os.O_WRONLY)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.write(fh, 0, b"max_tokens=-1\n")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(pyfuse3.FUSEError):
        await fs.flush(fh)
    await fs.release(fh)
    assert kernel.agent("a").config.max_tokens == 3
    assert kernel.agent("a").status()["last_error"]["source"] == "config"


# ---- store/: what is committed when ------------------------------------------------------------


async def store_create(fs: AiosFS, name: str) -> int:
    store = await inode_of(fs, "store")
    info, _attr = await fs.create(store, name.encode(), 0o644, os.O_WRONLY | os.O_CREAT, CTX)
    return info.fh


async def stored(fs: AiosFS, path: str) -> bytes:
    return await fs.kernel.workers.store(fs.kernel.storage.read, path)


def version(fs: AiosFS, path: str) -> int:
    entry = fs.kernel.storage.entry(path)
    assert entry is not None
    return entry.version


async def test_store_write_is_committed_at_close_as_one_version(fs: AiosFS) -> None:
    fh = await store_create(fs, "doc")
    await fs.write(fh, 0, b"hello ")
    await fs.write(fh, 6, b"world")
    inode = await inode_of(fs, "store/doc")
    assert (await fs.getattr(inode, CTX)).st_size == 11  # the writer's own view before close
    assert await stored(fs, "doc") == b""
    created = version(fs, "doc")
    await fs.flush(fh)
    assert await stored(fs, "doc") == b"hello world"
    await fs.release(fh)
    assert version(fs, "doc") == created + 1  # two writes, one close: one new version


async def test_store_truncation_alone_is_committed_at_the_last_close(fs: AiosFS) -> None:
    fh = await store_create(fs, "doc")
    await fs.write(fh, 0, b"content")
    await fs.release(fh)
    # ": > doc": open(O_TRUNC), the shell closes a duplicate (flush) before anything is written
    fh = await open_path(fs, "store/doc", os.O_WRONLY | os.O_TRUNC)
    await fs.flush(fh)
    assert await stored(fs, "doc") == b"content"  # not yet: a write may still follow
    await fs.release(fh)
    assert await stored(fs, "doc") == b""


async def test_store_write_over_the_limit_commits_nothing(fs: AiosFS) -> None:
    fh = await store_create(fs, "doc")
    await fs.write(fh, 0, b"kept")
    await fs.release(fh)
    fh = await open_path(fs, "store/doc", os.O_WRONLY)
    limit = fs.kernel.storage.max_file_bytes
    await fs.write(fh, 0, b"new")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.write(fh, limit, b"x")
    assert e.value.errno == errno.EFBIG
    with pytest.raises(pyfuse3.FUSEError):
        await fs.flush(fh)
    await fs.release(fh)
    assert await stored(fs, "doc") == b"kept"


# ---- the inode table ---------------------------------------------------------------------------


async def test_an_unlinked_open_file_keeps_its_inode_until_released_and_forgotten(
    fs: AiosFS,
) -> None:
    fh = await store_create(fs, "doc")
    await fs.write(fh, 0, b"x")
    await fs.flush(fh)
    inode = await inode_of(fs, "store/doc")  # two lookups: create's entry and this one
    await fs.unlink(await inode_of(fs, "store"), b"doc", CTX)
    with pytest.raises(pyfuse3.FUSEError):
        await fs.lookup(await inode_of(fs, "store"), b"doc", CTX)
    assert (await fs.getattr(inode, CTX)).st_ino == inode  # still open and still looked up
    await fs.release(fh)
    await fs.forget([(inode, 1)])
    assert (await fs.getattr(inode, CTX)).st_ino == inode  # one lookup left
    await fs.forget([(inode, 1)])
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.getattr(inode, CTX)
    assert e.value.errno == errno.ENOENT


async def test_rename_moves_nodes_with_their_inodes(fs: AiosFS) -> None:
    store = await inode_of(fs, "store")
    d = (await fs.mkdir(store, b"d", 0o755, CTX)).st_ino
    info, attr = await fs.create(d, b"f", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
    await fs.write(info.fh, 0, b"payload")
    await fs.release(info.fh)
    await fs.rename(store, b"d", store, b"e", 0, CTX)
    assert await inode_of(fs, "store/e") == d
    assert await inode_of(fs, "store/e/f") == attr.st_ino
    assert await stored(fs, "e/f") == b"payload"


def test_path_cache_moves_and_forgets_subtrees() -> None:
    @dataclass(eq=False)
    class N:
        path: str
        detached: bool = False
        is_dir: bool = False

        def mark_detached(self) -> None:
            self.detached = True

    cache: PathCache[N] = PathCache()
    a, ab, abc, ax, other = N("a"), N("a/b"), N("a/b/c"), N("ax"), N("z")
    for n in (a, ab, abc, ax, other):
        cache.put(n.path, n)
    cache.move("a", "z")  # replaces z; "ax" only shares a prefix of characters
    assert other.detached and not a.detached
    assert (a.path, ab.path, abc.path, ax.path) == ("z", "z/b", "z/b/c", "ax")
    assert cache.get("z/b/c") is abc and cache.get("a/b") is None and cache.get("ax") is ax
    cache.forget("z/b")
    assert ab.detached and abc.detached and not a.detached
    assert cache.get("z/b") is None and cache.get("z") is a
    assert len(cache) == 2
    assert cache.node("z", False, lambda: N("z")) is a  # still what is there: kept
    c = cache.node("z", True, lambda: N("z", is_dir=True))  # now a directory: a new node
    assert c is not a and cache.get("z") is c
