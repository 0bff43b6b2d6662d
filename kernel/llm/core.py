"""LLM cores: a loaded model that turns the sequences of one engine step into next-token logits.

A core knows tensors and caches, not agents or policies. The engine hands it, for each sequence in
the step, how many of the sequence's unfed tokens to feed (a prefill chunk, or the one token
sampled last); the core runs them all through the model in one forward pass and returns one row
of logits per sequence, for the last token it fed.

Each core keeps the keys and values of the sequences it runs in its own form (``TransformersCore``:
one tensor per sequence, ``kv.py``; ``LlamaCppCore``: a sequence slot in llama.cpp's cache) and
hands the engine an opaque handle per sequence, of which bookkeeping reads only the length. To
take a sequence's KV out of the model (a snapshot for the swap manager, an entry for the prefix
cache) and put it back, a core copies it to and from a ``SavedKV``: plain bytes in the core's
layout, which the swap manager can spill to a file without knowing what they hold.

``TransformersCore`` (this file) runs any transformers causal LM in fp32 with the packed attention
of ``packed.py``; ``LlamaCppCore`` (``llamacpp.py``) runs GGUF models on llama.cpp's kernels;
``cores.py`` picks one for a model.
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel.llm.kv import KVShape, SeqKV
from kernel.llm.models import ModelSpec, Progress, load_model
from kernel.llm.sequence import KVCache, Sequence


@dataclass
class SavedKV:
    """One sequence's keys and values taken out of the model: ``length`` tokens as a flat array
    in the core's own layout (a snapshot of a preempted sequence, or a prefix-cache entry)."""

    length: int
    data: np.ndarray[Any, Any]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


class LLMCore(ABC):
    """A model instance: the AIOS paper's "LLM core", like one CPU core of the kernel."""

    name: str
    max_context: int
    eos_ids: frozenset[int]
    # how many sequences may hold KV at once (a core with fixed slots); None: as many as fit
    max_sequences: int | None = None

    @abstractmethod
    def load(self, progress: Progress) -> None:
        """Load the model (once), and start from an empty cache (a core reused by a new
        kernel in the tests forgets the sequences of the last one)."""

    @abstractmethod
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def forward(self, feeds: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Feed each sequence its next ``n`` unfed tokens in one pass; return the logits after
        the last fed token of each, shape ``[len(feeds), vocab]``. A sequence without KV yet
        gets it here."""

    @abstractmethod
    def save_kv(self, kv: KVCache) -> SavedKV:
        """A tight copy of a sequence's KV (the sequence keeps its own)."""

    @abstractmethod
    def load_kv(self, saved: SavedKV, n: int) -> KVCache:
        """A new working KV for a sequence, holding the first ``n`` tokens of ``saved``."""

    @abstractmethod
    def free_kv(self, kv: KVCache) -> None:
        """The sequence no longer needs its KV (finished, cancelled or swapped out)."""

    @abstractmethod
    def info(self) -> dict[str, Any]: ...

    def grammar_vocab(self) -> tuple[str, int]:
        """The tokenizer serialised as Hugging Face's ``tokenizer.json`` and the width of a
        logits row: what the grammar engine needs to map a grammar onto token ids
        (``response_format``). A core without a fast tokenizer cannot constrain its output."""
        raise NotImplementedError(f"model {self.name} cannot constrain its output")


class HFTokenizerCore(LLMCore):
    """A core whose prompts are built and whose output is decoded by a Hugging Face tokenizer,
    so two cores on the same model see the same token ids for the same chat."""

    tokenizer: Any = None
    vocab_width = 0  # the width of a logits row

    def set_eos(self, *sources: object) -> None:
        """The end-of-sequence ids: the model's own (``sources``) and ChatML's end tokens."""
        eos: set[int] = set()
        for source in sources:
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple | set | frozenset):
                eos.update(int(t) for t in source)
        for token in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                eos.add(tid)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if self.tokenizer.chat_template:
            enc = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
            ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
            return list(ids)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def grammar_vocab(self) -> tuple[str, int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return super().grammar_vocab()
        backend = copy.copy(backend)  # serialise without padding or truncation (not ours to change)
        backend.no_padding()
        backend.no_truncation()
        return str(backend.to_str()), self.vocab_width


class TransformersCore(HFTokenizerCore):
    """A local transformers causal LM in fp32: on the CPU (faster than bf16 on CPUs without
    bf16), or on a GPU (``device="cuda"``), where the weights, the KV and each step's inputs
    live on the device and only the step's logits rows come back to the sampler."""

    kv_shape: KVShape

    def __init__(
        self, spec: ModelSpec, cache_dir: Path, threads: int = 0, device: str = "cpu"
    ) -> None:
        self.spec = spec
        self.device = device
        self.name = spec.name
        self.cache_dir = cache_dir
        self.threads = threads or (os.cpu_count() or 1)
        self.model: Any = None
        self.max_context = 0
        self.eos_ids = frozenset()
        self.load_seconds: float | None = None
        self.params = 0

    def load(self, progress: Progress) -> None:
        torch.set_num_threads(self.threads)
        if self.model is not None:  # loaded already (a core reused across kernels in tests)
            return
        self.model, self.tokenizer, self.load_seconds = load_model(
            self.spec, self.cache_dir, progress
        )
        cfg = self.model.config
        self.max_context = int(getattr(cfg, "max_position_embeddings", 2048))
        self.set_eos(cfg.eos_token_id, self.model.generation_config.eos_token_id)
        self.vocab_width = int(cfg.vocab_size)
        self.params = sum(p.numel() for p in self.model.parameters())
        heads = cfg.num_attention_heads
        self.kv_shape = KVShape(
            layers=cfg.num_hidden_layers,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            device=self.device,
        )
        self.model.to(self.device)
        # imported here, not at the top: it pulls in transformers' modeling code (2.3 s here),
        # which a mount whose models all run on llama.cpp never needs
        from kernel.llm import packed

        self._packed = packed
        self._no_mask = packed.NO_MASK.to(self.device)
        self.model.set_attn_implementation(packed.ATTN_IMPLEMENTATION)

    @torch.inference_mode()
    def forward(self, feeds: list[tuple[Sequence, int]]) -> torch.Tensor:
        ids: list[int] = []
        positions: list[int] = []
        last: list[int] = []
        segments: list[tuple[SeqKV, int]] = []
        for seq, n in feeds:
            kv = seq.kv
            if kv is None:
                kv = seq.kv = SeqKV(self.kv_shape, seq.num_tokens + 64)
            assert isinstance(kv, SeqKV)  # the Sequence sees only its length; it is ours
            start = kv.length
            ids += seq.tokens(start, start + n)
            positions += range(start, start + n)
            last.append(len(ids) - 1)
            segments.append((kv, n))
        plan = self._packed.StepPlan.build(segments)
        out = self.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
            position_ids=torch.tensor([positions], dtype=torch.long, device=self.device),
            attention_mask=self._no_mask,
            use_cache=False,
            logits_to_keep=torch.tensor(last, dtype=torch.long, device=self.device),
            aiosfs_plan=plan,
        )
        plan.commit()
        logits: torch.Tensor = out.logits[0].float().cpu()  # the sampler works on the CPU
        return logits

    def save_kv(self, kv: KVCache) -> SavedKV:
        assert isinstance(kv, SeqKV)  # the handles this core makes
        return SavedKV(kv.length, kv.compact().cpu().numpy().reshape(-1))

    def free_kv(self, kv: KVCache) -> None:
        """Nothing to give back: the tensor goes with its last reference."""

    def load_kv(self, saved: SavedKV, n: int) -> KVCache:
        s = self.kv_shape
        data = torch.from_numpy(saved.data).view(s.layers, 2, s.kv_heads, saved.length, s.head_dim)
        return SeqKV.from_tensor(s, data[:, :, :, :n].to(self.device), capacity=n + 64)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "params": self.params,
            "max_context": self.max_context,
            "core": "transformers",
            "dtype": "float32",
            "device": self.device,
            "threads": self.threads,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 2),
        }
