# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the virtual environment and install the Debian packages the
# project needs (iproute2 for emulated hosts, openssh-server for the multi-host
# tests, prometheus for the monitoring tests) when they are missing.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv system-deps demo test bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; distgnn needs Python 3.11 (DGL 2.1 has no wheels for newer Pythons)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

venv: $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

demo: venv system-deps
	@bash scripts/demo.sh $(DEMO_DIR)

test: venv system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/partition.py

clean:
	rm -rf $(VENV) runs .pytest_cache
