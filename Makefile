# Two commands on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC is the torch requirement installed first; CI pins the CPU build
# that lies on its disk (see .ci/run). Users keep the normal torch for their platform.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch>=2.4
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test lint bench clean

# Builds without isolation (--no-build-isolation) so that setup.py finds the torch just
# installed and compiles the C++ eager op against it; the sources are prerequisites so
# that an edited kernel is rebuilt.
NATIVE_SOURCES := setup.py src/dropkit/kernels/_native.c src/dropkit/kernels/_dispatch.cpp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=77" wheel

$(VENV)/.demo-installed: pyproject.toml $(NATIVE_SOURCES) | $(BIN)/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet --no-build-isolation -e ".[demo]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(NATIVE_SOURCES) | $(BIN)/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet --no-build-isolation -e ".[dev,demo]"
	$(PIP) install --quiet --no-deps "timm>=1.0"
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/dropkit lab run mnist1d --name demo --report report.html

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/bench_dropout.py

clean:
	rm -rf $(VENV) build src/*.egg-info
