"""Real servers for the remote-model tests: llama.cpp's ``llama-server`` on loopback (built from
the llama-cpp-python sdist by ``scripts/llama-server.sh``; ``make test`` builds it), serving the
embedded SmolLM2 as the f16 file the llama.cpp core runs, and a fault-injecting HTTP proxy in
front of one.

``llama-server`` speaks both wire formats the kernel has: OpenAI's Chat Completions
(``/v1/chat/completions``) and Anthropic's Messages API (``/v1/messages``). The proxy is a real
HTTP server too: it forwards every request to its server byte for byte, streaming the answer
back, except the requests it was told to refuse (a 429 with a ``Retry-After``, a 503), so the
kernel's retries meet real sockets, real status lines and real headers.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aiosfs.bench import llama_server as ls
from aiosfs.bench.engine import LLAMA_SERVER_VERSION, cache_dir

SLOTS = 4


def binary() -> Path:
    """The llama-server binary; a skip without one, or a failure where ``make test`` (which
    builds it and sets ``AIOSFS_REQUIRE_LLAMA_SERVER``) promised one."""
    given = os.environ.get("LLAMA_SERVER")
    path = (
        Path(given)
        if given
        else cache_dir() / f"llama-server-{LLAMA_SERVER_VERSION}" / "llama-server"
    )
    if not os.access(path, os.X_OK):
        why = f"no llama-server at {path} (scripts/llama-server.sh builds it)"
        if os.environ.get("AIOSFS_REQUIRE_LLAMA_SERVER"):
            pytest.fail(why)
        pytest.skip(why)
    return path


def weights() -> Path:
    """The f16 GGUF the llama.cpp core makes from the embedded model (its answers are the
    sensible ones: docs/design.md, "Two cores")."""
    from kernel.llm.llamacpp import weights_file
    from kernel.llm.models import default_cache_dir, resolve_model

    return weights_file(resolve_model("smollm2"), default_cache_dir(), "f16", 2, lambda _m: None)


TOOL_TEMPLATE = Path(__file__).with_name("tool_template.jinja")
"""A ChatML template for SmolLM2 (which was not trained to call tools) that gives llama-server
a tool-call format: the tools listed in the system turn, each call a bare JSON object
``{"name": ..., "arguments": ...}``, each result a user turn. llama-server reads the format
from the template, holds ``tool_choice: required`` to it with a grammar and parses the calls
into ``tool_calls``: its own native tool calling, on a model that could not do it alone."""


@contextlib.contextmanager
def server(
    log: Path, slots: int = SLOTS, extra: Sequence[str] = (), port: int | None = None
) -> Iterator[ls.Server]:
    with ls.llama_server(
        binary(), weights(), slots, 1024, 2, log, extra_args=["--metrics", *extra], port=port
    ) as srv:
        yield srv


def base_url(srv: ls.Server | Proxy) -> str:
    return f"http://{srv.host}:{srv.port}/v1"


def get_json(srv: ls.Server, path: str, headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return json.loads(resp.read())
    finally:
        conn.close()


def processing(srv: ls.Server, headers: dict[str, str] | None = None) -> int:
    """How many of the server's slots are generating now (its ``/slots``)."""
    return sum(bool(s.get("is_processing")) for s in get_json(srv, "/slots", headers))


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Refusal:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"error": {"message": "refused by the test proxy"}}'


class Proxy:
    """A forwarding HTTP/1.1 server on loopback. ``refuse`` holds the answers to give instead
    of forwarding, one per POST, in order; ``always`` (when set) answers every POST; ``cut``
    holds byte counts, one per POST, after which the answer's connection is dropped
    mid-stream (as a server that dies would leave it)."""

    def __init__(self, target: ls.Server) -> None:
        self.target = target
        self.refuse: list[Refusal] = []
        self.always: Refusal | None = None
        self.cut: list[int] = []
        self.posts = 0
        self.post_times: list[float] = []
        self.bodies: list[Any] = []  # every POST's JSON, in order
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with proxy._lock:
                    proxy.posts += 1
                    proxy.post_times.append(time.monotonic())
                    proxy.bodies.append(json.loads(body or b"null"))
                    refusal = proxy.refuse.pop(0) if proxy.refuse else proxy.always
                    cut = proxy.cut.pop(0) if proxy.cut and refusal is None else None
                if refusal is not None:
                    self.send_response(refusal.status)
                    for k, v in refusal.headers.items():
                        self.send_header(k, v)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(refusal.body)))
                    self.end_headers()
                    self.wfile.write(refusal.body)
                    return
                self._forward(body, cut)

            def _forward(self, body: bytes, cut: int | None = None) -> None:
                conn = http.client.HTTPConnection(proxy.target.host, proxy.target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                            self.send_header(k, v)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    sent = 0
                    while chunk := resp.read1(65536):
                        if cut is not None and sent + len(chunk) >= cut:
                            chunk = chunk[: cut - sent]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        sent += len(chunk)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                finally:
                    conn.close()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = "127.0.0.1", self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
