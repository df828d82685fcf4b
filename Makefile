# `make quickstart` and `make test` set everything up themselves in a virtual environment (.venv).
# TORCH picks the PyTorch build: the default is the CPU build CI uses; e.g. `make TORCH=torch test` for your own.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= tests,zoo,atari,mujoco,box2d,docs
LINT_PATHS = sb3_acktr/ tests/ benchmarks/ examples/

.PHONY: install quickstart test test-slow lint format type check-codestyle commit-checks docs

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(PYTHON) examples/quickstart.py

test: install
	$(PYTHON) -m pytest -n 2

test-slow: install
	$(PYTHON) -m pytest -m slow

lint: install
	$(PYTHON) -m ruff check $(LINT_PATHS)

format: install
	$(PYTHON) -m ruff format $(LINT_PATHS)
	$(PYTHON) -m ruff check --fix $(LINT_PATHS)

check-codestyle: install
	$(PYTHON) -m ruff format --check $(LINT_PATHS)

type: install
	$(PYTHON) -m mypy $(LINT_PATHS)

commit-checks: check-codestyle lint type

docs: install
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs docs/_build/html
