# The two commands: `make run` (the product) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: `make run` installs what running needs (the library and the embedded
# Redis), every other target the development tools too.
RUNSTAMP := $(VENV)/.installed-run
STAMP    := $(VENV)/.installed-dev
# `make bench` runs in a venv of its own: the development tools plus the peers it
# compares us with (the "bench" extra), none of which the project itself depends on;
# arq gets one more (the "bench-arq" extra): it needs a redis-py older than taskiq-redis's.
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-bench
ARQ_VENV    := .venv-bench-arq
ARQ_STAMP   := $(ARQ_VENV)/.installed-bench-arq

.PHONY: run test reliability soak bench check docs worker routes clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNSTAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	@touch $(RUNSTAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(RUNSTAMP)

$(BENCH_VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip

$(BENCH_STAMP): pyproject.toml | $(BENCH_VENV)/bin/python
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

$(ARQ_VENV)/bin/python:
	$(PYTHON) -m venv $(ARQ_VENV)
	$(ARQ_VENV)/bin/python -m pip install --quiet --upgrade pip

$(ARQ_STAMP): pyproject.toml | $(ARQ_VENV)/bin/python
	$(ARQ_VENV)/bin/python -m pip install --quiet -e '.[bench-arq]'
	@touch $(ARQ_STAMP)

## run: embedded Redis (unless DISPATCH_BROKER_URL is set), a worker and the API on 127.0.0.1:8000
run: $(RUNSTAMP)
	$(BIN)/python -m api

## test: the whole suite against a real Redis and real worker processes
# Two worker processes (pytest-xdist), a test file each at a time: most of the suite
# waits on real processes and Redis, so two files share the machine's cores.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

## reliability: the fault-injection suite at full scale, with its results table
reliability: $(STAMP)
	RELIABILITY_SCALE=full $(BIN)/python -m pytest tests/reliability -q

## soak: the chaos soak (2 APIs, 2 workers, a fault every 5-20 s) for SOAK_SECONDS, with its table
## (SOAK_SEED replays a schedule; `make test` runs it for 30 s)
SOAK_SECONDS ?= 600
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest tests/soak -q -s

## bench: ours next to hand-written Celery and BackgroundTasks, then next to every peer
## (dramatiq, taskiq, arq, RQ, raw Celery, the Redis limits), in .venv-bench; each prints
## one table (BENCH_ROUNDS rounds, default 3; BENCH_JOBS jobs per scenario, default 10000)
bench: $(BENCH_STAMP) $(ARQ_STAMP)
	$(BENCH_VENV)/bin/python -m bench.run
	$(BENCH_VENV)/bin/python -m bench.peers.run

## check: lint, strict typing and the import contracts (layers, independent routes)
check: $(STAMP)
	$(BIN)/ruff check dispatcher worker api tests bench docs
	$(BIN)/mypy dispatcher
	$(BIN)/lint-imports

## docs: the documentation site (MkDocs, strict)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

## worker: one Celery worker for every registered task (needs DISPATCH_BROKER_URL)
worker: $(RUNSTAMP)
	$(BIN)/python -m worker

## routes: print every task's effective route
routes: $(STAMP)
	DISPATCH_TASK_MODULES=$${DISPATCH_TASK_MODULES:-api.tasks} $(BIN)/python -m dispatcher routes

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(ARQ_VENV) .run .pytest_cache .mypy_cache .ruff_cache *.egg-info
