# aiki — the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The checkout's packages win over installed copies, in every process the targets start.
export PYTHONPATH := $(CURDIR)

.PHONY: install demo test lint typecheck bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml packaging/aiki-client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q ./packaging/aiki-client
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install  ## start aiki-server on SQLite, run the onboarding workflow with a worker, print the result
	$(BIN)/python examples/demo.py

test: install lint typecheck  ## the whole suite: unit, integration, end-to-end with real processes
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check aiki_client aiki_server tests examples bench
	$(BIN)/ruff format --check aiki_client aiki_server tests examples bench

typecheck: install
	$(BIN)/mypy

bench: install  ## throughput and latency on the embedded SQLite mode
	$(BIN)/python -m bench.core

clean:
	rm -rf $(VENV) build dist *.egg-info aiki.db aiki.db-* .pytest_cache
