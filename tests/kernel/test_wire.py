"""The wire formats of remote models, without a server: what a request becomes on the wire
(Chat Completions, Anthropic Messages) and what each server-sent event of the answer means.

These are the parts of a remote model that can go wrong quietly (a flag a vLLM server needs to
continue a partial answer, a usage figure in the last chunk, an echoed prefix counted twice), so
each rule is checked on the JSON itself: the SSE framing, the request bodies, the parsing of the
documented event sequences and in-stream errors, the echo filter and the error bodies.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest

from kernel.llm.request import GenerationRequest, SamplingParams
from kernel.llm.wire import (
    OUTPUT_TOOL,
    PENALTY_FIELDS,
    AnthropicMessages,
    Chunk,
    EchoFilter,
    Event,
    OpenAIChat,
    SSEDecoder,
    error_message,
)


def request(
    sampling: SamplingParams | None = None,
    system: str | None = None,
    history: tuple[dict[str, str], ...] = (),
) -> GenerationRequest:
    return GenerationRequest(
        request_id=1,
        agent="a",
        messages=({"role": "user", "content": "What is 2+2?"},),
        sampling=sampling or SamplingParams(),
        history=history,
        system=system,
    )


def decode(lines: list[str]) -> list[Event]:
    decoder = SSEDecoder()
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    last = decoder.flush()
    return [*events, last] if last is not None else events


def data(obj: dict[str, Any], name: str = "") -> Event:
    return Event(name, json.dumps(obj))


# ---- SSE framing -------------------------------------------------------------------------------


def test_sse_data_lines_join_with_newline_and_blank_line_dispatches() -> None:
    decoder = SSEDecoder()
    assert decoder.feed("data: one\n") is None
    assert decoder.feed("data: two\n") is None
    assert decoder.feed("\n") == Event("", "one\ntwo")
    assert decoder.feed("\n") is None  # nothing accumulated: nothing dispatched


def test_sse_event_names_and_comments() -> None:
    events = decode(
        [": keep-alive", "event: ping", "data: {}", "", ":another comment", "data: x", ""]
    )
    assert events == [Event("ping", "{}"), Event("", "x")]  # the name does not carry over


def test_sse_crlf_and_value_without_space() -> None:
    assert decode(["event: e\r\n", "data:tight\r\n", "data:  two spaces\r\n", "\r\n"]) == [
        Event("e", "tight\n two spaces")  # only one leading space is part of the framing
    ]


def test_sse_flush_gives_the_last_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed("data: [DONE]") is None
    assert decoder.flush() == Event("", "[DONE]")
    assert decoder.flush() is None


def test_sse_event_without_data_is_not_dispatched() -> None:
    assert decode(["event: message_stop", "", "data: after", ""]) == [Event("", "after")]
    decoder = SSEDecoder()
    decoder.feed("event: lonely")
    assert decoder.flush() is None


# ---- OpenAI Chat Completions: the request ------------------------------------------------------


def test_openai_body_defaults() -> None:
    history = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    body = OpenAIChat("qwen").body(request(history=history), "", 50)
    assert body == {
        "model": "qwen",
        "messages": [*history, {"role": "user", "content": "What is 2+2?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.0,
    }


def test_openai_body_system_first_and_optional_sampling() -> None:
    history = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    sampling = SamplingParams(temperature=0.7, top_p=0.9, stop=("\n\n", "END"), seed=7)
    body = OpenAIChat("m").body(request(sampling, system="Be terse.", history=history), "", 9)
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert body["messages"][1:] == [*history, {"role": "user", "content": "What is 2+2?"}]
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["stop"] == ["\n\n", "END"]
    assert body["seed"] == 7
    assert "response_format" not in body


def test_openai_body_seed_zero_is_sent() -> None:
    assert OpenAIChat("m").body(request(SamplingParams(seed=0)), "", 1)["seed"] == 0


def test_openai_body_schema_becomes_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = OpenAIChat("m").body(request(SamplingParams(schema=schema)), "", 9)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def test_openai_body_prefix_is_a_final_assistant_message() -> None:
    body = OpenAIChat("m").body(request(), "It is ", 9)
    assert body["messages"][-1] == {"role": "assistant", "content": "It is "}
    assert body["messages"][-2]["role"] == "user"
    assert "continue_final_message" not in body and "add_generation_prompt" not in body


def test_openai_body_continue_final_message_flags() -> None:
    wire = OpenAIChat("m", continue_style="continue_final_message")
    body = wire.body(request(), "It is ", 9)
    assert body["messages"][-1] == {"role": "assistant", "content": "It is "}
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    fresh = wire.body(request(), "", 9)  # nothing to continue: a plain request
    assert "continue_final_message" not in fresh and fresh["messages"][-1]["role"] == "user"


def test_openai_headers() -> None:
    assert OpenAIChat("m").headers("sk-1")["authorization"] == "Bearer sk-1"
    assert "authorization" not in OpenAIChat("m").headers(None)


# ---- OpenAI Chat Completions: the answer -------------------------------------------------------


def openai_chunk(content: str | None = None, finish: str | None = None) -> Event:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return data(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def test_openai_parse_content_delta() -> None:
    assert OpenAIChat("m").parse(openai_chunk("Hel")) == Chunk(text="Hel")
    first = data(
        {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
        }
    )
    assert OpenAIChat("m").parse(first) == Chunk()


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("stop", "stop"), ("length", "length"), ("content_filter", "stop"), ("tool_calls", "stop")],
)
def test_openai_parse_finish_reason(reason: str, finish: str) -> None:
    chunk = OpenAIChat("m").parse(openai_chunk(finish=reason))
    assert chunk.finish == finish and chunk.text == "" and not chunk.done


def test_openai_parse_usage_only_last_chunk() -> None:
    event = data(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29},
        }
    )
    assert OpenAIChat("m").parse(event) == Chunk(tokens_in=21, tokens_out=8)
    no_usage = openai_chunk("x")
    assert OpenAIChat("m").parse(no_usage).tokens_in is None


def test_openai_parse_done() -> None:
    assert OpenAIChat("m").parse(Event("", "[DONE]")).done
    assert OpenAIChat("m").parse(Event("", " [DONE] ")).done


def test_openai_parse_error_in_stream() -> None:
    event = data({"error": {"message": "out of memory", "type": "server_error", "code": 500}})
    chunk = OpenAIChat("m").parse(event)
    assert chunk.error == "out of memory" and not chunk.retryable and not chunk.text


def test_openai_parse_non_json_is_an_error() -> None:
    chunk = OpenAIChat("m").parse(Event("", "<html>502 Bad Gateway</html>"))
    assert chunk.error is not None and "not JSON" in chunk.error
    assert "502 Bad Gateway" in chunk.error


# ---- Anthropic Messages ------------------------------------------------------------------------


def test_anthropic_headers() -> None:
    h = AnthropicMessages("claude").headers("sk-ant-1")
    assert h["x-api-key"] == "sk-ant-1"
    assert h["anthropic-version"] == "2023-06-01"
    assert not any(k.lower() == "authorization" for k in h)
    assert "x-api-key" not in AnthropicMessages("claude").headers(None)


def test_anthropic_body() -> None:
    sampling = SamplingParams(temperature=1.7, top_p=0.8, stop=("END",), seed=3)
    history = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    body = AnthropicMessages("claude").body(request(sampling, "Be terse.", history), "", 99)
    assert body == {
        "model": "claude",
        "messages": [*history, {"role": "user", "content": "What is 2+2?"}],
        "max_tokens": 99,
        "stream": True,
        "temperature": 1.0,  # the API's range is 0..1
        "system": "Be terse.",
        "top_p": 0.8,
        "stop_sequences": ["END"],
    }
    assert all(m["role"] != "system" for m in body["messages"])
    plain = AnthropicMessages("claude").body(request(SamplingParams(temperature=0.3)), "", 5)
    assert plain["temperature"] == 0.3
    assert not {"system", "top_p", "stop_sequences"} & set(plain)


def test_anthropic_prefix_is_sent_without_trailing_white_space() -> None:
    wire = AnthropicMessages("claude")
    assert wire.sent_prefix("The answer is \n ") == "The answer is"
    body = wire.body(request(), "The answer is \n ", 9)
    assert body["messages"][-1] == {"role": "assistant", "content": "The answer is"}
    assert OpenAIChat("m").sent_prefix("kept as is ") == "kept as is "


def anthropic_stream(stop_reason: str) -> list[str]:
    """The SSE lines of a streamed Messages answer, in the documented order."""
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01AbCdEf",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 17, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Two"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": " plus two is four."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 9},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    lines: list[str] = []
    for name, obj in events:
        lines += [f"event: {name}", f"data: {json.dumps(obj)}", ""]
    return lines


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop")],
)
def test_anthropic_parse_documented_stream(stop_reason: str, finish: str) -> None:
    wire = AnthropicMessages("claude-x")
    chunks = [wire.parse(e) for e in decode(anthropic_stream(stop_reason))]
    assert len(chunks) == 8
    assert chunks[0] == Chunk(tokens_in=17)
    assert chunks[1] == Chunk() and chunks[2] == Chunk()  # content_block_start, ping
    assert "".join(c.text for c in chunks) == "Two plus two is four."
    assert chunks[5] == Chunk()  # content_block_stop
    assert chunks[6] == Chunk(finish=finish, tokens_out=9)
    assert chunks[7] == Chunk(done=True)
    assert all(c.error is None for c in chunks)


def test_anthropic_parse_ignores_other_deltas() -> None:
    event = data(
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "thinking_delta", "thinking": "Let me see"},
        },
        "content_block_delta",
    )
    assert AnthropicMessages("c").parse(event) == Chunk()


PLACE = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def test_anthropic_schema_goes_as_a_forced_tool() -> None:
    """The Messages API's own way to JSON output: one tool whose input schema is the
    request's, which the model must call."""
    wire = AnthropicMessages("claude")
    body = wire.body(request(SamplingParams(schema=PLACE)), "", 40)
    (tool,) = body["tools"]
    assert tool["name"] == OUTPUT_TOOL and tool["input_schema"] == PLACE
    assert body["tool_choice"] == {"type": "tool", "name": OUTPUT_TOOL}
    # the tool step's schema, an anyOf of two objects, gets the object type a tool input needs
    step = {"anyOf": [PLACE, {"type": "object", "properties": {"answer": {"type": "string"}}}]}
    sent = wire.body(request(SamplingParams(schema=step)), "", 40)["tools"][0]["input_schema"]
    assert sent == {"type": "object", **step}
    # what a tool input cannot be, and a resumed answer, go without
    for schema in ({"type": "array", "items": PLACE}, {"anyOf": [PLACE, {"type": "string"}]}):
        assert "tools" not in wire.body(request(SamplingParams(schema=schema)), "", 40)
    resumed = wire.body(request(SamplingParams(schema=PLACE)), '{"city": "Pa', 40)
    assert "tools" not in resumed and "tool_choice" not in resumed
    assert resumed["messages"][-1] == {"role": "assistant", "content": '{"city": "Pa'}


def test_anthropic_forced_tool_stream_is_the_answer() -> None:
    """The documented events of a tool call: its input, in pieces of partial JSON, is the
    text of the answer."""
    events = [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 30}}}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "output",
                    "input": {},
                },
            },
        ),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
            for piece in ("", '{"city', '": "Par', 'is"}')
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 8},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    lines: list[str] = []
    for name, obj in events:
        lines += [f"event: {name}", f"data: {json.dumps(obj)}", ""]
    chunks = [AnthropicMessages("c").parse(e) for e in decode(lines)]
    assert json.loads("".join(c.text for c in chunks)) == {"city": "Paris"}
    assert Chunk(finish="stop", tokens_out=8) in chunks and chunks[-1] == Chunk(done=True)


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [("overloaded_error", True), ("invalid_request_error", False)],
)
def test_anthropic_parse_error_event(kind: str, retryable: bool) -> None:
    [event] = decode(
        [
            "event: error",
            "data: " + json.dumps({"type": "error", "error": {"type": kind, "message": "Nope"}}),
            "",
        ]
    )
    chunk = AnthropicMessages("c").parse(event)
    assert chunk.error == "Nope" and chunk.retryable is retryable and not chunk.done


def test_an_error_event_is_an_error_whatever_its_data_says() -> None:
    """llama-server's Messages API ends a stream it cannot finish with an ``error`` event whose
    data is its own error object (no ``"type": "error"``): still an error, and the message."""
    data_ = {"code": 500, "message": "output does not match", "type": "server_error"}
    chunk = AnthropicMessages("c").parse(Event("error", json.dumps(data_)))
    assert chunk.error == "output does not match" and not chunk.retryable


def test_anthropic_parse_non_json_is_an_error() -> None:
    # a named event whose data is not JSON is an error, not an empty delta that loses text
    chunk = AnthropicMessages("c").parse(Event("content_block_delta", "{truncated"))
    assert chunk.error is not None and "not JSON" in chunk.error


# ---- the echo filter ---------------------------------------------------------------------------


def run_filter(prefix: str, pieces: list[str]) -> str:
    echo = EchoFilter(prefix)
    return "".join(echo.feed(p) for p in pieces) + echo.flush()


def test_echo_in_one_delta_is_dropped() -> None:
    echo = EchoFilter("The answer")
    assert echo.feed("The answer is 4.") == " is 4."
    assert echo.feed(" Done.") == " Done."
    assert echo.flush() == ""


def test_echo_split_across_deltas_is_dropped() -> None:
    echo = EchoFilter("The answer")
    assert echo.feed("The") == ""
    assert echo.feed(" ans") == ""
    assert echo.feed("wer") == ""  # exactly the prefix: decided, nothing to release yet
    assert echo.feed(" is 4.") == " is 4."
    assert echo.flush() == ""


def test_no_echo_is_released_as_soon_as_it_diverges() -> None:
    echo = EchoFilter("The answer")
    assert echo.feed(" is") == " is"
    assert echo.feed(" 4.") == " 4."
    echo = EchoFilter("The answer")
    assert echo.feed("Th") == ""  # could still be an echo
    assert echo.feed("ree") == "Three"  # it is not: everything held goes out at once
    assert echo.feed(".") == "."


def test_short_answer_matching_the_prefix_so_far_comes_from_flush() -> None:
    echo = EchoFilter("The answer")
    assert echo.feed("The") == ""
    assert echo.flush() == "The"
    assert echo.feed(" more") == " more"  # flushed: no longer deciding


def test_empty_prefix_passes_everything_through() -> None:
    echo = EchoFilter("")
    assert echo.feed("") == "" and echo.feed("abc") == "abc"
    assert echo.flush() == ""


def random_split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(len(text) + 1), rng.randint(0, min(len(text) + 1, 6))))
    edges = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges)]


def test_echo_filter_releases_exactly_the_continuation() -> None:
    """A property over seeded random cases (hypothesis is not a dependency): for any prefix,
    continuation and split into deltas (empty ones included), an echoing server's
    prefix+continuation and a non-echoing server's continuation both come out as exactly the
    continuation."""
    rng = random.Random(20240601)
    alphabet = "ab \n"  # a small alphabet makes partial matches of the prefix common
    for _ in range(3000):
        prefix = "".join(rng.choices(alphabet, k=rng.randint(0, 6)))
        continuation = "".join(rng.choices(alphabet, k=rng.randint(0, 8)))
        echoed = random_split(prefix + continuation, rng)
        assert run_filter(prefix, echoed) == continuation, (prefix, echoed)
        if prefix and not continuation.startswith(prefix):
            plain = random_split(continuation, rng)
            assert run_filter(prefix, plain) == continuation, (prefix, plain)


# ---- error bodies ------------------------------------------------------------------------------


def test_error_message_openai_style() -> None:
    body = json.dumps(
        {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}
    )
    assert error_message(400, body.encode()) == "HTTP 400: max_tokens is too large"


def test_error_message_anthropic_style() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert error_message(529, json.dumps(body).encode()) == "HTTP 529: Overloaded"
    no_message = {"type": "error", "error": {"type": "api_error"}}
    assert error_message(500, json.dumps(no_message).encode()) == "HTTP 500: api_error"


def test_error_message_plain_text_and_empty() -> None:
    assert error_message(502, b"Bad Gateway\n") == "HTTP 502: Bad Gateway"
    assert error_message(503, b"") == "HTTP 503"
    assert error_message(503, b"  \n") == "HTTP 503"
    assert error_message(500, b"x" * 1000) == "HTTP 500: " + "x" * 300
    assert error_message(404, b'{"detail": "Not Found"}') == 'HTTP 404: {"detail": "Not Found"}'
    assert error_message(500, b"\xff\xfe oops").startswith("HTTP 500: ")


def test_the_repetition_penalty_goes_only_where_the_table_names_its_field() -> None:
    sampling = SamplingParams(repetition_penalty=1.3)
    assert not set(PENALTY_FIELDS) & set(OpenAIChat("m").body(request(sampling), "", 9))
    for field in PENALTY_FIELDS:
        body = OpenAIChat("m", penalty_field=field).body(request(sampling), "", 9)
        assert body[field] == 1.3 and not set(PENALTY_FIELDS) - {field} & set(body)


# ---- native tools ------------------------------------------------------------------------------

WEATHER = {
    "name": "weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ROUND = (
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "Looking.",
        "tool_calls": [
            {"id": "call_1_0", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_1_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1_0", "content": '"sunny"'},
    {"role": "tool", "tool_call_id": "call_1_1", "content": "failed (timeout): slow"},
)  # fmt: skip


def native(choice: str = "auto", parallel: bool = True) -> GenerationRequest:
    return GenerationRequest(
        request_id=1,
        agent="a",
        messages=ROUND,
        tools=(WEATHER,),
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )


def test_openai_native_tools_are_the_apis_own() -> None:
    body = OpenAIChat("m").body(native("required", parallel=False), "", 64)
    assert body["tools"] == [{"type": "function", "function": WEATHER}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert "response_format" not in body
    assert body["messages"] == list(ROUND)  # the rounds so far, in the API's own shape
    assert "tools" not in OpenAIChat("m").body(request(), "", 64)


def test_openai_streamed_tool_calls_come_in_pieces() -> None:
    """The documented stream of two parallel calls: the first piece of each names it, the
    rest carry its arguments, and the finish reason is ``tool_calls``."""
    deltas = [
        {"role": "assistant", "content": None},
        {"tool_calls": [{"index": 0, "id": "a", "type": "function",
                         "function": {"name": "weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {"tool_calls": [{"index": 1, "id": "b", "type": "function",
                         "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}]},
    ]  # fmt: skip
    wire = OpenAIChat("m")
    chunks = [wire.parse(data({"choices": [{"index": 0, "delta": d}]})) for d in deltas]
    chunks.append(wire.parse(data({"choices": [{"index": 0, "delta": {},
                                                "finish_reason": "tool_calls"}]})))  # fmt: skip
    calls: dict[int, list[str]] = {}
    for c in chunks:
        for piece in c.calls:
            call = calls.setdefault(piece.index, ["", ""])
            call[0] += piece.name
            call[1] += piece.arguments
    assert calls == {0: ["weather", '{"city": "Paris"}'], 1: ["weather", '{"city": "Rome"}']}
    assert chunks[-1].finish == "stop" and not "".join(c.text for c in chunks)


def test_anthropic_native_tools_and_rounds_are_tool_use_and_tool_result_blocks() -> None:
    wire = AnthropicMessages("c")
    body = wire.body(native("required", parallel=False), "", 64)
    assert body["tools"] == [
        {"name": "weather", "description": "The weather in a city.",
         "input_schema": WEATHER["parameters"]}
    ]  # fmt: skip
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        ROUND[0],
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "call_1_0", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_1_1", "name": "weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1_0", "content": '"sunny"'},
            {"type": "tool_result", "tool_use_id": "call_1_1", "content": "failed (timeout): slow"},
        ]},
    ]  # fmt: skip
    assert wire.body(native("none"), "", 64)["tool_choice"] == {"type": "none"}
    assert wire.body(native("auto"), "", 64)["tool_choice"] == {"type": "auto"}


def test_anthropic_native_tool_use_blocks_are_calls_and_text_stays_text() -> None:
    """The documented stream of a text block and a tool_use block: with native tools the
    tool's partial JSON is its arguments; without (the forced ``output`` tool) it is text."""
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 30}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Let me look."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    ]  # fmt: skip
    wire = AnthropicMessages("c")
    chunks = [wire.parse(data(e, e["type"]), native=True) for e in events]
    assert "".join(c.text for c in chunks) == "Let me look."
    pieces = [p for c in chunks for p in c.calls]
    assert {p.index for p in pieces} == {1} and "".join(p.name for p in pieces) == "weather"
    assert "".join(p.arguments for p in pieces) == '{"city": "Paris"}'
    plain = [wire.parse(data(e, e["type"])) for e in events]
    assert not any(c.calls for c in plain)
    assert "".join(c.text for c in plain) == 'Let me look.{"city": "Paris"}'
