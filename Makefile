# digipat: every target sets itself up on a fresh machine (creates .venv when missing).
# Python 3.12 via pyenv when present (pyenv's default here is 3.11); ignored elsewhere.
export PYENV_VERSION := 3.12
PYTHON ?= python3.12
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv demo test validate benchmark clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,learn]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/digipat demo --out demo_output

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow" -q --durations=15

validate: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m slow -q

benchmark: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench_vessel_flow.py
	$(BIN)/python benchmarks/bench_transport.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
