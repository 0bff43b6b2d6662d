"""Shared fixtures: a tiny random-weight model loaded once per session, kernels on it, and the
check that no mount a test used logged an unexpected error."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest

from kernel import Kernel, KernelConfig
from kernel.llm.core import LLMCore, TransformersCore
from kernel.llm.models import default_cache_dir, resolve_model
from tests.mounting import Mount, check_daemon_log


@pytest.fixture(scope="session")
def tiny_core() -> LLMCore:
    """The tiny-random model, loaded once and shared (engines only ever use it one at a time)."""
    core = TransformersCore(resolve_model("tiny-random"), default_cache_dir(), threads=2)
    core.load(lambda _msg: None)
    return core


def make_kernel(core: LLMCore, **config: object) -> Kernel:
    """A kernel on an already loaded core (``model`` defaults to tiny-random), with its data
    (memory, store) in a fresh temporary directory and the model-free hashing embedder."""
    settings = {
        "model": "tiny-random",
        "data_dir": tempfile.mkdtemp(prefix="aiosfs-test-"),
        "store_embedder": "hashing",
        **config,
    }
    return Kernel(KernelConfig().with_overrides(**settings), lambda _n, _c: core)


@pytest.fixture
async def kernel(tiny_core: LLMCore) -> AsyncIterator[Kernel]:
    k = make_kernel(tiny_core)
    await k.start()
    await k.wait_loaded()
    yield k
    await k.shutdown()


@pytest.fixture(autouse=True)
def daemon_log_is_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which a daemon it uses logged an error it did not declare.

    A filesystem answers EIO for an unexpected exception and a test may well accept an error
    answer, so the log is the only place the bug shows. A mount fixture shared by a module is
    checked here after every test, so that the test during which the error was logged is the
    one that fails; a mount of the test's own is checked when it stops (``mounted``). Autouse
    fixtures are set up first and torn down last, after the test's own fixtures."""
    yield
    for value in (getattr(request.node, "funcargs", None) or {}).values():
        if isinstance(value, Mount):
            check_daemon_log(value)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests import zygote

    zygote.close()
