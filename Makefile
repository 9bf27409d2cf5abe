# Liaison — developer entry points. Every target builds .venv from nothing if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: run test lint typecheck pytest bench bench-cluster demo install install-dev clean reliability

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Strict editable mode builds a link tree that mypy can follow through the package-dir
# mapping; re-running it picks up newly added modules.
install: $(PY)
	$(PY) -m pip install --quiet -e '.[server]' --config-settings editable_mode=strict

install-dev: $(PY)
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict

run: install
	$(BIN)/liaison server db upgrade
	$(BIN)/liaison server run --host 127.0.0.1 --port 8000

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy -p liaison.protocol -p liaison.server -p liaison.client -p liaison.console -p liaison.migrations
	$(BIN)/mypy tests bench scripts

pytest: install-dev
	$(BIN)/pytest

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p liaison.protocol -p liaison.server -p liaison.client -p liaison.console -p liaison.migrations
	$(BIN)/mypy tests bench scripts
	$(BIN)/pytest

bench: install-dev
	$(PY) bench/protocol.py
	$(PY) bench/relay.py

# Needs PostgreSQL, Redis and NATS on localhost (see bench/cluster.py --help for other URLs).
bench-cluster: install-dev
	$(PY) bench/cluster.py

# The reliability suites (issue #5) at full size; regenerates docs/reliability.md and prints
# it. `make test` runs the same suites at a small size.
RELIABILITY_ROWS := .reliability-rows.jsonl
reliability: install-dev
	rm -f $(RELIABILITY_ROWS)
	LIAISON_RELIABILITY=full LIAISON_RELIABILITY_REPORT=$(CURDIR)/$(RELIABILITY_ROWS) \
		LIAISON_TEST_REQUIRE_POSTGRES=1 $(BIN)/pytest tests/reliability
	$(PY) scripts/reliability_report.py $(RELIABILITY_ROWS) --out docs/reliability.md

demo: install
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
