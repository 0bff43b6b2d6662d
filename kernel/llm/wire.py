"""The wire formats of remote models: what a generation request becomes on the wire, and what
each server-sent event of the answer means.

Two formats, one class each, chosen by a model's ``kind``:

* ``openai``: Chat Completions (``POST BASE/chat/completions``), which vLLM, SGLang, Ollama,
  llama.cpp's server, LM Studio, ``transformers serve`` and OpenAI itself speak;
* ``anthropic``: the Messages API (``POST BASE/messages``) with its typed events
  (``message_start``, ``content_block_delta``, ``message_delta``, ``error``, ...).

Nothing here does I/O: ``body`` builds the JSON, ``parse`` reads one event, so the formats are
checked without a server and the remote engine (``remote.py``) stays the one place that talks
HTTP. A partial answer (what a preempted or failed-over generation had produced) goes back as
the last, assistant, message: the server continues it (llama.cpp's server and Anthropic do this
for a trailing assistant message; vLLM and SGLang when asked with ``continue_final_message``).

A request with ``tools`` (a tool round on a model declared ``tool_calls = "native"``) offers them
as the API's own tools, and the answer's tool calls come back as ``ToolDelta`` pieces, which
the engine joins; its history carries the earlier rounds' calls and results in the OpenAI
shape (an assistant turn's ``tool_calls``, ``tool`` turns), which the Messages API gets as
``tool_use`` and ``tool_result`` blocks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kernel.llm.request import GenerationRequest

KINDS = ("openai", "anthropic")
CONTINUE_STYLES = ("prefill", "continue_final_message")
# Where an OpenAI-kind server takes a repetition penalty: the Chat Completions API has none, so
# each server family has its own extra field (vLLM and SGLang ``repetition_penalty``, llama.cpp's
# server ``repeat_penalty``), and OpenAI itself refuses either.
PENALTY_FIELDS = ("repetition_penalty", "repeat_penalty")


@dataclass(frozen=True)
class ToolDelta:
    """A piece of a native tool call: the ``index``-th call of the answer, its name when this
    piece starts it, and the next characters of its arguments (JSON text, streamed)."""

    index: int
    name: str = ""
    arguments: str = ""


@dataclass
class Chunk:
    """What one event says: text to append, pieces of tool calls, the end (``finish``: "stop"
    or "length"), the server's token counts when it gives them, or an error it reports inside
    the stream."""

    text: str = ""
    calls: list[ToolDelta] = field(default_factory=list)
    finish: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None
    retryable: bool = False  # the error is the server's load (overloaded), not the request's
    done: bool = False  # the stream is complete (``[DONE]``, ``message_stop``)


@dataclass
class Event:
    """One server-sent event: its ``event:`` name (may be empty) and its joined ``data:``."""

    name: str
    data: str


class SSEDecoder:
    """Server-sent events from lines (the text/event-stream format of the HTML standard):
    ``data:`` lines accumulate, a blank line dispatches, ``:`` lines are comments."""

    def __init__(self) -> None:
        self._name = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._name = ""
                return None
            event = Event(self._name, "\n".join(self._data))
            self._name, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        return None

    def flush(self) -> Event | None:
        """The last event of a stream that ended without its blank line."""
        return self.feed("")


class WireFormat:
    """One remote API. ``path`` is appended to an endpoint's base URL (``.../v1``)."""

    kind: ClassVar[str]
    path: ClassVar[str]

    def __init__(
        self, model: str, continue_style: str = "prefill", penalty_field: str | None = None
    ) -> None:
        self.model = model
        self.continue_style = continue_style
        self.penalty_field = penalty_field  # None: the server's own default applies

    def headers(self, api_key: str | None) -> dict[str, str]:
        raise NotImplementedError

    def body(self, request: GenerationRequest, prefix: str, max_tokens: int) -> dict[str, Any]:
        """The JSON of a streamed request answering ``request``, continuing ``prefix`` (the
        answer so far; "" for a fresh start) with at most ``max_tokens`` more tokens."""
        raise NotImplementedError

    def parse(self, event: Event, native: bool = False) -> Chunk:
        """One event of the answer; ``native``: the request offered native tools."""
        raise NotImplementedError

    def sent_prefix(self, prefix: str) -> str:
        """The partial answer as it goes on the wire (a format may have to alter it)."""
        return prefix

    @staticmethod
    def _messages(request: GenerationRequest) -> list[dict[str, Any]]:
        return [*request.history, *request.messages]


class OpenAIChat(WireFormat):
    """Chat Completions with ``stream: true`` and the usage figures in a last chunk."""

    kind = "openai"
    path = "/chat/completions"

    def headers(self, api_key: str | None) -> dict[str, str]:
        h = {"content-type": "application/json", "accept": "text/event-stream"}
        if api_key:
            h["authorization"] = f"Bearer {api_key}"
        return h

    def body(self, request: GenerationRequest, prefix: str, max_tokens: int) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages += self._messages(request)
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": s.temperature,
        }
        if s.top_p < 1.0:
            body["top_p"] = s.top_p
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if self.penalty_field is not None:
            body[self.penalty_field] = s.repetition_penalty
        if s.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": s.schema, "strict": True},
            }
        if request.tools:
            body["tools"] = [{"type": "function", "function": t} for t in request.tools]
            body["tool_choice"] = request.tool_choice
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
            if self.continue_style == "continue_final_message":
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
        return body

    def parse(self, event: Event, native: bool = False) -> Chunk:
        if event.data.strip() == "[DONE]":
            return Chunk(done=True)
        obj = _json(event.data)
        if "error" in obj:
            return _error_chunk(obj["error"])
        chunk = Chunk()
        usage = obj.get("usage")
        if isinstance(usage, dict):
            chunk.tokens_in = _int(usage.get("prompt_tokens"))
            chunk.tokens_out = _int(usage.get("completion_tokens"))
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                chunk.text += content
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                fn = call.get("function") or {}
                index = _int(call.get("index"))
                name, args = fn.get("name"), fn.get("arguments")
                chunk.calls.append(
                    ToolDelta(
                        index if index is not None else 0,
                        name if isinstance(name, str) else "",
                        args if isinstance(args, str) else "",
                    )
                )
            reason = choice.get("finish_reason")
            if reason:
                chunk.finish = "length" if reason == "length" else "stop"
        return chunk


class AnthropicMessages(WireFormat):
    """The Messages API with ``stream: true``. Its version header is the one the documented
    event stream belongs to; the key goes in ``x-api-key``.

    The API has no JSON-Schema output; its own way to one is a tool the model must call. So a
    request with a schema offers one tool, ``output``, whose input schema is the request's, and
    forces it (``tool_choice``); the tool call's input, streamed as ``input_json_delta``
    events, is the answer's text. A resumed answer (after a preemption or a failover) cannot
    continue inside a tool call: it goes on as a text prefill of the JSON so far, which the
    server no longer holds to the schema. A schema whose top level is not an object (the only
    kind a tool's input may be) is not sent either.

    Native tools go as the API's tools (``input_schema``), ``tool_choice`` as ``auto``,
    ``any`` or ``none``; each ``tool_use`` block of the answer is a call, its
    ``input_json_delta`` events the arguments."""

    kind = "anthropic"
    path = "/messages"
    version = "2023-06-01"
    _stops: ClassVar[dict[str, str]] = {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "max_tokens": "length",
        "refusal": "stop",
        "pause_turn": "stop",
        "tool_use": "stop",
    }

    def headers(self, api_key: str | None) -> dict[str, str]:
        h = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": self.version,
        }
        if api_key:
            h["x-api-key"] = api_key
        return h

    def body(self, request: GenerationRequest, prefix: str, max_tokens: int) -> dict[str, Any]:
        s = request.sampling
        messages = anthropic_turns(self._messages(request))
        if prefix:
            messages.append({"role": "assistant", "content": self.sent_prefix(prefix)})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": True,
            "temperature": min(s.temperature, 1.0),
        }
        if request.system is not None:
            body["system"] = request.system
        if s.top_p < 1.0:
            body["top_p"] = s.top_p
        if s.stop:
            body["stop_sequences"] = list(s.stop)
        schema = object_schema(s.schema) if s.schema is not None and not prefix else None
        if schema is not None:
            body["tools"] = [
                {
                    "name": OUTPUT_TOOL,
                    "description": "Give the whole answer as this tool's input.",
                    "input_schema": schema,
                }
            ]
            body["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL}
        elif request.tools:
            body["tools"] = [
                {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "input_schema": t["parameters"],
                }
                for t in request.tools
            ]
            choice: dict[str, Any] = {"type": _ANTHROPIC_CHOICE[request.tool_choice]}
            if not request.parallel_tool_calls and request.tool_choice != "none":
                choice["disable_parallel_tool_use"] = True
            body["tool_choice"] = choice
        return body

    def sent_prefix(self, prefix: str) -> str:
        """The API refuses a final assistant turn that ends in white space: it goes without,
        and the engine drops the white space the continuation repeats."""
        return prefix.rstrip()

    def parse(self, event: Event, native: bool = False) -> Chunk:
        obj = _json(event.data)
        # an event that is not JSON comes back from _json as an error, whatever its name; an
        # ``error`` event is one whatever its data says (llama-server's has no "type": "error")
        kind = (
            "error"
            if event.name == "error"
            else obj.get("type") or ("error" if "error" in obj else event.name)
        )
        if kind == "error":
            return _error_chunk(obj.get("error") or obj)
        if kind == "message_start":
            usage = (obj.get("message") or {}).get("usage") or {}
            return Chunk(tokens_in=_int(usage.get("input_tokens")))
        index = _int(obj.get("index"))
        if kind == "content_block_start" and native:
            block = obj.get("content_block") or {}
            name = block.get("name")
            if block.get("type") == "tool_use" and isinstance(name, str) and index is not None:
                return Chunk(calls=[ToolDelta(index, name)])
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if native and delta.get("type") == "input_json_delta" and index is not None:
                piece = delta.get("partial_json")
                return Chunk(
                    calls=[ToolDelta(index, arguments=piece if isinstance(piece, str) else "")]
                )
            kinds = {"text_delta": "text", "input_json_delta": "partial_json"}
            field = kinds.get(str(delta.get("type")))
            text = delta.get(field) if field else None
            return Chunk(text=text if isinstance(text, str) else "")
        if kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            usage = obj.get("usage") or {}
            return Chunk(
                finish=self._stops.get(reason, "stop") if reason else None,
                tokens_out=_int(usage.get("output_tokens")),
            )
        if kind == "message_stop":
            return Chunk(done=True)
        return Chunk()  # ping, content_block_start/stop: nothing to do


OUTPUT_TOOL = "output"  # the tool an Anthropic model is made to call for a schema's answer
_ANTHROPIC_CHOICE = {"auto": "auto", "required": "any", "none": "none"}


def anthropic_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat turns in the OpenAI shape as the Messages API has them: an assistant turn's
    ``tool_calls`` become ``tool_use`` blocks (after its text, if any), and the ``tool`` turns
    that follow become one user turn of ``tool_result`` blocks. Plain turns pass as they are."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            blocks: list[dict[str, Any]] = []
            if m.get("content"):
                blocks.append({"type": "text", "text": m["content"]})
            for call in m["tool_calls"]:
                fn = call["function"]
                try:
                    args = json.loads(fn["arguments"])
                except ValueError:
                    args = {}
                blocks.append(
                    {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": args}
                )
            out.append({"role": "assistant", "content": blocks})
        elif m.get("role") == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m["tool_call_id"],
                "content": str(m.get("content") or ""),
            }
            last = out[-1] if out else None
            if last and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        else:
            out.append(m)
    return out


def object_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """``schema`` as a tool's input schema (``"type": "object"`` at the top, which the tool
    step's ``anyOf`` of two objects lacks), or None when its top level may be anything else."""
    if schema.get("type") == "object":
        return schema
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if (
            "type" not in schema
            and isinstance(options, list)
            and options
            and all(isinstance(o, dict) and o.get("type") == "object" for o in options)
        ):
            return {"type": "object", **schema}
    return None


WIRE_FORMATS: dict[str, type[WireFormat]] = {c.kind: c for c in (OpenAIChat, AnthropicMessages)}


class EchoFilter:
    """Drops a continued answer's prefix when the server sends it back first. llama.cpp's
    server streams the whole assistant message, the prefilled part included; vLLM and
    Anthropic send only what follows. The first characters are held until they either repeat
    the prefix (dropped) or stop matching it (released), so both kinds of server work."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.held = ""
        self.deciding = bool(prefix)

    def feed(self, text: str) -> str:
        if not self.deciding:
            return text
        self.held += text
        if len(self.held) >= len(self.prefix):
            self.deciding = False
            held, self.held = self.held, ""
            return held[len(self.prefix) :] if held.startswith(self.prefix) else held
        if self.prefix.startswith(self.held):
            return ""  # still an echo so far: wait for more
        self.deciding = False
        held, self.held = self.held, ""
        return held

    def flush(self) -> str:
        """What is still held when the stream ends (an answer shorter than the prefix)."""
        held, self.held, self.deciding = self.held, "", False
        return held


def error_message(status: int, body: bytes) -> str:
    """A one-line reason from an error response: the API's own message when it gives one."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text[:300]}" if text else f"HTTP {status}"
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict):
        msg = err.get("message") or err.get("type") or json.dumps(err)[:300]
    else:
        msg = str(err)[:300]
    return f"HTTP {status}: {msg}"


def _json(data: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        return {"error": {"message": f"the server sent an event that is not JSON: {data[:200]}"}}
    return obj if isinstance(obj, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_chunk(err: Any) -> Chunk:
    if isinstance(err, dict):
        kind = str(err.get("type") or "")
        message = str(err.get("message") or kind or err)
    else:
        kind, message = "", str(err)
    retryable = kind in ("overloaded_error", "rate_limit_error", "api_error")
    return Chunk(error=message, retryable=retryable)
