"""A syscall's result: its bytes as they are produced, its state, and the waits on it.

Every syscall gets exactly one Result, including one that failed validation, so that whoever
waits on the agent's ``out`` always gets an answer. The bytes a reader sees are the same on
``stream`` (as they grow), on ``out`` and in ``results/N`` (once finished):

* a finished answer is the generated text plus a final newline if it lacks one;
* a failed or cancelled syscall ends with a line ``error: MESSAGE`` (after any partial text).

Results live on the trio thread; waits use trio events, so thousands of blocked readers cost
one small object each, not a thread.
"""

from __future__ import annotations

import enum
import errno
import json
import time
from typing import Any

from kernel.notify import ChangeSignal
from kernel.syscalls import Syscall, ToolCall


class ResultState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (ResultState.DONE, ResultState.FAILED, ResultState.CANCELLED)


class Result:
    """The output of one syscall of one agent; ``id`` is the agent's syscall number (1, 2, ...)."""

    def __init__(self, result_id: int, agent: str, syscall: Syscall | None, reserved: bool) -> None:
        self.id = result_id
        self.agent = agent
        self.syscall = syscall
        self.state = ResultState.QUEUED
        self.data = bytearray()
        # where the generated text ends in ``data``: before the newline and the error line
        # that ``finish`` adds (None until then); ``agents/NAME/call`` streams the text alone
        self.text_end: int | None = None
        self.error: str | None = None
        self.errno = 0
        self.finish_reason: str | None = None
        self.created = time.time()
        self.started: float | None = None
        self.first_token: float | None = None
        self.finished_at: float | None = None
        self.tokens_in = 0
        self.tokens_cached = 0
        self.tokens_out = 0
        # Reserved results belong to the transaction descriptor that submitted them and are
        # skipped by ``out``; releasing the descriptor unreserves what it never read.
        self.reserved = reserved
        self.delivered = False
        self.sources: list[str] = []  # memory files and store passages put in the prompt
        self.args_digest = ""  # the audit log's digest of the syscall as written (kernel/audit.py)
        self.tool_calls: list[dict[str, Any]] = []  # an llm call's tool calls, as they finish
        self.model: str | None = None  # the model an llm call was handed to (its name)
        # after a crash (kernel/journal.py): how often it was started again, or that it was not
        self.restarts = 0
        self.interrupted = False
        self.changed = ChangeSignal()

    # ---- state changes (trio thread only) ---------------------------------------------------

    def _notify(self) -> None:
        self.changed.fire()

    def mark_running(self) -> None:
        if self.state is ResultState.QUEUED:
            self.state = ResultState.RUNNING
            self.started = time.time()
            self._notify()

    def append(self, text: str) -> None:
        if text and not self.finished:
            if self.first_token is None:
                self.first_token = time.time()
            self.data += text.encode()
            self._notify()

    def finish(
        self,
        state: ResultState,
        error: str | None = None,
        code: int = 0,
        reason: str | None = None,
    ) -> None:
        """Close the result; idempotent (a second finish is ignored)."""
        if self.finished:
            return
        self.text_end = len(self.data)
        if self.data and not self.data.endswith(b"\n"):
            self.data += b"\n"
        if state is not ResultState.DONE:
            self.error = error or state.value
            self.errno = code or (errno.ECANCELED if state is ResultState.CANCELLED else errno.EIO)
            self.data += f"error: {self.error}\n".encode()
        self.state = state
        self.finish_reason = reason or state.value
        self.finished_at = time.time()
        self._notify()

    # ---- the journal's record of it -----------------------------------------------------------

    RECORDED = (
        "error", "errno", "finish_reason", "created", "started", "first_token", "finished_at",
        "tokens_in", "tokens_cached", "tokens_out", "sources", "args_digest", "tool_calls",
        "restarts", "interrupted", "text_end", "model",
    )  # fmt: skip

    def record(self) -> dict[str, Any]:
        """What the journal keeps of a finished result besides its bytes and state."""
        return {k: getattr(self, k) for k in self.RECORDED}

    def restore(self, state: str, data: bytes, record: dict[str, Any], delivered: bool) -> None:
        """Become the finished result the journal recorded (at the next mount)."""
        for key in self.RECORDED:
            if key in record:
                setattr(self, key, record[key])
        self.state = ResultState(state)
        self.data = bytearray(data)
        self.delivered = delivered

    # ---- queries ----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state is ResultState.DONE

    def body(self) -> bytes:
        return bytes(self.data)

    def text_length(self) -> int:
        """How many bytes of ``data`` are generated text: all of them while it grows, then
        everything before what ``finish`` added (a result the journal kept from before that
        was recorded has only its whole body)."""
        if self.text_end is None or self.text_end > len(self.data):
            return len(self.data)
        return self.text_end

    async def wait_finished(self) -> None:
        while not self.finished:
            await self.changed.wait()

    def prompt_summary(self, limit: int = 500) -> str | None:
        """The question asked (the prompt, or the last message), shortened for display."""
        call = self.syscall
        if call is None:
            return None
        if isinstance(call, ToolCall):  # a memory or storage call: show its fields
            text = json.dumps(call.args, ensure_ascii=False)
        elif call.prompt is not None:
            text = call.prompt
        else:
            assert call.messages is not None  # validation guarantees a prompt or messages
            text = call.messages[-1].content
        return text if len(text) <= limit else text[: limit - 1] + "…"

    @property
    def latency_s(self) -> float | None:
        """Seconds from submission to the end; ``None`` until it ends."""
        return None if not self.finished_at else round(self.finished_at - self.created, 4)

    @property
    def ttft_s(self) -> float | None:
        """Seconds from submission to the first generated token; ``None`` before one."""
        return None if not self.first_token else round(self.first_token - self.created, 4)

    def meta(self) -> dict[str, Any]:
        """What ``results/N.json`` shows: everything about the syscall except its text."""
        return {
            "id": self.id,
            "agent": self.agent,
            "call": self.syscall.call if self.syscall else None,
            "model": self.model,
            "prompt": self.prompt_summary(),
            "state": self.state.value,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "errno": self.errno or None,
            "tokens_in": self.tokens_in,
            "tokens_cached": self.tokens_cached,
            "tokens_out": self.tokens_out,
            "bytes": len(self.data),
            "created": self.created,
            "started": self.started,
            "finished": self.finished_at,
            "time_to_first_token_s": self.ttft_s,
            "latency_s": self.latency_s,
            "delivered": self.delivered,
            "sources": self.sources,
            "tools": list(getattr(self.syscall, "tools", ())),  # offered to the model
            "tool_calls": self.tool_calls,
            "restarts": self.restarts,
            "interrupted": self.interrupted,
        }
