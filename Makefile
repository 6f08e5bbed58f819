# fusionbrain-listener. Every target creates .venv and installs on first use,
# so a fresh clone needs nothing but python3 (>= 3.11) and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Test workers (pytest-xdist): the tests mostly wait on processes, sockets and the
# database, so four share two cores well; TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 4

.DEFAULT_GOAL := help
.PHONY: help install run stop test migrate psql lint format emulator bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its dev tools

run: $(STAMP) ## migrate, then run the listener (embedded database and API emulator when nothing is configured); Ctrl-C stops it
	$(BIN)/listener migrate
	$(BIN)/listener --with-emulator $(ARGS)

stop: $(STAMP) ## stop the embedded PostgreSQL that make run leaves running (listener embedded stop)
	$(BIN)/listener embedded stop

test: $(STAMP) ## run the test suite against a real PostgreSQL and the emulator
	$(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

migrate: $(STAMP) ## create or upgrade the schema
	$(BIN)/listener migrate

psql: $(STAMP) ## open psql on the configured (or embedded) database; no system psql needed
	$(BIN)/listener psql

lint: $(STAMP) ## ruff (with its ASYNC rules) and mypy
	$(BIN)/ruff check listener tests
	$(BIN)/ruff format --check listener tests
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix listener tests
	$(BIN)/ruff format listener tests

emulator: $(STAMP) ## run the Fusion Brain API emulator on 127.0.0.1:8089
	$(BIN)/listener emulator $(ARGS)

bench: $(STAMP) ## benchmarks vs procrastinate, ~25 min (ARGS=--quick, DRAIN_ARGS=--quick for short checks; DRAIN_ARGS=--write to record the drain); writes bench/RESULTS.md
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/run.py $(ARGS)
	$(BIN)/python bench/drain.py $(DRAIN_ARGS)

clean: ## remove the virtualenv and caches (keeps .data, the embedded database)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
