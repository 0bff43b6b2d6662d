"""End to end on the real embedded model (SmolLM2-135M-Instruct), through a real mount."""

from __future__ import annotations

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
    assert smol.json("sys/models")["smollm2"]["loaded"] is True
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
