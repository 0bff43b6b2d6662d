"""Shared fixtures: a tiny random-weight model loaded once per session, and kernels on it."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator

import pytest

from kernel import Kernel, KernelConfig
from kernel.llm.core import LLMCore, TransformersCore
from kernel.llm.models import default_cache_dir, resolve_model


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
