#!/usr/bin/env bash
# POSIX conformance of store/ and mem/NAME/ with pjdfstest, against tmpfs as the reference.
#
#   PJDFSTEST=/path/to/built/pjdfstest scripts/posix.sh [TARGET...]     (or: make posix)
#
# TARGETs: tmpfs, store, mem (default: all three, in that order). For each target it runs
# `prove -r $PJDFSTEST/tests` as root inside a fresh directory (a tmpfs directory; a directory of
# store/ and of mem/NAME/ of one fresh aiosfs daemon on the tiny random model with the hashing
# embedder), prints files/tests/failed per target and compares the failing test files with the
# expected-failure table of docs/posix.md. Exit status: 0 when every failure is listed there,
# 1 when something else fails, 2 when it cannot run at all.
#
# pjdfstest itself is not part of this repository and is never built here: it is in none of the
# package registries we use, so it cannot be installed by scripts/install.sh or be used in CI.
# Build it yourself from its source, following its own README, and point PJDFSTEST at it.
#
# Knobs: AIOSFS_VENV (.venv), POSIX_WORK (a fresh temporary directory; logs stay there),
# POSIX_MODEL (tiny-random), POSIX_EXPECTED (docs/posix.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

VENV=$(cd "${AIOSFS_VENV:-.venv}" 2>/dev/null && pwd || echo "${AIOSFS_VENV:-.venv}")  # absolute: cleanup runs from /
MODEL=${POSIX_MODEL:-tiny-random}
EXPECTED_DOC=${POSIX_EXPECTED:-docs/posix.md}
say() { printf 'posix: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

if [ -z "${PJDFSTEST:-}" ] || [ ! -x "${PJDFSTEST}/pjdfstest" ] || [ ! -d "${PJDFSTEST}/tests" ]; then
    die "PJDFSTEST must name a directory holding a built pjdfstest (the 'pjdfstest' program and
  its 'tests' folder); got '${PJDFSTEST:-}'. pjdfstest is not in any package registry this project
  uses, so nothing here installs or builds it: get its source from
  https://github.com/pjd/pjdfstest, build it outside this repository as its README says, then run
  PJDFSTEST=/path/to/pjdfstest make posix"
fi
PJDFSTEST=$(cd "$PJDFSTEST" && pwd)
[ "$(id -u)" -eq 0 ] || die "pjdfstest must run as root (it changes owners and uses other uids)"
command -v prove >/dev/null || die "needs prove (Debian package perl)"
command -v fusermount3 >/dev/null || die "needs fusermount3 (Debian package fuse3)"
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV (run make install, or set AIOSFS_VENV)"
[ -f "$EXPECTED_DOC" ] || die "no expected-failure list at $EXPECTED_DOC"

TARGETS=${*:-tmpfs store mem}
for t in $TARGETS; do
    case "$t" in tmpfs | store | mem) ;; *) die "unknown target '$t' (tmpfs, store or mem)" ;; esac
done

WORK=${POSIX_WORK:-$(mktemp -d /tmp/aiosfs-posix.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
MNT=$WORK/mnt
DATA=$WORK/data
TMPFS=""
DAEMON_PID=""
# The daemon under test is this checkout's code, whatever the venv was installed from.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

cleanup() {
    set +e
    cd /
    if [ -n "$DAEMON_PID" ]; then
        if mountpoint -q "$MNT"; then
            "$VENV/bin/python" -m aiosfs umount "$MNT" >/dev/null 2>&1 \
                || fusermount3 -u -z "$MNT" 2>/dev/null
        fi
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            kill -TERM "$DAEMON_PID" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$DAEMON_PID" 2>/dev/null
        fi
    fi
    if [ -n "$TMPFS" ] && mountpoint -q "$TMPFS"; then umount "$TMPFS"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_daemon() {
    [ -n "$DAEMON_PID" ] && return 0
    mkdir -p "$MNT" "$DATA"
    say "mounting aiosfs at $MNT (model $MODEL, hashing embedder, data in $DATA)"
    # Files up to 4 GiB: pjdfstest writes past 2 GiB (open/25.t), and a sparse file's hole costs
    # the store nothing. --allow-other: pjdfstest acts as other users too.
    printf '[kernel]\nstore_max_file_mb = 4096\n' >"$WORK/posix.toml"
    "$VENV/bin/python" -m aiosfs mount "$MNT" --data-dir "$DATA" --model "$MODEL" \
        --config "$WORK/posix.toml" --embedder hashing --allow-other >"$WORK/mount.out" 2>&1 || { cat "$WORK/mount.out" >&2; die "mount failed"; }
    DAEMON_PID=$(cat "$MNT/sys/pid")
}

# Sets DIR to the directory a target's run happens in, fresh and empty each time. Called
# directly, never in $(...): a subshell would lose DAEMON_PID and TMPFS, and the cleanup with them.
target_dir() {
    case "$1" in
    tmpfs)
        if [ -z "$TMPFS" ]; then
            TMPFS=$WORK/tmpfs
            mkdir -p "$TMPFS"
            mount -t tmpfs -o size=512m,mode=0755 tmpfs "$TMPFS" || die "cannot mount a tmpfs at $TMPFS"
        fi
        DIR=$TMPFS/run
        ;;
    store)
        start_daemon
        DIR=$MNT/store/pjdfstest-$$
        ;;
    mem)
        start_daemon
        DIR=$MNT/mem/pjdfstest/run-$$
        ;;
    esac
    mkdir -p "$DIR"
}

# The expected failures of a target: test files (relative to tests/, e.g. link/00.t) from the
# table between the <!-- expected-failures --> markers of docs/posix.md, whose first column is
# the target or '*'.
expected_for() {
    awk -v t="$1" '
        /<!-- expected-failures -->/ { on = 1; next }
        /<!-- \/expected-failures -->/ { on = 0 }
        on && /^\|/ {
            n = split($0, c, "|")
            tg = c[2]; f = c[3]; gsub(/[ `]/, "", tg); gsub(/[ `]/, "", f)
            if ((tg == t || tg == "*") && f ~ /\.t$/) print f
        }' "$EXPECTED_DOC" | sort -u
}

status=0
summary=""
for t in $TARGETS; do
    target_dir "$t"
    dir=$DIR
    log=$WORK/prove-$t.log
    say "running pjdfstest in $t ($dir); log: $log"
    start=$(date +%s)
    (cd "$dir" && prove -r "$PJDFSTEST/tests") >"$log" 2>&1 || true
    secs=$(($(date +%s) - start))
    files=$(sed -n 's/^Files=\([0-9]*\), Tests=\([0-9]*\),.*/\1/p' "$log" | tail -1)
    tests=$(sed -n 's/^Files=\([0-9]*\), Tests=\([0-9]*\),.*/\2/p' "$log" | tail -1)
    # The Test Summary Report names each failing file; "Failed: N" counts its failed tests
    # (a file that died or planned wrong is listed with a Wstat or "Parse errors" and no count).
    # A listed file with "Failed: 0" and Wstat 0 only had TODO tests pass: not a failure.
    failing=$(awk -v p="$PJDFSTEST/tests/" '
        index($0, p) == 1 && /\(Wstat: / {
            f = substr($1, length(p) + 1)
            w = $0; sub(/.*Wstat: /, "", w); sub(/ .*/, "", w)
            n = $0; sub(/.*Failed: /, "", n); sub(/\).*/, "", n)
            if (w != "0" || n + 0 > 0) print f
            cur = f; next
        }
        /Parse errors/ && cur != "" { print cur }
        /^[^ ]/ { cur = "" }' "$log" | sort -u)
    failed=$(sed -n 's/.*Failed: \([0-9]*\)).*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
    nfail=$(printf '%s\n' "$failing" | grep -c . || true)
    expected=$(expected_for "$t")
    unexpected=$(comm -23 <(printf '%s\n' "$failing" | grep . || true) <(printf '%s\n' "$expected" | grep . || true))
    fixed=$(comm -13 <(printf '%s\n' "$failing" | grep . || true) <(printf '%s\n' "$expected" | grep . || true))
    line="$t: files=${files:-?} tests=${tests:-?} failed=$failed in $nfail files (${secs}s)"
    if [ -z "$files" ]; then
        line="$line; prove printed no summary, see $log"
        status=1
    fi
    if [ -n "$unexpected" ]; then
        status=1
        line="$line; NOT EXPECTED: $(echo $unexpected)"
    fi
    [ -n "$fixed" ] && line="$line; listed as expected but passing now: $(echo $fixed)"
    say "$line"
    summary="$summary$line"$'\n'
    if [ "$t" = tmpfs ] && [ -n "$TMPFS" ]; then umount "$TMPFS" && TMPFS=""; fi
done

if [ -n "$DAEMON_PID" ]; then
    errors=$({ grep -c ' ERROR ' "$DATA"/*.log 2>/dev/null || true; } | awk -F: '{s += $NF} END {print s + 0}')
    [ "$errors" -eq 0 ] || summary="${summary}daemon logged $errors ERROR record(s): see $DATA"$'\n'
fi
printf '\n%s' "$summary"
echo "logs: $WORK"
exit $status
