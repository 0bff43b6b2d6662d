"""What the kernel sends an engine, what the engine sends back, and what the kernel sees of an
engine (``ModelEngine``: the local ``Engine`` of ``engine.py`` and the ``RemoteEngine`` of
``remote.py`` both are one)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol


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
    # the JSON Schema the grammar was compiled from: a remote model is asked for it by name
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. ``history`` may be trimmed (oldest turns first) to fit the context;
    ``messages`` (the turn to answer) never is. ``system`` None keeps the model's default."""

    request_id: int
    agent: str
    # chat messages in the OpenAI shape: role and content, and for a tool round on a model
    # that calls tools natively also an assistant turn's ``tool_calls`` and a ``tool`` turn's
    # ``tool_call_id``
    messages: tuple[dict[str, Any], ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    history: tuple[dict[str, str], ...] = ()
    system: str | None = None
    priority: int = 0
    # the functions offered to a model that calls tools natively (a remote model with
    # ``tool_calls = "native"``), in the OpenAI shape, and how it may use them: ``auto``,
    # ``required`` or ``none``; empty for every other request
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True


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
    # with ``finished``, the tool calls a native-tools request ended with: (name, arguments as
    # the JSON text the server sent)
    tool_calls: tuple[tuple[str, str], ...] = ()


class ModelEngine(Protocol):
    """One model as the kernel drives it. Every method is called from the kernel's thread and
    returns at once; the engine answers through the ``emit`` callback it was built with."""

    state: str  # new, loading, ready, failed, stopped
    progress: str  # what loading is doing now, for the launcher
    load_error: str | None  # why it failed to load (state "failed")
    loaded: threading.Event  # set once loading ended, however it ended
    queue_info: dict[str, Any]  # the scheduler's view, republished by the engine
    kv_info: dict[str, Any]  # where the state of sequences outside the batch is kept
    native_tools: bool  # its server takes the kernel's tools as its own (``tools`` above)

    def start(self) -> None: ...

    def submit(self, request: GenerationRequest) -> None: ...

    def cancel(self, request_ids: list[int]) -> None: ...

    def set_policy(self, name: str) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def retire(self) -> None:
        """Take no more requests, finish the accepted ones, then stop (a config reload)."""

    def info(self) -> dict[str, Any]: ...

    @property
    def policy(self) -> str: ...

    @property
    def tokens_per_s(self) -> float: ...
