"""Remote models: a model served elsewhere (vLLM, SGLang, llama.cpp's server, Ollama, OpenAI,
Anthropic), scheduled by our kernel like a local one.

A ``RemoteEngine`` takes the place of an ``Engine`` for the kernel (the ``ModelEngine`` protocol
of ``request.py``): the same submit, cancel, policy switch and ``sys/`` views. Its running batch
is the requests in flight at the server: the policy (fifo, rr, priority, fair) admits up to
``max_in_flight`` of them and decides who goes next when agents want more. A preempted
generation is stopped by closing its stream (the server sees the connection end and frees its
slot); it keeps its partial answer, its **text snapshot**, and resumes later with that text as
the start of the assistant's answer, which the server continues (``wire.py``).

Each engine runs a trio loop of its own on its own thread, so the kernel's loop never waits on
a network, and talks HTTP with one ``httpx`` client (HTTP/1.1 keep-alive, one connection per
stream). Requests go to the least-outstanding usable endpoint (``endpoints.py``); a connection
failure, a 5xx, a 429 (after its ``Retry-After``) or a stream cut off mid-answer is retried on
another endpoint, continuing from what had arrived, up to ``retries`` times; then the syscall
ends with an error result that names every endpoint's failure. Nothing accepted is dropped
silently.

A tool round on a model declared ``tool_calls = "native"`` offers the kernel's tools as the
server's own (``wire.py``). Its answer, text or tool calls, is held until the stream ends and
handed over whole (``Update.tool_calls``): a half-written tool call cannot be continued as a
text snapshot, so no policy preempts such a round (``preemptible``), and one that fails over
starts again from nothing.

Token counts: each streamed delta counts as one generated token while the answer streams (what
the policies charge), and the server's own usage figures replace the count when the stream
ends. Prompt lengths are estimated from characters (three per token, on the safe side) to trim
the oldest history turns to the model's ``context``; the server's count is reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2 as httpx
import trio

from kernel.errors import InvalidArgument
from kernel.llm.endpoints import EndpointPool, retry_after
from kernel.llm.rate import TokenRate
from kernel.llm.request import GenerationRequest, Update
from kernel.llm.scheduler import Limits, Scheduler, ServiceLedger, make_scheduler
from kernel.llm.sequence import Sequence
from kernel.llm.wire import (
    CONTINUE_STYLES,
    KINDS,
    PENALTY_FIELDS,
    WIRE_FORMATS,
    EchoFilter,
    Event,
    SSEDecoder,
    error_message,
)

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3  # the prompt estimate errs long: a trimmed turn is better than a 400
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
MODEL_KINDS = ("local", *KINDS)
TOOL_CALL_STYLES = ("schema", "native")


@dataclass(frozen=True)
class ModelDecl:
    """One ``[models.NAME]`` table of the config. ``kind = "local"`` names a local model
    (``model`` is ``smollm2``, ``tiny-random``, a folder or a ``.gguf``) run by our engine; the
    other kinds a remote one, ``model`` being the id its server knows."""

    name: str
    kind: str
    model: str
    endpoints: tuple[str, ...] = ()
    max_in_flight: int = 16
    context: int = 8192
    api_key_env: str | None = None
    api_key_file: Path | None = None
    continue_style: str = "prefill"  # how a partial answer is continued (``wire.py``)
    tool_calls: str = "schema"  # how tool rounds go: held to the step schema, or "native"
    penalty_field: str | None = None  # the field the agent's repetition_penalty goes in
    retries: int = 4  # further attempts after a failure, on other endpoints where possible
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0  # the longest silence inside a stream (a queued prompt)
    health_interval_s: float = 10.0

    @property
    def remote(self) -> bool:
        return self.kind != "local"

    def api_key(self) -> str | None:
        """The key, read when the engine starts (and on reload); never logged or shown."""
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise InvalidArgument(
                    f"model {self.name}: environment variable {self.api_key_env} is not set"
                )
            return key
        if self.api_key_file:
            try:
                return self.api_key_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise InvalidArgument(f"model {self.name}: cannot read api_key_file: {e}") from None
        return None


_DECL_KEYS = {
    "kind",
    "model",
    "endpoints",
    "endpoint",
    "max_in_flight",
    "penalty_field",
    "context",
    "api_key_env",
    "api_key_file",
    "continue",
    "tool_calls",
    "retries",
    "connect_timeout_s",
    "read_timeout_s",
    "health_interval_s",
}


def parse_models(tables: Any) -> dict[str, ModelDecl]:
    """The config file's ``[models.NAME]`` tables, checked; every mistake is InvalidArgument
    naming the table and the key."""
    if tables is None:
        return {}
    if not isinstance(tables, dict):
        raise InvalidArgument("[models] holds [models.NAME] tables")
    out: dict[str, ModelDecl] = {}
    for name, t in tables.items():
        where = f"[models.{name}]"
        if not isinstance(t, dict):
            raise InvalidArgument(f"{where} must be a table")
        if not name or "/" in name or name.startswith("."):
            raise InvalidArgument(f"{where}: a model name is a plain file name")
        unknown = set(t) - _DECL_KEYS
        if unknown:
            raise InvalidArgument(
                f"{where}: unknown key {sorted(unknown)[0]!r}; "
                f"known: {', '.join(sorted(_DECL_KEYS))}"
            )
        kind = t.get("kind", "openai")
        if kind not in MODEL_KINDS:
            raise InvalidArgument(f"{where}: kind must be one of {', '.join(MODEL_KINDS)}")
        model = t.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidArgument(
                f"{where}: model (the model's id or, for local, its name) is required"
            )
        if "endpoints" in t and "endpoint" in t:
            raise InvalidArgument(f"{where}: give endpoints or endpoint, not both")
        endpoints = t.get("endpoints", [t["endpoint"]] if "endpoint" in t else [])
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise InvalidArgument(f"{where}: endpoints is a list of URLs")
        if kind == "local":
            if endpoints:
                raise InvalidArgument(f"{where}: a local model has no endpoints")
        else:
            if not endpoints:
                raise InvalidArgument(f"{where}: endpoints (at least one base URL) is required")
            for url in endpoints:
                if not url.startswith(("http://", "https://")):
                    raise InvalidArgument(f"{where}: endpoint {url!r} is not an http(s) URL")
        if "api_key_env" in t and "api_key_file" in t:
            raise InvalidArgument(f"{where}: give api_key_env or api_key_file, not both")
        ints = {k: t[k] for k in ("max_in_flight", "context", "retries") if k in t}
        for key, value in ints.items():
            low = 0 if key == "retries" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidArgument(f"{where}: {key} must be an integer of at least {low}")
        floats = {
            k: t[k] for k in ("connect_timeout_s", "read_timeout_s", "health_interval_s") if k in t
        }
        for key, value in floats.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidArgument(f"{where}: {key} must be a positive number of seconds")
        style = t.get("continue", "prefill")
        if style not in CONTINUE_STYLES:
            raise InvalidArgument(f"{where}: continue must be {' or '.join(CONTINUE_STYLES)}")
        penalty = t.get("penalty_field")
        if penalty is not None:
            if kind != "openai":
                raise InvalidArgument(
                    f"{where}: penalty_field is for the openai kind (the {kind} API has no "
                    "repetition penalty)"
                )
            if penalty not in PENALTY_FIELDS:
                raise InvalidArgument(
                    f"{where}: penalty_field must be {' or '.join(PENALTY_FIELDS)} "
                    "(vLLM and SGLang take repetition_penalty, llama.cpp's server repeat_penalty)"
                )
        tool_calls = t.get("tool_calls", "schema")
        if tool_calls not in TOOL_CALL_STYLES:
            raise InvalidArgument(
                f"{where}: tool_calls must be {' or '.join(TOOL_CALL_STYLES)} (native: the "
                "server's own tools and tool_calls; schema: each round held to the step's JSON "
                "Schema)"
            )
        if tool_calls == "native" and kind == "local":
            raise InvalidArgument(
                f'{where}: tool_calls = "native" is for remote models (a local model is held '
                "to the step schema by its grammar)"
            )
        key_env = t.get("api_key_env")
        key_file = t.get("api_key_file")
        if key_env is not None and not isinstance(key_env, str):
            raise InvalidArgument(f"{where}: api_key_env is the name of an environment variable")
        if key_file is not None and not isinstance(key_file, str):
            raise InvalidArgument(f"{where}: api_key_file is a path")
        out[name] = ModelDecl(
            name,
            kind,
            model,
            tuple(endpoints),
            api_key_env=key_env,
            api_key_file=Path(key_file).expanduser() if key_file else None,
            continue_style=style,
            penalty_field=penalty,
            tool_calls=tool_calls,
            max_in_flight=ints.get("max_in_flight", 16),
            context=ints.get("context", 8192),
            retries=ints.get("retries", 4),
            connect_timeout_s=float(floats.get("connect_timeout_s", 10.0)),
            read_timeout_s=float(floats.get("read_timeout_s", 300.0)),
            health_interval_s=float(floats.get("health_interval_s", 10.0)),
        )
    return out


class RemoteSequence(Sequence):
    """A generation at a remote model: its partial answer is its whole state (the text
    snapshot). ``chunks`` counts streamed deltas, the policies' generated tokens."""

    def __init__(self, request: GenerationRequest, prompt_estimate: int, max_tokens: int) -> None:
        super().__init__(request, [], max_tokens)
        self.prompt_estimate = prompt_estimate
        self.chunks = 0
        self.reported_out = 0  # tokens_out already sent to the kernel
        self.reported_in = False
        self.scope: trio.CancelScope | None = None  # the stream now running, if any
        self.streams = 0  # how many streams it took (resumptions and failovers add one each)
        # a native-tools answer, held until its stream ends: its text, and each tool call's
        # name and arguments so far, by the call's index
        self.native = bool(request.tools)
        self.held: list[str] = []
        self.calls: dict[int, list[str]] = {}

    @property
    def num_tokens(self) -> int:
        return self.prompt_estimate + self.chunks

    @property
    def generated(self) -> int:
        return self.chunks

    @property
    def preemptible(self) -> bool:
        # a native-tools round restarts when its stream is closed: preempted at every slice,
        # a long one would never finish, so it runs to its end
        return not self.native


@dataclass
class _Failure:
    reason: str
    retry: bool = True
    connection: bool = False
    wait: float | None = None


class RemoteEngine:
    """One remote model: its policy, its in-flight limit and its endpoints."""

    def __init__(
        self,
        decl: ModelDecl,
        policy: str,
        limits: Limits,
        emit: Any,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.decl = decl
        self.name = decl.name
        self.emit = emit
        self.wire = WIRE_FORMATS[decl.kind](decl.model, decl.continue_style, decl.penalty_field)
        self.pool = EndpointPool(list(decl.endpoints))
        self.ledger = ServiceLedger()
        # the server keeps the KV: only the count of requests in flight is ours to limit
        self.limits = replace(limits, max_running=decl.max_in_flight, max_tokens_in_flight=1 << 40)
        self.scheduler: Scheduler = make_scheduler(policy, self.limits, self.ledger)
        self._transport = transport
        self.native_tools = decl.tool_calls == "native"
        self.state = "new"  # new -> ready | failed; stopped
        self.progress = ""
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self._lock = threading.Lock()
        self._inbox: list[GenerationRequest] = []
        self._cancels: set[int] = set()
        self._policy: str | None = None
        self._stopping = False
        self._retiring = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake = trio.Event()
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None
        self._headers: dict[str, str] = {}
        # statistics (engine thread writes, others read plain values)
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.requests = 0
        self.finished = 0
        self.failed = 0
        self.retries = 0
        self.resumed = 0  # streams continued from a text snapshot (preemption or failover)
        self.rate = TokenRate()
        self.queue_info: dict[str, Any] = self.scheduler.info()
        self.kv_info: dict[str, Any] = {"contexts": {}, "prefix_cache": {}}

    # ---- called from the kernel's thread ------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=trio.run, args=(self._main,), name=f"remote-{self.name}", daemon=True
        )
        self._thread.start()

    def submit(self, request: GenerationRequest) -> None:
        with self._lock:
            self._inbox.append(request)
        self._poke()

    def cancel(self, request_ids: list[int]) -> None:
        with self._lock:
            self._cancels.update(request_ids)
        self._poke()

    def set_policy(self, name: str) -> None:
        with self._lock:
            self._policy = name
        self._poke()

    def retire(self) -> None:
        """Take no more requests; finish those accepted, then stop (a config reload that
        removed or changed this model)."""
        with self._lock:
            self._retiring = True
        self._poke()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def policy(self) -> str:
        return self._policy or self.scheduler.name

    @property
    def tokens_per_s(self) -> float:
        return self.rate.rate()

    def _poke(self) -> None:
        with self._lock:
            token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._wake.set)

    def info(self) -> dict[str, Any]:
        now = time.monotonic()
        endpoints = self.pool.info(now)
        ttfts = [e["ttft_s"] for e in endpoints if e["ttft_s"] is not None]
        return {
            "name": self.name,
            "kind": self.decl.kind,
            "remote": True,
            "core": self.decl.kind,
            "model": self.decl.model,
            "context": self.decl.context,
            "max_in_flight": self.decl.max_in_flight,
            "tool_calls": self.decl.tool_calls,
            "in_flight": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "state": self.state,
            "loaded": self.state == "ready",
            "healthy": any(e["healthy"] for e in endpoints),
            "error": self.load_error,
            "policy": self.scheduler.name,
            "requests": self.requests,
            "finished": self.finished,
            "errors": self.failed,
            "retries": self.retries,
            "resumed": self.resumed,
            "tokens_generated": self.tokens_generated,
            "prompt_tokens": self.prompt_tokens,
            "tokens_per_s": round(self.rate.rate(), 2),
            "ttft_s": round(sum(ttfts) / len(ttfts), 3) if ttfts else None,
            "endpoints": endpoints,
        }

    # ---- the engine's own thread ---------------------------------------------------------------

    async def _main(self) -> None:
        with self._lock:
            self._token = trio.lowlevel.current_trio_token()
        try:
            key = self.decl.api_key()
        except InvalidArgument as e:
            self.load_error = str(e)
            self.state = "failed"
            log.error("model %s: %s", self.name, e)
        else:
            self._headers = self.wire.headers(key)
            self.state = "ready"
            self.progress = "ready"
        self.loaded.set()
        timeout = httpx.Timeout(
            connect=self.decl.connect_timeout_s,
            read=self.decl.read_timeout_s,
            write=self.decl.connect_timeout_s,
            pool=None,
        )
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=self.decl.max_in_flight
        )
        async with (
            httpx.AsyncClient(timeout=timeout, limits=limits, transport=self._transport) as client,
            trio.open_nursery() as nursery,
        ):
            self._client, self._nursery = client, nursery
            if self.state == "ready":
                nursery.start_soon(self._health_loop)
            while True:
                self._tick()
                if self._stopping or (self._retiring and not self.scheduler.has_work()):
                    break
                await self._wake.wait()
                self._wake = trio.Event()
            nursery.cancel_scope.cancel()
        self.state = "stopped"

    def _tick(self) -> None:
        """Take what the kernel sent, let the policy decide, start and stop streams."""
        with self._lock:
            inbox, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, set()
            policy, self._policy = self._policy, None
        updates: list[Update] = []
        for rid in cancels:
            seq = self.scheduler.remove(rid)
            if isinstance(seq, RemoteSequence):
                self._stop_stream(seq)
        if policy is not None:
            old = self.scheduler
            self.scheduler = make_scheduler(policy, self.limits, self.ledger)
            self.scheduler.adopt(old.waiting, old.running)
        for request in inbox:
            if request.request_id in cancels:
                continue
            self._admit(request, updates)
        decision = self.scheduler.schedule()
        for seq in decision.preempted:
            assert isinstance(seq, RemoteSequence)
            self._stop_stream(seq)
        assert self._nursery is not None
        for seq in decision.run:
            assert isinstance(seq, RemoteSequence)
            if seq.scope is None:
                seq.scope = trio.CancelScope()
                self._nursery.start_soon(self._generate, seq, seq.scope)
        self._publish()
        if updates:
            self.emit(updates)

    def _admit(self, request: GenerationRequest, updates: list[Update]) -> None:
        self.requests += 1
        if self.state != "ready":
            why = self.load_error or f"model {self.name} is {self.state}"
            updates.append(Update(request.request_id, finished="error", error=why))
            self.failed += 1
            return
        try:
            seq = self._prepare(request)
        except InvalidArgument as e:
            updates.append(Update(request.request_id, finished="error", error=str(e)))
            self.failed += 1
            return
        self.scheduler.add(seq)

    def _prepare(self, request: GenerationRequest) -> RemoteSequence:
        """Drop the oldest history turns until prompt and answer fit the model's context (by
        the character estimate)."""
        history = list(request.history)
        fixed = _estimate([*request.messages]) + _estimate(
            [{"content": request.system}] if request.system else []
        )
        if request.tools:  # the server writes the tools into the prompt
            fixed += math.ceil(len(json.dumps(request.tools)) / CHARS_PER_TOKEN)
        max_tokens = request.sampling.max_tokens
        while history and fixed + _estimate(history) + max_tokens > self.decl.context:
            history = history[2:]
        prompt = fixed + _estimate(history)
        room = self.decl.context - prompt
        if room < 1:
            raise InvalidArgument(
                f"prompt is about {prompt} tokens; model {self.name} has a context of "
                f"{self.decl.context}"
            )
        if len(history) != len(request.history):
            request = replace(request, history=tuple(history))
        return RemoteSequence(request, prompt, min(max_tokens, room))

    def _stop_stream(self, seq: RemoteSequence) -> None:
        """Close the sequence's stream, if one runs: the server sees the connection end."""
        if seq.scope is not None:
            seq.scope.cancel()
            seq.scope = None

    def _publish(self) -> None:
        queue = self.scheduler.info()
        queue["batched"] = True
        self.queue_info = queue
        snapshots = [s for s in self.scheduler.waiting if s.generated]
        self.kv_info = {
            "contexts": {
                "text_snapshots": len(snapshots),
                "text_chars": sum(len(s.text) for s in snapshots),
            },
            "prefix_cache": {},
        }

    # ---- one generation --------------------------------------------------------------------------

    async def _generate(self, seq: RemoteSequence, scope: trio.CancelScope) -> None:
        """Stream the answer of ``seq`` until it ends, trying further endpoints after failures;
        ``scope`` is cancelled when the sequence is preempted or cancelled."""
        failures: list[str] = []
        avoid: set[str] = set()
        with scope:
            for attempt in range(self.decl.retries + 1):
                ep = await self._endpoint(frozenset(avoid))
                failure = await self._stream(seq, ep)
                if failure is None:
                    self._end(seq, seq.finish_reason or "stop")
                    return
                now = time.monotonic()
                self.pool.failed(ep, failure.reason, now, failure.connection, failure.wait)
                failures.append(f"{ep.url}: {failure.reason}")
                log.warning("model %s, request %d: %s", self.name, seq.id, failures[-1])
                if not failure.retry or attempt == self.decl.retries:
                    break
                self.retries += 1
                avoid.add(ep.url)
            tried = len(failures)
            self._end(
                seq,
                "error",
                f"model {self.name}: {tried} attempt{'s' if tried > 1 else ''} failed: "
                + "; ".join(failures[-3:]),
            )

    async def _endpoint(self, avoid: frozenset[str]) -> Any:
        """An endpoint to send to, waiting out backoffs when every one is backing off."""
        while True:
            now = time.monotonic()
            ep = self.pool.pick(now, avoid)
            if ep is not None:
                return ep
            await trio.sleep(max(0.05, self.pool.wait(now)))

    async def _stream(self, seq: RemoteSequence, ep: Any) -> _Failure | None:
        """One streamed request for what is left of ``seq``'s answer; None when the answer is
        complete, else why not. Cancellation (preemption) leaves through the ``async with``,
        which closes the connection."""
        assert self._client is not None
        if seq.native:  # nothing of an unfinished stream was handed over: start afresh
            seq.held, seq.calls, seq.chunks = [], {}, 0
        prefix = seq.text
        left = seq.max_tokens - seq.chunks
        if left <= 0:
            seq.finish_reason = "length"
            return None
        if prefix:
            self.resumed += 1
        seq.streams += 1
        body = self.wire.body(seq.request, prefix, left)
        sent = self.wire.sent_prefix(prefix)
        echo = EchoFilter(sent)
        skip = len(prefix) - len(sent)  # white space the wire lost, which may come again
        started = time.monotonic()
        self.pool.sent(ep, seq.id, started)
        chunks = 0
        server_out: int | None = None
        finish: str | None = None
        try:
            async with self._client.stream(
                "POST", ep.url + self.wire.path, json=body, headers=self._headers
            ) as resp:
                if resp.status_code != 200:
                    data = await resp.aread()
                    return _status_failure(resp.status_code, data, resp.headers)
                async with contextlib.aclosing(_events(resp)) as events:
                    async for event in events:
                        chunk = self.wire.parse(event, seq.native)
                        if chunk.error is not None:
                            return _Failure(f"the server reported: {chunk.error}", chunk.retryable)
                        if chunk.tokens_in is not None and not seq.reported_in:
                            seq.reported_in = True
                            self.prompt_tokens += chunk.tokens_in
                            self.emit([Update(seq.id, tokens_in=chunk.tokens_in)])
                        if chunk.tokens_out is not None:
                            server_out = chunk.tokens_out
                        for piece in chunk.calls:
                            call = seq.calls.setdefault(piece.index, ["", ""])
                            call[0] += piece.name
                            call[1] += piece.arguments
                        text = echo.feed(chunk.text)
                        if skip and text:
                            cut = min(skip, len(text) - len(text.lstrip()))
                            text, skip = text[cut:], 0
                        # a piece of a tool call is a token of the answer as text is
                        for delta in [""] * len(chunk.calls) + ([text] if text else []):
                            if chunks == 0:
                                self.pool.first_token(ep, seq.id, time.monotonic())
                            chunks += 1
                            self._delta(seq, delta)
                        if chunk.finish is not None:
                            finish = chunk.finish
                        if chunk.done:
                            break
                rest = echo.flush()
                if rest:
                    chunks += 1
                    self._delta(seq, rest)
                if finish is None:
                    return _Failure("the stream ended before the answer did", connection=True)
        except httpx.TimeoutException as e:
            return _Failure(f"timed out ({type(e).__name__})", connection=True)
        except (httpx.TransportError, httpx.StreamError) as e:
            return _Failure(f"{type(e).__name__}: {e or 'connection lost'}", connection=True)
        finally:
            self.pool.ended(ep, seq.id, time.monotonic(), chunks)
        self.pool.succeeded(ep)
        if server_out is not None:
            # the server's count of this stream's tokens replaces the count of its deltas
            fix = server_out - chunks
            if fix:
                seq.reported_out += fix
                self.tokens_generated += fix
                self.emit([Update(seq.id, tokens_out=fix)])
        seq.finish_reason = finish
        return None

    def _delta(self, seq: RemoteSequence, text: str) -> None:
        seq.chunks += 1
        seq.slice_tokens += 1
        if seq.native:
            seq.held.append(text)
            text = ""  # handed over when the stream ends (``_end``)
        else:
            seq.text += text
        seq.reported_out += 1
        self.tokens_generated += 1
        self.rate.add(1)
        self.ledger.charge(seq.agent, generated=1)
        update = Update(seq.id, text=text, tokens_out=1)
        if not seq.started_reported:
            seq.started_reported = True
            update.started = True
        self.emit([update])
        if self.scheduler.waiting and self.scheduler.preemptive:
            self._wake.set()  # a slice may have run out: let the policy look

    def _end(self, seq: RemoteSequence, finish: str, error: str | None = None) -> None:
        self.scheduler.finish(seq)
        seq.scope = None
        if finish == "error":
            self.failed += 1
        else:
            self.finished += 1
        update = Update(seq.id, finished=finish, error=error)
        if seq.native and finish != "error":
            update.text = "".join(seq.held)
            update.tool_calls = tuple((c[0], c[1]) for _, c in sorted(seq.calls.items()))
        if not seq.started_reported:
            seq.started_reported = True
            update.started = True
        self.emit([update])
        self._wake.set()  # a place is free

    async def _health_loop(self) -> None:
        """Ask every endpoint ``GET BASE/models`` now and then: a down endpoint comes back when
        it answers, an idle one shows as down when it stops."""
        assert self._client is not None
        while True:
            for ep in self.pool.endpoints:
                ok, reason = True, ""
                try:
                    with trio.fail_after(min(5.0, self.decl.health_interval_s)):
                        resp = await self._client.get(ep.url + "/models", headers=self._headers)
                    ok = resp.status_code < 500
                    reason = "" if ok else error_message(resp.status_code, resp.content)
                except (httpx.HTTPError, trio.TooSlowError) as e:
                    ok, reason = False, f"health check: {type(e).__name__}"
                self.pool.probed(ep, ok, reason, time.monotonic())
            await trio.sleep(self.decl.health_interval_s)


async def _events(resp: httpx.Response) -> AsyncGenerator[Event, None]:
    """The server-sent events of a response, the last one too when the stream ends without
    its blank line."""
    decoder = SSEDecoder()
    async for line in resp.aiter_lines():
        event = decoder.feed(line)
        if event is not None:
            yield event
    event = decoder.flush()
    if event is not None:
        yield event


def _status_failure(status: int, body: bytes, headers: Mapping[str, str]) -> _Failure:
    reason = error_message(status, body)
    if status == 429:
        return _Failure(reason, retry=True, wait=retry_after(headers.get("retry-after")))
    if status in RETRYABLE_STATUS or status >= 500:
        return _Failure(reason, retry=True, wait=retry_after(headers.get("retry-after")))
    return _Failure(reason, retry=False)  # the request itself is wrong: another try won't help


def _estimate(messages: list[dict[str, Any]]) -> int:
    """Tokens a list of messages takes, from its characters (and a few per message for the
    chat template's markers); an assistant turn's native tool calls count as their JSON."""
    return sum(
        math.ceil(
            (len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or "")))
            / CHARS_PER_TOKEN
        )
        + 4
        for m in messages
    )
