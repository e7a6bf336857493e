# aiki — the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The checkout's packages win over installed copies, in every process the targets start.
export PYTHONPATH := $(CURDIR)

.PHONY: install demo test lint typecheck bench bench-peers load-throughput load-recovery clean binary dist packaging-tools docker-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml packaging/aiki-client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q ./packaging/aiki-client
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install  ## start aiki-server on SQLite, run the onboarding workflow with a worker, print the result
	$(BIN)/python examples/demo.py

# The packaging tests use dist/aiki-server and the wheels in dist/; both rebuild only when a source changed.
test: install lint typecheck binary dist  ## the whole suite: unit, integration, end-to-end, packaging
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check aiki_client aiki_server tests examples bench load_tests packaging
	$(BIN)/ruff format --check aiki_client aiki_server tests examples bench load_tests packaging

typecheck: install
	$(BIN)/mypy

bench: install  ## throughput, latency, timer precision and the cost of waiting: SQLite and PostgreSQL + Redis
	$(BIN)/python -m bench.core

# The peers (DBOS Transact, Temporal) and matplotlib live in a virtualenv of their own.
PEERS := .venv-peers

bench-peers: install $(PEERS)/.installed  ## aiki, DBOS and Temporal on the same workloads in one run: table, ratios, plot
	$(BIN)/python -m bench.peers $(ARGS)

$(PEERS)/.installed: bench/peers/requirements.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q -r bench/peers/requirements.txt
	touch $@

# Locust load tests (not part of `make test`); locust is installed into the venv on demand, never a
# project dependency. Pass ARGS, e.g. make load-recovery ARGS="--users 20 --seconds 60".
load-throughput: install  ## Locust: start/complete a 1-task, 10-task, sleep+event mix against a fresh server
	$(BIN)/python -c "import locust" 2>/dev/null || $(BIN)/python -m pip install -q locust
	$(BIN)/python -m load_tests.run throughput $(ARGS)

load-recovery: install  ## Locust: the same load while workers are SIGKILLed and restarted; checks no lost or doubled task
	$(BIN)/python -c "import locust" 2>/dev/null || $(BIN)/python -m pip install -q locust
	$(BIN)/python -m load_tests.run recovery $(ARGS)

# PyInstaller, build, hatchling, PyYAML, hadolint: see packaging/requirements-build.txt.
packaging-tools: $(VENV)/.packaging

$(VENV)/.packaging: packaging/requirements-build.txt $(VENV)/.installed
	$(BIN)/python -m pip install -q -r packaging/requirements-build.txt
	touch $@

# What makes the binary and the distributions stale.
PY_SOURCES := $(shell find aiki_server aiki_client -name '*.py' -not -path '*/__pycache__/*')

binary: dist/aiki-server  ## the one-file server (PyInstaller): dist/aiki-server, no Python needed to run it

dist/aiki-server: $(VENV)/.packaging $(PY_SOURCES) packaging/aiki-server.spec packaging/aiki_server_entry.py packaging/pyi_rth_tzdata.py pyproject.toml
	$(BIN)/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/aiki-server.spec
	@ls -l $@

dist: dist/.dists  ## sdist + wheel of aiki-server and aiki-client into dist/

dist/.dists: $(VENV)/.packaging $(PY_SOURCES) pyproject.toml README.md packaging/aiki-client/pyproject.toml packaging/aiki-client/README.md packaging/aiki-client/hatch_build.py
	rm -f dist/aiki_server-* dist/aiki_client-*
	$(BIN)/python -m build --no-isolation --sdist --wheel --outdir dist .
	$(BIN)/python -m build --no-isolation --sdist --wheel --outdir dist packaging/aiki-client
	touch $@

# Needs no Docker engine: hadolint, then the compose file's own validation (the `docker compose`
# plugin or Debian's docker-compose, whichever is installed).
docker-check: $(VENV)/.packaging  ## lint packaging/Dockerfile and validate packaging/docker-compose.yml
	$(BIN)/hadolint --failure-threshold info packaging/Dockerfile
	if docker compose version >/dev/null 2>&1; then docker compose -f packaging/docker-compose.yml config -q; \
	else docker-compose -f packaging/docker-compose.yml config -q; fi

clean:
	rm -rf $(VENV) $(PEERS) build dist *.egg-info aiki.db aiki.db-* .pytest_cache
