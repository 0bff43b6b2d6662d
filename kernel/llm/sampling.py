"""Choosing the next token from a row of logits, per sequence settings.

Greedy decoding is a plain argmax so that a request's output is the same whether it ran alone
or in a batch. Sampling draws from the sequence's own torch.Generator, seeded from the request,
so a seeded request is reproducible regardless of what else is running. The generator is made
here (``new_rng``) rather than by the Sequence, which stays free of torch.
"""

from __future__ import annotations

import torch

from kernel.llm.request import SamplingParams
from kernel.llm.sequence import RandomStream


def new_rng(params: SamplingParams) -> torch.Generator | None:
    """A sequence's own random stream, seeded from the request (or at random when it gives no
    seed); None for greedy decoding, which draws nothing."""
    if params.temperature > 0:
        rng = torch.Generator()
        rng.manual_seed(params.seed if params.seed is not None else torch.seed())
        return rng
    return None


def apply_repetition_penalty(logits: torch.Tensor, seen: list[int], penalty: float) -> None:
    """CTRL-style penalty on tokens this sequence has generated (in place).

    Only generated tokens count: penalising the prompt would discourage the model from naming
    what the user asked about ("the capital of France is ... France").
    """
    if penalty == 1.0 or not seen:
        return
    idx = torch.tensor(sorted(set(seen)), dtype=torch.long)
    vals = logits[idx]
    logits[idx] = torch.where(vals > 0, vals / penalty, vals * penalty)


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: list[int],
    rng: RandomStream | None,
) -> int:
    """Pick one token id from a 1-D float32 logits row; ``rng`` is the one ``new_rng`` made."""
    logits = logits.float().clone()
    apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cut = cumulative - sorted_probs >= params.top_p
        sorted_probs[cut] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    assert rng is None or isinstance(rng, torch.Generator)
    return int(torch.multinomial(probs, 1, generator=rng))
