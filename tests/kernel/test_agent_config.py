"""Agent config updates: JSON or key=value, all-or-nothing, None restores defaults."""

from __future__ import annotations

import pytest

from kernel.agent_config import AgentConfig, apply_config_update, parse_config_update
from kernel.errors import InvalidArgument


def test_key_value_lines() -> None:
    update = parse_config_update(
        b"max_tokens=64\n# a comment\n\ntemperature = 0.7\nsystem=You are terse. Be = brief.\n"
    )
    assert update == {"max_tokens": 64, "temperature": 0.7, "system": "You are terse. Be = brief."}


def test_json_object() -> None:
    assert parse_config_update(b'{"priority": 5, "top_p": 0.5}') == {"priority": 5, "top_p": 0.5}


def test_update_changes_only_named_keys_and_none_restores_default() -> None:
    cfg = apply_config_update(AgentConfig(), {"max_tokens": 9, "system": "s"})
    assert cfg.max_tokens == 9 and cfg.system == "s" and cfg.temperature == 0.0
    cfg = apply_config_update(cfg, parse_config_update(b"system=\n"))
    assert cfg.system is None and cfg.max_tokens == 9
    cfg = apply_config_update(cfg, parse_config_update(b'{"max_tokens": null}'))
    assert cfg.max_tokens == AgentConfig().max_tokens


def test_integer_temperature_is_accepted() -> None:
    assert parse_config_update(b"temperature=1") == {"temperature": 1.0}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"bogus=1", 'unknown config key "bogus"'),
        (b"max_tokens", "expected key=value"),
        (b"max_tokens=lots", '"max_tokens" must be an integer'),
        (b"max_tokens=0", "between 1 and"),
        (b"priority=1000", "priority"),
        (b"temperature=hot", '"temperature" must be a number'),
        (b'{"model": 3}', '"model" must be a string'),
        (b"[1]", "expected key=value"),
        (b"{nope", "invalid JSON config"),
        (b"\xff=1", "not valid UTF-8"),
    ],
)
def test_invalid_updates(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_config_update(data)
    assert message in e.value.message


def test_one_bad_line_rejects_the_whole_update() -> None:
    with pytest.raises(InvalidArgument):
        parse_config_update(b"max_tokens=5\nbogus=1\n")


def test_kernel_config_file_and_flags_combine(tmp_path) -> None:
    from kernel.config import KernelConfig

    path = tmp_path / "k.toml"
    path.write_text('[kernel]\nmax_running = 8\nscheduler = "rr"\n')
    cfg = KernelConfig.from_toml(path, scheduler="fair", max_running=None)
    assert cfg.max_running == 8 and cfg.scheduler == "fair"  # flags win, unset flags do not
