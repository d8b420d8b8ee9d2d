# make test: lint, types and tests from nothing (creates .venv). make run: the main job.
# make bench: every benchmark (issue 7), figures to stdout and bench/results/latest.json (a few minutes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SAMPLE ?= config/workflows/production/repo_health.json

.PHONY: venv lint typecheck pytest test bench run clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

test: lint typecheck pytest

bench: venv
	$(BIN)/python bench/run_all.py

run: venv
	$(BIN)/codomyrmex-orchestration run $(SAMPLE)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
