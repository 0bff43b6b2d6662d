"""The llama-server baseline's HTTP side: the server-sent-event parser, and the benchmark's
workload driven against a real llama-server on loopback.

The second test needs a built binary (``scripts/llama-server.sh``, or ``LLAMA_SERVER=PATH``) and
the SmolLM2 GGUF; it skips without them. Only the shape of what was measured is checked, never
a timing: timings belong to the benchmark.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from aiosfs.bench import llama_server as ls
from aiosfs.bench.engine import native_gguf
from aiosfs.bench.traffic import Run, summarize
from tests.remote.servers import binary as llama_server_binary


def test_sse_events_parses_data_lines_until_done() -> None:
    stream = io.BytesIO(
        b": a comment\n\n"
        b'data: {"a": 1}\n\n'
        b"event: message\r\n"
        b'data: {"b":\r\n'
        b"data: 2}\r\n\r\n"
        b"data: [DONE]\n\n"
        b'data: {"after": "done"}\n\n'
    )
    assert list(ls.sse_events(stream)) == [{"a": 1}, {"b": 2}]
    # a stream cut after its last event (no blank line) still yields that event
    assert list(ls.sse_events(io.BytesIO(b'data: {"c": 3}\n'))) == [{"c": 3}]


@pytest.mark.timeout(60)
def test_workload_against_a_real_llama_server(tmp_path: Path) -> None:
    binary = llama_server_binary()
    gguf = native_gguf("smollm2")
    if gguf is None:
        pytest.skip("no SmolLM2 GGUF")
    with ls.llama_server(binary, gguf, 2, 512, 2, tmp_path / "server.log") as srv:
        run = Run("llama-server", 2)
        ls.closed_loop(srv, run, 2, 2, 4, "test")
        fair = ls.run_fairness(srv, "llama-server", 1, 1, 2, 4, 1)
    assert srv.proc.poll() is not None  # stopped with the block
    assert len(run.requests) == 4
    for r in run.requests:
        assert r.error is None, r.error
        assert isinstance(r, ls.StreamedReq) and r.text
        assert 0 < r.tokens <= 4
        assert r.first is not None and r.done is not None
        assert r.submitted <= r.first <= r.done
    s = summarize(run)
    assert s["errors"] == 0 and s["tokens"] == sum(r.tokens for r in run.requests)
    assert fair["flood_errors"] == 0 and fair["flooder_tokens"] >= 0
    assert fair["jain"] is not None
