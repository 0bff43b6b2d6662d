"""Structured output on the tiny random model: whatever random weights prefer, an answer under a
``response_format`` parses as JSON and validates against its schema — greedy and sampled, alone,
in a batch beside unconstrained requests (which stay token for token what they are without such
neighbours), and across preemption. An answer cut short by ``max_tokens`` says "length" and is
never a complete document. Invalid formats are EINVAL at submission."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kernel import Kernel
from kernel.errors import InvalidArgument
from kernel.llm.core import LLMCore
from kernel.llm.grammar import parse_response_format
from kernel.results import Result
from kernel.syscalls import LLMCall, parse_syscall
from tests.conftest import make_kernel

# Every string, number and list is bounded, so a random model must finish within max_tokens.
SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "choice": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "ok": {"type": "boolean"},
            "level": {"type": "integer", "minimum": -3, "maximum": 3},
        },
        "required": ["color", "ok"],
        "additionalProperties": False,
    },
    "numbers": {
        "type": "array",
        "items": {"type": "integer", "minimum": -50, "maximum": 50},
        "minItems": 1,
        "maxItems": 4,
    },
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 999},
                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                    "active": {"type": "boolean"},
                },
                "required": ["id", "tags"],
                "additionalProperties": False,
            },
            "kind": {"const": "account"},
        },
        "required": ["user", "kind"],
        "additionalProperties": False,
    },
}

PROMPTS = [f"Describe item {i} as JSON, please: {'word ' * (i % 5)}" for i in range(8)]


def fmt(schema: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": schema, "schema": SCHEMAS[schema]}}


def body(
    prompt: str, schema: str | None, sampled: bool = False, seed: int = 0, **extra: Any
) -> bytes:
    call: dict[str, Any] = {
        "call": "llm",
        "prompt": prompt,
        "max_tokens": 96,
        "repetition_penalty": 1.0,
        **extra,
    }
    if schema is not None:
        call["response_format"] = fmt(schema)
    if sampled:
        call.update(temperature=1.0, seed=seed)
    return json.dumps(call).encode()


def text(r: Result) -> str:
    return r.body().decode().removesuffix("\n")


def check_valid(r: Result, schema: str) -> Any:
    assert r.finish_reason == "stop", (r.finish_reason, r.error, text(r))
    doc = json.loads(text(r))
    jsonschema.validate(doc, SCHEMAS[schema])
    return doc


async def run(k: Kernel, bodies: list[bytes], one_at_a_time: bool = False) -> list[Result]:
    await k.start()
    await k.wait_loaded()
    k.create_agent("a")
    out: list[Result] = []
    if one_at_a_time:
        for b in bodies:
            r = k.submit("a", b)
            await r.wait_finished()
            out.append(r)
        return out
    out = [k.submit("a", b) for b in bodies]
    for r in out:
        await r.wait_finished()
    return out


async def answers(core: LLMCore, bodies: list[bytes], **config: Any) -> tuple[list[Result], Any]:
    one = config.pop("one_at_a_time", False)
    k = make_kernel(core, prefix_cache_mb=0, **config)
    try:
        results = await run(k, bodies, one)
        engine = k.engines[core.name]
        return results, {**engine.info(), **engine.kv_info}
    finally:
        await k.shutdown()


CASES = [(p, s) for s in SCHEMAS for p in PROMPTS]


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
async def test_every_answer_validates_alone_and_batched(tiny_core: LLMCore, sampled: bool) -> None:
    bodies = [body(p, s, sampled, seed=i) for i, (p, s) in enumerate(CASES)]
    batched, info = await answers(tiny_core, bodies, max_running=32)
    assert info["mean_batch"] > 8
    docs = [check_valid(r, s) for r, (_, s) in zip(batched, CASES, strict=True)]
    assert len({json.dumps(d) for d in docs}) > 4  # the prompts really steer different answers
    # a constrained request is as exact as any other: alone it gives the same tokens
    some = list(range(0, len(CASES), 5))
    alone, _ = await answers(
        tiny_core, [bodies[i] for i in some], max_running=1, one_at_a_time=True
    )
    assert [text(r) for r in alone] == [text(batched[i]) for i in some]


async def test_unconstrained_neighbours_are_unchanged(tiny_core: LLMCore) -> None:
    """16 in one batch, half constrained: the free half is token for token what it is in a batch
    of its own, and the constrained half validates."""
    free = [body(f"Tell me a story about {i}", None, sampled=i % 2 == 1, seed=i) for i in range(8)]
    cases = [(PROMPTS[i], list(SCHEMAS)[i % 4]) for i in range(8)]
    bound = [body(p, s, sampled=i % 2 == 0, seed=100 + i) for i, (p, s) in enumerate(cases)]
    mixed_bodies = [b for pair in zip(free, bound, strict=True) for b in pair]
    mixed, info = await answers(tiny_core, mixed_bodies, max_running=16)
    assert info["mean_batch"] > 8
    reference, _ = await answers(tiny_core, free, max_running=16)
    assert [text(r) for r in mixed[0::2]] == [text(r) for r in reference]
    assert all(r.finish_reason == "length" for r in reference)  # long enough to overlap
    for r, (_, s) in zip(mixed[1::2], cases, strict=True):
        check_valid(r, s)


async def test_preempted_sequences_keep_their_grammar_state(
    tiny_core: LLMCore, tmp_path: Path
) -> None:
    cases = CASES[::2]
    bodies = [body(p, s, sampled=i % 2 == 1, seed=i) for i, (p, s) in enumerate(cases)]
    plain, _ = await answers(tiny_core, bodies, max_running=32)
    preempted, info = await answers(
        tiny_core, bodies, scheduler="rr", max_running=4, quantum=3, data_dir=tmp_path
    )
    assert info["contexts"]["snapshots"] > 20 and info["contexts"]["restores"] > 20
    for r, (_, s) in zip(preempted, cases, strict=True):
        check_valid(r, s)
    assert [text(r) for r in preempted] == [text(r) for r in plain]


async def test_json_object_is_an_object_or_says_length(tiny_core: LLMCore) -> None:
    bodies = [
        json.dumps(
            {
                "call": "llm",
                "prompt": p,
                "max_tokens": 40,
                "response_format": {"type": "json_object"},
                **({"temperature": 0.8, "seed": i} if i % 2 else {}),
            }
        ).encode()
        for i, p in enumerate(PROMPTS)
    ]
    results, _ = await answers(tiny_core, bodies, max_running=16)
    for r in results:
        assert r.finish_reason in ("stop", "length"), r.error
        if r.finish_reason == "stop":
            assert isinstance(json.loads(text(r)), dict)
        else:  # cut short: an incomplete document, never passed off as a whole one
            assert text(r).startswith("{")
            with pytest.raises(json.JSONDecodeError):
                json.loads(text(r))


async def test_running_out_of_tokens_says_length(tiny_core: LLMCore) -> None:
    bodies = [body(p, "nested", max_tokens=4) for p in PROMPTS[:4]]
    results, _ = await answers(tiny_core, bodies, max_running=4)
    for r in results:
        assert r.finish_reason == "length"
        assert text(r).startswith('{"')
        with pytest.raises(json.JSONDecodeError):
            json.loads(text(r))


async def test_text_format_is_unconstrained(tiny_core: LLMCore) -> None:
    plain = [body(p, None) for p in PROMPTS[:4]]
    as_text = [
        json.dumps({**json.loads(b), "response_format": {"type": "text"}}).encode() for b in plain
    ]
    a, _ = await answers(tiny_core, plain, max_running=4)
    b, _ = await answers(tiny_core, as_text, max_running=4)
    assert [text(r) for r in a] == [text(r) for r in b]


BAD = [
    ("json", "must be an object"),
    ({}, "type must be one of text, json_object, json_schema"),
    ({"type": "xml"}, "type must be one of"),
    ({"type": "json_object", "schema": {}}, 'unknown field "schema" for type json_object'),
    ({"type": "json_schema"}, 'needs "json_schema"'),
    ({"type": "json_schema", "json_schema": {"schema": {}}}, '"json_schema.name" must be'),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, "may contain only"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, '"json_schema.schema" must be'),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "JSON Schema object"),
    (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}},
        '"json_schema.strict" must be true or false',
    ),
    (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "extra": 1}},
        'unknown field "json_schema.extra"',
    ),
    (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integr"}}},
        "invalid or unsupported schema",
    ),
    (
        {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}},
        },
        "minimum (5) is greater than maximum (1)",
    ),
    (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}},
        "invalid or unsupported schema",
    ),
]


@pytest.mark.parametrize(("value", "message"), BAD)
def test_invalid_response_format_is_einval(value: Any, message: str) -> None:
    data = json.dumps({"call": "llm", "prompt": "x", "response_format": value}).encode()
    with pytest.raises(InvalidArgument, match="response_format") as e:
        parse_syscall(data)
    assert message in e.value.message
    assert e.value.errno == errno.EINVAL


def test_stop_strings_cannot_cut_a_document() -> None:
    data = body("x", "person", stop=["}"])
    with pytest.raises(InvalidArgument, match='"stop" cannot be combined'):
        parse_syscall(data)


def test_valid_formats_parse() -> None:
    call = parse_syscall(body("x", "person"))
    assert isinstance(call, LLMCall)
    assert call.response_format is not None and call.response_format.name == "person"
    assert call.response_format.grammar
    strict = {**fmt("choice"), "json_schema": {**fmt("choice")["json_schema"], "strict": True}}
    assert parse_response_format(strict).strict is True
    assert parse_response_format({"type": "text"}).grammar is None


async def test_invalid_format_fails_at_submission(kernel: Kernel) -> None:
    kernel.create_agent("a")
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}
    with pytest.raises(InvalidArgument) as e:
        kernel.submit(
            "a", json.dumps({"call": "llm", "prompt": "x", "response_format": bad}).encode()
        )
    result = e.value.result
    assert result is not None and result.errno == errno.EINVAL
    assert "response_format" in (result.error or "")
