"""Structured output: an ``llm`` call's ``response_format``, compiled into a token-level grammar,
and the per-sequence matcher that says which tokens may come next.

This module is the one owner of constraints. It uses llguidance (Microsoft's Rust grammar
engine behind Guidance): a JSON Schema becomes a grammar, a grammar plus the model's tokenizer
becomes a matcher, and the matcher computes, at each step, the set of tokens that keep the
output a prefix of some valid document. The engine turns that set into a mask on the logits
(``sampling.py``) before argmax or sampling, so greedy and sampled output both always parse.

Why llguidance and not xgrammar: both compile JSON Schema on the CPU, but the xgrammar wheel
pulls triton and apache-tvm-ffi into a CPU-only environment, while llguidance is one
self-contained wheel with no dependencies; it computes a 49k-token mask in tens of microseconds
without precompiling the vocabulary for each schema.

Three phases, each where it fails cleanly:

* ``parse_response_format`` (at submission, on the trio thread): checks the OpenAI-shaped field
  and compiles the schema into a grammar, so an invalid or unsupported schema is EINVAL before
  anything runs. It needs no tokenizer.
* ``Grammars`` (one per engine, built on first use): the model's tokenizer as llguidance sees it
  (about 0.2 s to build, so once), and matchers from grammar text.
* ``TokenConstraint`` (one per constrained sequence): the matcher. Its state advances with each
  generated token only: the prompt is never constrained. It lives on the Sequence, in RAM, so a
  preempted sequence whose KV is swapped out (or dropped and recomputed) resumes with its
  grammar state exactly where it was; nothing of it goes into a snapshot.

No torch here (the mask is handed out as bytes), so the syscall schema can import this module
without loading the model libraries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance

from kernel.errors import InvalidArgument

if TYPE_CHECKING:  # a type of the stubs only
    from llguidance._lib import JsonCompileOptions

FORMAT_TYPES = ("text", "json_object", "json_schema")

_MAX_SCHEMA_BYTES = 64 << 10


@dataclass(frozen=True)
class ResponseFormat:
    """A checked ``response_format``. ``grammar`` is the llguidance grammar (JSON text) compiled
    from it; None for ``text``, which is unconstrained."""

    type: str
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    grammar: str | None = None


def parse_response_format(value: Any) -> ResponseFormat:
    """Check an ``llm`` call's ``response_format`` (OpenAI's shape) and compile its grammar.

    ``{"type": "text"}`` is the default; ``{"type": "json_object"}`` is any JSON object;
    ``{"type": "json_schema", "json_schema": {"name": …, "schema": {…}, "strict"?: bool,
    "description"?: …}}`` is a document valid against the schema. Output is always constrained,
    strict or not: ``strict`` is accepted for compatibility, and a schema keyword the grammar
    compiler cannot enforce is refused rather than silently ignored.
    """
    if not isinstance(value, dict):
        raise _bad(f'must be an object with a "type", not {json.dumps(value)[:60]}')
    kind = value.get("type")
    if kind not in FORMAT_TYPES:
        raise _bad(f"type must be one of {', '.join(FORMAT_TYPES)}, not {json.dumps(kind)[:60]}")
    allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _bad(f'unknown field "{unknown[0]}" for type {kind}; known: {", ".join(allowed)}')
    if kind == "text":
        return ResponseFormat("text")
    if kind == "json_object":
        return ResponseFormat("json_object", grammar=_compile({"type": "object"}))
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise _bad('type json_schema needs "json_schema": {"name": …, "schema": {…}}')
    unknown = sorted(set(spec) - {"name", "schema", "strict", "description"})
    if unknown:
        raise _bad(
            f'unknown field "json_schema.{unknown[0]}"; known: name, schema, strict, description'
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise _bad('"json_schema.name" must be a string of 1 to 64 characters')
    if not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        raise _bad('"json_schema.name" may contain only a-z, A-Z, 0-9, "_" and "-"')
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _bad('"json_schema.strict" must be true or false')
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad('"json_schema.description" must be a string')
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise _bad('"json_schema.schema" must be a JSON Schema object')
    return ResponseFormat("json_schema", name, schema, strict, _compile(schema))


def compile_schema(schema: dict[str, Any], spaced: bool) -> str:
    """The grammar for a JSON Schema the kernel itself builds (tool-calling steps). ``spaced``:
    one space after ':' and ',' (better prose in string values from a small model); compact
    (none) keeps short structured values such as tool arguments from wandering."""
    return _compile(schema, spaced)


def _compile(schema: dict[str, Any], spaced: bool = False) -> str:
    """The grammar for a schema, validated now (an invalid schema fails the submission)."""
    text = json.dumps(schema)
    if len(text) > _MAX_SCHEMA_BYTES:
        raise _bad(f"schema is {len(text)} bytes; at most {_MAX_SCHEMA_BYTES}")
    try:
        # No free whitespace between JSON tokens: it carries no meaning, and a weak model
        # given the choice can spend its whole token budget on spaces and newlines inside an
        # object. ``spaced`` puts one space after ':' and ',', as json.dumps writes and as
        # models have mostly seen JSON: a small model's prose inside strings is better for it.
        # A client's response_format is compact (what scripts that take it apart expect).
        overrides: JsonCompileOptions = {"whitespace_flexible": False}
        if spaced:
            overrides["key_separator"] = ": "
            overrides["item_separator"] = ", "
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=overrides)
    except ValueError as e:
        raise _bad(f"invalid schema: {e}") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise _bad(f"invalid or unsupported schema: {error}")
    return grammar


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(f'field "response_format": {message}')


class Grammars:
    """One model's tokenizer as the grammar engine sees it, and the matchers made from it.

    ``tokenizer_json`` is the Hugging Face fast tokenizer serialised (``tokenizer.json``);
    ``vocab`` is the width of the model's logits rows (it may exceed the tokenizer's count);
    every id in ``eos_ids`` ends an answer, so each is allowed once the grammar is complete.
    """

    def __init__(self, tokenizer_json: str, vocab: int, eos_ids: frozenset[int]) -> None:
        self.vocab = vocab
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer_json, n_vocab=vocab, eos_token=sorted(eos_ids)
        )

    def start(self, grammar: str) -> TokenConstraint:
        """A fresh matcher for one sequence's output."""
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"grammar does not compile for this model: {matcher.get_error()}")
        return TokenConstraint(matcher, self.tokenizer.vocab_size)


class TokenConstraint:
    """One sequence's grammar state. ``allowed()`` is the mask for the next token; ``advance``
    moves past the token that was chosen; ``done`` is true once nothing but the end may follow
    (the engine then finishes the sequence at once, without a step to sample the end token)."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int) -> None:
        self._matcher = matcher
        self.vocab = vocab
        self.tokens = 0  # generated tokens consumed so far

    def allowed(self) -> bytes:
        """One byte per token id below ``vocab``: nonzero where the token may come next."""
        return self._matcher.compute_logit_bias()

    def advance(self, token: int) -> bool:
        """Consume a generated token; False (and an error state) if the grammar refuses it."""
        self.tokens += 1
        return self._matcher.consume_token(token)

    @property
    def done(self) -> bool:
        return self._matcher.is_stopped()

    @property
    def error(self) -> str:
        return self._matcher.get_error()
