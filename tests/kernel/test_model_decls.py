"""The config file's ``[models.NAME]`` tables: what a valid table becomes, its defaults, and that
every mistake is an InvalidArgument naming the table and the key (a config error must say where
to look), and where a remote model's API key comes from without ever showing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kernel.config import KernelConfig
from kernel.errors import InvalidArgument
from kernel.llm.remote import ModelDecl, parse_models

URL = "http://gpu1:8000/v1"


def one(table: dict[str, Any], name: str = "m") -> ModelDecl:
    return parse_models({name: table})[name]


def test_openai_table_with_endpoints() -> None:
    decl = one(
        {
            "kind": "openai",
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "endpoints": [URL, "https://gpu2:8000/v1"],
            "max_in_flight": 32,
            "context": 32768,
            "retries": 0,
            "continue": "continue_final_message",
            "penalty_field": "repetition_penalty",
            "tool_calls": "native",
            "connect_timeout_s": 2,
            "read_timeout_s": 60.5,
            "health_interval_s": 3,
        },
        "qwen",
    )
    assert decl == ModelDecl(
        "qwen",
        "openai",
        "Qwen/Qwen2.5-7B-Instruct",
        (URL, "https://gpu2:8000/v1"),
        max_in_flight=32,
        context=32768,
        retries=0,
        continue_style="continue_final_message",
        penalty_field="repetition_penalty",
        tool_calls="native",
        connect_timeout_s=2.0,
        read_timeout_s=60.5,
        health_interval_s=3.0,
    )
    assert decl.remote
    assert isinstance(decl.connect_timeout_s, float)


def test_defaults_and_single_endpoint_key() -> None:
    decl = one({"model": "llama", "endpoint": URL})
    assert decl.kind == "openai" and decl.endpoints == (URL,)
    assert decl.max_in_flight == 16 and decl.context == 8192 and decl.retries == 4
    assert decl.continue_style == "prefill" and decl.penalty_field is None
    assert decl.tool_calls == "schema"
    assert decl.connect_timeout_s == 10.0 and decl.read_timeout_s == 300.0
    assert decl.health_interval_s == 10.0
    assert decl.api_key_env is None and decl.api_key_file is None and decl.api_key() is None


def test_local_table() -> None:
    decl = one({"kind": "local", "model": "smollm2"}, "small")
    assert decl.kind == "local" and decl.endpoints == () and not decl.remote


def test_anthropic_table_with_api_key_env() -> None:
    decl = one(
        {
            "kind": "anthropic",
            "model": "claude-sonnet-4-5",
            "endpoint": "https://api.anthropic.com/v1",
            "api_key_env": "ANTHROPIC_API_KEY",
        },
        "claude",
    )
    assert decl.kind == "anthropic" and decl.api_key_env == "ANTHROPIC_API_KEY"
    assert decl.endpoints == ("https://api.anthropic.com/v1",)


def test_api_key_file_is_expanded() -> None:
    decl = one({"model": "m", "endpoint": URL, "api_key_file": "~/keys/openai"})
    assert decl.api_key_file == Path("~/keys/openai").expanduser()


def test_no_tables() -> None:
    assert parse_models(None) == {}
    assert parse_models({}) == {}
    with pytest.raises(InvalidArgument, match=r"\[models\]"):
        parse_models(["not", "tables"])


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"model": "x", "endpoint": URL, "temprature": 1}, "temprature"),
        ({"kind": "vllm", "model": "x", "endpoint": URL}, "kind"),
        ({"kind": 3, "model": "x", "endpoint": URL}, "kind"),
        ({"endpoint": URL}, "model"),
        ({"model": "", "endpoint": URL}, "model"),
        ({"model": 5, "endpoint": URL}, "model"),
        ({"model": "x"}, "endpoints"),
        ({"model": "x", "endpoints": []}, "endpoints"),
        ({"kind": "anthropic", "model": "x"}, "endpoints"),
        ({"model": "x", "endpoints": URL}, "endpoints"),
        ({"model": "x", "endpoints": 5}, "endpoints"),
        ({"model": "x", "endpoints": {URL: 1}}, "endpoints"),
        ({"model": "x", "endpoints": [URL, 5]}, "endpoints"),
        ({"model": "x", "endpoint": 5}, "endpoints"),
        ({"model": "x", "endpoint": URL, "endpoints": [URL]}, "endpoints"),
        ({"kind": "local", "model": "smollm2", "endpoint": URL}, "endpoints"),
        ({"kind": "local", "model": "smollm2", "endpoints": [URL]}, "endpoints"),
        ({"model": "x", "endpoint": "gpu1:8000/v1"}, "gpu1:8000/v1"),
        ({"model": "x", "endpoints": [URL, "ftp://gpu2/v1"]}, "ftp://gpu2/v1"),
        (
            {"model": "x", "endpoint": URL, "api_key_env": "K", "api_key_file": "/k"},
            "api_key_env",
        ),
        ({"model": "x", "endpoint": URL, "api_key_env": 5}, "api_key_env"),
        ({"model": "x", "endpoint": URL, "api_key_file": ["/k"]}, "api_key_file"),
        ({"model": "x", "endpoint": URL, "max_in_flight": 0}, "max_in_flight"),
        ({"model": "x", "endpoint": URL, "max_in_flight": True}, "max_in_flight"),
        ({"model": "x", "endpoint": URL, "max_in_flight": 2.0}, "max_in_flight"),
        ({"model": "x", "endpoint": URL, "context": -1}, "context"),
        ({"model": "x", "endpoint": URL, "context": False}, "context"),
        ({"model": "x", "endpoint": URL, "retries": -1}, "retries"),
        ({"model": "x", "endpoint": URL, "retries": True}, "retries"),
        ({"model": "x", "endpoint": URL, "connect_timeout_s": 0}, "connect_timeout_s"),
        ({"model": "x", "endpoint": URL, "read_timeout_s": -1.5}, "read_timeout_s"),
        ({"model": "x", "endpoint": URL, "read_timeout_s": float("nan")}, "read_timeout_s"),
        ({"model": "x", "endpoint": URL, "health_interval_s": True}, "health_interval_s"),
        ({"model": "x", "endpoint": URL, "health_interval_s": "10"}, "health_interval_s"),
        ({"model": "x", "endpoint": URL, "continue": "resume"}, "continue"),
        ({"model": "x", "endpoint": URL, "penalty_field": "penalty"}, "penalty_field"),
        ({"model": "x", "endpoint": URL, "penalty_field": 1.1}, "penalty_field"),
        (
            {"kind": "anthropic", "model": "x", "endpoint": URL, "penalty_field": "repeat_penalty"},
            "penalty_field",
        ),
        ({"kind": "local", "model": "smollm2", "penalty_field": "repeat_penalty"}, "penalty_field"),
        ({"model": "x", "endpoint": URL, "tool_calls": "openai"}, "tool_calls"),
        ({"kind": "local", "model": "smollm2", "tool_calls": "native"}, "tool_calls"),
    ],
)
def test_mistakes_name_the_table_and_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_models({"mine": table})
    assert "[models.mine]" in str(e.value)
    assert key in str(e.value)


def test_table_that_is_not_a_table() -> None:
    with pytest.raises(InvalidArgument, match=r"\[models\.mine\] must be a table"):
        parse_models({"mine": "openai"})


@pytest.mark.parametrize("name", ["a/b", ".hidden", ""])
def test_name_must_be_a_plain_file_name(name: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_models({name: {"model": "x", "endpoint": URL}})
    assert f"[models.{name}]" in str(e.value) and "name" in str(e.value)


def test_retries_zero_is_allowed() -> None:
    assert one({"model": "x", "endpoint": URL, "retries": 0}).retries == 0


# ---- the API key -------------------------------------------------------------------------------


def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSFS_TEST_KEY", "sk-test-123")
    decl = one({"model": "x", "endpoint": URL, "api_key_env": "AIOSFS_TEST_KEY"})
    assert decl.api_key() == "sk-test-123"
    assert "sk-test-123" not in repr(decl)  # the declaration holds the variable's name only


@pytest.mark.parametrize("value", [None, ""])
def test_api_key_env_missing_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("AIOSFS_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("AIOSFS_TEST_KEY", value)
    monkeypatch.setenv("AIOSFS_OTHER_KEY", "sk-secret-456")
    decl = one({"model": "x", "endpoint": URL, "api_key_env": "AIOSFS_TEST_KEY"}, "gpt")
    with pytest.raises(InvalidArgument) as e:
        decl.api_key()
    assert "AIOSFS_TEST_KEY" in str(e.value) and "gpt" in str(e.value)
    assert "sk-secret-456" not in str(e.value)


def test_api_key_from_file_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("  sk-file-789\n\n")
    decl = one({"model": "x", "endpoint": URL, "api_key_file": str(path)})
    assert decl.api_key() == "sk-file-789"


def test_api_key_file_unreadable(tmp_path: Path) -> None:
    missing = one({"model": "x", "endpoint": URL, "api_key_file": str(tmp_path / "nope")}, "gpt")
    with pytest.raises(InvalidArgument, match="gpt: cannot read api_key_file"):
        missing.api_key()
    folder = one({"model": "x", "endpoint": URL, "api_key_file": str(tmp_path)})
    with pytest.raises(InvalidArgument, match="cannot read api_key_file"):
        folder.api_key()
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfesk-\x80")
    undecodable = one({"model": "x", "endpoint": URL, "api_key_file": str(binary)})
    with pytest.raises(InvalidArgument, match="cannot read api_key_file") as e:
        undecodable.api_key()
    assert "sk-" not in str(e.value)


# ---- the config file ---------------------------------------------------------------------------


def test_kernel_config_reads_model_tables(tmp_path: Path) -> None:
    path = tmp_path / "aiosfs.toml"
    path.write_text(
        "[kernel]\n"
        "max_running = 4\n"
        "\n"
        "[models.x]\n"
        'kind = "openai"\n'
        'model = "Qwen/Qwen2.5-7B-Instruct"\n'
        f'endpoints = ["{URL}"]\n'
        "max_in_flight = 8\n"
        "\n"
        "[models.small]\n"
        'kind = "local"\n'
        'model = "smollm2"\n'
    )
    config = KernelConfig.from_toml(path)
    assert config.max_running == 4
    assert set(config.models) == {"x", "small"}
    assert config.models["x"] == ModelDecl(
        "x", "openai", "Qwen/Qwen2.5-7B-Instruct", (URL,), max_in_flight=8
    )
    assert config.models["small"].kind == "local"


def test_kernel_config_rejects_a_bad_model_table(tmp_path: Path) -> None:
    path = tmp_path / "aiosfs.toml"
    path.write_text('[kernel]\n\n[models.x]\nmodel = "m"\nendpoint = "gpu:8000"\n')
    with pytest.raises(InvalidArgument, match=r"\[models\.x\]"):
        KernelConfig.from_toml(path)
