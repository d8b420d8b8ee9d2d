# make test: lint, types and tests from nothing (creates .venv, with the dask extra so the Dask backend's
# contract tests run too: it adds seconds to the install). make run: the main job.
# make bench: every benchmark (issue 7), figures to stdout and bench/results/latest.json (a few minutes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SAMPLE ?= config/workflows/production/repo_health.json

.PHONY: venv lint typecheck pytest test bench run run-sample clean durability

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

test: lint typecheck pytest

bench: venv
	$(BIN)/python bench/run_all.py

# kill -9 / restart / resume at 10 random points of a 200-step DAG run; prints the figures (make test runs 3).
durability: venv
	$(BIN)/python -m tests.helpers.crash_cycles --kill-points 10 $(if $(SEED),--seed $(SEED),)

run: venv
	$(BIN)/codomyrmex-orchestration serve --transport streamable-http --host 127.0.0.1 --port 8765

run-sample: venv
	$(BIN)/codomyrmex-orchestration run $(SAMPLE)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
