#!/usr/bin/env bash
# bash_client.sh: the clients' common task on a mounted aiosfs, with bash, cat, dd, tee and sed.
#
#   usage: mount_examples/bash_client.sh [--max-tokens N] MOUNTPOINT [PROMPT]
#
#   1. mkdir agents/bash-PID        creates an agent; config takes {"max_tokens": N}
#   2. exec 3<>agents/NAME/syscall  a transaction: write the prompt to fd 3, cat <&3 reads the
#                                   answer to exactly that syscall from the same descriptor
#   3. agents/NAME/stream           read (by dd, in the background) while a JSON syscall runs:
#                                   its tokens as they are generated, then EOF; out then has
#                                   the same answer
#   4. store/NAME/notes.txt         written, indexed (sys/store "pending_index" 0), then found
#                                   by meaning: ls store/NAME/.search/QUERY/
#   5. rmdir agents/NAME            removes the agent (and the note goes too) when the script
#                                   exits, after a failure or Ctrl-C too
#
# Exit status: 0 on success; 1 with "STEP PATH: ERRNO (message)" on stderr when a file
# operation fails (EINVAL: the kernel rejected a config or a syscall; its reason, from
# agents/NAME/status, follows); 2 on bad usage.
set -uo pipefail

PROG=bash_client.sh
NOTE="Agents talk to the kernel through files: write a request to syscall, read the answer from out."
QUERY="how do agents talk to the kernel"
INDEX_TIMEOUT_S=60

usage() {
    printf '%s: %s\nusage: %s [--max-tokens N] MOUNTPOINT [PROMPT]\n' "$PROG" "$1" "$PROG" >&2
    exit 2
}

max_tokens=32
positional=()
while [ $# -gt 0 ]; do
    case $1 in
        --max-tokens)
            [[ ${2:-} =~ ^[1-9][0-9]{0,6}$ ]] || usage "--max-tokens takes a positive integer"
            max_tokens=$2
            shift 2
            ;;
        -?*) usage "unknown option $1" ;;
        *) positional+=("$1"); shift ;;
    esac
done
[ ${#positional[@]} -ge 1 ] && [ ${#positional[@]} -le 2 ] ||
    usage "expected MOUNTPOINT and at most one PROMPT"
mount=${positional[0]}
prompt=${positional[1]:-What is a file system? Answer briefly.}

name=bash-$$ # unique, so concurrent runs never share an agent
agent=$mount/agents/$name
store_dir=$mount/store/$name
work=$(mktemp -d) || exit 1
errors=$work/stderr
failed_errno=""

# fail STEP PATH: report the error a command just wrote to $errors (its last ": MESSAGE"), with
# the errno's name, which the shell itself never shows.
fail() {
    local message
    message=$(sed -n '$s/.*: //p' "$errors" 2>/dev/null)
    message=${message:-Input/output error}
    case $message in
        "Invalid argument") failed_errno=EINVAL ;;
        "No such file or directory") failed_errno=ENOENT ;;
        "Permission denied") failed_errno=EACCES ;;
        "Operation not permitted") failed_errno=EPERM ;;
        "File exists") failed_errno=EEXIST ;;
        "File too large") failed_errno=EFBIG ;;
        "No space left on device") failed_errno=ENOSPC ;;
        "Transport endpoint is not connected") failed_errno=ENOTCONN ;;
        "Connection timed out") failed_errno=ETIMEDOUT ;;
        *) failed_errno=EIO ;;
    esac
    printf '%s: %s %s: %s (%s)\n' "$PROG" "$1" "$2" "$failed_errno" "$message" >&2
    if [ "$failed_errno" = EINVAL ] && [ -r "$agent/status" ]; then
        # The kernel's reason for rejecting a config or a syscall is in the agent's status.
        local reason
        reason=$(sed -n '/"last_error"/,/"message"/s/^ *"message": "\(.*\)",$/\1/p' "$agent/status")
        [ -n "$reason" ] && printf '%s: the kernel said: %s\n' "$PROG" "${reason//\\\"/\"}" >&2
    fi
    exit 1
}

# 1. mkdir creates the agent
if ! mkdir "$agent" 2>"$errors"; then
    hint=""
    grep -q "No such file or directory" "$errors" && hint="; is aiosfs mounted at $mount?"
    message=$(sed -n '$s/.*: //p' "$errors")
    name_of=EIO
    case $message in
        "No such file or directory") name_of=ENOENT ;;
        "Permission denied") name_of=EACCES ;;
        "File exists") name_of=EEXIST ;;
        "Invalid argument") name_of=EINVAL ;;
    esac
    printf '%s: mkdir %s: %s (%s)%s\n' "$PROG" "$agent" "$name_of" "$message" "$hint" >&2
    rm -rf "$work"
    exit 1
fi
echo "created agent $name"

# 5. rmdir removes the agent and cancels anything it still runs, however the script ends
cleanup() {
    local rc=$?
    exec 3>&- 2>/dev/null
    if [ -e "$store_dir" ]; then
        if rm -r "$store_dir" 2>"$errors"; then echo "removed store/$name"; else rc=1; cat "$errors" >&2; fi
    fi
    if rmdir "$agent" 2>"$errors"; then echo "removed agent $name"; else rc=1; cat "$errors" >&2; fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# config takes a JSON object (or key=value lines); only the keys named change
printf '{"max_tokens": %d}' "$max_tokens" 2>"$errors" >"$agent/config" || fail write "$agent/config"
echo "config: max_tokens=$(sed -n 's/^ *"max_tokens": \([0-9]*\),$/\1/p' "$agent/config")"

# 2. one syscall on one descriptor: the read (cat) submits what was written, blocks until its
# answer is complete, and gets it whole, then EOF. A trailing newline marks the text complete,
# so a bad syscall fails the write (EINVAL).
echo "--- transaction: agents/$name/syscall ---"
exec 3<>"$agent/syscall" || fail open "$agent/syscall"
{ printf '%s\n' "$prompt" >&3; } 2>"$errors" || fail write "$agent/syscall"
cat <&3 2>"$errors" || fail read "$agent/syscall"
exec 3>&-

# 3. a JSON syscall, its tokens read live from stream. A read of stream attaches to the agent's
# oldest unfinished answer, or waits for the next syscall when none is; so the reader starts
# before the syscall is submitted (an answer that finished first would be missed). dd reads
# with read(2) and writes each piece at once; its "0+N records in" counts the reads.
echo "--- stream: agents/$name/stream ---"
(dd if="$agent/stream" bs=65536 2>"$work/dd" | tee "$work/streamed") &
reader=$!
escaped=${prompt//\\/\\\\}
escaped=${escaped//\"/\\\"}
escaped=${escaped//$'\n'/\\n}
escaped=${escaped//$'\t'/\\t}
call='{"call": "llm", "prompt": "In one sentence: '$escaped'", "max_tokens": '$max_tokens', "temperature": 0.0}'
# write-and-close submits it; should that fail, the exit removes the agent and dd ends (ENOENT)
printf '%s\n' "$call" 2>"$errors" >"$agent/syscall" || fail write "$agent/syscall"
wait "$reader" || { cp "$work/dd" "$errors"; fail read "$agent/stream"; }
# out hands out undelivered answers oldest first; the transaction's answer was delivered on fd 3
cat "$agent/out" >"$work/out" 2>"$errors" || fail read "$agent/out"
cmp -s "$work/out" "$work/streamed" ||
    { echo "out: Input/output error" >"$errors"; fail compare "$agent/out"; }
reads=$(sed -n 's/^0+\([0-9]*\) records in$/\1/p' "$work/dd")
echo "(stream: $reads reads, $(wc -c <"$work/streamed") bytes; out has the same answer)"

# 4. a note in store/, indexed, found by meaning
echo "--- search: store/$name/.search/$QUERY/ ---"
mkdir "$store_dir" 2>"$errors" || fail mkdir "$store_dir"
printf '%s\n' "$NOTE" 2>"$errors" >"$store_dir/notes.txt" || fail write "$store_dir/notes.txt"
start=$(date +%s%N)
# sys/store's "pending_index": how many files wait to be found by meaning
until grep -q '"pending_index": 0,' "$mount/sys/store" 2>"$errors"; do
    [ -s "$errors" ] && fail read "$mount/sys/store"
    if [ $(($(date +%s%N) - start)) -gt $((INDEX_TIMEOUT_S * 1000000000)) ]; then
        echo "index: Connection timed out" >"$errors"
        fail "wait for the index of" "$store_dir/notes.txt"
    fi
    sleep 0.05
done
elapsed=$((($(date +%s%N) - start) / 100000000))
echo "wrote store/$name/notes.txt; indexed after $((elapsed / 10)).$((elapsed % 10)) s"
# A query is a directory; its entries are symbolic links RANK-FILENAME to the matches.
results=$store_dir/.search/$QUERY
ls "$results" >/dev/null 2>"$errors" || fail list "$results"
best=""
for link in "$results"/*; do
    [ -L "$link" ] || continue
    echo "${link##*/} -> $(readlink "$link")"
    [ "${link##*/}" = 1-notes.txt ] && best=yes
done
[ -n "$best" ] || { echo "search: No such file or directory" >"$errors"; fail search "$results"; }
