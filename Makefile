# tickwire — two commands do everything on a fresh Debian 12 machine:
#   make run    set up (Python venv) and run the main job: Binance -> SQLite (profile local)
#   make test   set up everything the tests need (packages, PostgreSQL, Kafka and Spark jars) and run them,
#               including tests/test_install.py: the wheel and a run-time-only install in fresh venvs
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TICKWIRE := $(VENV)/bin/tickwire
PYTHON_BASE ?= python3
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup setup-test run demo test validate generate bench clean

help:
	@sed -n 's/^#   //p' Makefile

$(VENV)/bin/activate:
	$(PYTHON_BASE) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip setuptools wheel

# An editable install maps tickwire.framework to framework/ (etc.) with an import hook, and
# setuptools then warns that a folder named like the package could shadow it; the only such
# folder here, tickwire/, is the package itself, so that warning is silenced.
PIP_EDITABLE := PYTHONWARNINGS="ignore:Editable installation" $(PYTHON) -m pip install -q -e

# The run-time install; re-done when pyproject.toml changes.
$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PIP_EDITABLE) .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP_EDITABLE) '.[test]'
	@touch $@

setup: $(VENV)/.installed

## The main job: live Binance -> data/tickwire.db (Ctrl-C stops it cleanly; nothing received is lost).
run: setup
	$(TICKWIRE) run

## The same, offline: our Binance-compatible simulator feeds the pipeline for 20 seconds.
demo: setup
	bash scripts/demo.sh

setup-test: $(VENV)/.installed-test
	bash scripts/install_system_deps.sh
	$(PYTHON) scripts/kafka_broker.py fetch
	$(PYTHON) -m tickwire.spark.jars >/dev/null

test: setup-test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Run-time dependencies are enough; CI passes VALIDATE_ARGS=--format=github for annotations.
validate: setup
	$(TICKWIRE) validate $(VALIDATE_ARGS)

bench: setup-test
	$(PYTHON) bench/run_all.py

clean:
	rm -rf $(VENV) data .pytest_cache

include $(wildcard make/*.mk)
