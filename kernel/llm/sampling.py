"""Choosing the next token from a row of logits, per sequence settings.

Greedy decoding is a plain argmax so that a request's output is the same whether it ran alone
or in a batch. Sampling draws from the sequence's own torch.Generator, seeded from the request,
so a seeded request is reproducible regardless of what else is running. The generator is made
here (``new_rng``) rather than by the Sequence, which stays free of torch.

A sequence with a ``response_format`` carries a grammar constraint (``grammar.py``): its mask is
applied to the logits after the repetition penalty and before argmax or softmax, so the chosen
token always keeps the output valid, and a sampled token is drawn only among valid ones (the
probabilities renormalise over them). Unconstrained sequences take exactly the path they took
before, which keeps their output identical whatever their neighbours in the batch ask for.

Greedy decoding of a row in memory (the llama.cpp core's, the transformers core's on CPU) runs
in numpy: the same penalty in float32 and the same first-maximum argmax as torch's, so the
same token, without the torch calls' fixed cost on every step (2-3 small ops, tens of
microseconds each at best, far more when their thread pool meets a busy machine).
"""

from __future__ import annotations

import numpy as np
import torch

from kernel.llm.grammar import TokenConstraint
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


def greedy(row: np.ndarray, seen: list[int], penalty: float) -> int:
    """``sample``'s greedy choice for a float32 row in memory: ``apply_repetition_penalty``
    on a copy of the penalised entries only, then the first maximum."""
    if penalty == 1.0 or not seen:
        return int(row.argmax())
    idx = np.fromiter(set(seen), dtype=np.intp)
    vals = row[idx]
    factor = np.float32(penalty)
    changed = np.where(vals > 0, vals / factor, vals * factor)
    row = row.copy()
    row[idx] = changed
    return int(row.argmax())


def apply_grammar_mask(logits: torch.Tensor, constraint: TokenConstraint) -> None:
    """Set to -inf (in place) the logits of every token the grammar does not allow next,
    including ids past the tokenizer's vocabulary (padding rows of the embedding)."""
    allowed = torch.frombuffer(bytearray(constraint.allowed()), dtype=torch.uint8)
    n = min(len(allowed), len(logits))
    logits[:n].masked_fill_(allowed[:n] == 0, float("-inf"))
    logits[n:] = float("-inf")


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: list[int],
    rng: RandomStream | None,
    constraint: TokenConstraint | None = None,
) -> int:
    """Pick one token id from a 1-D float32 logits row; ``rng`` is the one ``new_rng`` made,
    ``constraint`` the sequence's grammar (None: any token)."""
    if (
        params.temperature == 0.0
        and constraint is None
        and logits.device.type == "cpu"
        and logits.dtype == torch.float32
    ):
        return greedy(logits.numpy(), seen, params.repetition_penalty)
    logits = logits.float().clone()
    apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if constraint is not None:
        apply_grammar_mask(logits, constraint)
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
