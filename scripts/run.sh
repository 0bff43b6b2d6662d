#!/usr/bin/env bash
# `make run`: mount at ./mnt (or $1), ask the demo question with plain shell commands, then serve
# until Ctrl-C, which unmounts cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
MNT=${1:-mnt}
AIOSFS=.venv/bin/aiosfs
DATA=${AIOSFS_DATA:-.aiosfs-data}

mkdir -p "$MNT"
if mountpoint -q "$MNT" 2>/dev/null || ! stat "$MNT" >/dev/null 2>&1; then
    echo "run: $MNT is mounted already (or a dead mount); unmounting it first" >&2
    "$AIOSFS" umount "$MNT" || fusermount3 -u -z "$MNT" || true
fi

# AIOSFS_MODEL picks another model (the tests use tiny-random); default: the embedded SmolLM2.
"$AIOSFS" mount "$MNT" --data-dir "$DATA" ${AIOSFS_MODEL:+--model "$AIOSFS_MODEL"}

stop() {
    trap - INT TERM
    echo
    "$AIOSFS" umount "$MNT"
    exit 0
}
trap stop INT TERM

echo
echo "\$ mkdir $MNT/agents/demo"
mkdir -p "$MNT/agents/demo"
echo "\$ echo 'What is the capital of France?' > $MNT/agents/demo/syscall"
echo 'What is the capital of France?' > "$MNT/agents/demo/syscall"
echo "\$ cat $MNT/agents/demo/out"
cat "$MNT/agents/demo/out"
echo
echo "aiosfs is serving at ./$MNT. Try, in another terminal:"
echo "  mkdir $MNT/agents/me; echo 'Tell me a joke' > $MNT/agents/me/syscall; cat $MNT/agents/me/out"
echo "  cat $MNT/sys/status        .venv/bin/aiosfs status $MNT"
echo "Press Ctrl-C to unmount."
while mountpoint -q "$MNT"; do
    sleep 1 &
    wait $! || true
done
echo "run: $MNT was unmounted" >&2
