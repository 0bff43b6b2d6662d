"""Which core runs a model: llama.cpp for GGUF models on the CPU, transformers for the rest.

``core = "auto"`` (the default) gives a GGUF model (the embedded ``smollm2``, or a ``.gguf``
path) to the llama.cpp core when ``llama-cpp-python`` is installed, and everything else (a
transformers folder, ``tiny-random``) to the transformers core. ``"llamacpp"`` and
``"transformers"`` force one; the transformers core runs GGUF files too (dequantised to fp32),
and is the one that runs on a GPU (``device = "cuda"``).
docs/design.md ("Two cores") says why llama.cpp is the default for GGUF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.errors import InvalidArgument
from kernel.llm.models import resolve_model

if TYPE_CHECKING:
    from kernel.config import KernelConfig
    from kernel.llm.core import LLMCore

CORES = ("auto", "llamacpp", "transformers")
GGUF_KINDS = ("smollm2", "gguf")
GGUF_WEIGHTS = ("auto", "native", "f16")  # llama.cpp core: chosen per file, as filed, or f16
MAX_SLOTS = 256  # llama.cpp's LLAMA_MAX_SEQ: the sequences one llama.cpp context can hold


def choose_core(kind: str, wanted: str, device: str = "cpu") -> str:
    """The core for a model of ``kind`` (``ModelSpec.kind``) when ``wanted`` is asked for, on
    ``device`` (the llama.cpp core is built for the CPU; a GPU takes the transformers core)."""
    from kernel.llm import llamacpp

    if wanted not in CORES:
        raise InvalidArgument(f"core must be one of {', '.join(CORES)}, not {wanted!r}")
    on_cpu = device == "cpu"
    if wanted == "auto":
        gguf = kind in GGUF_KINDS and on_cpu
        return "llamacpp" if gguf and llamacpp.available() else "transformers"
    if wanted == "llamacpp":
        if not on_cpu:
            raise InvalidArgument(f"the llama.cpp core runs on the CPU, not {device}")
        if kind not in GGUF_KINDS:
            raise InvalidArgument("the llama.cpp core runs GGUF models (smollm2 or a .gguf file)")
        if not llamacpp.available():
            raise InvalidArgument("core llamacpp needs llama-cpp-python (make install builds it)")
    return wanted


def make_core(name: str, config: KernelConfig) -> LLMCore:
    """The core for model ``name`` under ``config`` (not loaded yet: the engine loads it)."""
    from kernel.llm.core import TransformersCore
    from kernel.llm.llamacpp import LlamaCppCore

    spec = resolve_model(name)
    if choose_core(spec.kind, config.core, config.device) == "llamacpp":
        return LlamaCppCore(
            spec,
            config.cache_dir,
            config.threads,
            slots=config.max_running,
            context=config.context,
            weights=config.gguf_weights,
            batch_tokens=config.step_tokens + config.max_running,
        )
    return TransformersCore(spec, config.cache_dir, config.threads, config.device)
