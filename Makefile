# aiosfs: two commands matter. `make run` installs what is missing, mounts at ./mnt, answers a
# demo prompt through the mount and serves until Ctrl-C. `make test` installs, then runs the tests.
# VENV: the virtualenv `install` fills and `run` uses
VENV ?= .venv
PY := $(VENV)/bin/python
MOUNT ?= mnt
CC ?= cc
GO ?= go
NODE ?= node
PYTEST_ARGS ?=

.PHONY: install run test test-long faults lint static examples bench soak soak-fs posix clean llama-server crash

install:
	@AIOSFS_VENV=$(VENV) scripts/install.sh

# The clients in mount_examples/ that need building (C, Go) and a syntax check of the Node.js one.
examples: mount_examples/c/aiosfs_client mount_examples/go/aiosfs_client
	$(NODE) --check mount_examples/node/aiosfs_client.mjs

mount_examples/c/aiosfs_client: mount_examples/c/aiosfs_client.c
	$(CC) -O2 -Wall -Wextra -Werror -pthread -o $@ $<

# Go builds offline: the module has no dependencies, GOPROXY=off and GOTOOLCHAIN=local mean
# nothing is ever fetched, and the caches live in build/go (a clean clone as root has no $HOME
# cache to rely on).
GO_ENV := GOCACHE=$(CURDIR)/build/go/cache GOPATH=$(CURDIR)/build/go/path GOPROXY=off \
	GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0
mount_examples/go/aiosfs_client: mount_examples/go/main.go mount_examples/go/go.mod
	cd mount_examples/go && $(GO_ENV) $(GO) vet . && $(GO_ENV) $(GO) build -trimpath -o aiosfs_client .
	@test -z "$$(gofmt -l mount_examples/go)" || { gofmt -d mount_examples/go; exit 1; }

run: install examples
	@AIOSFS_VENV=$(VENV) scripts/run.sh $(MOUNT)

# The static checks: ruff, the import contracts of the module map (pyproject.toml's
# [tool.importlinter]) and mypy over kernel/ and aiosfs/.
static: install
	$(PY) -m ruff check kernel aiosfs tests mount_examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# llama.cpp's server, built once into the cache (scripts/llama-server.sh, a few minutes the
# first time): the real server the remote-model tests run on loopback, and the benchmark's
# baseline. `make test` requires it, so those tests fail rather than skip without it.
llama-server: install
	@scripts/llama-server.sh >/dev/null

test: static examples llama-server
	AIOSFS_REQUIRE_LLAMA_SERVER=1 $(PY) -m pytest -m "not slow" --durations=25 $(PYTEST_ARGS)

# What `make test` leaves out to stay well under 15 minutes (marked slow): the benchmark's own
# end-to-end runs (tests/fs/test_bench.py, test_soak.py, tests/test_bench_journal.py and
# test_bench_remote.py), the transformers core's equivalence on SmolLM2 (its tiny-random twin is
# in make test) and the longest fault run: about 4 minutes on 2 cores.
test-long: install examples llama-server
	AIOSFS_REQUIRE_LLAMA_SERVER=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

# The fault tests (tests/kernel/test_faults.py, tests/fs/test_faults.py, tests/fs/test_make_run.py),
# the long ones that `make test` leaves out (marked slow) included: a few minutes on 2 cores.
faults: install examples
	$(PY) -m pytest -m "" tests/kernel/test_faults.py tests/fs/test_faults.py tests/fs/test_make_run.py $(PYTEST_ARGS)

# The benchmark mounts its own daemons (about 50 minutes on 2 cores, the first run also builds
# llama-server: scripts/llama-server.sh); BENCH_ARGS to adjust it. It writes results.json and
# its plots (results-*.png: aiosfs/bench/plots.py) into bench-results/.
BENCH_ARGS ?=
bench: install
	$(VENV)/bin/aiosfs bench --out bench-results $(BENCH_ARGS)

# The paper's load on one mount (aiosfs/bench/soak.py; docs/benchmarks.md, "The paper's load"):
# 250 agents conversing for 10 minutes on smollm2, 2,000 idle agents, 10,000 readers blocked on
# out, under fair; the daemon's RSS, `ls agents/` and the syscalls sampled throughout. ~15 minutes
# on a quiet machine, not part of `make test`. SOAK_ARGS to resize it, e.g.
# SOAK_ARGS="--model tiny-random --agents 50 --idle 500 --readers 2000 --duration 120".
SOAK_ARGS ?=
soak: install
	$(PY) -m aiosfs.bench.soak --out soak-results $(SOAK_ARGS)
# The stateful test of tests/fs/test_stateful.py run long: random operations, valid and hostile,
# against one mount, each checked against a model and the errnos docs/filesystem.md lists, the
# daemon alive and its log clean. SOAK_FS_OPS operations (100,000: about 20 minutes on 2 cores);
# prints ops/s and every answer by operation (docs/benchmarks.md, "Hostile input").
SOAK_FS_OPS ?= 100000
soak-fs: install
	AIOSFS_SOAK_FS_OPS=$(SOAK_FS_OPS) $(PY) -m pytest -s -q -p no:cacheprovider \
		tests/fs/test_stateful.py -k test_soak_fs $(PYTEST_ARGS)

# pjdfstest over store/, mem/NAME/ and tmpfs (as root; ~5 minutes a target on 2 cores). pjdfstest
# is in no registry we use: build it yourself and say where, PJDFSTEST=/path/to/pjdfstest make posix.
# POSIX_TARGETS picks targets (tmpfs store mem); docs/posix.md lists the expected failures.
POSIX_TARGETS ?=
posix: install
	@AIOSFS_VENV=$(VENV) scripts/posix.sh $(POSIX_TARGETS)

# kill -9 of the daemon at random moments, CRASH_ROUNDS times on one data dir: every syscall
# whose close returned must be answered after the remount (tests/fs/test_crash.py, 10-20 s a
# round), and files closed in store/ and mem/ must be there (tests/fs/test_durability.py).
# make test runs 2 and 3 rounds of them.
CRASH_ROUNDS ?= 20
crash: install
	AIOSFS_CRASH_ROUNDS=$(CRASH_ROUNDS) AIOSFS_DURABILITY_ROUNDS=$(CRASH_ROUNDS) \
		$(PY) -m pytest -q tests/fs/test_crash.py tests/fs/test_durability.py

lint: static
	$(PY) -m ruff format --check kernel aiosfs tests mount_examples

clean:
	rm -f mount_examples/c/aiosfs_client mount_examples/go/aiosfs_client
	rm -rf .pytest_cache .ruff_cache build *.egg-info
