#!/usr/bin/env bash
# A three-agent travel planner that talks to aiosfs with nothing but shell file operations.
#
#   usage: travel_planner.sh [MOUNTPOINT] [REQUEST]
#          (defaults: ./mnt and "a 3-day trip from San Francisco to New York")
#   env:   AIOSFS_MAX_TOKENS   answer length for every agent (default 120)
#
# What it shows:
#   * mkdir agents/NAME creates an agent; rmdir removes it;
#   * agents/NAME/config takes key=value lines (only the keys named change);
#   * one write-then-close of agents/NAME/syscall is one syscall; the write returns as soon as
#     the syscall is queued, so all three agents are asked before any answer is read, and the
#     kernel decodes them together;
#   * cat agents/NAME/out blocks until that agent's next answer is complete;
#   * a plain-text syscall is a chat turn, so the itinerary agent's final turn is answered with
#     its first answer still in its conversation;
#   * tools/NAME/call is a transaction file: today's date comes from the datetime tool
#     (write the JSON arguments, read the JSON result on the same descriptor), and the
#     itinerary question includes it.
set -euo pipefail

MNT=${1:-./mnt}
REQUEST=${2:-"a 3-day trip from San Francisco to New York"}
MAX_TOKENS=${AIOSFS_MAX_TOKENS:-120}

AGENTS_DIR="$MNT/agents"
if [[ ! -d "$AGENTS_DIR" ]]; then
    echo "travel_planner: $AGENTS_DIR not found; is aiosfs mounted at $MNT?" >&2
    echo "  start it with: make run   (or: aiosfs mount $MNT)" >&2
    exit 1
fi

# Unique names ($$ is this shell's pid) so two planners, or a rerun, never share an agent.
SUFFIX=$$
FLIGHTS="flights-$SUFFIX"
HOTEL="hotel-$SUFFIX"
ITINERARY="itinerary-$SUFFIX"
CREATED=()

# Remove whatever agents we created, however the script ends (success, error or Ctrl-C).
# rmdir of an agent also drops its queued or running syscalls.
cleanup() {
    local name
    # (${a[@]+"${a[@]}"} expands an empty array safely under set -u, even in old bash)
    for name in ${CREATED[@]+"${CREATED[@]}"}; do
        rmdir "$AGENTS_DIR/$name" 2>/dev/null || echo "travel_planner: could not rmdir $name" >&2
    done
    CREATED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM # run the EXIT trap on Ctrl-C as well

# new_agent NAME SYSTEM_PROMPT: create an agent and give it a role.
new_agent() {
    local name=$1 system=$2
    mkdir "$AGENTS_DIR/$name"
    CREATED+=("$name")
    # key=value lines; the value of system= is the rest of its line.
    printf 'max_tokens=%s\nsystem=%s\n' "$MAX_TOKENS" "$system" >"$AGENTS_DIR/$name/config" || {
        echo "travel_planner: $name/config rejected max_tokens=$MAX_TOKENS" >&2
        return 1
    }
}

# ask NAME QUESTION: submit one chat turn. Returns once it is queued, not when it is answered.
# A malformed syscall fails here (EINVAL), which set -e turns into an exit.
ask() {
    printf '%s\n' "$2" >"$AGENTS_DIR/$1/syscall"
}

# answer NAME: block until the agent's oldest unread answer is complete, then print it.
# A syscall that failed (say, a prompt longer than the model's context) still has an answer,
# whose last line is "error: MESSAGE"; report that and fail, which set -e turns into an exit.
# (The explicit returns matter: bash turns set -e off inside $(...), where this often runs.)
answer() {
    local text last
    text=$(cat "$AGENTS_DIR/$1/out") || return 1
    printf '%s\n' "$text"
    last=${text##*$'\n'}
    if [[ $last == "error: "* ]]; then
        echo "travel_planner: agent $1 failed: ${last#error: }" >&2
        return 1
    fi
}

# tool NAME ARGUMENTS: call a tool through its transaction file and print its JSON result.
tool() {
    local result
    exec 3<>"$MNT/tools/$1/call" || return 1
    printf '%s' "$2" >&3 || return 1 # EINVAL: the arguments do not fit tools/NAME/schema
    result=$(cat <&3)
    exec 3>&-
    printf '%s\n' "$result"
}

heading() {
    printf '\n=== %s ===\n' "$1"
}

echo "Planning: $REQUEST"
echo "(agents $FLIGHTS, $HOTEL, $ITINERARY; max_tokens=$MAX_TOKENS)"

# Today's date, from the datetime tool: {"format": …} adds a "formatted" field to its result.
DATE_JSON=$(tool datetime '{"format": "%A %d %B %Y"}') || {
    echo "travel_planner: the datetime tool failed (is $MNT/tools there?)" >&2
    exit 1
}
TODAY=$(printf '%s' "$DATE_JSON" | sed -nE 's/.*"formatted": "([^"]*)".*/\1/p')
echo "Today is $TODAY (from tools/datetime/call)"

new_agent "$FLIGHTS" "You are a flight booking assistant. Suggest concrete flights briefly."
new_agent "$HOTEL" "You are a hotel booking assistant. Suggest concrete hotels briefly."
new_agent "$ITINERARY" "You are a travel guide. Plan day-by-day activities briefly."

# Submit all three questions at once. The writes run in parallel and each returns as soon as
# its syscall is queued; `wait PID` collects each one's exit status so a failed submit stops us.
ask "$FLIGHTS" "Which flights should I take for $REQUEST?" &
p1=$!
ask "$HOTEL" "Which hotel should I stay at for $REQUEST?" &
p2=$!
ask "$ITINERARY" "Today is $TODAY. Give me a day-by-day itinerary for $REQUEST, starting next week." &
p3=$!
wait "$p1"
wait "$p2"
wait "$p3"
echo "All three questions submitted; the kernel is answering them together."

# Read the answers. Each cat blocks only until its own agent is done.
heading "Flights ($FLIGHTS)"
FLIGHTS_ANSWER=$(answer "$FLIGHTS")
printf '%s\n' "$FLIGHTS_ANSWER"

heading "Hotel ($HOTEL)"
HOTEL_ANSWER=$(answer "$HOTEL")
printf '%s\n' "$HOTEL_ANSWER"

heading "Itinerary ($ITINERARY)"
answer "$ITINERARY"

# Combine: one more chat turn for the itinerary agent, which still remembers its own plan
# (plain-text syscalls join the agent's history), now given the other two agents' answers.
ask "$ITINERARY" "Here is what the flight assistant suggested:
$FLIGHTS_ANSWER

Here is what the hotel assistant suggested:
$HOTEL_ANSWER

Combine the flights, the hotel and your itinerary into one short plan for $REQUEST."

heading "Combined plan ($ITINERARY)"
answer "$ITINERARY"

# Token counts from each agent's status (JSON), before the agents go away.
heading "Tokens used"
for name in "$FLIGHTS" "$HOTEL" "$ITINERARY"; do
    printf '%-24s ' "$name"
    # "tokens_in": 45,  ->  tokens_in=45
    sed -nE 's/^ *"(tokens_(in|out))": *([0-9]+).*/\1=\3/p' "$AGENTS_DIR/$name/status" | tr '\n' ' '
    echo
done

cleanup
echo
echo "Done; agents removed."
