"""The prefix cache and the swap manager on small hand-made tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from kernel.llm.core import SavedKV, TransformersCore
from kernel.llm.kv import KVShape, SeqKV
from kernel.llm.models import ModelSpec
from kernel.llm.prefix_cache import PrefixCache
from kernel.llm.request import GenerationRequest, SamplingParams
from kernel.llm.sampling import new_rng
from kernel.llm.sequence import Sequence
from kernel.llm.swap import SwapManager

SHAPE = KVShape(layers=2, kv_heads=1, head_dim=4)


def kv_of(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, 1, n, 4, generator=g)


def saved(n: int, seed: int = 0) -> SavedKV:
    return SavedKV(n, kv_of(n, seed).numpy().reshape(-1))


def shaped_core() -> TransformersCore:
    """A transformers core that is never loaded: only its KV geometry matters here."""
    core = TransformersCore(ModelSpec("t", "tiny-random"), Path("/nonexistent"))
    core.kv_shape = SHAPE
    return core


def test_seqkv_grows_and_keeps_its_contents() -> None:
    data = kv_of(10)
    kv = SeqKV.from_tensor(SHAPE, data)
    kv.reserve(500)
    assert kv.capacity >= 500 and kv.length == 10
    assert torch.equal(kv.valid(), data) and torch.equal(kv.compact(), data)
    assert SHAPE.bytes_per_token == 2 * 2 * 1 * 4 * 4


def test_prefix_cache_finds_the_longest_shared_prefix() -> None:
    cache = PrefixCache(budget_bytes=1 << 20, min_tokens=3)
    cache.insert([1, 2, 3, 4, 5], saved(5, 1))
    cache.insert([1, 2, 9, 9, 9, 9], saved(6, 2))
    entry, n = cache.match([1, 2, 3, 4, 7, 7])
    assert entry is not None and n == 4
    kv = shaped_core().load_kv(entry.kv, n)  # a working copy of the shared part
    assert isinstance(kv, SeqKV) and torch.equal(kv.valid(), kv_of(5, 1)[:, :, :, :4])
    assert cache.match([1, 2, 8]) == (None, 0)  # 2 shared tokens: under min_tokens
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


def test_prefix_cache_replaces_what_a_longer_entry_covers_and_evicts_lru() -> None:
    per_token = SHAPE.bytes_per_token
    cache = PrefixCache(budget_bytes=12 * per_token, min_tokens=1)
    cache.insert([1, 2, 3], saved(3))
    cache.insert([1, 2, 3, 4, 5], saved(5))  # covers the first entry
    assert len(cache.entries) == 1 and cache.bytes == 5 * per_token
    cache.insert([7] * 6, saved(6))
    cache.insert([8] * 6, saved(6))  # over budget: the least recently used goes
    assert cache.bytes <= 12 * per_token
    assert cache.match([1, 2, 3, 4, 5])[0] is None and cache.match([8] * 6)[1] == 6


def seq(rid: int, temperature: float = 0.0) -> Sequence:
    req = GenerationRequest(
        rid,
        "a",
        ({"role": "user", "content": "x"},),
        SamplingParams(temperature=temperature, seed=5),
    )
    s = Sequence(req, [1, 2, 3], 10)
    s.rng = new_rng(req.sampling)  # as the engine does: a Sequence holds no torch of its own
    return s


def test_snapshots_spill_past_the_budget_and_restore_exactly(tmp_path: Path) -> None:
    per = SHAPE.bytes_per_token
    ctx = SwapManager(shaped_core(), budget_bytes=12 * per, swap_dir=tmp_path / "swap")
    seqs = [seq(i, temperature=1.0) for i in range(3)]
    originals = []
    for i, s in enumerate(seqs):
        s.kv = SeqKV.from_tensor(SHAPE, kv_of(8, i))
        originals.append(s.kv.compact())
        s.rng.manual_seed(100 + i)
        ctx.save(s)
        assert s.kv is None and s.snapshot is not None
    # 3 x 8 tokens do not fit in 12: the oldest went to disk
    assert ctx.counts["spills"] == 2 and ctx.ram_bytes == 8 * per
    assert ctx.disk_bytes == 16 * per and len(list((tmp_path / "swap").iterdir())) == 2
    states = [torch.Generator().manual_seed(100 + i).get_state() for i in range(3)]
    for s in seqs:
        s.rng.manual_seed(999)  # whatever happened meanwhile is undone by the restore
    for i, s in enumerate(seqs):
        ctx.restore(s)
        assert isinstance(s.kv, SeqKV) and torch.equal(s.kv.valid(), originals[i])
        assert torch.equal(s.rng.get_state(), states[i])
    assert ctx.ram_bytes == 0 and ctx.disk_bytes == 0 and not ctx.saved
    assert not list((tmp_path / "swap").iterdir())


def test_discard_forgets_a_cancelled_snapshot(tmp_path: Path) -> None:
    ctx = SwapManager(shaped_core(), budget_bytes=0, swap_dir=tmp_path)
    s = seq(1)
    s.kv = SeqKV.from_tensor(SHAPE, kv_of(4))
    ctx.save(s)
    assert ctx.disk_bytes > 0
    ctx.discard(s)
    assert ctx.disk_bytes == 0 and not list(tmp_path.iterdir()) and s.snapshot is None
