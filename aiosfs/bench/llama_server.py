"""llama.cpp's ``llama-server`` as a baseline: started on loopback, driven over HTTP with the
workload the mount runs, stopped.

The point of the comparison is the engine, so everything else is kept the same as through the
mount: the same GGUF file (or its f16 dequantisation), N agents in a closed loop, ``turns`` chat
turns each that keep the conversation's history, the same prompts and follow-ups, ``max_tokens``
new tokens, greedy decoding, and the GGUF's own chat template (``--jinja``: SmolLM2's template
adds its default system prompt, as the transformers tokenizer does for the mount). ``-np`` is the
number of agents, so that every agent has a slot, as every agent has a place in our batch up to
``max_running``.

Each turn is one streamed ``/v1/chat/completions`` request on a connection of its own; its
times are those :class:`aiosfs.bench.traffic.Req` holds for a turn through the mount (submitted,
first content delta, end of stream) and its tokens the server's own count
(``usage.completion_tokens``), so :func:`aiosfs.bench.traffic.summarize` reports both sides
alike. Only the standard library is used: ``http.client`` and a line parser for server-sent
events.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from aiosfs.bench.stats import jain
from aiosfs.bench.traffic import PROMPTS, Req, Run, TakeTurn, turns_together

START_TIMEOUT = 120.0
"""Loading a small GGUF takes a second or two; a large one, or a busy machine, much longer."""
REQUEST_TIMEOUT = 600.0
"""One turn at 64 agents on 2 cores can wait a long time for its slot's first token."""


@dataclass
class StreamedReq(Req):
    """A turn over HTTP: what a turn through the mount measures, plus when each content delta
    arrived (the fairness window counts the tokens received before its end)."""

    token_times: list[float] = field(default_factory=list)
    text: str = ""


@dataclass
class Server:
    """A running llama-server: where it listens and its process (for its exit status)."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    threads: int
    slots: int
    ctx: int

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)


def free_port() -> int:
    """A port nobody listens on now (the kernel picks it); the server binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthy(host: str, port: int) -> bool:
    """``/health`` answers 200 once the model is loaded (503 while loading)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def llama_server(
    binary: Path,
    gguf: Path,
    slots: int,
    ctx_per_slot: int,
    threads: int,
    log: Path,
    start_timeout: float = START_TIMEOUT,
    extra_args: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[Server]:
    """``binary`` serving ``gguf`` with ``slots`` parallel sequences of ``ctx_per_slot`` tokens
    each on ``threads`` threads, ready when the block starts and stopped when it ends.
    ``extra_args`` go on its command line (``--metrics``, ``--api-key K``); ``port`` is a port
    to bind again (a server restarted where clients know it), else a free one.

    The shared libraries a build with ``BUILD_SHARED_LIBS`` needs lie beside the binary
    (``scripts/llama-server.sh`` installs them there), hence ``LD_LIBRARY_PATH``. Its output
    goes to ``log``, which is quoted when it does not start."""
    host, port = "127.0.0.1", port or free_port()
    ctx = slots * ctx_per_slot
    cmd = [
        str(binary),
        "-m",
        str(gguf),
        "--host",
        host,
        "--port",
        str(port),
        "-np",
        str(slots),
        "-c",
        str(ctx),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "--jinja",
        "--no-webui",
        *extra_args,
    ]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(binary.parent), env.get("LD_LIBRARY_PATH", "")) if p
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(host, port, proc, log, threads, slots, ctx)
    try:
        deadline = time.monotonic() + start_timeout
        while not _healthy(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama-server did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def sse_events(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, until ``data: [DONE]`` or its end.

    llama-server sends each event as one ``data:`` line followed by a blank line; lines that are
    not data (comments, ``event:``) carry nothing this benchmark needs. A payload spread over
    several ``data:`` lines is joined with newlines, as the SSE format says."""
    data: list[str] = []
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line or not data:
            continue
        payload = "\n".join(data)
        data = []
        if payload == "[DONE]":
            return
        yield json.loads(payload)
    if data and "\n".join(data) != "[DONE]":
        yield json.loads("\n".join(data))


def chat(
    server: Server,
    agent: str,
    turn: int,
    messages: list[dict[str, str]],
    max_tokens: int,
) -> StreamedReq:
    """One streamed, greedy chat completion: the same settings as an agent's turn through the
    mount (temperature 0, no repetition penalty, ``max_tokens``), times and tokens recorded.

    Each turn opens a connection of its own (a loopback connect costs tens of microseconds):
    llama-server announces keep-alive but closes a connection after a streamed answer."""
    body = json.dumps(
        {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "repeat_penalty": 1.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    req = StreamedReq(agent, turn, time.monotonic())
    parts: list[str] = []
    usage: int | None = None
    conn = server.connect()
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            req.error = f"HTTP {resp.status}: {resp.read()[-200:]!r}"
            return req
        for event in sse_events(resp):
            if "error" in event:  # the server ends a failed stream with an error event
                req.error = json.dumps(event["error"])[:200]
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.monotonic()
                    if req.first is None:
                        req.first = now
                    req.token_times.append(now)
                    parts.append(content)
            if event.get("usage"):
                usage = int(event["usage"]["completion_tokens"])
        req.done = time.monotonic()
    except (OSError, ValueError, http.client.HTTPException) as e:
        req.error = f"{type(e).__name__}: {e}"
        return req
    finally:
        conn.close()
    req.text = "".join(parts)
    # the server's count; streamed deltas are one per token, bar held-back partial characters
    req.tokens = usage if usage is not None else len(req.token_times)
    return req


def closed_loop(
    server: Server,
    run: Run,
    n: int,
    turns: int,
    max_tokens: int,
    tag: str,
    started: threading.Event | None = None,
    names: list[str] | None = None,
) -> None:
    """``n`` agents, each in its own thread, running ``turns`` turns that
    keep their history (the answer of each turn is the assistant message of the next), all
    starting together; prompts as :func:`aiosfs.bench.traffic.closed_loop` sends them."""
    names = names or [f"a{i}" for i in range(n)]

    def agent(name: str) -> TakeTurn:
        history: list[dict[str, str]] = []

        def take_turn(t: int, text: str) -> Req:
            history.append({"role": "user", "content": text})
            req = chat(server, name, t, history, max_tokens)
            history.append({"role": "assistant", "content": req.text})
            return req

        return take_turn

    turns_together(run, names, turns, tag, agent, started)


def run_scaling(
    server: Server, config: str, n: int, turns: int, max_tokens: int, run_id: int
) -> Run:
    """One closed-loop run of ``n`` agents (the engine measurement gives the server ``n``
    slots; the remote one shares a server of as many slots as its largest ``n``)."""
    run = Run(config, n)
    closed_loop(server, run, n, turns, max_tokens, f"run {run_id}")
    return run


def run_fairness(
    server: Server, config: str, modest: int, turns: int, flood: int, max_tokens: int, run_id: int
) -> dict[str, Any]:
    """The flooder of :func:`aiosfs.bench.llm.run_fairness` against llama-server: one client
    sends ``flood`` requests at once (on as many connections, as the mount's flooder has them
    all queued) while ``modest`` agents take turns; Jain's index over the tokens each
    client received until the first modest agent was done."""
    run = Run(config, modest + 1)
    names = [f"m{i}" for i in range(modest)]
    started = threading.Event()
    flood_reqs: list[StreamedReq] = []
    lock = threading.Lock()

    def one_flood(i: int) -> None:
        started.wait()
        text = f"[{run_id}] flood {i}: " + PROMPTS[i % len(PROMPTS)]
        req = chat(server, "flood", 0, [{"role": "user", "content": text}], max_tokens)
        with lock:
            flood_reqs.append(req)

    flooders = [threading.Thread(target=one_flood, args=(i,)) for i in range(flood)]
    for th in flooders:
        th.start()
    closed_loop(server, run, modest, turns, max_tokens, f"fair {run_id}", started, names)
    window_end = min(max(r.done or run.end for r in run.requests if r.agent == a) for a in names)
    for th in flooders:
        th.join()

    def received(reqs: list[Req]) -> float:
        return float(
            sum(t <= window_end for r in reqs if isinstance(r, StreamedReq) for t in r.token_times)
        )

    service = [received(list(flood_reqs))] + [
        received([r for r in run.requests if r.agent == a]) for a in names
    ]
    return {
        "config": config,
        "window_s": round(window_end - run.start, 2),
        "flooder_tokens": service[0],
        "modest_tokens_median": statistics.median(service[1:]),
        "flood_errors": sum(r.error is not None for r in flood_reqs),
        "jain": jain(service),
    }
