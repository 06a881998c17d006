# One command each: `make demo` sets up and runs the local network; `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test lint chromium demo bench clean

$(BIN)/gauntlet: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned CPU wheel first: anything else pulls GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/gauntlet

setup: $(BIN)/gauntlet

lint: setup
	$(BIN)/ruff check .

# Headless Chromium for the dashboard test: installed with apt-get when missing (root or
# passwordless sudo), otherwise the exact command is printed and that one test skips.
chromium:
	@sh tests/e2e/install-chromium.sh

test: setup lint chromium
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/gauntlet localnet

bench: setup
	$(BIN)/python benchmarks/codec.py

clean:
	rm -rf $(VENV) .pytest_cache
