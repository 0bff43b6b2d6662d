#!/usr/bin/env bash
# Build llama.cpp's llama-server, the baseline of `aiosfs bench --only-engine`, from the source
# inside the PyPI sdist of llama-cpp-python (the same llama.cpp the llama.cpp core links), and
# install it into the cache. Prints the binary's path on stdout, progress on stderr.
#
# Idempotent: once the binary is installed and runs, a second call only prints its path.
# Environment:
#   AIOSFS_CACHE  the cache folder (default ~/.cache/aiosfs, as the kernel's)
#   LLAMA_SRC     an unpacked llama.cpp tree to build instead of downloading the sdist; its
#                 build/ folder is reused, so a tree already built with these flags only relinks
#   PYTHON        the Python whose pip downloads the sdist (default: the venv's, else python3)
#   JOBS          parallel compile jobs (default: all cores)
set -euo pipefail

VERSION=0.3.36
CACHE="${AIOSFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aiosfs}"
DEST="$CACHE/llama-server-$VERSION"
BIN="$DEST/llama-server"

say() { echo "llama-server: $*" >&2; }

runs() { LD_LIBRARY_PATH="$DEST" "$BIN" --version >/dev/null 2>&1; }

if [ -x "$BIN" ] && runs; then
    echo "$BIN"
    exit 0
fi

# Debian's toolchain: cmake, ninja and a C++ compiler, installed when missing.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v ninja >/dev/null || missing+=(ninja-build)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing ${missing[*]} with apt-get"
    $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

if [ -n "${LLAMA_SRC:-}" ]; then
    SRC="$LLAMA_SRC"
else
    ROOT="$(cd "$(dirname "$0")/.." && pwd)"
    PYTHON="${PYTHON:-}"
    if [ -z "$PYTHON" ]; then
        if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
    fi
    WORK="$CACHE/src"
    SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
    if [ ! -f "$SRC/CMakeLists.txt" ]; then
        mkdir -p "$WORK"
        say "downloading the llama-cpp-python $VERSION sdist"
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$WORK" \
            "llama-cpp-python==$VERSION" >&2
        tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
    fi
fi
[ -f "$SRC/CMakeLists.txt" ] || { say "no llama.cpp tree at $SRC"; exit 1; }

say "configuring $SRC"
cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF >"$SRC/build-aiosfs.log" 2>&1 ||
    { tail -20 "$SRC/build-aiosfs.log" >&2; exit 1; }

# Ninja prints "[n/N] ..." per step; show one line in 20 (and the last) so that a build of
# several minutes on few cores says how far it is without flooding the terminal.
say "building (a few minutes on 2 cores; log in $SRC/build-aiosfs.log)"
set +e
cmake --build "$SRC/build" --target llama-server -j "${JOBS:-$(nproc)}" 2>&1 |
    tee -a "$SRC/build-aiosfs.log" |
    awk '/^\[[0-9]+\/[0-9]+\]/ { split(substr($1, 2), a, "/"); n = a[1] + 0; t = a[2] + 0;
                                  if (n % 20 == 0 || n == t) { printf "llama-server: [%d/%d]\n", n, t; fflush() } }
         /error|FAILED/ { print; fflush() }' >&2
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || { say "build failed (log: $SRC/build-aiosfs.log)"; exit 1; }

# The binary and the shared libraries beside it (llama.cpp builds them into build/bin); the
# benchmark runs it with LD_LIBRARY_PATH set to this folder.
mkdir -p "$DEST.tmp"
cp -a "$SRC/build/bin/llama-server" "$SRC"/build/bin/*.so* "$DEST.tmp/"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
runs || { say "$BIN was built but does not run"; exit 1; }
say "installed $BIN"
echo "$BIN"
