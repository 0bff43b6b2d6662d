"""The ``aiosfs`` command: mount, umount, reload, status, top, serve-api.

``aiosfs mount`` without ``--foreground`` starts the daemon as a detached process and stays only
to show its progress (model loading); it exits 0 once the mount is ready, or 1 with the daemon's
reason. Light commands (umount, status) never import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shtab

from kernel import __version__
from kernel.llm.scheduler import POLICIES

if TYPE_CHECKING:
    from kernel.config import KernelConfig, LoadedConfig

EXIT_USAGE = 2
MAX_TASKS = 4096
"""FUSE worker tasks by default (``aiosfs.daemon.DaemonOptions``): each read blocked on ``out``
or ``stream`` holds one until it is answered, and when all are held nothing else is served (not
even the write that would answer them), so ``--max-tasks`` must exceed the blocked readers."""
MIN_TASKS = 16
"""Fewer leave too few for the requests that release the blocked ones."""
DEFAULT_MOUNTPOINT = "~/aiosfs"
"""Where ``aiosfs service install`` mounts unless told (a folder of its own in your home)."""


def fail(message: str, code: int = 1) -> int:
    print(f"aiosfs: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aiosfs",
        description="An LLM agent operating system you mount as a filesystem.",
    )
    p.add_argument("--version", action="version", version=f"aiosfs {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="start the kernel and mount it at MOUNTPOINT")
    m.add_argument("mountpoint").complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    m.add_argument("--foreground", "-f", action="store_true", help="serve in this process")
    add_kernel_flags(m)
    m.add_argument("--allow-other", action="store_true", help="let other users use the mount")
    m.add_argument(
        "--max-tasks",
        type=int,
        default=MAX_TASKS,
        help=f"FUSE worker tasks; each blocked reader holds one (default {MAX_TASKS})",
    )
    m.add_argument("--log-level", default="INFO")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="unmount cleanly (stops the daemon)")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=20.0)

    b = sub.add_parser(
        "bench",
        help="benchmark: many agents through a real mount against the baselines",
        description="Mounts a daemon of its own; see docs/benchmarks.md for what it measures.",
    )
    from aiosfs.bench import add_arguments

    add_arguments(b)

    r = sub.add_parser(
        "reload",
        help="re-read the config file's [models.NAME] tables (as SIGHUP to the daemon does)",
    )
    r.add_argument("mountpoint")

    t = sub.add_parser(
        "top",
        help="a live dashboard of a mount (any user of it): agents, models, mem/, store/",
        description="Reads only the mount's sys/ and agents/ files; press ? in it for the keys.",
    )
    t.add_argument("mountpoint", nargs="?", default="mnt", help="the mount (default ./mnt)")

    s = sub.add_parser("status", help="a summary of a mounted kernel")
    s.add_argument("mountpoint").complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    s.add_argument("--json", action="store_true", help="print sys/status as is")

    a = sub.add_parser(
        "serve-api",
        help="serve the OpenAI API (chat completions, models, embeddings) of a mount",
        description="A client of the mount: every request is file operations on MOUNTPOINT, "
        "made as the user its key maps to. See docs/openai-api.md.",
    )
    a.add_argument("mountpoint")
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    a.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    a.add_argument(
        "--keys",
        type=Path,
        help="TOML file of [[key]] tables (key, user or uid, agent); mode 0600, yours. "
        "Without it every request acts as you and no key is checked",
    )
    a.add_argument(
        "--agent",
        help="without --keys: the agent requests run as (default api; AGENT-USER with a "
        "user field)",
    )
    c = sub.add_parser(
        "config",
        help="the settings a mount would use, and where each came from",
        epilog="Every kernel setting with its value and its source: default, the config "
        "file, the environment (AIOSFS_KEY) or a flag; each wins over the ones before it.",
    )
    add_kernel_flags(c)
    c.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    svc = sub.add_parser(
        "service",
        help="a systemd unit that mounts at boot and unmounts on stop",
        epilog="install writes a systemd unit for one mount point (a user unit unless "
        "--system) and, where systemd runs, enables and starts it; uninstall stops it and "
        "removes it. Without systemd the unit is written and printed with the commands.",
    )
    actions = svc.add_subparsers(dest="action", required=True)
    si = actions.add_parser("install", help="write the unit, enable and start it")
    su = actions.add_parser("uninstall", help="stop and disable the unit, remove it")
    for a in (si, su):
        a.add_argument(
            "--mountpoint",
            default=DEFAULT_MOUNTPOINT,
            help=f"where the service mounts (default {DEFAULT_MOUNTPOINT})",
        ).complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        scope = a.add_mutually_exclusive_group()
        scope.add_argument(
            "--user",
            dest="scope",
            action="store_const",
            const="user",
            help="a unit of your own service manager (default)",
        )
        scope.add_argument(
            "--system",
            dest="scope",
            action="store_const",
            const="system",
            help="a system unit in /etc/systemd/system, run by root",
        )
        a.add_argument(
            "--print", action="store_true", help="print the unit (or the commands); change nothing"
        )
    add_kernel_flags(si)
    si.add_argument("--allow-other", action="store_true", help="let other users use the mount")
    si.add_argument("--max-tasks", type=int, help=f"FUSE worker tasks (default {MAX_TASKS})")

    comp = sub.add_parser(
        "completion",
        help="print the shell completion script for bash or zsh",
        epilog="bash: source <(aiosfs completion bash), or save it as "
        "~/.local/share/bash-completion/completions/aiosfs. zsh: save it as _aiosfs in a folder "
        "of your $fpath.",
    )
    comp.add_argument("shell", choices=("bash", "zsh"))
    return p


# The kernel settings a flag can give (setting -> flag), for mount, config and service install;
# every other setting comes from the config file or the environment (kernel.config.load_config).
KERNEL_FLAGS = {
    "model": "--model",
    "data_dir": "--data-dir",
    "scheduler": "--scheduler",
    "threads": "--threads",
    "core": "--core",
    "gguf_weights": "--gguf-weights",
    "device": "--device",
    "max_running": "--max-running",
    "store_embedder": "--embedder",
}


def add_kernel_flags(p: argparse.ArgumentParser) -> None:
    """``--config`` and the flags of ``KERNEL_FLAGS``: one definition for every command that
    loads the kernel's settings, so ``aiosfs config`` takes exactly what ``mount`` does."""
    p.add_argument(
        "--config", type=Path, help="TOML file with a [kernel] table"
    ).complete = shtab.FILE  # type: ignore[attr-defined]
    p.add_argument("--model", help="default model: smollm2, tiny-random, a folder or .gguf")
    p.add_argument(
        "--data-dir", type=Path, help="where state and the log live"
    ).complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    p.add_argument("--scheduler", help=f"scheduling policy: {', '.join(POLICIES)} (default fifo)")
    p.add_argument("--threads", type=int, help="threads per model (default: all cores)")
    p.add_argument(
        "--core",
        choices=("auto", "llamacpp", "transformers"),
        help="what runs the models: llama.cpp for GGUF, transformers otherwise (auto, default)",
    )
    p.add_argument("--device", help="where the transformers core runs: cpu (default) or cuda[:N]")
    p.add_argument(
        "--gguf-weights",
        choices=("f16", "native"),
        help="llama.cpp core: weights dequantised to f16 (default) or the file's quantisation",
    )
    p.add_argument("--max-running", type=int, help="sequences decoded together per model")
    p.add_argument(
        "--embedder",
        choices=("minilm", "hashing"),
        help="store/ search: all-MiniLM-L6-v2 (default) or model-free word hashing",
    )


def kernel_flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Setting -> the value its flag was given (``None``: not given)."""
    return {key: getattr(args, _dest(flag)) for key, flag in KERNEL_FLAGS.items()}


def kernel_flag_argv(args: argparse.Namespace) -> list[str]:
    """``--config`` and the kernel flags given, as a command line again (paths absolute: the
    command may run elsewhere, as the daemon does in the background or a service does)."""
    argv: list[str] = []
    given = {"--config": args.config}
    given.update({flag: getattr(args, _dest(flag)) for flag in KERNEL_FLAGS.values()})
    for flag, value in given.items():
        if value is not None:
            argv += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
    return argv


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "mount":
            return cmd_mount(args)
        if args.command == "umount":
            return cmd_umount(args)
        if args.command == "bench":
            from aiosfs.bench import main as bench_main

            return bench_main(args)
        if args.command == "reload":
            return cmd_reload(args)
        if args.command == "serve-api":
            return cmd_serve_api(args)
        if args.command == "top":
            from aiosfs.top import main as top_main

            return top_main(args.mountpoint)
        if args.command == "config":
            return cmd_config(args)
        if args.command == "service":
            return cmd_service(args)
        if args.command == "completion":
            print(shtab.complete(build_parser(), shell=args.shell), end="")
            return 0
        return cmd_status(args)
    except KeyboardInterrupt:
        return 130


# ---- serve-api ------------------------------------------------------------------------------


def cmd_serve_api(args: argparse.Namespace) -> int:
    """The OpenAI-compatible door (aiosfs/api/): checked keys, a checked mount, then serve."""
    from aiosfs.api.keys import DEFAULT_AGENT, Keys, KeysError, load_keys, own_identity
    from aiosfs.api.server import check_mount, serve
    from kernel.errors import InvalidArgument

    mount = Path(args.mountpoint).resolve()
    try:
        keys = (
            load_keys(args.keys)
            if args.keys
            else Keys(None, own_identity(args.agent or DEFAULT_AGENT))
        )
    except KeysError as e:
        return fail(str(e))
    except InvalidArgument as e:
        return fail(f"--agent: {e.message}")
    if not 0 < args.port < 65536:
        return fail(f"--port must be 1-65535, not {args.port}")
    check_mount(mount)
    serve(mount, keys, args.host, args.port)
    return 0


# ---- mount ----------------------------------------------------------------------------------


def load_kernel_config(args: argparse.Namespace) -> LoadedConfig:
    """The settings for ``mount`` and ``config`` alike: defaults, ``--config``, the
    environment, the flags (``kernel.config.load_config``)."""
    from kernel.config import load_config

    return load_config(args.config, flags=kernel_flag_values(args), flag_names=KERNEL_FLAGS)


def kernel_config(args: argparse.Namespace) -> KernelConfig:
    return load_kernel_config(args).config


def cmd_mount(args: argparse.Namespace) -> int:
    from aiosfs.mountpoint import MountError, check_mountpoint
    from kernel.errors import KernelError

    if args.max_tasks < MIN_TASKS:
        return fail(f"--max-tasks must be at least {MIN_TASKS}, not {args.max_tasks}")
    try:
        mountpoint = check_mountpoint(args.mountpoint)
        config = kernel_config(args)
    except (MountError, KernelError) as e:
        return fail(str(e))
    if args.foreground:
        return run_foreground(args, mountpoint, config)
    return launch_background(args, mountpoint, config)


def run_foreground(args: argparse.Namespace, mountpoint: str, config: Any) -> int:
    from aiosfs.daemon import DaemonOptions, run_daemon, setup_logging
    from aiosfs.mountpoint import MountError

    log_path = setup_logging(
        config.data_dir, foreground=args.ready_fd is None, level=args.log_level
    )
    opts = DaemonOptions(
        mountpoint=mountpoint,
        config=config,
        allow_other=args.allow_other,
        max_tasks=args.max_tasks,
        ready_fd=args.ready_fd,
        debug_fuse=args.debug_fuse,
        config_loader=(lambda: kernel_config(args)) if args.config else None,
    )
    try:
        status = run_daemon(opts)
    except MountError as e:
        return fail(str(e))
    except RuntimeError as e:  # pyfuse3.init failures
        return fail(f"mount failed: {e} (see {log_path})")
    # Everything the daemon opened is closed by now (each part's teardown ran: the kernel's
    # files, the journal, the store, the mount). What is left is Python's own teardown of the
    # model libraries' modules, a second of work that saves nothing: the process ends here.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def launch_background(args: argparse.Namespace, mountpoint: str, config: Any) -> int:
    """Start a detached daemon and relay its progress until it is ready."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.data_dir / "aiosfs.log"
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "aiosfs", *_daemon_argv(args, mountpoint, write_fd)]
    with open(os.devnull, "rb") as devnull, open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=devnull,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_fd,),
            start_new_session=True,  # Ctrl-C in this terminal must not reach the daemon
        )
    os.close(write_fd)
    try:
        ok = relay_progress(read_fd)
    except KeyboardInterrupt:
        # Ctrl-C before the mount is ready: whoever asked for it gave up, so the daemon goes
        # too (it runs in a session of its own, which the Ctrl-C does not reach)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop this
        print("aiosfs: interrupted; stopping the daemon", file=sys.stderr)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if ok:
        print(
            f"aiosfs: serving {mountpoint} (pid {proc.pid}); stop with: aiosfs umount {mountpoint}"
        )
        return 0
    try:
        status = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        status = proc.wait()
    return fail(f"daemon exited with status {status}; log: {log_path}")


def relay_progress(read_fd: int) -> bool:
    """Show the daemon's progress lines until it is ready (True) or says why not (False)."""
    with os.fdopen(read_fd, "r") as progress:
        for line in progress:
            line = line.rstrip("\n")
            print(f"aiosfs: {line}", file=sys.stderr)
            if line.startswith("error:"):
                return False
            if line.startswith("ready"):
                return True
    return False


def _daemon_argv(args: argparse.Namespace, mountpoint: str, ready_fd: int) -> list[str]:
    argv = ["mount", mountpoint, "--foreground", "--ready-fd", str(ready_fd)]
    argv += kernel_flag_argv(args)
    argv += ["--log-level", str(args.log_level), "--max-tasks", str(args.max_tasks)]
    if args.allow_other:
        argv.append("--allow-other")
    return argv


# ---- umount ---------------------------------------------------------------------------------


def read_mount_file(mountpoint: str, name: str) -> str | None:
    try:
        with open(os.path.join(mountpoint, "sys", name)) as f:
            return f.read()
    except OSError:
        return None


def cmd_umount(args: argparse.Namespace) -> int:
    from aiosfs.mountpoint import fuse_mounts, is_dead_mount

    mountpoint = os.path.abspath(args.mountpoint)
    if is_dead_mount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
        print(f"aiosfs: cleared dead mount {mountpoint}")
        return 0
    if mountpoint not in fuse_mounts():
        return fail(f"{mountpoint} is not mounted")
    pid_text = read_mount_file(mountpoint, "pid")
    if pid_text and pid_text.strip().isdigit():
        pid = int(pid_text)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and mountpoint in fuse_mounts():
            time.sleep(0.1)
        if mountpoint not in fuse_mounts():
            print(f"aiosfs: unmounted {mountpoint}")
            return 0
    result = subprocess.run(["fusermount3", "-u", mountpoint], check=False)
    if result.returncode != 0:
        return fail(f"could not unmount {mountpoint} (busy? try: fusermount3 -u -z {mountpoint})")
    print(f"aiosfs: unmounted {mountpoint}")
    return 0


# ---- reload ---------------------------------------------------------------------------------


def cmd_reload(args: argparse.Namespace) -> int:
    """Write to ``sys/reload`` and show what the kernel did (or why it did nothing)."""
    path = os.path.join(args.mountpoint, "sys", "reload")
    try:
        with open(path, "w") as f:
            f.write("reload\n")
        failed = None
    except OSError as e:
        if e.errno == errno.ENOENT:
            return fail(f"{args.mountpoint} is not an aiosfs mount (no sys/reload)")
        if e.errno == errno.EACCES:
            return fail("only the daemon's owner (or root) may reload it")
        failed = e
    outcome = json.loads(read_mount_file(args.mountpoint, "reload") or "{}")
    if failed is not None or not outcome.get("ok"):
        return fail(f"config not reloaded: {outcome.get('error') or failed}")
    for what in ("added", "removed", "changed"):
        names = outcome.get(what) or []
        print(f"{what}: {', '.join(names) if names else '-'}")
    return 0


# ---- status ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    text = read_mount_file(args.mountpoint, "status")
    if text is None:
        return fail(f"{args.mountpoint} is not an aiosfs mount (no sys/status)")
    if args.json:
        print(text, end="")
        return 0
    st = json.loads(text)
    print(format_status(st))
    return 0


def format_status(st: dict[str, Any]) -> str:
    stats = st["stats"]
    calls = stats["syscalls"]
    lines = [
        f"aiosfs {st['version']} at {st.get('mountpoint', '?')} (pid {st.get('pid', '?')}), "
        f"up {st['uptime_s']:.0f} s, scheduler {st['scheduler']}",
    ]
    for name, m in st["models"].items():
        state = "loaded" if m["loaded"] else m["state"]
        extra = f", error: {m['error']}" if m.get("error") else ""
        default = " (default)" if m.get("default") else ""
        if m.get("remote"):
            up = sum(e["healthy"] for e in m["endpoints"])
            what = (
                f"{m['kind']} {m['model']}, {up} of {len(m['endpoints'])} endpoints healthy, "
                f"{m['in_flight']} of {m['max_in_flight']} in flight"
            )
        else:
            what = f"{m['params'] / 1e6:.0f}M params"
        lines.append(
            f"model {name}{default}: {state}, {what}, "
            f"{m['tokens_per_s']} tok/s now, {m['tokens_generated']} tokens generated{extra}"
        )
    lines.append(
        f"syscalls: {calls['submitted']} submitted, {calls['done']} done, "
        f"{calls['failed']} failed, {calls['cancelled']} cancelled, {stats['inflight']} in flight"
    )
    lines.append(f"tokens: {stats['tokens_in']} in, {stats['tokens_out']} out")
    agents = st.get("agents", {})
    lines.append(f"agents: {len(agents)}")
    for name, a in agents.items():
        lines.append(
            f"  {name:<20} {a['state']:<8} queued {a['queued']}, running {a['running']}, "
            f"done {a['done']}, failed {a['failed']}"
        )
    return "\n".join(lines)


# ---- config ---------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    """The settings ``mount`` would start the kernel with (the same loader), with sources."""
    from kernel.errors import KernelError

    try:
        rows = load_kernel_config(args).describe()
    except KernelError as e:
        return fail(str(e))
    if args.json:
        settings = {r["key"]: {"value": r["value"], "source": r["source"]} for r in rows}
        print(json.dumps(settings, indent=2))
        return 0
    shown = [(r["key"], _config_value(r["value"]), r["source"]) for r in rows]
    width = [max(len(row[i]) for row in [("setting", "value", "source"), *shown]) for i in (0, 1)]
    for key, value, source in [("setting", "value", "source"), *shown]:
        print(f"{key:<{width[0]}}  {value:<{width[1]}}  {source}")
    return 0


def _config_value(value: Any) -> str:
    """A value as a person reads it: text as is, everything else as JSON (true, [], {})."""
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))


# ---- service --------------------------------------------------------------------------------


def cmd_service(args: argparse.Namespace) -> int:
    from aiosfs import service
    from kernel.errors import KernelError

    scope: service.Scope = "system" if args.scope == "system" else "user"
    mountpoint = os.path.abspath(os.path.expanduser(args.mountpoint))
    if os.path.exists(mountpoint) and not os.path.isdir(mountpoint):
        return fail(f"mount point {mountpoint} is not a directory")
    try:
        mount_args: list[str] = []
        settings = None
        if args.action == "install":
            if args.max_tasks is not None and args.max_tasks < MIN_TASKS:
                return fail(f"--max-tasks must be at least {MIN_TASKS}, not {args.max_tasks}")
            # refused now rather than at boot: a config file that does not load, a bad flag
            settings = load_kernel_config(args).config
            mount_args = kernel_flag_argv(args)
            if args.allow_other:
                mount_args.append("--allow-other")
            if args.max_tasks is not None:
                mount_args += ["--max-tasks", str(args.max_tasks)]
        python = os.path.abspath(sys.executable)  # not resolved: a venv's python is a link
        unit = service.render_unit(mountpoint, python, mount_args, scope)
        if args.action == "uninstall":
            print(f"aiosfs: {service.uninstall(unit, write=not args.print)}", file=sys.stderr)
            return 0
        started, note = service.install(unit, write=not args.print)
    except (service.ServiceError, KernelError) as e:
        return fail(str(e))
    if not started:
        print(unit.text, end="")
    print(f"aiosfs: {note}", file=sys.stderr)
    if settings is not None:
        print(
            f"aiosfs: its data dir: {settings.data_dir} (`aiosfs config` says why)", file=sys.stderr
        )
    return 0
