# Two commands for a newcomer: `make run` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := eventledger-data
# What is installed into the venv, redone when pyproject.toml or constraints.txt changes: `run`
# needs only the package and its dependencies; `test` (and `bench`) add the development tools.
# Both at the exact versions of constraints.txt (the package itself asks only for ranges).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
PIP_INSTALL := $(BIN)/python -m pip install -c constraints.txt

.PHONY: run test test-half-1 test-half-2 lint typecheck unit integration e2e bench clean clean-data

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "eventledger needs Python >= 3.11: run 'make PYTHON=python3.12 …'"; exit 1; }
	@echo "Creating the virtualenv $(VENV)/ with $$($(PYTHON) --version)"
	@$(PYTHON) -m venv $(VENV) \
		|| { echo "could not create $(VENV): install your Python's venv module (Debian: python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "Installing eventledger into $(VENV)/ with what it needs to run: FastAPI, pydantic and"
	@echo "uvicorn (the HTTP services), aiohttp and httpx (calls between services and from the"
	@echo "command line), psycopg (PostgreSQL), prometheus-client (metrics), typer and rich (the"
	@echo "command line), cryptography (personal data sealed per account, erased by forgetting"
	@echo "its key). A minute or so the first time; no test tools (make test adds those)."
	$(PIP_INSTALL) -e .
	@touch $@

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "Installing eventledger into $(VENV)/ with its development tools: pytest, hypothesis,"
	@echo "ruff, mypy, the OpenAPI validator and client generator, Playwright, and the peer that"
	@echo "make bench compares with (eventsourcing; its harness is tested too)."
	$(PIP_INSTALL) -e '.[dev,bench]'
	@# Without its dependencies: its metadata caps typer below ours (see pyproject's dev extra).
	$(PIP_INSTALL) --no-deps openapi-python-client
	@touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	@echo "Starting eventledger; Ctrl-C stops it. In another terminal, '. $(BIN)/activate' puts"
	@echo "the eventledger command on your PATH (then: eventledger --help, docs/tutorial.md)."
	$(BIN)/eventledger up

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# With EVENTLEDGER_TEST_POSTGRES_URL set (CI sets it), the PostgreSQL suites run too, and the
# end-to-end tests on the suite's store (marked `suite_store`: those on the shared system or a
# system of their own on that store) run a second time with the stream on PostgreSQL. The
# other end-to-end tests pick their store themselves (once per backend, or SQLite/PostgreSQL
# only, or no system at all): the first run covered each of them already.
# Every test runs once, in one of two halves of about equal length: (1) unit and integration,
# then the end-to-end pass on PostgreSQL; (2) everything else (browser, end-to-end). With
# TEST_JOBS=2 (the default with two cores or more) they run side by side, one per core, each
# one's output shown as a whole when it ends; with TEST_JOBS=1 one after the other.
TEST_JOBS ?= $(if $(filter 1,$(shell nproc 2>/dev/null || echo 2)),1,2)
test: lint typecheck
	@echo "pytest in two halves, $(TEST_JOBS) at a time; each prints its output when it ends"
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target test-half-1 test-half-2

test-half-1: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider tests/unit tests/integration
	@if [ -n "$$EVENTLEDGER_TEST_POSTGRES_URL" ]; then \
		echo "end-to-end tests on the suite's store again, stream service on PostgreSQL"; \
		EVENTLEDGER_E2E_STORE=postgresql $(BIN)/pytest -p no:cacheprovider tests/e2e -m suite_store; \
	else \
		echo "SKIPPED: end-to-end suite on PostgreSQL (set EVENTLEDGER_TEST_POSTGRES_URL to run it)"; \
	fi

test-half-2: $(STAMP)
	$(BIN)/pytest --ignore=tests/unit --ignore=tests/integration

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

# Everything of issue 9 in one run (PostgreSQL parts need EVENTLEDGER_BENCH_POSTGRES_URL or
# EVENTLEDGER_TEST_POSTGRES_URL); `make bench BENCH_ARGS=--quick` fits in about four minutes.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Caches and the virtualenv only: the ledger's data ($(DATA)/) is never deleted here.
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
	find src tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
	@if [ -d $(DATA) ]; then echo "kept $(DATA)/ (the ledger): 'make clean-data' deletes it"; fi

# Deletes the ledger: every event, read model, token and the idempotency secret in $(DATA)/.
# Asks first; `make clean-data CONFIRM=yes` for scripts.
clean-data:
	@if [ ! -e $(DATA) ]; then echo "no $(DATA)/ here: nothing to delete"; exit 0; fi; \
	if [ "$(CONFIRM)" != yes ]; then \
		printf 'Delete %s/ (all events, read models and tokens of this ledger)? Type yes: ' "$(DATA)"; \
		read answer; [ "$$answer" = yes ] || { echo "kept $(DATA)/"; exit 1; }; \
	fi; \
	rm -rf $(DATA) && echo "deleted $(DATA)/"
