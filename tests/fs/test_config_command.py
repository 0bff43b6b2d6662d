"""`aiosfs config` prints what `aiosfs mount` would use: both call kernel.config.load_config.
That a mount's daemon takes the environment layer, and that its flags win over it, is seen in
tests/fs/test_service.py, whose unit reads its variables from the service's env file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fs.conftest import Cli


def test_table_and_json_show_every_source(cli: Cli, tmp_path: Path) -> None:
    file = tmp_path / "aiosfs.toml"
    file.write_text('[kernel]\nscheduler = "rr"\nquantum = 8\nmax_running = 16\n')
    env = {"AIOSFS_QUANTUM": "12", "AIOSFS_MAX_RUNNING": "6"}
    args = ("config", "--config", str(file), "--max-running", "3")
    code, out, err = cli(*args, "--json", **env)
    assert code == 0, err
    settings = json.loads(out)
    assert settings["scheduler"] == {"value": "rr", "source": f"file {file}"}
    assert settings["quantum"] == {"value": 12, "source": "environment AIOSFS_QUANTUM"}
    assert settings["max_running"] == {"value": 3, "source": "flag --max-running"}
    assert settings["step_tokens"] == {"value": 256, "source": "default"}
    assert settings["data_dir"] == {"value": str(tmp_path / ".local/share/aiosfs"),
                                    "source": "default"}  # fmt: skip

    code, out, err = cli(*args, **env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["setting", "value", "source"]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert rows["scheduler"] == ["rr", f"file {file}"]
    assert rows["max_running"] == ["3", "flag --max-running"]
    assert rows["store_index"] == ["true", "default"]
    assert set(rows) == set(settings)  # the same settings, every one of them


def test_bad_values_exit_1_naming_where_they_came_from(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("config", AIOSFS_MAX_RUNNING="lots")
    assert code == 1
    assert err.strip() == "aiosfs: AIOSFS_MAX_RUNNING must be an integer, not 'lots'"
    code, _, err = cli("config", "--config", str(tmp_path / "none.toml"))
    assert code == 1 and "cannot read config" in err
    code, _, err = cli("config", "--core", "gpu")
    assert code == 2 and "invalid choice" in err
