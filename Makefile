# loopml: `make demo` shows the whole loop, `make test` runs every test. Both set up .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
FEAST := .bench/feast

.PHONY: demo demo-quick test lint format clean bench-features

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/loopml demo

demo-quick: $(VENV)/.installed
	$(BIN)/loopml demo --quick

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# Feast in its own venv, for the benchmarks only: never a dependency of loopml.
$(FEAST)/.installed: benchmarks/requirements-feast.txt
	$(PYTHON) -m venv $(FEAST)
	$(FEAST)/bin/python -m pip install --quiet --upgrade pip
	$(FEAST)/bin/python -m pip install --quiet -r benchmarks/requirements-feast.txt
	touch $@

bench-features: $(VENV)/.installed $(FEAST)/.installed
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/features_online.py

clean:
	rm -rf $(VENV) loopml-demo .pytest_cache .ruff_cache
