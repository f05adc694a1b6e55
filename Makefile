# Two commands for a newcomer: `make run` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit integration e2e bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "eventledger needs Python >= 3.11: run 'make PYTHON=python3.12 …'"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) \
		|| { echo "could not create $(VENV): install your Python's venv module (Debian: python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/eventledger up

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# With EVENTLEDGER_TEST_POSTGRES_URL set (CI sets it), the PostgreSQL suites run inside the
# first pytest, and the end-to-end suite runs a second time with the stream on PostgreSQL.
test: lint typecheck
	$(BIN)/pytest
	@if [ -n "$$EVENTLEDGER_TEST_POSTGRES_URL" ]; then \
		echo "end-to-end suite again, stream service on PostgreSQL"; \
		EVENTLEDGER_E2E_STORE=postgresql $(BIN)/pytest tests/e2e; \
	else \
		echo "SKIPPED: end-to-end suite on PostgreSQL (set EVENTLEDGER_TEST_POSTGRES_URL to run it)"; \
	fi

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) eventledger-data .pytest_cache .mypy_cache .ruff_cache
