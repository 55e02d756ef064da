# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export SPARK_LOCAL_IP := 127.0.0.1

.PHONY: demo test install install-dev system-deps lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"

# The full set: the service plus training, reports, the Spark engine and the benchmarks (the `train` extra).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[train]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --group dev
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## Simulate a small shop, build its features and show what was made.
demo: install
	$(BIN)/journey demo

## Lint, type-check and run the whole test suite (pytest's "no tests ran" fails the target).
test: install-dev system-deps lint typecheck unit

## The Debian packages the tests start (Java for Spark, redis-server, PostgreSQL, Chromium), if missing.
system-deps:
	bash scripts/system-deps.sh

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/pytest

## Feature-job throughput against DuckDB (writes benchmarks/results/feature_job.json).
bench: install-dev
	$(BIN)/python -m benchmarks.feature_job

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
