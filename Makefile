# loopml: `make demo` shows the whole loop, `make test` runs every test. Both set up .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
FEAST := .bench/feast
MLFLOW := .bench/mlflow
EVIDENTLY := .bench/evidently
NANNYML := .bench/nannyml

.PHONY: demo demo-quick test lint format clean chromium bench-features bench-registry bench-serving bench-monitoring

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

test: $(VENV)/.installed-dev $(MLFLOW)/.installed chromium
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# Debian's Chromium for the browser test of the monitoring report (headless). Installing needs root, as in
# CI; elsewhere the test skips with a message.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "Chromium could not be installed (not root?): the report's browser test will skip"

# Feast in its own venv, for the benchmarks only: never a dependency of loopml.
$(FEAST)/.installed: benchmarks/requirements-feast.txt
	$(PYTHON) -m venv $(FEAST)
	$(FEAST)/bin/python -m pip install --quiet --upgrade pip
	$(FEAST)/bin/python -m pip install --quiet -r benchmarks/requirements-feast.txt
	touch $@

# MLflow in its own venv, for the registry benchmark and the MLflow interoperability tests: the same
# scikit-learn, LightGBM and XGBoost versions as loopml's venv, so pickles move between the two.
$(MLFLOW)/.installed: benchmarks/requirements-mlflow.txt $(VENV)/.installed-dev
	$(PYTHON) -m venv $(MLFLOW)
	$(MLFLOW)/bin/python -m pip install --quiet --upgrade pip
	$(MLFLOW)/bin/python -m pip install --quiet -r benchmarks/requirements-mlflow.txt \
		$$($(BIN)/python -c "from importlib.metadata import version as v; print(' '.join(f'{p}=={v(p)}' for p in ('scikit-learn', 'lightgbm', 'xgboost', 'numpy', 'pandas')))")
	touch $@

# Evidently and NannyML in their own venvs, for the monitoring benchmark only: never dependencies of loopml.
# benchmarks/monitoring.py runs them as subprocesses (benchmarks/peers/*_drift.py) with these venvs' python.
$(EVIDENTLY)/.installed: benchmarks/requirements-evidently.txt
	$(PYTHON) -m venv $(EVIDENTLY)
	$(EVIDENTLY)/bin/python -m pip install --quiet --upgrade pip
	$(EVIDENTLY)/bin/python -m pip install --quiet -r benchmarks/requirements-evidently.txt
	touch $@

$(NANNYML)/.installed: benchmarks/requirements-nannyml.txt
	$(PYTHON) -m venv $(NANNYML)
	$(NANNYML)/bin/python -m pip install --quiet --upgrade pip
	$(NANNYML)/bin/python -m pip install --quiet -r benchmarks/requirements-nannyml.txt
	touch $@

bench-registry: $(VENV)/.installed $(MLFLOW)/.installed
	$(BIN)/python benchmarks/registry.py

# loopml serve under open-loop load (LightGBM models, so the dev extras), against `mlflow models serve`.
bench-serving: $(VENV)/.installed-dev $(MLFLOW)/.installed
	$(BIN)/python benchmarks/serving.py

bench-features: $(VENV)/.installed $(FEAST)/.installed
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/features_online.py

# loopml's drift monitoring against Evidently's DataDriftPreset and NannyML's UnivariateDriftCalculator.
bench-monitoring: $(VENV)/.installed $(EVIDENTLY)/.installed $(NANNYML)/.installed
	$(BIN)/python benchmarks/monitoring.py

clean:
	rm -rf $(VENV) loopml-demo .pytest_cache .ruff_cache
