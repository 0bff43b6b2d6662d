"""A remote model through a real mount: the config file's ``[models.NAME]`` table, an agent that
picks it with ``model=``, the answer by ``cat``, ``sys/models/NAME``, and a reload by
``aiosfs reload`` and by ``SIGHUP`` that adds and removes models without a remount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiosfs.bench import llama_server as ls
from tests.mounting import ROOT, eventually, mounted
from tests.remote.servers import base_url, server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ls.Server]:
    with server(tmp_path_factory.mktemp("llama") / "server.log", slots=2) as s:
        yield s


def write_config(path: Path, srv: ls.Server, *names: str, broken: bool = False) -> None:
    tables = "".join(
        f'[models.{n}]\nkind = "{"anthropic" if n.startswith("claude") else "openai"}"\n'
        f'model = "smollm2"\nendpoints = ["{base_url(srv)}"]\nmax_in_flight = 2\n\n'
        for n in names
    )
    if broken:
        tables += "[models.oops]\nkind = 'nonsense'\n"
    path.write_text(f'[kernel]\nstore_embedder = "hashing"\n\n{tables}')


def aiosfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiosfs", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_a_remote_model_through_the_mount(srv: ls.Server, tmp_path: Path) -> None:
    config = tmp_path / "aiosfs.toml"
    write_config(config, srv, "remote")
    with mounted(tmp_path, "tiny-random", "--config", str(config)) as m:
        assert sorted(os.listdir(m.p("sys", "models"))) == ["remote", "tiny-random"]
        answer = m.sh(
            "mkdir agents/geo && echo model=remote > agents/geo/config && "
            "echo 'What is the capital of France?' > agents/geo/syscall && cat agents/geo/out"
        ).stdout
        assert "Paris" in answer
        info = m.json("sys/models/remote")
        assert info["kind"] == "openai" and info["healthy"] and info["finished"] == 1
        assert info["endpoints"][0]["url"] == base_url(srv)
        status = aiosfs("status", str(m.path))
        assert status.returncode == 0 and "model remote: loaded, openai smollm2" in status.stdout

        write_config(config, srv, "remote", "claude")
        done = aiosfs("reload", str(m.path))
        assert done.returncode == 0, done.stderr
        assert "added: claude" in done.stdout
        assert sorted(os.listdir(m.p("sys", "models"))) == ["claude", "remote", "tiny-random"]
        answer = m.sh(
            "mkdir agents/bard && echo model=claude > agents/bard/config && "
            "echo 'What is the capital of France?' > agents/bard/syscall && cat agents/bard/out"
        ).stdout
        assert "Paris" in answer and m.json("sys/models/claude")["kind"] == "anthropic"

        write_config(config, srv, "remote", broken=True)
        refused = aiosfs("reload", str(m.path))
        assert refused.returncode == 1 and "kind must be one of" in refused.stderr
        assert json.loads(m.read("sys", "reload"))["ok"] is False
        assert "claude" in os.listdir(m.p("sys", "models"))  # nothing changed

        write_config(config, srv, "remote")
        os.kill(m.proc.pid, signal.SIGHUP)  # the daemon's own way: it reloads, it does not stop
        eventually(lambda: "claude" not in os.listdir(m.p("sys", "models")), what="the reload")
        assert m.proc.poll() is None
        lost = m.sh("echo hello > agents/bard/syscall && cat agents/bard/out").stdout
        assert lost == "error: model 'claude' is not loaded\n"  # its model is gone: it says so
        assert m.json("agents/bard/status")["failed"] == 1


def test_reload_needs_a_config_file(tmp_path: Path) -> None:
    with mounted(tmp_path) as m:
        refused = aiosfs("reload", str(m.path))
        assert refused.returncode == 1 and "without a config file" in refused.stderr
        m_mode = os.stat(m.p("sys", "reload")).st_mode & 0o777
        assert m_mode == 0o600
