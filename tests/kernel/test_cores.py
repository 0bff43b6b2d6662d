"""Which core runs which model, and the settings that choose it."""

from __future__ import annotations

import pytest

from kernel.config import KernelConfig
from kernel.errors import InvalidArgument
from kernel.llm.core import TransformersCore
from kernel.llm.cores import choose_core, make_core
from kernel.llm.llamacpp import LlamaCppCore, available

needs_llama = pytest.mark.skipif(not available(), reason="llama-cpp-python is not installed")


@needs_llama
def test_gguf_models_go_to_llama_cpp_and_the_rest_to_transformers() -> None:
    assert choose_core("smollm2", "auto") == "llamacpp"
    assert choose_core("gguf", "auto") == "llamacpp"
    assert choose_core("tiny-random", "auto") == "transformers"
    assert choose_core("folder", "auto") == "transformers"
    assert choose_core("smollm2", "transformers") == "transformers"
    core = make_core("smollm2", KernelConfig(max_running=8, context=512))
    assert isinstance(core, LlamaCppCore) and (core.slots, core.context) == (8, 512)
    assert core.max_sequences == 8  # the engine cuts max_running to it


def test_a_gpu_takes_the_transformers_core() -> None:
    assert choose_core("smollm2", "auto", "cuda") == "transformers"
    core = make_core("tiny-random", KernelConfig(device="cuda:1"))
    assert isinstance(core, TransformersCore) and core.device == "cuda:1"
    with pytest.raises(InvalidArgument, match="runs on the CPU"):
        choose_core("smollm2", "llamacpp", "cuda")


def test_bad_core_settings_are_refused_with_a_reason() -> None:
    with pytest.raises(InvalidArgument, match=r"llama\.cpp core runs GGUF"):
        choose_core("tiny-random", "llamacpp")
    for bad, match in (
        ({"core": "vllm"}, "core must be one of"),
        ({"gguf_weights": "q2"}, "gguf_weights"),
        ({"device": "tpu"}, "device must be"),
        ({"context": 0}, "context must be"),
        ({"core": "llamacpp", "max_running": 300}, "at most 256"),
    ):
        with pytest.raises(InvalidArgument, match=match):
            KernelConfig().with_overrides(**bad)
