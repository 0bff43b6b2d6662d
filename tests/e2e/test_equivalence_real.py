"""The equivalence guarantee on the embedded model: alone, in a batch of 32, preempted."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.llm.core import LLMCore, TransformersCore
from kernel.llm.models import default_cache_dir, resolve_model
from tests.kernel.test_equivalence import run

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def smol() -> LLMCore:
    core = TransformersCore(resolve_model("smollm2"), default_cache_dir())
    core.load(lambda _msg: None)
    return core


async def test_smollm2_alone_batched_preempted_agree(smol: LLMCore, tmp_path: Path) -> None:
    alone, _ = await run(smol, one_at_a_time=True, max_running=1)
    batched, info = await run(smol, max_running=32)
    assert info["mean_batch"] > 16
    assert batched == alone
    preempted, info = await run(smol, scheduler="rr", max_running=8, quantum=4, data_dir=tmp_path)
    assert info["contexts"]["restores"] > 20
    assert preempted == alone
    assert all(len(b) > 20 for b in alone)  # real text came back
