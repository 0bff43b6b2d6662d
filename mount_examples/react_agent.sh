#!/usr/bin/env bash
# A ReAct-style agent in plain bash: the model picks a tool, the script calls it through
# tools/NAME/call, and the tool's result goes back to the model as the next chat turn, until the
# model answers. Everything goes through files of the mount; the only programs used are cat, ls,
# sed, tr and grep.
#
#   usage: react_agent.sh MOUNTPOINT "QUESTION"
#   env:   REACT_ROUNDS       model steps at most (default 6); the last one must be an answer
#          REACT_TOOLS        the tools it may use, space-separated (default: every tool in
#                             MOUNTPOINT/tools whose doc says "destructive: no")
#          REACT_FIRST_CALL   1 (default): the first step must be a tool call (a small model
#                             answers from memory otherwise); 0: the model decides
#          REACT_THOUGHT      1: each step starts with a short "thought" (default 0: empty)
#          REACT_EXAMPLE      1 (default): start the history with a worked calculator example
#          REACT_MAX_TOKENS   tokens per step (default 256: enough for any step the schema allows)
#
# How it works:
#   * mkdir agents/react-PID creates the agent; its config (JSON) gets a system prompt that
#     describes the protocol and each tool, from tools/NAME/doc and tools/NAME/schema;
#   * each step is an llm syscall with "chat": true, so the agent's history keeps every earlier
#     step and observation, and a "response_format" JSON Schema: one branch per tool,
#     {"action":"call","tool":"NAME","arguments":{...that tool's schema...}}, and the answer,
#     {"action":"answer","text":"..."}. Decoding is constrained to that schema, so even a tiny
#     model's step is valid JSON; with no whitespace and the properties in schema order, sed can
#     take it apart;
#   * the tool runs through its transaction file (exec 3<>tools/NAME/call; write; cat <&3);
#     arguments the tool rejects (EINVAL) or a failed call are just another observation;
#   * rmdir removes the agent when the script exits, however it exits.
# Exit status: 0 with an answer, 1 on an error (an "error: ..." answer, a step cut off).
set -euo pipefail

MNT=${1:?usage: react_agent.sh MOUNTPOINT "QUESTION"}
QUESTION=${2:?usage: react_agent.sh MOUNTPOINT "QUESTION"}
ROUNDS=${REACT_ROUNDS:-6}
FIRST_CALL=${REACT_FIRST_CALL:-1}
MAX_TOKENS=${REACT_MAX_TOKENS:-256}
MAX_STRING=99         # every string in a step is at most this long (a tiny model never ends one)
MAX_ANSWER=200        # characters in the final answer
MAX_OBSERVATION=1500  # characters of a tool result shown to the model

die() {
    echo "react_agent: $*" >&2
    exit 1
}
[[ -d "$MNT/agents" && -d "$MNT/tools" ]] || die "$MNT/agents or $MNT/tools not found; is aiosfs mounted at $MNT?"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "REACT_ROUNDS must be a positive number, not '$ROUNDS'"

# ---- JSON without jq ------------------------------------------------------------------------

# json_string TEXT: TEXT as a JSON string literal (quotes included). Other control characters
# than tab, newline and carriage return are dropped.
json_string() {
    local s
    s=$(printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037')
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/\\t}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    printf '"%s"' "$s"
}

# json_unstring: undo the common JSON string escapes on stdin (enough for printing an answer).
json_unstring() {
    sed -e 's/\\"/"/g' -e 's/\\n/\n/g' -e 's/\\t/\t/g' -e 's/\\\\/\\/g'
}

# bounded_schema FILE: the JSON Schema in FILE (as the mount prints it, with spaces after ':')
# on one line, with every string limited to MAX_STRING characters: a smaller maxLength stays,
# a larger one is lowered, a string without one gets one.
bounded_schema() {
    tr -d '\n' <"$1" | tr -s ' ' | sed -E \
        -e "s/\"maxLength\": [0-9]{3,}/\"maxLength\": $MAX_STRING/g" \
        -e "s/\"type\": \"string\"/&, \"maxLength\": $MAX_STRING/g" \
        -e "s/\"type\": \"string\", \"maxLength\": $MAX_STRING([^{}]*\"maxLength\")/\"type\": \"string\"\\1/g" \
        -e "s/(\"maxLength\": [0-9]+[^{}]*\"type\": \"string\"), \"maxLength\": $MAX_STRING/\\1/g"
}

# ---- the tools ------------------------------------------------------------------------------

if [[ -n ${REACT_TOOLS:-} ]]; then
    read -r -a TOOLS <<<"$REACT_TOOLS"
else
    TOOLS=()
    for dir in "$MNT"/tools/*/; do
        name=$(basename "$dir")
        grep -q '^destructive: *no' "$dir/doc" && TOOLS+=("$name")
    done
fi
((${#TOOLS[@]})) || die "no tools to use"

# the reasoning that comes before each action (REACT_THOUGHT=1 asks for one; the 135M
# model reasons badly, and then chooses worse, so by default the thought is empty)
THOUGHT='{"type":"string","maxLength":'$((${REACT_THOUGHT:-0} ? MAX_STRING : 0))'}'
TOOL_TEXT=""    # what the system prompt says about the tools
CALL_SCHEMAS="" # one response_format branch per tool
for name in "${TOOLS[@]}"; do
    [[ -f "$MNT/tools/$name/schema" ]] || die "no tool $name in $MNT/tools"
    # the doc's description is its first paragraph after the name line; the argument names are
    # the schema's properties (the mount indents JSON by 2, so they are the keys at 4 spaces)
    about=$(sed -n '3,/^$/{/^$/d;p}' "$MNT/tools/$name/doc" | tr '\n' ' ')
    params=$(sed -nE 's/^    "([^"]+)": \{\}?,?$/\1/p' "$MNT/tools/$name/schema" | tr '\n' ',')
    TOOL_TEXT+="- $name(${params%,}): $about"$'\n'
    CALL_SCHEMAS+='{"type":"object","properties":{"thought":'$THOUGHT',"action":{"const":"call"},"tool":{"const":"'$name'"},"arguments":'$(bounded_schema "$MNT/tools/$name/schema")'},"required":["thought","action","tool","arguments"],"additionalProperties":false},'
done
ANSWER_SCHEMA='{"type":"object","properties":{"thought":'$THOUGHT',"action":{"const":"answer"},"text":{"type":"string","minLength":1,"maxLength":'$MAX_ANSWER'}},"required":["thought","action","text"],"additionalProperties":false}'

# step_format KIND: the response_format of a step that may be a call, an answer, or either.
step_format() {
    local branches
    case $1 in
    call) branches=${CALL_SCHEMAS%,} ;;
    answer) branches=$ANSWER_SCHEMA ;;
    *) branches=$CALL_SCHEMAS$ANSWER_SCHEMA ;;
    esac
    printf '{"type":"json_schema","json_schema":{"name":"react_step","schema":{"anyOf":[%s]}}}' "$branches"
}

# ---- the agent ------------------------------------------------------------------------------

AGENT="react-$$"
AGENT_DIR="$MNT/agents/$AGENT"
cleanup() {
    if [[ -d "$AGENT_DIR" ]]; then rmdir "$AGENT_DIR" || echo "react_agent: could not rmdir $AGENT" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM # run the EXIT trap on Ctrl-C as well
mkdir "$AGENT_DIR"

SYSTEM="You answer questions step by step, using tools. Reply with one JSON object: either
{\"thought\":\"...\",\"action\":\"call\",\"tool\":\"NAME\",\"arguments\":{...}} to call a tool, or
{\"thought\":\"...\",\"action\":\"answer\",\"text\":\"...\"} to give the final answer.
The thought says what you need to do next and which tool does it. After a call you see its
result. Tools:
$TOOL_TEXT"
printf '{"system": %s, "max_tokens": %s}\n' "$(json_string "$SYSTEM")" "$MAX_TOKENS" >"$AGENT_DIR/config" ||
    die "$AGENT/config rejected the system prompt or max_tokens=$MAX_TOKENS"

# next_prompt TOOL RESULT: the chat turn that shows the model a tool's result.
next_prompt() {
    printf 'Result of %s: %s\nIf this answers "%s", answer; otherwise call another tool.' \
        "$1" "${2:0:MAX_OBSERVATION}" "$QUESTION"
}

# A small model follows an example better than instructions: when the calculator is one of the
# tools, the conversation starts with a worked example, written to the agent's history as JSON
# lines (the same lines `cat history` shows). REACT_EXAMPLE=0 leaves it out.
if [[ ${REACT_EXAMPLE:-1} == 1 && " ${TOOLS[*]} " == *" calculator "* ]]; then
    {
        printf '{"role": "user", "content": %s}\n' "$(json_string "Question: What is 12 + 30 / 6?")"
        printf '{"role": "assistant", "content": %s}\n' \
            "$(json_string '{"thought":"This is arithmetic, so I use the calculator.","action":"call","tool":"calculator","arguments":{"expression":"12 + 30 / 6"}}')"
        printf '{"role": "user", "content": %s}\n' \
            "$(json_string "$(QUESTION="What is 12 + 30 / 6?" next_prompt calculator '{"tool": "calculator", "ok": true, "value": 17.0}')")"
        printf '{"role": "assistant", "content": %s}\n' \
            "$(json_string '{"thought":"The calculator gave 17.","action":"answer","text":"12 + 30 / 6 = 17"}')"
    } >"$AGENT_DIR/history"
fi

# step PROMPT KIND: one chat turn; prints the model's step (a JSON object on one line).
# The transaction descriptor (fd 4) gets the answer to exactly this syscall.
step() {
    local request reply
    request=$(printf '{"call":"llm","chat":true,"prompt":%s,"max_tokens":%s,"response_format":%s}' \
        "$(json_string "$1")" "$MAX_TOKENS" "$(step_format "$2")")
    exec 4<>"$AGENT_DIR/syscall"
    printf '%s\n' "$request" >&4 || {
        exec 4>&-
        echo "react_agent: the syscall was refused; see $AGENT_DIR/status" >&2
        return 1
    }
    reply=$(cat <&4) || return 1
    exec 4>&-
    printf '%s\n' "$reply"
}

# call_tool NAME ARGUMENTS: call the tool through its transaction file; prints its JSON result.
call_tool() {
    local result
    exec 3<>"$MNT/tools/$1/call"
    if printf '%s' "$2" >&3 2>/dev/null; then
        result=$(cat <&3)
    else # EINVAL: the arguments do not fit the schema, and nothing ran
        result="{\"tool\": \"$1\", \"ok\": false, \"error\": \"the arguments do not fit tools/$1/schema\"}"
    fi
    exec 3>&-
    printf '%s\n' "$result"
}

echo "Question: $QUESTION"
echo "(agent $AGENT; tools: ${TOOLS[*]}; at most $ROUNDS steps)"

# A step is one line of JSON without whitespace, its properties in schema order, so a regular
# expression takes it apart: (1) the thought (a JSON string's content), then (3) the answer's
# text, or (3) the tool and (4) its arguments.
STRING='(([^"\\]|\\.)*)'
ANSWER_RE='^\{"thought":"'$STRING'","action":"answer","text":"(.*)"\}$'
CALL_RE='^\{"thought":"'$STRING'","action":"call","tool":"([^"]+)","arguments":(\{.*\})\}$'

prompt="Question: $QUESTION"
for ((round = 1; round <= ROUNDS; round++)); do
    kind=any
    ((round == 1 && FIRST_CALL == 1)) && kind=call
    ((round == ROUNDS)) && kind=answer # the last step must answer, so the loop always ends
    reply=$(step "$prompt" "$kind") || die "step $round failed"
    if [[ ${reply##*$'\n'} == "error: "* ]]; then
        die "step $round: ${reply##*$'\n'}"
    fi

    if [[ $reply =~ $ANSWER_RE ]]; then
        [[ -z ${BASH_REMATCH[1]} ]] || echo "[$round] thought: $(printf '%s' "${BASH_REMATCH[1]}" | json_unstring)"
        echo "[$round] answer: $(printf '%s' "${BASH_REMATCH[3]}" | json_unstring)"
        exit 0
    elif [[ $reply =~ $CALL_RE ]]; then
        tool=${BASH_REMATCH[3]}
        args=${BASH_REMATCH[4]}
        [[ -z ${BASH_REMATCH[1]} ]] || echo "[$round] thought: $(printf '%s' "${BASH_REMATCH[1]}" | json_unstring)"
        echo "[$round] call $tool $args"
        observation=$(call_tool "$tool" "$args")
        echo "[$round] observation: $observation"
        prompt=$(next_prompt "$tool" "$observation")
    else # only a step cut off by max_tokens can be anything else
        die "step $round is not a complete step (max_tokens=$MAX_TOKENS too small?): $reply"
    fi
done
die "no answer after $ROUNDS steps" # not reached: the last step is always an answer
