"""LLM cores: a loaded model that turns sequences into next-token logits.

A core knows tensors and caches, not agents or policies. The engine asks it for one forward step
over the sequences the scheduler picked and samples from the logits it returns. This first core
runs each sequence on its own KV cache (``DynamicCache``), one sequence after another within a
step; batching several sequences into one forward pass replaces ``forward`` without touching the
engine or the scheduler.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from kernel.llm.models import ModelSpec, Progress, load_model
from kernel.llm.sequence import Sequence


class LLMCore(ABC):
    """A model instance: the AIOS paper's "LLM core", like one CPU core of the kernel."""

    name: str
    max_context: int
    eos_ids: frozenset[int]

    @abstractmethod
    def load(self, progress: Progress) -> None: ...

    @abstractmethod
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def forward(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed each sequence its unseen tokens; return last-position logits, shape [B, vocab]."""

    @abstractmethod
    def release(self, seq: Sequence) -> None:
        """Free whatever the core holds for a finished or cancelled sequence."""

    @abstractmethod
    def info(self) -> dict[str, Any]: ...


class TransformersCore(LLMCore):
    """A local transformers causal LM on the CPU, fp32 (faster than bf16 on CPUs without bf16)."""

    def __init__(self, spec: ModelSpec, cache_dir: Path, threads: int = 0) -> None:
        self.spec = spec
        self.name = spec.name
        self.cache_dir = cache_dir
        self.threads = threads or (os.cpu_count() or 1)
        self.model: Any = None
        self.tokenizer: Any = None
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
        eos: set[int] = set()
        for source in (cfg.eos_token_id, self.model.generation_config.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(source)
        for token in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                eos.add(tid)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)
        self.params = sum(p.numel() for p in self.model.parameters())

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
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def forward(self, seqs: list[Sequence]) -> torch.Tensor:
        from transformers import DynamicCache

        rows = []
        for seq in seqs:
            if seq.kv is None:
                seq.kv = DynamicCache(config=self.model.config)
            ids = torch.tensor([seq.next_input_ids()], dtype=torch.long)
            out = self.model(input_ids=ids, cache=seq.kv, use_cache=True)
            rows.append(out.logits[0, -1])
        return torch.stack(rows)

    def release(self, seq: Sequence) -> None:
        seq.kv = None

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "params": self.params,
            "max_context": self.max_context,
            "dtype": "float32",
            "device": "cpu",
            "threads": self.threads,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 2),
        }
