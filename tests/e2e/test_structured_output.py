"""Structured output on the embedded model (SmolLM2-135M-Instruct) through the real engine: every
answer under a ``response_format`` parses and validates against its schema, and through the
mount an invalid format is refused with EINVAL at the write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from kernel.llm.core import LLMCore, TransformersCore
from kernel.llm.models import default_cache_dir, resolve_model
from tests.kernel.test_grammar import answers, text
from tests.mounting import Mount, mounted

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 30},
        "country": {"type": "string", "minLength": 1, "maxLength": 30},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 40},
        "coastal": {"type": "boolean"},
    },
    "required": ["city", "country", "population_millions", "coastal"],
    "additionalProperties": False,
}
ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "confidence": {"enum": ["low", "medium", "high"]},
    },
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
LIST = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 20},
            "minItems": 1,
            "maxItems": 4,
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}

CASES: list[tuple[str, dict[str, Any]]] = [
    *((f"Give facts about {c} as JSON.", CITY) for c in ("Paris", "Tokyo", "Lima", "Oslo")),
    *((f"Describe the capital of {c}.", CITY) for c in ("Italy", "Kenya", "Canada")),
    *((f"What is {a} plus {b}? Answer in JSON.", ANSWER) for a, b in ((2, 3), (10, 7), (40, 2))),
    *((f"How many legs does a {x} have?", ANSWER) for x in ("spider", "cat", "bird")),
    *((f"List some {x}.", LIST) for x in ("colours", "fruits", "planets", "tools")),
    ("Name three rivers.", LIST),
    ("Name two oceans.", LIST),
    ("What is 9 times 9?", ANSWER),
]


def call(prompt: str, schema: dict[str, Any], i: int) -> bytes:
    body: dict[str, Any] = {
        "call": "llm",
        "prompt": prompt,
        "max_tokens": 120,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    }
    if i % 2:
        body.update(temperature=0.7, seed=i)
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def smol() -> LLMCore:
    core = TransformersCore(resolve_model("smollm2"), default_cache_dir())
    core.load(lambda _msg: None)
    return core


async def test_every_smollm2_answer_validates(smol: LLMCore) -> None:
    results, _ = await answers(smol, [call(p, s, i) for i, (p, s) in enumerate(CASES)])
    assert len(results) >= 20
    for r, (prompt, schema) in zip(results, CASES, strict=True):
        assert r.finish_reason == "stop", (prompt, r.finish_reason, r.error, text(r))
        jsonschema.validate(json.loads(text(r)), schema)


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    with mounted(tmp_path_factory.mktemp("smol"), "smollm2", ready_timeout=400) as m:
        yield m


@pytest.mark.mount
def test_response_format_through_the_mount(mount: Mount) -> None:
    good = json.dumps(
        {
            "call": "llm",
            "prompt": "Give facts about Rome as JSON.",
            "max_tokens": 80,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": CITY, "strict": True},
            },
        }
    )
    mount.sh("mkdir agents/j")
    out = mount.sh(f"echo '{good}' > agents/j/syscall && cat agents/j/out", timeout=120).stdout
    jsonschema.validate(json.loads(out), CITY)
    assert mount.json("agents/j/results/1.json")["finish_reason"] == "stop"
    bad = json.dumps({"call": "llm", "prompt": "x", "response_format": {"type": "yaml"}})
    done = mount.sh(f"echo '{bad}' > agents/j/syscall", check=False)
    assert done.returncode != 0 and "Invalid argument" in done.stderr
