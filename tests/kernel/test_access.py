"""The access layer's own rules (kernel/access.py) and the capability checks of the kernel
facade: permission classes, capability sets and privilege groups, who may change them, and the
tool, ``ask_agent`` and token-budget checks. The file-permission layers of ``store/`` and
``mem/`` are tested with their managers and through real mounts with real users."""

from __future__ import annotations

import errno
import json
import stat
from pathlib import Path

import pytest

from kernel import Kernel
from kernel.access import (
    DEFAULT_CAPABILITIES,
    R_OK,
    W_OK,
    X_OK,
    Capabilities,
    Cred,
    check_capabilities,
    parse_groups,
    process_cred,
    under,
)
from kernel.agent_config import AgentConfig, apply_config_update, parse_config_update
from kernel.config import KernelConfig
from kernel.errors import AccessDenied, InvalidArgument, NotPermitted
from kernel.llm.core import LLMCore
from kernel.results import ResultState
from kernel.tools import Caller
from tests.conftest import make_kernel

ALICE = Cred(1000, 1000, frozenset({50}))
BOB = Cred(1001, 1001, frozenset({50}))
CAROL = Cred(1002, 1002)
FILE, DIR = stat.S_IFREG, stat.S_IFDIR


def llm(prompt: str, max_tokens: int, **fields: object) -> bytes:
    return json.dumps(
        {"call": "llm", "prompt": prompt, "max_tokens": max_tokens, **fields}
    ).encode()


# ---- Cred.permits: one class only, as the OS kernel decides ----------------------------------


def test_the_owner_class_decides_for_the_owner_even_when_others_may_more() -> None:
    assert ALICE.permits(FILE | 0o640, 1000, 50, R_OK | W_OK)
    assert not ALICE.permits(FILE | 0o077, 1000, 50, R_OK)  # no fall-through to group/other
    assert BOB.permits(FILE | 0o640, 1000, 50, R_OK)  # group via a supplementary group
    assert not BOB.permits(FILE | 0o640, 1000, 50, W_OK)
    assert not CAROL.permits(FILE | 0o640, 1000, 50, R_OK)
    assert CAROL.permits(FILE | 0o604, 1000, 50, R_OK)
    assert not BOB.permits(FILE | 0o604, 1000, 50, R_OK)  # the group class, not other


def test_root_passes_read_and_write_and_needs_some_x_bit_to_execute_a_file() -> None:
    root = Cred(0, 0)
    assert root.permits(FILE | 0o000, 1000, 1000, R_OK | W_OK)
    assert not root.permits(FILE | 0o600, 1000, 1000, X_OK)
    assert root.permits(FILE | 0o001, 1000, 1000, X_OK)
    assert root.permits(DIR | 0o000, 1000, 1000, X_OK)  # search of any directory


def test_a_process_credential_has_its_supplementary_groups() -> None:
    import os

    me = process_cred(os.getuid(), os.getgid(), os.getpid())
    assert me.groups == frozenset(os.getgroups()) - {os.getgid()}
    gone = process_cred(os.getuid(), os.getgid(), 2**22 + 12345)  # no such process: the user db
    assert gone.uid == os.getuid()


# ---- capability sets --------------------------------------------------------------------------


def test_the_defaults_are_the_safe_ones() -> None:
    safe = frozenset({"calculator", "store_read"})
    caps = DEFAULT_CAPABILITIES
    assert caps.may_store("any/where", write=False)
    assert not caps.may_store("any/where", write=True)
    assert caps.may_call("calculator", safe) and not caps.may_call("shell", safe)
    assert caps.may_read_mem("me", "me") and not caps.may_read_mem("me", "other")
    assert not caps.may_ask("other")
    assert caps.max_tokens_per_hour is None


def test_subtrees_match_whole_components_only() -> None:
    assert under("notes/a.md", ("notes",)) and under("notes", ("notes",))
    assert not under("notes-old/a.md", ("notes",))
    assert under("x/y", ("",))
    assert not under("x", ())


def test_capability_values_are_checked_and_normalised() -> None:
    caps = check_capabilities(
        {"store_write": ["/notes/", "drafts//2026"], "tools": "calculator, web.*", "agents": None}
    )
    assert caps == {
        "store_write": ("notes", "drafts/2026"),
        "tools": ("calculator", "web.*"),
        "agents": None,
    }
    for bad in (
        {"store_write": ["../etc"]},
        {"store_read": "a/./b"},
        {"tools": [1]},
        {"max_tokens_per_hour": 0},
        {"max_tokens_per_hour": True},
        {"root": True},
    ):
        with pytest.raises(InvalidArgument):
            check_capabilities(bad)
    pattern = Capabilities(tools=("web.*",), agents=("helper-*",), mem_read=("*",))
    assert pattern.may_call("web.fetch", frozenset()) and not pattern.may_call("webx", frozenset())
    assert pattern.may_ask("helper-1") and not pattern.may_ask("boss")
    assert pattern.may_read_mem("a", "anyone")


def test_config_capabilities_merge_key_by_key_and_reset_with_null() -> None:
    cfg = apply_config_update(
        AgentConfig(), parse_config_update(b"capabilities.store_write=notes\ngroup=team\n")
    )
    assert cfg.group == "team" and cfg.capability_overrides() == {"store_write": ("notes",)}
    cfg = apply_config_update(cfg, parse_config_update(b'{"capabilities": {"agents": ["helper"]}}'))
    assert cfg.capability_overrides() == {"store_write": ("notes",), "agents": ("helper",)}
    cfg = apply_config_update(cfg, parse_config_update(b'{"capabilities": {"store_write": null}}'))
    assert cfg.capability_overrides() == {"agents": ("helper",)}
    assert cfg.as_dict()["capabilities"] == {"agents": ["helper"]}
    cfg = apply_config_update(cfg, parse_config_update(b'{"capabilities": null}'))
    assert cfg.capability_overrides() == {}
    with pytest.raises(InvalidArgument, match="unknown capability"):
        parse_config_update(b"capabilities.sudo=yes")


def test_groups_come_from_the_config_file(tmp_path: Path) -> None:
    toml = tmp_path / "aiosfs.toml"
    toml.write_text(
        "[kernel]\nmodel = 'tiny-random'\n\n"
        "[groups.writers]\nstore_write = ['/drafts']\ntools = ['calculator', 'store_write']\n\n"
        "[groups.default]\nstore_read = ['/public']\n"
    )
    cfg = KernelConfig.from_toml(toml)
    assert cfg.groups["writers"].store_write == ("drafts",)
    assert cfg.groups["writers"].store_read == ("",)  # unset keys keep the safe defaults
    assert cfg.groups["default"].store_read == ("public",)
    with pytest.raises(InvalidArgument, match=r"\[groups.bad\]"):
        parse_groups({"bad": {"store_write": "../x"}})
    with pytest.raises(InvalidArgument):
        parse_groups({"bad": ["not", "a", "table"]})


# ---- the kernel's checks ----------------------------------------------------------------------


async def started(core: LLMCore, **config: object) -> Kernel:
    k = make_kernel(core, **config)
    await k.start()
    await k.wait_loaded()
    return k


async def test_group_then_own_keys_make_the_effective_set(tiny_core: LLMCore) -> None:
    groups = parse_groups({"team": {"store_write": ["/team"], "agents": ["*"]}})
    k = await started(tiny_core, groups=groups)
    try:
        a = k.create_agent("a", 1000, 1000)
        assert k.capabilities(a) == DEFAULT_CAPABILITIES
        k.update_config("a", b"group=team\ncapabilities.agents=helper\n", uid=1000)
        caps = k.capabilities(a)
        assert caps.store_write == ("team",) and caps.agents == ("helper",)
        status = k.agent_status("a")
        assert status["group"] == "team"
        assert status["capabilities"]["store_write"] == ["/team"]
        assert "calculator" in status["capabilities"]["tools"]  # the default spelled out
        with pytest.raises(InvalidArgument, match="unknown privilege group"):
            k.update_config("a", b"group=admins", uid=1000)
    finally:
        await k.shutdown()


async def test_only_the_owner_or_root_changes_capabilities(kernel: Kernel) -> None:
    kernel.create_agent("a", 1000, 1000)
    with pytest.raises(NotPermitted) as e:
        kernel.update_config("a", b"capabilities.store_write=/", uid=1001)
    assert e.value.errno == errno.EPERM
    with pytest.raises(NotPermitted):
        kernel.update_config("a", b'{"capabilities": {"agents": ["*"]}}', uid=1001)
    kernel.update_config("a", b'{"group": null}', uid=1001)  # no change: nothing to refuse
    kernel.update_config("a", b"max_tokens=7", uid=1001)  # the rest is the file mode's matter
    kernel.update_config("a", b"capabilities.store_write=/notes", uid=1000)
    whole = json.dumps({**kernel.agent("a").config.as_dict(), "max_tokens": 9}).encode()
    kernel.update_config("a", whole, uid=1001)  # read, edited, written back: no change of caps
    assert kernel.agent("a").config.max_tokens == 9
    kernel.update_config("a", b"capabilities.store_write=/notes", uid=1000)
    kernel.update_config("a", b"capabilities.store_write=", uid=0)
    assert kernel.agent("a").config.capability_overrides() == {}


async def test_a_call_offering_a_tool_outside_the_capability_fails_with_eacces(
    kernel: Kernel,
) -> None:
    kernel.create_agent("a")
    r = kernel.submit("a", llm("what time is it", 8, tools=["calculator", "ask_agent"]))
    await r.wait_finished()
    # both are non-destructive built-ins: the call runs (the random model's step may be cut
    # off at 8 tokens, which is EIO, never a refusal)
    assert r.errno != errno.EACCES, r.error
    kernel.update_config("a", b"capabilities.tools=calculator")
    r = kernel.submit("a", llm("what time is it", 8, tools=["datetime"]))
    await r.wait_finished()
    assert r.state is ResultState.FAILED and r.errno == errno.EACCES
    assert r.error is not None and "capability tools" in r.error and "datetime" in r.error


async def test_ask_agent_needs_the_capability_and_the_owners_consent(kernel: Kernel) -> None:
    kernel.create_agent("boss", 1000, 1000)
    kernel.create_agent("helper", 1000, 1000)
    kernel.create_agent("stranger", 1002, 1002)
    boss = Caller("boss", 1000, 1000)
    with pytest.raises(AccessDenied) as e:
        await kernel.ask_agent(boss, "helper", "hi")
    assert e.value.capability == "agents" and e.value.errno == errno.EACCES
    kernel.update_config("boss", b"capabilities.agents=*")
    kernel.update_config("helper", b"max_tokens=2")
    assert isinstance(await kernel.ask_agent(boss, "helper", "hi"), str)
    with pytest.raises(AccessDenied) as e:  # the capability says any agent; Unix says no
        await kernel.ask_agent(boss, "stranger", "hi")
    assert e.value.capability is None
    stranger = kernel.agent("stranger")
    stranger.mode, stranger.gid = 0o770, 50  # shared with a group alice is in
    alice = Cred(1000, 1000, frozenset({50}))
    assert kernel.agent_permits(stranger, alice, W_OK)
    assert not kernel.agent_permits(stranger, Cred(1003, 1003), W_OK)
    stranger.mode = 0o750  # the group may read, not submit
    assert not kernel.agent_permits(stranger, alice, W_OK)
    assert kernel.agent_permits(stranger, alice, R_OK, natural=0o4)


async def test_the_hourly_token_budget_cuts_and_then_refuses_model_calls(
    kernel: Kernel,
) -> None:
    agent = kernel.create_agent("a")
    kernel.update_config("a", b"capabilities.max_tokens_per_hour=40\nrepetition_penalty=1.0")
    r = kernel.submit("a", llm("a", 200))
    await r.wait_finished()
    assert r.state is ResultState.DONE
    used = r.tokens_in - r.tokens_cached + r.tokens_out
    assert agent.tokens_window.used() == used
    assert used <= 40 + r.tokens_in  # generation was cut to what the budget had left
    while agent.tokens_window.used() < 40:
        r = kernel.submit("a", llm("b", 50))
        await r.wait_finished()
    with pytest.raises(AccessDenied) as e:
        kernel.submit("a", llm("c", 5))
    failed = e.value.result
    assert failed is not None and failed.errno == errno.EACCES
    assert "max_tokens_per_hour" in (failed.error or "")
    # a table call (no model) is not charged and still runs
    r = kernel.submit("a", b'{"call": "store_search", "query": "x"}')
    await r.wait_finished()
    assert r.state is ResultState.DONE
    kernel.update_config("a", b"capabilities.max_tokens_per_hour=")  # lifted by the owner
    r = kernel.submit("a", llm("d", 2))
    await r.wait_finished()
    assert r.state is ResultState.DONE


def test_the_token_window_forgets_after_an_hour() -> None:
    from kernel.access import TokenWindow

    w = TokenWindow()
    w.add(10, now=0.0)
    w.add(5, now=1800.0)
    assert w.used(now=1800.0) == 15
    assert w.used(now=3600.5) == 5
    assert w.used(now=5401.0) == 0
