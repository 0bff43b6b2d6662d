"""The greedy path in numpy gives torch's token: the same penalty in float32 and the same
first-maximum argmax, on rows like a model's (and on ties)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernel.llm.request import SamplingParams
from kernel.llm.sampling import apply_repetition_penalty, greedy, sample


def torch_greedy(row: np.ndarray, seen: list[int], penalty: float) -> int:
    logits = torch.from_numpy(row.copy())
    apply_repetition_penalty(logits, seen, penalty)
    return int(torch.argmax(logits))


@pytest.mark.parametrize("penalty", [1.0, 0.9, 1.05, 1.1, 1.3, 2.0])
def test_numpy_greedy_is_torchs_token(penalty: float) -> None:
    rng = np.random.default_rng(int(penalty * 100))
    for _ in range(200):
        row = (rng.standard_normal(4096) * rng.uniform(0.1, 30)).astype(np.float32)
        seen = [int(t) for t in rng.integers(0, 4096, size=int(rng.integers(0, 300)))]
        seen += [int(row.argmax())] * int(rng.integers(0, 2))  # the favourite, sometimes seen
        before = row.copy()
        assert greedy(row, seen, penalty) == torch_greedy(row, seen, penalty)
        assert np.array_equal(row, before)  # the engine's row is left as it was


def test_ties_go_to_the_first_maximum_as_in_torch() -> None:
    row = np.zeros(10, dtype=np.float32)
    row[[3, 7]] = 5.0
    assert greedy(row, [], 1.0) == torch_greedy(row, [], 1.0) == 3
    assert greedy(row, [3], 1.2) == torch_greedy(row, [3], 1.2) == 7


def test_sample_takes_the_numpy_path_only_where_it_is_the_same() -> None:
    row = torch.tensor([0.0, 2.0, 1.0])
    assert sample(row, SamplingParams(), [], None) == 1
    assert sample(row, SamplingParams(repetition_penalty=4.0), [1], None) == 2
    half = row.to(torch.float16)  # not float32: torch's own path
    assert sample(half, SamplingParams(), [], None) == 1
