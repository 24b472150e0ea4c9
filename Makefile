# The doors people use: demo, test, dev, check, bench. A fresh clone needs only `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.cdp/dagster

.PHONY: install demo test dev check lint typecheck bench clean

install: $(STAMP)

# Pinned: requirements.lock holds every resolved version, so a fresh install equals the tested one.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/cdp demo

test: install
	$(BIN)/pytest

dev: install
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev  # the code location of pyproject.toml [tool.dagster]: pipelines.definitions, named cdp

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

# Whole pipeline at 100k/300k/1M records, a 1% batch on the 1M base, consent leaks on a 20k-person world.
bench: install
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.ingest_breakdown  # the 1M inbox bench.run generated
	$(BIN)/python -m bench.incremental
	$(BIN)/python -m bench.consent_bench

# Back to a fresh clone: the default store goes with .cdp, whose key its suppression list needs.
clean:
	rm -rf $(VENV) .cdp data/demo data/cdp.duckdb data/cdp.duckdb.wal data/cdp.duckdb.lock *.egg-info \
		.pytest_cache .mypy_cache .ruff_cache
