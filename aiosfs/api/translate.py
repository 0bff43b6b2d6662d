"""Chat Completions and Embeddings, as syscalls of the mount and back (docs/openai-api.md).

Pure functions, no I/O: a request body becomes the JSON of an ``llm`` (or ``embed``) syscall,
and the lines ``agents/NAME/call`` answers with become response objects, stream chunks or an
error. The ``llm`` call's fields are Chat Completions' own for the most part; what differs:

* messages: ``developer`` is a system message, text parts are joined, a ``tool`` message is a
  user message carrying the result, an assistant's ``tool_calls`` are written as the JSON the
  model produces when it calls (so it reads its own calls back in the form it makes them);
* tools: the mount's ``tools`` field names the mount's own tools (``tools/``), which the kernel
  runs; a client's functions are the client's to run, so they become a ``json_schema``
  ``response_format`` made from their parameter schemas (``{"tool_calls": [{"tool",
  "arguments"}]}`` or ``{"answer": TEXT}``), which the grammar holds every token to; the step
  is read back as OpenAI ``tool_calls`` (``finish_reason`` ``"tool_calls"``).

What the mount checks itself (ranges, response formats, schemas its compiler cannot enforce)
is left to it: its message comes back as the 400's.
"""

from __future__ import annotations

import base64
import errno
import json
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

# ---- errors -----------------------------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

ERRNO_STATUS = {
    errno.EINVAL: 400,
    errno.EACCES: 403,
    errno.EPERM: 403,
    errno.ENOENT: 404,
    errno.EFBIG: 413,
    errno.E2BIG: 413,
    errno.EAGAIN: 429,
    errno.EBUSY: 429,
    errno.ENOSPC: 503,
    errno.ECANCELED: 503,
}
"""The HTTP status of a syscall's errno; anything else (EIO: an engine error) is 500."""


class ApiError(Exception):
    """An error answer: its HTTP status and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or _TYPES.get(status, "server_error" if status >= 500 else "api_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def errno_error(code: int, message: str) -> ApiError:
    """The error answer for a failed syscall or file operation."""
    status = ERRNO_STATUS.get(code, 500)
    name = errno.errorcode.get(code, str(code))
    return ApiError(status, message, code=name)


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


# ---- small checks -------------------------------------------------------------------------------


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"{what} must be a JSON object", what)
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise bad(f"{what} must be a string", what)
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise bad(f"{what} must be true or false", what)
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"{what} must be a number", what)
    return float(value)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{what} must be an integer", what)
    return value


# ---- chat completions: the request --------------------------------------------------------------

_PASSED = ("temperature", "top_p", "seed", "stop", "response_format")
"""Fields the ``llm`` call takes as Chat Completions has them (the mount checks their values)."""

_IGNORED = frozenset(
    {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
)
"""Fields that change nothing about the answer (``user`` picks the agent, before this)."""

_KNOWN = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options",
        "n", "tools", "tool_choice", "parallel_tool_calls", "frequency_penalty",
        "presence_penalty", "logprobs", "top_logprobs", "logit_bias", *_PASSED, *_IGNORED,
    }
)  # fmt: skip

MAX_PARALLEL_CALLS = 4
"""Tool calls one step may make when ``parallel_tool_calls`` is not false (the mount's figure)."""

_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Function:
    """A function the client defines in ``tools`` (and runs itself)."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ChatPlan:
    """A checked Chat Completions request: the ``llm`` syscall to write, and how to answer."""

    model: str
    syscall: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    functions: tuple[Function, ...] = ()  # client tools in play: the answer is a step to read
    parallel: bool = True


def plan_chat(body: Any) -> ChatPlan:
    """Check a Chat Completions request and turn it into an ``llm`` syscall."""
    body = _obj(body, "the request body")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    model = _str(body.get("model"), "model") if "model" in body else None
    if not model:
        raise bad("you must provide a model parameter (one of GET /v1/models)", "model")
    _refuse_unsupported(body)
    call: dict[str, Any] = {"call": "llm", "model": model}
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise bad("messages must be a non-empty list", "messages")
    messages = convert_messages(raw_messages)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        call["max_tokens"] = limit  # the mount checks the range against its own limit
    for key in _PASSED:
        if body.get(key) is not None:
            call[key] = body[key]
    stream = _bool(body.get("stream", False), "stream") if body.get("stream") is not None else False
    include_usage = False
    if body.get("stream_options") is not None:
        if not stream:
            raise bad("stream_options is only allowed when stream is true", "stream_options")
        options = _obj(body["stream_options"], "stream_options")
        include_usage = bool(options.get("include_usage", False))
    parallel = body.get("parallel_tool_calls")
    parallel = True if parallel is None else _bool(parallel, "parallel_tool_calls")
    functions = parse_tools(body.get("tools"))
    choice = parse_tool_choice(body.get("tool_choice"), functions)
    in_play: tuple[Function, ...] = ()
    if functions and choice != "none":
        if body.get("response_format") is not None:
            raise bad(
                "response_format cannot be combined with tools (the tools decide the format)",
                "response_format",
            )
        if body.get("stop") is not None:
            raise bad("stop cannot be combined with tools", "stop")
        in_play = (choice,) if isinstance(choice, Function) else functions
        schema = step_schema(in_play, "required" if choice != "auto" else "auto", parallel)
        call["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "tool_step", "schema": schema, "strict": True},
        }
        messages = with_tools_prompt(messages, in_play, choice != "auto", parallel)
    call["messages"] = messages
    user = body.get("user")
    return ChatPlan(
        model=model,
        syscall=call,
        stream=stream,
        include_usage=include_usage,
        user=_str(user, "user") if user is not None else None,
        functions=in_play,
        parallel=parallel,
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields whose non-default values the mount cannot honour: a clear 400, never ignored."""
    n = body.get("n")
    if n is not None and n != 1:
        raise bad("n must be 1: the mount answers one choice per request", "n")
    for key in ("frequency_penalty", "presence_penalty"):
        value = body.get(key)
        if value is not None and _number(value, key) != 0:
            raise bad(f"{key} is not supported (the agent's repetition_penalty is)", key)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("logprobs are not supported", "logprobs")
    if body.get("logit_bias"):
        raise bad("logit_bias is not supported", "logit_bias")


def text_of(content: Any, where: str, allow_none: bool = False) -> str:
    """A message's content as text: a string, or a list of text parts joined."""
    if content is None and allow_none:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(f"{where} must be a string or a list of text parts", where)
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise bad(f"{where}[{j}]: only text parts are supported, not {kind!r}", where)
        parts.append(_str(part.get("text"), f"{where}[{j}].text"))
    return "".join(parts)


def convert_messages(raw: list[Any]) -> list[dict[str, str]]:
    """Chat Completions messages as the ``llm`` call's ``{role, content}`` list."""
    out: list[dict[str, str]] = []
    names: dict[str, str] = {}  # tool call id -> function name, to label the results
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        m = _obj(m, where)
        role = m.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": text_of(m.get("content"), f"{where}.content")})
        elif role == "user":
            out.append({"role": "user", "content": text_of(m.get("content"), f"{where}.content")})
        elif role == "assistant":
            text = text_of(m.get("content"), f"{where}.content", allow_none=True)
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise bad(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
            if calls:
                steps = []
                for j, c in enumerate(calls):
                    fn = _obj(_obj(c, f"{where}.tool_calls[{j}]").get("function"),
                              f"{where}.tool_calls[{j}].function")  # fmt: skip
                    name = _str(fn.get("name"), f"{where}.tool_calls[{j}].function.name")
                    args = _str(fn.get("arguments", "{}"), f"{where}.tool_calls[{j}].arguments")
                    try:
                        parsed = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        parsed = args  # shown to the model as the client sent it
                    if isinstance(c.get("id"), str):
                        names[c["id"]] = name
                    steps.append({"tool": name, "arguments": parsed})
                step = json.dumps({"tool_calls": steps}, ensure_ascii=False)
                text = f"{text}\n{step}" if text else step
            out.append({"role": "assistant", "content": text})
        elif role == "tool":
            call_id = m.get("tool_call_id")
            result = text_of(m.get("content"), f"{where}.content")
            name = names.get(call_id, "function") if isinstance(call_id, str) else "function"
            out.append({"role": "user", "content": f"[result of {name}]\n{result}"})
        elif role == "function":
            raise bad(f'{where}: role "function" is the old API; use "tool"', f"{where}.role")
        else:
            raise bad(
                f"{where}.role must be system, developer, user, assistant or tool, not {role!r}",
                f"{where}.role",
            )
    return out


def parse_tools(tools: Any) -> tuple[Function, ...]:
    """The client's functions (``tools``)."""
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise bad("tools must be a list", "tools")
    out: dict[str, Function] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        tool = _obj(tool, where)
        if tool.get("type") != "function":
            raise bad(f'{where}.type must be "function", not {tool.get("type")!r}', where)
        fn = _obj(tool.get("function"), f"{where}.function")
        name = _str(fn.get("name"), f"{where}.function.name")
        if not _FUNCTION_NAME.fullmatch(name):
            raise bad(f"{where}.function.name must be 1-64 of a-z A-Z 0-9 _ -", where)
        if name in out:
            raise bad(f"{where}: function {name!r} is defined twice", where)
        params = fn.get("parameters")
        params = {"type": "object", "properties": {}} if params is None else params
        description = fn.get("description") or ""
        out[name] = Function(name, _str(description, f"{where}.function.description"),
                             _obj(params, f"{where}.function.parameters"))  # fmt: skip
    return tuple(out.values())


def parse_tool_choice(value: Any, functions: tuple[Function, ...]) -> str | Function:
    """``auto`` (default with tools), ``none``, ``required``, or one named function."""
    if value is None:
        return "auto" if functions else "none"
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise bad("tool_choice must be auto, none, required or a function", "tool_choice")
        if value != "none" and not functions:
            raise bad(f'tool_choice "{value}" needs tools', "tool_choice")
        return value
    choice = _obj(value, "tool_choice")
    name = _obj(choice.get("function"), "tool_choice.function").get("name")
    for fn in functions:
        if fn.name == name:
            return fn
    raise bad(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")


def step_schema(functions: tuple[Function, ...], choice: str, parallel: bool) -> dict[str, Any]:
    """The JSON Schema of one step: calls of ``functions`` (their arguments held to each
    one's parameters), or, with ``auto``, an answer. Each function's ``$defs`` are lifted to
    the top, renamed apart, since a ``$ref`` points from the document's root."""
    defs: dict[str, Any] = {}
    options = []
    for fn in functions:
        params = dict(fn.parameters)
        local = params.pop("$defs", None) or params.pop("definitions", None) or {}
        renamed = {k: f"{fn.name}.{k}" for k in local}
        for k, v in local.items():
            defs[renamed[k]] = _reref(v, renamed)
        options.append(
            {
                "type": "object",
                "properties": {"tool": {"const": fn.name}, "arguments": _reref(params, renamed)},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    calls = {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "items": options[0] if len(options) == 1 else {"anyOf": options},
                "minItems": 1,
                "maxItems": MAX_PARALLEL_CALLS if parallel else 1,
            }
        },
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    schema: dict[str, Any] = calls
    if choice == "auto":
        answer = {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        }
        schema = {"anyOf": [calls, answer]}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def _reref(node: Any, renamed: dict[str, str]) -> Any:
    """``node`` with its local ``$ref``s pointing at the lifted, renamed definitions."""
    if isinstance(node, list):
        return [_reref(v, renamed) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str):
            for prefix in ("#/$defs/", "#/definitions/"):
                if v.startswith(prefix) and v[len(prefix) :] in renamed:
                    v = "#/$defs/" + renamed[v[len(prefix) :]]
            out[k] = v
        else:
            out[k] = _reref(v, renamed)
    return out


def with_tools_prompt(
    messages: list[dict[str, str]], functions: tuple[Function, ...], must_call: bool, parallel: bool
) -> list[dict[str, str]]:
    """The messages with the functions described in the system prompt (added to the first
    system message, or as a new one)."""
    most = f"up to {MAX_PARALLEL_CALLS} at once" if parallel else "one at a time"
    lines = [
        "You can call these functions. To call them, reply with one JSON object "
        f'{{"tool_calls": [{{"tool": NAME, "arguments": {{...}}}}]}} ({most}); the results '
        "come back in the next user message."
    ]
    if not must_call:
        lines.append('To answer the user instead, reply with {"answer": TEXT}.')
    lines.append("Functions:")
    for fn in functions:
        lines.append(f"- {fn.name}: {fn.description}".rstrip(": "))
        lines.append(f"  arguments: {json.dumps(fn.parameters, ensure_ascii=False)}")
    prompt = "\n".join(lines)
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{prompt}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


# ---- chat completions: the answer ---------------------------------------------------------------


@dataclass
class Answer:
    """What a finished ``llm`` syscall says, in Chat Completions' terms."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    usage: dict[str, Any] = field(default_factory=dict)


def usage_of(meta: dict[str, Any]) -> dict[str, Any]:
    """``usage`` from a result's metadata (``results/N.json``)."""
    prompt, completion = int(meta.get("tokens_in") or 0), int(meta.get("tokens_out") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(meta.get("tokens_cached") or 0)},
    }


def failure(meta: dict[str, Any]) -> ApiError | None:
    """The error answer of a result that did not finish well, None for one that did."""
    if meta.get("state") == "done":
        return None
    return errno_error(int(meta.get("errno") or errno.EIO), str(meta.get("error") or "failed"))


def answer_of(text: str, meta: dict[str, Any], plan: ChatPlan) -> Answer:
    """Read a finished result: free text, or with functions in play, the step it made."""
    reason = meta.get("finish_reason")
    reason = reason if reason in ("stop", "length") else "stop"
    usage = usage_of(meta)
    if not plan.functions:
        return Answer(text, None, reason, usage)
    try:
        step = json.loads(text)
    except json.JSONDecodeError:  # cut off by max_tokens before the step was complete
        return Answer(text, None, "length", usage)
    if isinstance(step, dict) and isinstance(step.get("tool_calls"), list):
        calls = [
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {
                    "name": c["tool"],
                    "arguments": json.dumps(c["arguments"], ensure_ascii=False),
                },
            }
            for c in step["tool_calls"]
        ]
        return Answer(None, calls, "tool_calls", usage)
    if isinstance(step, dict) and isinstance(step.get("answer"), str):
        return Answer(step["answer"], None, "stop", usage)
    return Answer(text, None, reason, usage)


def completion(rid: str, created: int, model: str, answer: Answer) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None}
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": answer.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": answer.usage,
    }


def chunk(
    rid: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; without ``delta`` the usage chunk (no choices)."""
    out: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def final_deltas(answer: Answer) -> list[dict[str, Any]]:
    """The deltas that carry an answer read at its end (with functions in play, the step
    can only be read once it is complete)."""
    if answer.tool_calls:
        return [{"tool_calls": [{"index": i, **call} for i, call in enumerate(answer.tool_calls)]}]
    return [{"content": answer.content}] if answer.content else []


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: JSON`` (or ``data: [DONE]``) and a blank line."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


# ---- embeddings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedPlan:
    model: str
    texts: list[str]
    base64: bool
    dimensions: int | None
    user: str | None


def plan_embeddings(body: Any) -> EmbedPlan:
    """Check an Embeddings request."""
    body = _obj(body, "the request body")
    unknown = sorted(set(body) - {"model", "input", "encoding_format", "dimensions", "user"})
    if unknown:
        raise bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    model = _str(body.get("model"), "model") if body.get("model") is not None else ""
    if not model:
        raise bad("you must provide a model parameter (one of GET /v1/models)", "model")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts:
        raise bad("input must be a string or a non-empty list of strings", "input")
    if not all(isinstance(t, str) for t in texts):
        raise bad("input must be text: token arrays are not supported", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad('encoding_format must be "float" or "base64"', "encoding_format")
    dims = body.get("dimensions")
    user = body.get("user")
    return EmbedPlan(
        model,
        texts,
        fmt == "base64",
        None if dims is None else _int(dims, "dimensions"),
        None if user is None else _str(user, "user"),
    )


def embeddings(plan: EmbedPlan, answer: dict[str, Any]) -> dict[str, Any]:
    """The ``list`` of embeddings from an ``embed`` syscall's answer."""
    dim = int(answer["dim"])
    if plan.dimensions is not None and plan.dimensions != dim:
        raise bad(
            f"dimensions must be {dim}: the embedder {answer['embedder']!r} makes {dim}",
            "dimensions",
        )
    data = []
    for i, vector in enumerate(answer["data"]):
        value: Any = vector
        if plan.base64:
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = int(answer.get("tokens", 0))
    return {
        "object": "list",
        "data": data,
        "model": plan.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
