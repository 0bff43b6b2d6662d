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


def test_the_cache_keys_a_conversion_by_its_source_bytes_and_drops_stale_ones(tmp_path) -> None:
    """A fresh venv reinstalls the wheel: the same bytes with a new mtime must find the entry
    made before, and making an entry removes what older files of that model left (keyed by
    mtime, every venv had left a converted copy of 270-540 MB behind: 15 GB here)."""
    import os

    from kernel.llm.models import cache_entry, prune_stale

    cache = tmp_path / "cache"
    cache.mkdir()
    source = tmp_path / "model.gguf"
    source.write_bytes(os.urandom(3 << 20))
    first = cache_entry(cache, "m", "f16", source, ".gguf")
    os.utime(source, (1, 1))  # reinstalled: same bytes, another mtime
    assert cache_entry(cache, "m", "f16", source, ".gguf") == first
    data = bytearray(source.read_bytes())
    data[-1] ^= 1  # another file of the same name and size (a new wheel)
    source.write_bytes(bytes(data))
    assert cache_entry(cache, "m", "f16", source, ".gguf") != first
    stale = [cache / "m-f16-98362432-1796107991.gguf", cache / "m-f16-3145728-0123abcd.gguf"]
    kept = [
        cache / "m-big-f16-1-abc.gguf",  # another model whose name starts the same
        cache / "m-fp32-1-abc",  # another kind of entry of this model
        cache / "m-f16-1-abc.gguf.77.tmp",  # someone's conversion in progress
    ]
    for path in [*stale, *kept]:
        path.write_bytes(b"x")
    old_folder = cache / "m-fp32-98362432-1796111127"
    old_folder.mkdir()
    (old_folder / "config.json").write_text("{}")
    first.write_bytes(b"made")
    prune_stale(first)
    assert first.exists() and all(p.exists() for p in kept)
    assert not any(p.exists() for p in stale)
    assert old_folder.exists()  # not an f16 entry
    prune_stale(kept[1])
    assert not old_folder.exists() and kept[1].exists()


@needs_llama
def test_auto_weights_take_the_file_only_where_its_products_keep_16_bit_activations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kernel.llm import llamacpp
    from kernel.llm.models import resolve_model

    spec = resolve_model("smollm2")
    # make install builds llama.cpp with the patch, and SmolLM2's file is Q4_1 with a Q8_0
    # embedding: every tensor is of a type the 16-bit kernels cover
    assert llamacpp.a16_kernels()
    assert llamacpp.tensor_types(llamacpp.gguf_path(spec)) <= llamacpp.A16_TYPES
    assert llamacpp.resolve_weights(spec, "auto") == "native"
    assert llamacpp.activations(llamacpp.gguf_path(spec)) == "16-bit"
    # an explicit choice is kept as it is
    assert llamacpp.resolve_weights(spec, "f16") == "f16"
    # a stock llama.cpp (8-bit activations) or a type the patch does not cover: f16
    monkeypatch.setattr(llamacpp, "tensor_types", lambda _path: frozenset({"Q4_K", "F32"}))
    assert llamacpp.resolve_weights(spec, "auto") == "f16"
    monkeypatch.undo()
    monkeypatch.setattr(llamacpp, "a16_kernels", lambda: False)
    assert llamacpp.resolve_weights(spec, "auto") == "f16"
