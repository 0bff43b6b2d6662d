"""`aiosfs config` prints what `aiosfs mount` would use: both call kernel.config.load_config.
That a mount's daemon takes the environment layer, and that its flags win over it, is seen in
tests/fs/test_service.py, whose unit reads its variables from the service's env file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.mounting import ROOT


def aiosfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "AIOSFS_"))}
    return subprocess.run(
        [sys.executable, "-m", "aiosfs", *args],
        capture_output=True,
        text=True,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        timeout=60,
    )


def test_table_and_json_show_every_source(tmp_path: Path) -> None:
    file = tmp_path / "aiosfs.toml"
    file.write_text('[kernel]\nscheduler = "rr"\nquantum = 8\nmax_running = 16\n')
    env = {"AIOSFS_QUANTUM": "12", "AIOSFS_MAX_RUNNING": "6", "HOME": str(tmp_path)}
    args = ("config", "--config", str(file), "--max-running", "3")
    done = aiosfs(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert settings["scheduler"] == {"value": "rr", "source": f"file {file}"}
    assert settings["quantum"] == {"value": 12, "source": "environment AIOSFS_QUANTUM"}
    assert settings["max_running"] == {"value": 3, "source": "flag --max-running"}
    assert settings["step_tokens"] == {"value": 256, "source": "default"}
    assert settings["data_dir"]["value"] == str(tmp_path / ".local/share/aiosfs")

    table = aiosfs(env, *args)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["setting", "value", "source"]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert rows["scheduler"] == ["rr", f"file {file}"]
    assert rows["max_running"] == ["3", "flag --max-running"]
    assert rows["store_index"] == ["true", "default"]
    assert set(rows) == set(settings)  # the same settings, every one of them


def test_bad_values_exit_1_naming_where_they_came_from(tmp_path: Path) -> None:
    done = aiosfs({"AIOSFS_MAX_RUNNING": "lots"}, "config")
    assert done.returncode == 1
    assert done.stderr.strip() == "aiosfs: AIOSFS_MAX_RUNNING must be an integer, not 'lots'"
    done = aiosfs({}, "config", "--config", str(tmp_path / "none.toml"))
    assert done.returncode == 1 and "cannot read config" in done.stderr
    done = aiosfs({}, "config", "--core", "gpu")
    assert done.returncode == 2 and "invalid choice" in done.stderr
