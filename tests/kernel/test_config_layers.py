"""kernel.config.load_config: default < file < environment < flag, each value with its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.config import SECRET, Source, load_config
from kernel.errors import InvalidArgument

FLAGS = {"max_running": "--max-running", "store_embedder": "--embedder"}


def sources(loaded: object) -> dict[str, str]:
    return {r["key"]: r["source"] for r in loaded.describe()}  # type: ignore[attr-defined]


def test_each_layer_wins_over_the_one_below_and_says_so(tmp_path: Path) -> None:
    file = tmp_path / "k.toml"
    file.write_text("[kernel]\nmax_running = 8\nquantum = 16\n")
    env = {"AIOSFS_MAX_RUNNING": "4", "AIOSFS_QUANTUM": "64", "AIOSFS_MEM_K": "3"}

    base = load_config(environ={})
    assert base.config.max_running == 32 and base.sources["max_running"] == Source("default")

    filed = load_config(file, environ={})
    assert filed.config.max_running == 8
    assert sources(filed)["max_running"] == f"file {file}"

    envd = load_config(file, environ=env)
    assert (envd.config.max_running, envd.config.quantum, envd.config.mem_k) == (4, 64, 3)
    assert sources(envd)["max_running"] == "environment AIOSFS_MAX_RUNNING"
    assert sources(envd)["mem_k"] == "environment AIOSFS_MEM_K"

    flagged = load_config(file, flags={"max_running": 2, "scheduler": None}, flag_names=FLAGS,
                          environ=env)  # fmt: skip
    assert flagged.config.max_running == 2 and flagged.config.quantum == 64
    assert sources(flagged)["max_running"] == "flag --max-running"
    assert sources(flagged)["quantum"] == "environment AIOSFS_QUANTUM"  # no flag: env stands
    assert sources(flagged)["scheduler"] == "default"  # a flag not given is no source
    assert sources(flagged)["step_tokens"] == "default"


def test_a_file_without_the_key_leaves_the_default_and_tables_count_as_the_file(
    tmp_path: Path,
) -> None:
    file = tmp_path / "k.toml"
    file.write_text('[kernel]\nscheduler = "rr"\n\n[models.big]\nkind = "openai"\n'
                    'model = "m"\nendpoint = "http://127.0.0.1:9/v1"\n')  # fmt: skip
    loaded = load_config(file, environ={})
    assert sources(loaded)["scheduler"] == f"file {file}"
    assert sources(loaded)["models"] == f"file {file}"
    assert sources(loaded)["groups"] == "default" and sources(loaded)["max_running"] == "default"


def test_defaults_that_follow_a_variable_name_it(tmp_path: Path) -> None:
    loaded = load_config(environ={"XDG_DATA_HOME": str(tmp_path), "XDG_CACHE_HOME": "/c"})
    assert loaded.config.data_dir == tmp_path / "aiosfs"
    assert sources(loaded)["data_dir"] == "default ($XDG_DATA_HOME)"
    assert loaded.config.cache_dir == Path("/c/aiosfs")
    # AIOSFS_CACHE is cache_dir's own variable, so it beats a file's cache_dir
    file = tmp_path / "k.toml"
    file.write_text('cache_dir = "/from/file"\n')  # a file without [kernel]: top-level keys
    env = {"AIOSFS_CACHE": "/from/env", "XDG_CACHE_HOME": "/c"}
    loaded = load_config(file, environ=env)
    assert loaded.config.cache_dir == Path("/from/env")
    assert sources(loaded)["cache_dir"] == "environment AIOSFS_CACHE"


def test_environment_values_take_each_settings_type() -> None:
    env = {
        "AIOSFS_STORE_INDEX": "false",
        "AIOSFS_JOURNAL": "0",
        "AIOSFS_EXTRA_MODELS": "tiny-random, smollm2",
        "AIOSFS_TOOL_DIRS": "/a:/b",
        "AIOSFS_APPROVAL_TIMEOUT_S": "2.5",
        "AIOSFS_STORE_PROTECTED": "/contracts/,x",
        "AIOSFS_DATA_DIR": "/srv/aiosfs",
        "AIOSFS_SCHEDULER": "",  # empty: not set
        "AIOSFS_MODELS": "ignored",  # a table: only a file can hold it
        "AIOSFS_NOT_A_SETTING": "ignored",  # other programs' variables share the prefix
    }
    c = load_config(environ=env).config
    assert (c.store_index, c.journal) == (False, False)
    assert c.extra_models == ("tiny-random", "smollm2")
    assert c.tool_dirs == (Path("/a"), Path("/b"))
    assert c.approval_timeout_s == 2.5
    assert c.store_protected == ("contracts", "x")
    assert c.data_dir == Path("/srv/aiosfs")
    assert c.scheduler == "fifo" and dict(c.models) == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AIOSFS_MAX_RUNNING": "many"}, "AIOSFS_MAX_RUNNING must be an integer, not 'many'"),
        ({"AIOSFS_MAX_RUNNING": "0"}, "AIOSFS_MAX_RUNNING: max_running must be a positive"),
        ({"AIOSFS_AUDIT": "maybe"}, "AIOSFS_AUDIT must be true or false, not 'maybe'"),
        ({"AIOSFS_SCHEDULER": "lottery"}, "AIOSFS_SCHEDULER: unknown scheduler 'lottery'"),
        ({"AIOSFS_APPROVAL_TIMEOUT_S": "soon"}, "AIOSFS_APPROVAL_TIMEOUT_S must be a number"),
    ],
)
def test_a_bad_environment_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        load_config(environ=env)
    assert message in e.value.message


def test_a_bad_file_or_flag_value_names_its_layer(tmp_path: Path) -> None:
    file = tmp_path / "k.toml"
    file.write_text("[kernel]\nquantum = -1\n")
    with pytest.raises(InvalidArgument, match=f"config {file}: quantum must be"):
        load_config(file, environ={})
    file.write_text('[models.x]\nkind = "openai"\n')
    with pytest.raises(InvalidArgument, match=r"config .*k.toml: \[models.x\]: model"):
        load_config(file, environ={})
    with pytest.raises(InvalidArgument, match="--max-running: max_running must be"):
        load_config(flags={"max_running": 0}, flag_names=FLAGS, environ={})
    with pytest.raises(InvalidArgument, match="cannot read config"):
        load_config(tmp_path / "missing.toml", environ={})


def test_secrets_are_redacted(tmp_path: Path) -> None:
    file = tmp_path / "k.toml"
    file.write_text(
        "[mcp.servers.search]\n"
        'command = ["search-server"]\n'
        'env = { SEARCH_TOKEN = "s3cret", LOG = "debug" }\n\n'
        "[models.remote]\n"
        'kind = "openai"\n'
        'model = "m"\n'
        'endpoint = "https://user:hunter2@llm.example/v1"\n'
        'api_key_env = "REMOTE_KEY"\n'
    )
    rows = {r["key"]: r["value"] for r in load_config(file, environ={}).describe()}
    server = rows["mcp_servers"]["search"]
    assert server["env"] == {"SEARCH_TOKEN": SECRET, "LOG": SECRET}
    assert server["command"] == ["search-server"]
    remote = rows["models"]["remote"]
    assert remote["endpoints"] == [f"https://{SECRET}@llm.example/v1"]
    assert remote["api_key_env"] == "REMOTE_KEY"  # the variable's name, never a key
    assert "s3cret" not in repr(rows) and "hunter2" not in repr(rows)
