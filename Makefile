# fusionbrain-listener. Every target creates .venv and installs on first use,
# so a fresh clone needs nothing but python3 (>= 3.11) and make.

PYTHON ?= python3
# make run / make emulator: which API (fusionbrain, gigachat); empty = the default choice
PROVIDER ?=
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Where `make run` serves the gallery, /metrics, /healthz and /readyz (make run HTTP=...).
HTTP   ?= 127.0.0.1:8090
# Test workers (pytest-xdist): the tests mostly wait on processes, sockets and the
# database, so four share two cores well; TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 4

.DEFAULT_GOAL := help
.PHONY: help install run stop test migrate psql lint format emulator bench mutants browser clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its dev tools

run: $(STAMP) ## migrate, then run the listener (embedded database and API emulator when nothing is configured; PROVIDER=gigachat for GigaChat's) with the gallery on http://127.0.0.1:8090/ (HTTP=host:port); Ctrl-C stops it
	$(BIN)/listener migrate
	@echo "Gallery, /metrics, /healthz, /readyz: http://$(HTTP)/"
	$(if $(PROVIDER),IMAGE_PROVIDER=$(PROVIDER) )$(BIN)/listener --with-emulator --http $(HTTP) $(ARGS)

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

emulator: $(STAMP) ## run an API emulator on 127.0.0.1:8089 (Fusion Brain's; PROVIDER=gigachat for GigaChat's)
	$(BIN)/listener emulator $(if $(PROVIDER),--provider $(PROVIDER) )$(ARGS)

bench: $(STAMP) ## benchmarks vs procrastinate and a plain psycopg loop, ~37 min (ARGS=--quick, DRAIN_ARGS=--quick for short checks; DRAIN_ARGS=--write to record the drain); writes bench/RESULTS.md
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/run.py $(ARGS)
	$(BIN)/python bench/drain.py $(DRAIN_ARGS)

mutants: $(STAMP) ## mutation testing of listener/engine/ by tests/engine/ (mutmut, two cores, at most 20 min; not CI); docs/engine.md
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,mutants]'
	rm -rf mutants
	timeout 1200 $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

browser: $(STAMP) ## install headless Chromium from the distribution (apt, as root) and Playwright, for the browser test
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
		|| echo "chromium could not be installed: the browser test will be skipped" >&2; \
	else echo "no chromium and no apt-get as root: the browser test will be skipped" >&2; fi
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,browser]' \
		|| echo "playwright could not be installed: the browser test will be skipped" >&2

clean: ## remove the virtualenv and caches (keeps .data, the embedded database)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis mutants
