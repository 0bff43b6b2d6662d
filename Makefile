# aiosfs: two commands matter. `make run` installs what is missing, mounts at ./mnt, answers a
# demo prompt through the mount and serves until Ctrl-C. `make test` installs, then runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
MOUNT ?= mnt
CC ?= cc
PYTEST_ARGS ?=

.PHONY: install run test lint static examples bench clean

install:
	@scripts/install.sh

examples: mount_examples/c/aiosfs_client

mount_examples/c/aiosfs_client: mount_examples/c/aiosfs_client.c
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $<

run: install examples
	@scripts/run.sh $(MOUNT)

# The static checks: ruff, the import contracts of the module map (pyproject.toml's
# [tool.importlinter]) and mypy over kernel/ and aiosfs/.
static: install
	$(PY) -m ruff check kernel aiosfs tests mount_examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: static examples
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmark mounts its own daemon (about 35 minutes on 2 cores); BENCH_ARGS to adjust it.
BENCH_ARGS ?=
bench: install
	$(VENV)/bin/aiosfs bench --out bench-results $(BENCH_ARGS)

lint: static
	$(PY) -m ruff format --check kernel aiosfs tests mount_examples

clean:
	rm -f mount_examples/c/aiosfs_client
	rm -rf .pytest_cache .ruff_cache build *.egg-info
