# Two commands for a fresh machine: `make run` (the service) and `make test` (everything, as CI).
PYTHON ?= python3
VENV := .venv
RUNTIME := $(VENV)/.runtime-installed
EVERYTHING := $(VENV)/.all-installed

.PHONY: run test install bench-ingest clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

# Serving needs only the runtime dependencies (no torch).
$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -e .
	touch $@

# Tests need the dev tools and the training stack. torch goes first with the exact pin: a looser
# spec would pull the CUDA build and several GB of CUDA packages.
$(EVERYTHING): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev,train]'
	touch $@ $(RUNTIME)

install: $(EVERYTHING)

run: $(RUNTIME)
	scripts/run.sh

test: $(EVERYTHING)
	scripts/test.sh

bench-ingest: $(EVERYTHING)
	$(VENV)/bin/candlecast bench ingest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
