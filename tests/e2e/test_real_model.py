"""End to end on the real embedded model (SmolLM2-135M-Instruct), through a real mount."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.mounting import Mount, mounted

pytestmark = [pytest.mark.mount, pytest.mark.model, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    # the first load on a machine converts the GGUF once (~30 s); later loads take seconds
    with mounted(tmp_path_factory.mktemp("smol"), "smollm2", ready_timeout=400) as m:
        yield m


def test_capital_of_france_through_the_mount(smol: Mount) -> None:
    model = smol.json("sys/models/smollm2")
    assert model["loaded"] is True
    # the default core for a GGUF model: the file's own Q4_1 weights, multiplied by 16-bit
    # activations (scripts/llama-cpp/aiosfs-a16.patch), which keep its answers (llamacpp.py)
    assert (model["core"], model["weights"]) == ("llamacpp", "native")
    assert model["activations"] == "16-bit"
    assert model["gguf_weights"] == "auto"
    answer = smol.sh(
        "mkdir agents/geo && echo 'What is the capital of France?' > agents/geo/syscall "
        "&& cat agents/geo/out",
        timeout=120,
    ).stdout
    assert "Paris" in answer


def test_the_conversation_carries_over(smol: Mount) -> None:
    smol.sh("mkdir agents/chat && echo max_tokens=40 > agents/chat/config")
    smol.sh(
        "echo 'What is the capital of France?' > agents/chat/syscall; "
        "cat agents/chat/out > /dev/null",
        timeout=120,
    )
    answer = smol.sh(
        "echo 'And of Germany?' > agents/chat/syscall; cat agents/chat/out", timeout=120
    ).stdout
    assert "Berlin" in answer


def test_a_question_for_the_calculator_is_answered_with_its_number(smol: Mount) -> None:
    """SmolLM2 is offered the calculator and must call it first (tool_choice "required"); the
    kernel runs it and feeds 9801 back; the model's answer uses it. Greedy, so the run is
    reproducible. (A 135M model often answers from its own wrong arithmetic instead of the
    tool's number; docs/filesystem.md says so.)"""
    smol.sh("mkdir agents/calc")
    call = {
        "call": "llm",
        "prompt": "What is 99 * 99?",
        "tools": ["calculator"],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tool_rounds": 1,
        "max_tokens": 100,
        "temperature": 0,
    }
    (smol.path / "agents/calc/syscall").write_text(json.dumps(call) + "\n")
    text = smol.sh("cat agents/calc/out", timeout=300).stdout
    meta = smol.json("agents/calc/results/1.json")
    assert meta["state"] == "done", meta
    calls = meta["tool_calls"]
    assert calls and calls[0]["tool"] == "calculator" and calls[0]["result"] == 9801, calls
    transcript, _, answer = text.partition("\n")
    assert transcript.startswith("[tool calculator") and "9801" in transcript
    assert "9801" in answer, text
