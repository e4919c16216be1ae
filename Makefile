# Selective-Backprop — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RUNS_CPU := results/fashion_mnist_cpu

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo bench reproduce-table1 reproduce-table1-cpu clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

setup: $(PY)  ## create .venv and install the package editable with its dev extras
	$(PIP) install -e '.[dev]'

test:  ## run the test suite (CPU; ~10 min on 2 cores)
	$(PY) -m pytest -q

test-fast:  ## the test suite without the slow end-to-end tests
	$(PY) -m pytest -q -m "not slow"

demo:  ## Traditional vs SB vs Stale-SB on real Fashion-MNIST (resnet8, CPU, a few minutes)
	$(PY) scripts/demo.py --out outputs/demo

clean:  ## remove caches and local outputs (keeps data/ and results/)
	rm -rf outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
