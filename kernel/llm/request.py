"""What the kernel sends an engine, and what the engine sends back."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings. temperature 0 means greedy (argmax). ``grammar`` is the
    llguidance grammar the output must match (compiled from ``response_format`` at submission,
    see ``grammar.py``); None leaves the output free."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. ``history`` may be trimmed (oldest turns first) to fit the context;
    ``messages`` (the turn to answer) never is. ``system`` None keeps the model's default."""

    request_id: int
    agent: str
    messages: tuple[dict[str, str], ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    history: tuple[dict[str, str], ...] = ()
    system: str | None = None
    priority: int = 0


@dataclass
class Update:
    """Progress of one request, batched per engine step and applied on the trio thread."""

    request_id: int
    text: str = ""
    started: bool = False
    tokens_in: int = 0
    tokens_cached: int = 0  # of tokens_in, how many came from the prefix cache
    tokens_out: int = 0
    finished: str | None = None  # "stop", "length", or "error"
    error: str | None = None
