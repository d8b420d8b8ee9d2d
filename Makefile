# make test: lint, types and tests from nothing (creates .venv, with the dask extra so the Dask backend's
# contract tests run too: it adds seconds to the install). make run: serve MCP over streamable HTTP on
# 127.0.0.1:8765 (PORT=9000 or CODOMYRMEX_PORT=9000 moves it) from a serve-only venv (.venv-run: the
# package and its runtime dependencies, no dev or dask extras). make run-sample: run a sample workflow once.
# make bench: every benchmark, figures to stdout and bench/results/latest.json (a few minutes).
# make durability / fuzz / load: the large reliability runs, with figures (docs/RELIABILITY.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SAMPLE ?= fan_out_join
# make run: its own venv with only what serving needs; the port from PORT, else CODOMYRMEX_PORT, else 8765.
RUN_VENV ?= .venv-run
RUN_STAMP := $(RUN_VENV)/.installed-stamp
PORT ?= $(or $(CODOMYRMEX_PORT),8765)

.PHONY: run-venv venv browser conformance-tools lint typecheck pytest test bench bench-instructions fuzz load durability run run-sample clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask]'
	touch $(STAMP)

venv: $(STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(RUN_VENV)/bin/python || $(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RUN_VENV)/bin/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

run-venv: $(RUN_STAMP)

# The MCP conformance suite, the TypeScript SDK and the Node 22 they need, from the npm registry into .tools/,
# once per version pair; tests/e2e/test_conformance.py runs it against `serve` (the machine's node may be
# older: the suite runs on the node-<platform> package's binary).
TOOLS := .tools
NODE22 ?= node-$(shell uname -s | tr A-Z a-z)-$(subst aarch64,arm64,$(subst x86_64,x64,$(shell uname -m)))@22.23.5
CONFORMANCE ?= @modelcontextprotocol/conformance@0.1.16
# The TypeScript SDK's client (its experimental tasks client): tests/e2e/test_tasks_typescript.py.
TS_SDK ?= @modelcontextprotocol/sdk@1.32.2
CONFORMANCE_STAMP := $(TOOLS)/.installed-$(subst /,-,$(subst @,_,$(NODE22)+$(CONFORMANCE)+$(TS_SDK)))

$(CONFORMANCE_STAMP):
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error $(NODE22) $(CONFORMANCE) $(TS_SDK)
	touch $@

conformance-tools: $(CONFORMANCE_STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: venv
	$(BIN)/mypy

# The run view's browser tests drive Debian's chromium (Playwright's own browser download cannot work
# offline); installed here when missing, as root (CI) or with sudo.
browser:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

pytest: venv browser conformance-tools
	$(BIN)/pytest

test: lint typecheck pytest

bench: venv
	$(BIN)/python bench/run_all.py

# Instructions per workflow step counted by valgrind (callgrind): steady on a noisy machine (~2 min).
bench-instructions: venv
	$(BIN)/python bench/bench_instructions.py

# kill -9 / restart / resume at 10 random points of a 200-step DAG run; prints the figures (make test runs 3).
durability: venv
	$(BIN)/python -m tests.helpers.crash_cycles --kill-points 10 $(if $(SEED),--seed $(SEED),)

# 10,000 fuzzed tool calls through the MCP client (5,000 per policy), with figures.
fuzz: venv
	CODOMYRMEX_FUZZ_CALLS=5000 $(BIN)/pytest tests/server/test_fuzz.py -k fuzzed -s -q

# 50 clients x 200 calls over streamable HTTP against the real server on loopback, 3 rounds against the
# same server process (RSS after each round shows whether memory levels off), with figures.
load: venv
	$(BIN)/python -m tests.helpers.load --clients 50 --calls 200 --rounds 3

run: run-venv
	$(RUN_VENV)/bin/codomyrmex-orchestration serve --transport streamable-http --host 127.0.0.1 --port $(PORT)

run-sample: run-venv
	$(RUN_VENV)/bin/codomyrmex-orchestration run $(SAMPLE)

clean:
	rm -rf $(VENV) $(RUN_VENV) .mypy_cache .ruff_cache .pytest_cache
