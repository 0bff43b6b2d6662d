"""The remote measurement at its smallest: one agent against a real llama-server, through the
mount (``[models.remote]``) and directly, one repetition, then a two-request flood beside two
modest agents.

Needs a built llama-server (``scripts/llama-server.sh``, or ``LLAMA_SERVER=PATH``), the SmolLM2
GGUF and /dev/fuse; it skips without them. Only the shape of what was measured is checked, never
a timing: timings belong to the benchmark.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import pytest

from aiosfs.bench.cli import add_arguments
from aiosfs.bench.engine import native_gguf
from aiosfs.bench.remote import ADDED_KEYS, DIRECT, MOUNT, RATIO_KEYS, run_remote
from tests.mounting import require_fuse
from tests.remote.servers import binary as llama_server_binary

pytestmark = pytest.mark.mount


@pytest.mark.slow  # ~11 s: `make test-long`
@pytest.mark.timeout(60)
def test_remote_measurement_runs_through_the_mount_and_direct(tmp_path: Path) -> None:
    require_fuse()
    binary = llama_server_binary()
    if native_gguf("smollm2") is None:
        pytest.skip("no SmolLM2 GGUF")
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(
        shlex.split(
            f"--llama-server {binary} --remote-agents 1 --reps 1 --max-tokens 4 "
            "--remote-modest 2 --flood 2 --llama-ctx 512 --threads 1"
        )
    )
    results: dict[str, Any] = {}
    run_remote(args, tmp_path, results)

    remote = results["remote"]
    assert remote["server"]["slots"] == 3  # the flooder and two modest agents
    assert 'kind = "openai"' in remote["mount"]["config"]
    runs = remote["scaling"]["runs"]
    assert sorted(r["config"] for r in runs) == [DIRECT, MOUNT]
    for r in runs:
        assert r["agents"] == 1 and r["requests"] == 2  # two turns each
        assert r["errors"] == 0 and 0 < r["tokens"] <= 8
    row = remote["scaling"]["summary"]["1"]
    assert row["reps"] == 1 and set(row["ratios"]) == {f"{MOUNT} / {DIRECT}"}
    assert row[MOUNT]["tokens_per_s"] > 0 and row[DIRECT]["tokens_per_s"] > 0
    cost = remote["scaling"]["mount_vs_direct"]["1"]
    assert set(cost["ratios"]) == set(RATIO_KEYS) and set(cost["added_s"]) == set(ADDED_KEYS)
    assert all(v is not None for v in [*cost["ratios"].values(), *cost["added_s"].values()])
    fair = remote["fairness"]
    assert fair["modest"] == 2 and fair["flood"] == 2
    assert set(fair["summary"]) == {MOUNT, DIRECT}
    assert all(s["jain"] is not None for s in fair["summary"].values())
    assert fair["runs"][DIRECT][0]["flood_errors"] == 0
    # the remote model served every request the mount sent it, and failed none
    state = remote["model_state"]
    assert state["remote"] and state["state"] == "ready" and state["policy"] == "fair"
    assert state["errors"] == 0 and state["finished"] == state["requests"] > 0
