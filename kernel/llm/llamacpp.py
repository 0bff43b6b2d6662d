"""The llama.cpp core: GGUF models on llama.cpp's CPU kernels, scheduled step by step by our engine.

llama.cpp (through ``llama-cpp-python``'s low-level C API, not its high-level ``Llama`` class)
is used as a forward pass and a KV cache, nothing more: our scheduler still picks every step's
batch, our sampler picks every token, and preemption, the prefix cache and the policies work as
on the transformers core. Each step is one ``llama_decode`` over a batch in which every token
carries its sequence's id.

Why these settings (measured on the 2-core test machine, docs/design.md has the figures):

* **One KV stream per sequence** (``kv_unified = false``). With llama.cpp's unified cache a
  sequence attends over every sequence's cells, masked, and greedy answers in a batch often
  differed from the same answers alone (4 of 16 identical in one test). With a stream of its own
  per sequence they nearly always agree (30-32 of 32 at a batch of 32), but not always:
  llama.cpp multiplies one token by a float weight matrix with another kernel than two or more
  (``llamafile_sgemm`` refuses n < 2), which rounds differently, by ~1e-2 in the logits, and
  flips the rare near-tie. So on this core "identical alone, in a batch and preempted" holds up
  to llama.cpp's rounding; the transformers core keeps it exactly (``core = "transformers"``).
  The price of the streams: each slot's context is allocated up front (``slots x context``
  cells).
* **The file's own weights, with 16-bit activations** (``gguf_weights = "auto"``, the default).
  On quantised weights stock llama.cpp also quantises the activations (to 8 bits) for its
  integer dot products. That flips close calls: asked for the capital of France, SmolLM2's
  Q4_1 file answers in French nonsense on llama.cpp (and on llama-server) while the same
  weights dequantised say "Paris". We build llama.cpp with one change
  (``scripts/llama-cpp/aiosfs-a16.patch``): Q4_1 and Q8_0 weights are multiplied by
  activations rounded to 16 bits per block of 32, exact integer sums, so the file answers as
  its dequantised weights do (49 of 50 prompts as the fp32 transformers core, against 47 for
  f16 weights) while a step still reads 4-bit weights: the fastest single stream. ``"auto"``
  takes that when the loaded library has the change (:func:`a16_kernels`) and every tensor of
  the file is of a type it covers, else the weights dequantised to f16 once (``"f16"``, which
  keep the activations at f16/f32 and are the faster choice for large batches).
* **Snapshots are llama.cpp's per-sequence state** (``llama_state_seq_get_data`` /
  ``set_data``): the bytes go to the swap manager and the prefix cache like any ``SavedKV``; a
  prefix is a saved sequence loaded into a fresh slot and cut to its first ``n`` tokens.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel.llm.core import HFTokenizerCore, SavedKV
from kernel.llm.cores import GGUF_WEIGHTS, MAX_SLOTS
from kernel.llm.models import (
    ModelSpec,
    Progress,
    cache_entry,
    gguf_path,
    gguf_tokenizer,
    prune_stale,
)
from kernel.llm.sequence import KVCache, Sequence

log = logging.getLogger(__name__)

LLAMA_FTYPE_MOSTLY_F16 = 1
_LOG_LEVELS = {3: logging.INFO, 4: logging.WARNING}  # ggml WARN, ERROR (the rest: DEBUG)
BRIDGE = 8  # a gap of at most this many slots between two fed ones is bridged (see forward)

_lib: Any = None
_log_callback: Any = None  # kept alive: llama.cpp holds the pointer


def available() -> bool:
    """Whether llama-cpp-python is installed (without loading it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _llama() -> Any:
    """The low-level binding, initialised once per process, its log routed to ours."""
    global _lib, _log_callback
    if _lib is None:
        import llama_cpp.llama_cpp as lib

        def route(level: int, text: bytes | None, _user: object) -> None:
            if text:
                log.log(
                    _LOG_LEVELS.get(level, logging.DEBUG),
                    "llama.cpp: %s",
                    text.decode("utf-8", "replace").rstrip(),
                )

        _log_callback = lib.llama_log_callback(route)
        lib.llama_log_set(_log_callback, None)
        lib.llama_backend_init()
        _lib = lib
    return _lib


A16_TYPES = frozenset({"F32", "F16", "Q4_1", "Q8_0"})
"""Tensor types whose products keep activations at 16 bits or more with aiosfs's patch."""


def a16_kernels() -> bool:
    """Whether the loaded ggml multiplies Q4_1 and Q8_0 weights by 16-bit activations (the
    patch ``make install`` builds in), not stock ggml's 8-bit ones."""
    _llama()
    try:  # the library libllama loaded, looked up without loading another copy
        cpu = ctypes.CDLL("libggml-cpu.so.0", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return False
    return hasattr(cpu, "ggml_cpu_aiosfs_a16")


def tensor_types(path: Path) -> frozenset[str]:
    """The tensor types in a GGUF file (its header, read through a memory map)."""
    from gguf import GGUFReader

    return frozenset(t.tensor_type.name for t in GGUFReader(path).tensors)


def activations(path: Path) -> str:
    """What the weight products of a GGUF file multiply on the loaded library: ``f16`` when
    no tensor is quantised, ``16-bit`` when every quantised one is of a type the patch covers,
    else ``8-bit`` (stock ggml's, for some products at least)."""
    quantised = tensor_types(path) - {"F32", "F16", "BF16"}
    if not quantised:
        return "f16"
    return "16-bit" if a16_kernels() and quantised <= A16_TYPES else "8-bit"


def resolve_weights(spec: ModelSpec, weights: str) -> str:
    """``auto`` made concrete: the file as it is where its products keep 16-bit activations,
    else f16 (see the module docstring)."""
    if weights != "auto":
        return weights
    if a16_kernels() and tensor_types(gguf_path(spec)) <= A16_TYPES:
        return "native"
    return "f16"


def weights_file(
    spec: ModelSpec,
    cache_dir: Path,
    weights: str = "auto",
    threads: int = 0,
    progress: Progress = lambda _msg: None,
) -> Path:
    """The GGUF file the core runs for ``spec``: the model's own (``native``, and ``auto``
    where :func:`resolve_weights` says so), or its weights dequantised to f16 (every tensor the
    file quantises), written once into the cache. The benchmark gives llama-server this same
    file."""
    source = gguf_path(spec)
    if resolve_weights(spec, weights) == "native":
        return source
    target = cache_entry(cache_dir, spec.name, "f16", source, ".gguf")
    if target.exists():
        return target
    progress(f"dequantising {source.name} to f16 for llama.cpp (one-off, a few seconds)")
    lib = _llama()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    params = lib.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    params.nthread = threads or (os.cpu_count() or 1)
    try:
        rc = lib.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not convert {source.name} to f16 ({rc})")
        os.replace(tmp, target)  # atomic: a crash never leaves half a model in the cache
    finally:
        tmp.unlink(missing_ok=True)
    prune_stale(target)
    return target


class SlotKV:
    """A sequence's KV on this core: a slot (a llama.cpp sequence id with its own stream) and
    how many tokens it holds."""

    __slots__ = ("length", "slot")

    def __init__(self, slot: int, length: int = 0) -> None:
        self.slot = slot
        self.length = length


class LlamaCppCore(HFTokenizerCore):
    """A GGUF model on llama.cpp, ``slots`` sequences of up to ``context`` tokens at once."""

    def __init__(
        self,
        spec: ModelSpec,
        cache_dir: Path,
        threads: int = 0,
        slots: int = 32,
        context: int = 2048,
        weights: str = "auto",
        batch_tokens: int = 512,
    ) -> None:
        if weights not in GGUF_WEIGHTS:
            raise ValueError(f"gguf_weights must be {' or '.join(GGUF_WEIGHTS)}, not {weights!r}")
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"the llama.cpp core runs 1 to {MAX_SLOTS} sequences, not {slots}")
        self.spec = spec
        self.name = spec.name
        self.cache_dir = cache_dir
        self.threads = threads or (os.cpu_count() or 1)
        self.slots = slots
        self.max_sequences = slots
        self.context = context
        self.requested_weights = weights
        self.weights = weights  # made concrete when loaded ("auto" becomes native or f16)
        self.batch_tokens = max(batch_tokens, slots)
        self.max_context = 0
        self.eos_ids = frozenset()
        self.load_seconds: float | None = None
        self.params = 0
        self.weights_file: Path | None = None
        self.activations: str | None = None  # what its weight products multiply, once loaded
        self._lib: Any = None
        self.model: Any = None
        self.ctx: Any = None
        self.mem: Any = None
        self.batch: Any = None
        self._free: list[int] = []  # a heap: the lowest free slot first
        self._held: dict[int, SlotKV] = {}

    # ---- loading ----------------------------------------------------------------------------

    def load(self, progress: Progress) -> None:
        if self.ctx is not None:  # loaded already: a new kernel starts from empty slots
            self._lib.llama_memory_clear(self.mem, True)
            self._empty_slots()
            return
        start = time.monotonic()
        lib = self._lib = _llama()
        self.tokenizer = gguf_tokenizer(self.spec, self.cache_dir, progress)
        self.weights = resolve_weights(self.spec, self.requested_weights)
        path = weights_file(self.spec, self.cache_dir, self.weights, self.threads, progress)
        self.weights_file = path
        self.activations = activations(path)
        progress(f"loading {path.name} on llama.cpp")
        model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        self.model = model
        vocab = lib.llama_model_get_vocab(model)
        self.max_context = min(self.context, int(lib.llama_model_n_ctx_train(model)))
        params = lib.llama_context_default_params()
        params.n_ctx = self.slots * self.max_context
        params.n_seq_max = self.slots
        params.n_batch = self.batch_tokens + self.slots  # room for the bridging tokens
        params.n_ubatch = min(self.batch_tokens, 512)
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False  # one stream per sequence: see the module docstring
        params.no_perf = True
        ctx = lib.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(
                f"llama.cpp cannot make a context of {self.slots} x {self.max_context} tokens"
            )
        self.ctx = ctx
        self.mem = lib.llama_get_memory(ctx)
        cap = self.batch_tokens + self.slots
        self.batch = lib.llama_batch_init(cap, 0, 1)
        self._tokens = np.ctypeslib.as_array(self.batch.token, shape=(cap,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(cap,))
        self._n_seq = np.ctypeslib.as_array(self.batch.n_seq_id, shape=(cap,))
        self._wants = np.ctypeslib.as_array(self.batch.logits, shape=(cap,))
        self._n_seq[:] = 1
        self.vocab_width = int(lib.llama_vocab_n_tokens(vocab))
        if len(self.tokenizer) > self.vocab_width:
            raise RuntimeError(
                f"{path.name}: the tokenizer has {len(self.tokenizer)} tokens, the model "
                f"{self.vocab_width}"
            )
        ids = [int(lib.llama_vocab_eos(vocab)), int(lib.llama_vocab_eot(vocab))]
        self.set_eos([t for t in ids if t >= 0])
        self.params = int(lib.llama_model_n_params(model))
        self._empty_slots()
        self.load_seconds = time.monotonic() - start

    # ---- the step ---------------------------------------------------------------------------

    def _empty_slots(self) -> None:
        self._free, self._held = list(range(self.slots)), {}  # a sorted list is a heap

    def _slot(self) -> SlotKV:
        if not self._free:
            raise RuntimeError(f"model {self.name}: all {self.slots} sequence slots are in use")
        kv = SlotKV(heapq.heappop(self._free))  # the lowest: keeps the running ones together
        self._held[kv.slot] = kv
        return kv

    def forward(self, feeds: list[tuple[Sequence, int]]) -> torch.Tensor:
        """One ``llama_decode`` for the step, its tokens in slot order.

        llama.cpp puts into one pass (a ubatch) only sequences whose ids are consecutive, one
        KV stream after the other; sequences in slots 0, 2 and 4 would take three passes over
        the weights instead of one. So slots are handed out lowest first, the batch is built in
        slot order, and a short gap between two fed slots is bridged with a throwaway token
        for each slot in it (at position 0 of a free slot, or after the last token of a held
        sequence that sits this step out), removed again after the pass."""
        lib, batch = self._lib, self.batch
        total = sum(n for _, n in feeds)
        if total > self.batch_tokens:  # llama.cpp would abort the process: refuse instead
            raise ValueError(f"a step of {total} tokens exceeds the batch of {self.batch_tokens}")
        kvs: list[SlotKV] = []
        for seq, n in feeds:
            kv = seq.kv
            if kv is None:
                kv = seq.kv = self._slot()
            assert isinstance(kv, SlotKV)  # the handles this core makes
            if kv.length + n > self.max_context:
                raise ValueError(
                    f"sequence {seq.id} would exceed the context of {self.max_context} tokens"
                )
            kvs.append(kv)
        order = sorted(range(len(feeds)), key=lambda k: kvs[k].slot)
        seq_ids = batch.seq_id
        bridges: list[tuple[int, int]] = []  # (slot, position) of each throwaway token
        i, last = 0, -1
        for k in order:
            seq, n = feeds[k]
            kv = kvs[k]
            gap = range(last + 1, kv.slot) if 0 <= last < kv.slot - 1 <= last + BRIDGE else ()
            positions = [held.length if (held := self._held.get(g)) else 0 for g in gap]
            if all(pos < self.max_context for pos in positions):  # a full one cannot take it
                for slot, pos in zip(gap, positions, strict=True):
                    self._tokens[i], self._pos[i], self._wants[i] = 0, pos, 0
                    seq_ids[i][0] = slot
                    bridges.append((slot, pos))
                    i += 1
            start = kv.length
            self._tokens[i : i + n] = seq.tokens(start, start + n)
            self._pos[i : i + n] = np.arange(start, start + n, dtype=np.int32)
            self._wants[i : i + n] = 0
            self._wants[i + n - 1] = 1
            for j in range(i, i + n):
                seq_ids[j][0] = kv.slot
            i += n
            last = kv.slot
        batch.n_tokens = i
        try:
            rc = lib.llama_decode(self.ctx, batch)
        finally:
            for slot, pos in bridges:
                lib.llama_memory_seq_rm(self.mem, slot, pos, -1)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        for kv, (_, n) in zip(kvs, feeds, strict=True):
            kv.length += n
        rows = np.ctypeslib.as_array(
            lib.llama_get_logits(self.ctx), shape=(len(feeds), self.vocab_width)
        )  # in slot order: put them back in the order of the feeds
        out = np.empty_like(rows)
        out[order] = rows
        return torch.from_numpy(out)

    # ---- KV in and out ----------------------------------------------------------------------

    def save_kv(self, kv: KVCache) -> SavedKV:
        assert isinstance(kv, SlotKV)
        lib = self._lib
        size = int(lib.llama_state_seq_get_size(self.ctx, kv.slot))
        data = np.empty(size, dtype=np.uint8)
        ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        n = int(lib.llama_state_seq_get_data(self.ctx, ptr, size, kv.slot))
        if n == 0 and kv.length:
            raise RuntimeError(f"llama.cpp could not save sequence slot {kv.slot}")
        return SavedKV(kv.length, data[:n])

    def load_kv(self, saved: SavedKV, n: int) -> KVCache:
        lib = self._lib
        kv = self._slot()
        try:
            data = np.ascontiguousarray(saved.data, dtype=np.uint8)
            ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
            if saved.length and not lib.llama_state_seq_set_data(
                self.ctx, ptr, data.nbytes, kv.slot
            ):
                raise RuntimeError(f"llama.cpp refused a saved sequence of {saved.length} tokens")
            if n < saved.length:
                lib.llama_memory_seq_rm(self.mem, kv.slot, n, -1)
        except BaseException:
            self.free_kv(kv)
            raise
        kv.length = n
        return kv

    def free_kv(self, kv: KVCache) -> None:
        assert isinstance(kv, SlotKV)
        if kv.slot < 0:
            return
        self._lib.llama_memory_seq_rm(self.mem, kv.slot, -1, -1)
        self._held.pop(kv.slot, None)
        heapq.heappush(self._free, kv.slot)
        kv.slot, kv.length = -1, 0

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "core": "llamacpp",
            "params": self.params,
            "max_context": self.max_context,
            "slots": self.slots,
            "slots_free": len(self._free),
            "weights": self.weights,
            "gguf_weights": self.requested_weights,
            "activations": self.activations,
            "weights_file": str(self.weights_file) if self.weights_file else None,
            "dtype": "float16" if self.weights == "f16" else "gguf",
            "device": "cpu",
            "threads": self.threads,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 2),
        }
