# The two commands: `make run` (the product) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test reliability bench check docs worker routes clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: embedded Redis (unless DISPATCH_BROKER_URL is set), a worker and the API on 127.0.0.1:8000
run: $(STAMP)
	$(BIN)/python -m api

## test: the whole suite against a real Redis and real worker processes
test: $(STAMP)
	$(BIN)/python -m pytest

## reliability: the fault-injection suite at full scale, with its results table
reliability: $(STAMP)
	RELIABILITY_SCALE=full $(BIN)/python -m pytest tests/reliability -q

## bench: ours next to hand-written Celery and BackgroundTasks (prints one table)
bench: $(STAMP)
	$(BIN)/python -m bench.run

## check: lint and strict typing
check: $(STAMP)
	$(BIN)/ruff check dispatcher worker api tests bench
	$(BIN)/mypy dispatcher

## docs: the documentation site (MkDocs, strict)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

## worker: one Celery worker for every registered task (needs DISPATCH_BROKER_URL)
worker: $(STAMP)
	$(BIN)/python -m worker

## routes: print every task's effective route
routes: $(STAMP)
	DISPATCH_TASK_MODULES=$${DISPATCH_TASK_MODULES:-api.tasks} $(BIN)/python -m dispatcher routes

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache *.egg-info
