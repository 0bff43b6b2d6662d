#!/usr/bin/env bash
# `make run`: mount at ./mnt (or $1), ask the demo question with plain shell commands, then serve
# until Ctrl-C, which unmounts and stops the daemon.
#
# Ctrl-C goes to the whole foreground process group: make, this script and, in
# `make run 2>&1 | tee run.log`, tee, which dies at once. Whatever this script writes after that
# goes into a pipe nobody reads, and the write kills it with SIGPIPE (or fails it under set -e):
# it used to die on the `echo` in its trap, before the unmount, and left the daemon serving.
# So once Ctrl-C (or a TERM or HUP) comes, the script ignores SIGPIPE and further signals, stops
# the daemon before it writes anything, and never lets a failed write stop it. The trap is set
# before the mount, so a Ctrl-C while the model loads stops the daemon too (`aiosfs mount`
# itself stops a daemon it started that is not ready yet).
set -euo pipefail
cd "$(dirname "$0")/.."
MNT=${1:-mnt}
AIOSFS=${AIOSFS_VENV:-.venv}/bin/aiosfs
DATA=${AIOSFS_DATA:-.aiosfs-data}
DAEMON=""  # the daemon's pid, once it is mounted

say() { printf '%s\n' "$*" 2>/dev/null || true; }  # never fails, whoever reads (or not)

alive() {  # is process $1 running (gone and zombie are not)?
    [ -e "/proc/$1" ] && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"
}

stop() {  # $1: the exit status
    trap - EXIT
    trap '' INT TERM HUP PIPE
    set +e
    [ -n "$DAEMON" ] || DAEMON=$(cat "$MNT/sys/pid" 2>/dev/null)
    if mountpoint -q "$MNT" 2>/dev/null; then
        "$AIOSFS" umount "$MNT" >/dev/null 2>&1  # SIGTERM to the daemon: a clean unmount
    fi
    if [ -n "$DAEMON" ]; then
        for _ in $(seq 300); do alive "$DAEMON" || break; sleep 0.1; done
        if alive "$DAEMON"; then
            kill -KILL "$DAEMON" 2>/dev/null
        fi
    fi
    if mountpoint -q "$MNT" 2>/dev/null || ! stat "$MNT" >/dev/null 2>&1; then
        fusermount3 -u -z "$MNT" 2>/dev/null  # still there, or dead: clear it
    fi
    if [ -n "$DAEMON" ]; then
        say
        say "run: unmounted $MNT and stopped the daemon (pid $DAEMON)"
    fi
    exit "$1"
}
trap 'stop 0' INT TERM HUP
trap 'stop $?' EXIT  # a step that failed under set -e stops the daemon too

mkdir -p "$MNT"
if mountpoint -q "$MNT" 2>/dev/null || ! stat "$MNT" >/dev/null 2>&1; then
    echo "run: $MNT is mounted already (or a dead mount); unmounting it first" >&2
    "$AIOSFS" umount "$MNT" || fusermount3 -u -z "$MNT" || true
fi

# AIOSFS_MODEL picks another model (the tests use tiny-random); default: the embedded SmolLM2.
"$AIOSFS" mount "$MNT" --data-dir "$DATA" ${AIOSFS_MODEL:+--model "$AIOSFS_MODEL"}
DAEMON=$(cat "$MNT/sys/pid")

echo
echo "\$ mkdir $MNT/agents/demo"
mkdir -p "$MNT/agents/demo"
echo "\$ echo 'What is the capital of France?' > $MNT/agents/demo/syscall"
echo 'What is the capital of France?' > "$MNT/agents/demo/syscall"
echo "\$ cat $MNT/agents/demo/out"
cat "$MNT/agents/demo/out"
echo
echo "aiosfs is serving at $MNT. Try, in another terminal:"
echo "  mkdir $MNT/agents/me; echo 'Tell me a joke' > $MNT/agents/me/syscall; cat $MNT/agents/me/out"
echo "  cat $MNT/sys/status        $AIOSFS status $MNT"
echo "  $AIOSFS top $MNT             (a live dashboard; q quits)"
echo "  $AIOSFS serve-api $MNT       (the OpenAI API on 127.0.0.1:8000, docs/openai-api.md)"
echo "Press Ctrl-C to unmount."
while mountpoint -q "$MNT"; do
    sleep 1 &
    wait $! || true
done
echo "run: $MNT was unmounted" >&2
