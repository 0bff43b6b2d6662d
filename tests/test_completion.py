"""`aiosfs completion bash|zsh`: the scripts complete for real in the shells themselves.

bash: the script is sourced and its function called as bash's programmable completion calls it
(COMP_WORDS, COMP_CWORD), in a non-interactive bash. zsh: an interactive zsh on a pseudo
terminal, with compinit and the script in $fpath, is sent a line and a TAB, and what it lists
is read back from the terminal.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.mounting import ROOT


def script(shell: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "aiosfs", "completion", shell],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        timeout=60,
    )
    return done.stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "aiosfs.bash"
    path.write_text(script("bash"))
    return path


def bash_complete(script_path: Path, cwd: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (``""``: a TAB after a space)."""
    line = " ".join(("aiosfs", *words))
    driver = (
        f"source {script_path}\n"
        "func=$(complete -p aiosfs | sed -E 's/.* -F ([^ ]+) .*/\\1/')\n"
        f"COMP_WORDS=(aiosfs {' '.join(repr(w) for w in words)})\n"
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
        '"$func" aiosfs "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", driver],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
        timeout=30,
    )
    return done.stdout.split()


def test_bash_offers_subcommands_flags_choices_and_paths(bash_script: Path, tmp_path: Path) -> None:
    subcommands = bash_complete(bash_script, tmp_path, "")
    for name in ("mount", "umount", "status", "reload", "config", "service", "completion"):
        assert name in subcommands, subcommands
    assert bash_complete(bash_script, tmp_path, "service", "") == ["install", "uninstall"]
    assert bash_complete(bash_script, tmp_path, "mount", "--sch") == ["--scheduler"]
    core = bash_complete(bash_script, tmp_path, "mount", "--core", "")
    assert sorted(core) == ["auto", "llamacpp", "transformers"]
    assert bash_complete(bash_script, tmp_path, "completion", "") == ["bash", "zsh"]
    (tmp_path / "mnt-dir").mkdir()
    (tmp_path / "mnt-file.toml").write_text("")
    assert bash_complete(bash_script, tmp_path, "mount", "mnt") == ["mnt-dir"]  # folders only
    files = bash_complete(bash_script, tmp_path, "config", "--config", "mnt")
    assert "mnt-file.toml" in files


def zsh_complete(fpath: Path, line: str, expect: str, timeout: float = 20) -> str:
    """Type ``line`` and a TAB into an interactive zsh; return the screen text once
    ``expect`` shows up in it."""
    zsh = shutil.which("zsh")
    assert zsh, "zsh is missing (Debian package zsh, in scripts/install.sh)"
    main, sub = os.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {"PATH": os.environ["PATH"], "HOME": str(fpath), "TERM": "dumb", "LANG": "C.UTF-8"}
    proc = subprocess.Popen([zsh, "-f", "-i"], stdin=sub, stdout=sub, stderr=sub, env=env,
                            cwd=fpath, start_new_session=True)  # fmt: skip
    os.close(sub)
    setup = (
        f"fpath=({fpath} $fpath); autoload -U compinit; compinit -u -D; "
        "zstyle ':completion:*' list-prompt ''; LISTMAX=1000; aiosfs() {}; echo SET''UP\n"
    )
    screen = ""
    try:
        os.write(main, setup.encode())
        screen = _read_until(main, "SETUP", timeout)
        os.write(main, f"{line}\t".encode())
        screen = _read_until(main, expect, timeout)
    finally:
        proc.kill()
        proc.wait()
        os.close(main)
    return screen


def _read_until(fd: int, text: str, timeout: float) -> str:
    got = b""
    deadline = time.monotonic() + timeout
    while True:
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", got.decode(errors="replace"))
        if text in plain:
            return plain
        left = deadline - time.monotonic()
        assert left > 0, f"{text!r} not shown within {timeout} s:\n{plain}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                got += os.read(fd, 65536)
            except OSError:  # the shell went away
                raise AssertionError(f"zsh exited before showing {text!r}:\n{plain}") from None


def test_zsh_offers_subcommands_and_choices(tmp_path: Path) -> None:
    (tmp_path / "_aiosfs").write_text(script("zsh"))
    screen = zsh_complete(tmp_path, "aiosfs ", "umount")
    for name in ("mount", "status", "config", "service", "completion"):
        assert re.search(rf"^{name}\s+--", screen, re.M), screen
    screen = zsh_complete(tmp_path, "aiosfs mount --core ", "transformers")
    assert "llamacpp" in screen and "auto" in screen
