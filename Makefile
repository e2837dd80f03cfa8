# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint types imports pytest bench sim soak clean system-deps

# Serves the bundled smollm2-135m (the chat model), gemma3-270m (completions) and echo; from a
# second terminal:
#   .venv/bin/syncq add "Why is the sky blue?" -m smollm2-135m --follow
run: $(VENV)/.installed-run
	$(BIN)/syncq init --if-missing
	$(BIN)/syncq status
	$(BIN)/syncq node

test: system-deps $(VENV)/.installed-dev lint types imports pytest

# Debian packages the tests use: chromium (the web page's browser test, driven by Playwright)
# and espeak-ng (speech for the whisper tests).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@command -v chromium >/dev/null && command -v espeak-ng >/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium espeak-ng; }

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(VENV)/.installed-dev
	$(BIN)/mypy --strict syncq

# import-linter finds subpackages by walking folders, but node/ executors/ cli/ live beside
# syncq/ and are mapped in by pyproject's package-dir: lint a tree of links laid out as installed.
imports: $(VENV)/.installed-dev
	rm -rf build/imports && mkdir -p build/imports/syncq
	cp -rs $(CURDIR)/syncq/. build/imports/syncq/
	ln -s $(CURDIR)/node build/imports/syncq/node
	ln -s $(CURDIR)/executors build/imports/syncq/executors
	ln -s $(CURDIR)/cli build/imports/syncq/cli
	cd build/imports && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --no-cache --no-logo $(CURDIR)/pyproject.toml

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest -n 2

# The seeded whole-mesh simulation (tests/sim): `make test` runs 2,000 small schedules; this
# runs larger ones, from seed FIRST on. A failing seed prints the command that replays it.
SEEDS ?= 10000
FIRST ?= 0
sim: $(VENV)/.installed-dev
	$(BIN)/python tests/sim/run.py --seeds $(SEEDS) --first $(FIRST)

# The soak (tests/soak): six node processes under random cuts, partitions and kill -9 for
# MINUTES (`make test` runs one); its last line is a JSON report.
MINUTES ?= 10
soak: $(VENV)/.installed-dev
	$(BIN)/python tests/soak/soak.py --minutes $(MINUTES)

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/local.py
	$(BIN)/python benchmarks/sync.py
	$(BIN)/python benchmarks/exec.py
	$(BIN)/python benchmarks/api.py
	$(BIN)/python benchmarks/portal.py
	$(BIN)/python benchmarks/devices.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[llm,asr]'
	touch $@

# torch first, pinned: pip takes this machine's CPU build from disk, and the image extra's range
# is then already satisfied (a bare "torch" would pull several GB of CUDA wheels).
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,llm,asr,image]'
	touch $@ $(VENV)/.installed-run

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
