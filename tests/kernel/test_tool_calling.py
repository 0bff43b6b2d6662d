"""Tool calling's pure parts: the step schema a model is held to, reading a step, and how
results go back (the rounds themselves are tested through a mount in tests/fs/test_tools.py
and on the real model in tests/e2e/test_tool_calling.py)."""

from __future__ import annotations

import jsonschema
import pytest

from kernel.llm.grammar import compile_schema
from kernel.tools import ToolResult, ToolSpec
from kernel.tools.calling import (
    ARGUMENT_CHARS,
    bounded,
    call_key,
    native_step,
    native_tools,
    native_turns,
    parse_step,
    render_results,
    step_schema,
    unique_calls,
)

CALC = ToolSpec(
    name="calculator",
    description="Evaluate arithmetic.",
    schema={
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
        "additionalProperties": False,
    },
)
CLOCK = ToolSpec(
    name="datetime",
    description="The time now.",
    schema={"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}}},
)


def valid(schema: dict, step: object) -> bool:
    try:
        jsonschema.validate(step, schema)
    except jsonschema.ValidationError:
        return False
    return True


def test_a_step_is_tool_calls_fitting_each_schema_or_an_answer() -> None:
    auto = step_schema([CALC, CLOCK])
    assert valid(auto, {"tool_calls": [{"tool": "calculator", "arguments": {"expression": "1"}}]})
    assert valid(auto, {"tool_calls": [{"tool": "datetime", "arguments": {}}]})
    assert valid(auto, {"answer": "42"})
    assert not valid(auto, {"tool_calls": [{"tool": "calculator", "arguments": {}}]})
    assert not valid(auto, {"tool_calls": [{"tool": "rm", "arguments": {}}]})
    assert not valid(auto, {"tool_calls": []})
    five = [{"tool": "datetime", "arguments": {}}] * 5
    assert not valid(auto, {"tool_calls": five})
    required, none = step_schema([CALC], "required"), step_schema([CALC], "none")
    assert not valid(required, {"answer": "x"}) and valid(none, {"answer": "x"})
    assert not valid(
        none, {"tool_calls": [{"tool": "calculator", "arguments": {"expression": "1"}}]}
    )
    one = step_schema([CLOCK], "auto", max_calls=1)
    assert not valid(one, {"tool_calls": [{"tool": "datetime", "arguments": {}}] * 2})
    for choice in ("auto", "required", "none"):  # every form compiles to a grammar
        for spaced in (True, False):
            assert compile_schema(step_schema([CALC, CLOCK], choice), spaced)


def test_the_grammar_bounds_every_string_argument() -> None:
    b = bounded(CALC.schema)
    assert b["properties"]["expression"]["maxLength"] == ARGUMENT_CHARS
    assert bounded(CLOCK.schema)["properties"]["timezone"]["maxLength"] == 40  # its own, smaller
    assert CALC.schema["properties"]["expression"] == {"type": "string"}  # the tool's is kept
    enum = bounded({"type": "string", "enum": ["a", "b"]})
    assert "maxLength" not in enum
    assert bounded({"type": "integer"})["maximum"] == 10**15
    assert bounded({"type": "number", "minimum": 0})["minimum"] == 0


def test_reading_a_step() -> None:
    step = parse_step('{"tool_calls": [{"tool": "calculator", "arguments": {"expression": "2"}}]}')
    assert step.calls == (("calculator", {"expression": "2"}),) and step.answer is None
    assert parse_step('{"answer": "done"}').answer == "done"
    for bad in ('{"tool_calls": [{"tool": "calculator", "argu', "[]", '{"other": 1}'):
        with pytest.raises(ValueError):
            parse_step(bad)


def test_results_go_back_in_words_with_the_question() -> None:
    calls = [("calculator", {"expression": "37*91"}), ("datetime", {})]
    results = [
        ToolResult("calculator", True, "ok", value=3367),
        ToolResult("datetime", False, "timeout", error="took longer than 5 s"),
    ]
    text = render_results(calls, results, "What is 37*91?")
    assert 'The result of calculator(expression="37*91") is 3367.' in text
    assert "datetime() failed (timeout): took longer than 5 s" in text
    assert text.endswith("answer: What is 37*91?")
    assert unique_calls([*calls, calls[0]]) == calls


def test_native_tools_are_named_as_a_server_allows() -> None:
    """A function name holds letters, digits, _ and -: an MCP tool's SERVER.TOOL goes as
    SERVER_TOOL, made unique when two would clash, and maps back."""
    mcp = ToolSpec(name="git.log", description=" Commits. ", schema={"type": "object"})
    clash = ToolSpec(name="git_log", description="Also commits.", schema={"type": "object"})
    functions, back = native_tools([CALC, mcp, clash])
    assert [f["name"] for f in functions] == ["calculator", "git_log", "git_log_2"]
    assert back == {"calculator": "calculator", "git_log": "git.log", "git_log_2": "git_log"}
    assert functions[1] == {
        "name": "git_log",
        "description": "Commits.",
        "parameters": {"type": "object"},
    }
    long = ToolSpec(name="s." + "x" * 120, description="d", schema={"type": "object"})
    assert all(len(f["name"]) <= 64 for f in native_tools([long, long])[0])


def test_a_native_step_refuses_what_it_cannot_run() -> None:
    names = {"calculator": "calculator", "git_log": "git.log"}
    assert native_step("Paris.", [], names) == native_step("Paris.", (), names)
    assert native_step("Paris.", [], names).answer == "Paris."
    step = native_step(
        "Working.",
        [
            ("git_log", '{"n": 3}'),
            ("shell", '{"cmd": "rm -rf /"}'),  # not offered: never run
            ("calculator", '{"expression": "1+'),  # not JSON
            ("calculator", '["1+1"]'),  # JSON, not an object
            ("calculator", ""),  # no arguments at all: an empty object
        ],
        names,
        max_calls=5,
    )
    assert step.answer is None and step.text == "Working."
    assert step.calls == (("git.log", {"n": 3}), ("calculator", {}))
    problems = [c.problem for c in step.native]
    assert problems[0] == "" and "not one of the tools offered" in problems[1] and problems[4] == ""
    assert "not a JSON object" in problems[2] and "not a JSON object" in problems[3]
    over = native_step("", [("calculator", '{"expression": "1"}')] * 2, names, max_calls=1)
    assert over.calls == (("calculator", {"expression": "1"}),)
    assert "1 call at most" in over.native[1].problem


def test_native_turns_pair_each_call_with_its_result() -> None:
    names = {"calculator": "calculator"}
    step = native_step("", [("calculator", '{"expression": "2*3"}'), ("shell", "{}")], names)
    out = ToolResult("calculator", True, "ok", value=6)
    turns = native_turns(2, step, {call_key("calculator", {"expression": "2*3"}): out})
    assert turns[0] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_2_0", "type": "function",
             "function": {"name": "calculator", "arguments": '{"expression": "2*3"}'}},
            {"id": "call_2_1", "type": "function",
             "function": {"name": "shell", "arguments": "{}"}},
        ],
    }  # fmt: skip
    assert turns[1] == {"role": "tool", "tool_call_id": "call_2_0", "content": "6"}
    assert turns[2]["tool_call_id"] == "call_2_1" and "not run" in turns[2]["content"]
