# Two commands on a fresh clone: `make demo` and `make test`. Both build .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_XLA := .venv-xla
PY := $(VENV)/bin/python
PIP_FLAGS := -q --disable-pip-version-check
STAMP := $(VENV)/.clipa-installed
XLA_STAMP := $(VENV_XLA)/.clipa-installed

.PHONY: setup test test-xla demo lint format bench clean

setup: $(STAMP)

# Re-installs only when the dependency declarations change; otherwise a no-op.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip setuptools wheel 2>/dev/null
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[all]' 2> >(grep -v "is ignored: it is neither" >&2)
	@touch $@

test: setup
	$(PY) -m pytest -q -m "not xla" tests

# torch-xla 2.9.0 needs torch 2.9.0, so the XLA tests live in their own environment.
$(XLA_STAMP): pyproject.toml constraints-xla.txt
	@test -x $(VENV_XLA)/bin/python || $(PYTHON) -m venv $(VENV_XLA)
	$(VENV_XLA)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip setuptools wheel 2>/dev/null
	$(VENV_XLA)/bin/python -m pip install $(PIP_FLAGS) -c constraints-xla.txt torch-xla -e '.[train,dev]' 2> >(grep -v "is ignored: it is neither" >&2)
	@touch $@

test-xla: $(XLA_STAMP)
	PJRT_DEVICE=CPU $(VENV_XLA)/bin/python -m pytest -q -m xla tests

demo: setup
	$(PY) -m clipa_cli.demo

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
