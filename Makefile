# Two commands on a fresh clone: `make demo` and `make test`. Both build .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_XLA := .venv-xla
PY := $(VENV)/bin/python
PIP_FLAGS := -q --disable-pip-version-check
STAMP := $(VENV)/.clipa-installed
XLA_STAMP := $(VENV_XLA)/.clipa-installed
SPARK_STAMP := $(VENV)/.clipa-spark-installed
# The package index drops a large download now and then (a CI run once lost torch 2.9's 900 MB
# wheel at 760 MB after pip's five resumes): pip resumes up to 20 times, and each install is
# tried three times, 30 s apart, before the run fails on the network.
RETRY := bash -c 'for try in 1 2 3; do "$$@" && exit 0; test $$try = 3 || { echo "pip: try $$try of 3 failed, retrying in 30 s" >&2; sleep 30; }; done; exit 1' retry
PIP_INSTALL := -m pip install $(PIP_FLAGS) --resume-retries 20
PIP_UPGRADE := -m pip install $(PIP_FLAGS) --upgrade pip setuptools wheel

.PHONY: setup setup-spark test test-xla test-spark demo lint format clean

setup: $(STAMP)

# Re-installs only when the dependency declarations (or these recipes) change; otherwise a no-op.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(RETRY) $(PY) $(PIP_UPGRADE) 2>/dev/null
	$(RETRY) $(PY) $(PIP_INSTALL) -c constraints.txt -e '.[all]' 2> >(grep -v "is ignored: it is neither" >&2)
	@touch $@

test: setup
	$(PY) -m pytest -q -m "not xla and not spark" tests

# pyspark (~320 MB) is only in the `spark` extra; its tests need Java 17+ (.ci/run installs it
# where `java` is missing). The import check first: the Spark tests skip themselves without it.
$(SPARK_STAMP): $(STAMP)
	$(RETRY) $(PY) $(PIP_INSTALL) -c constraints.txt -e '.[all,spark]' 2> >(grep -v "is ignored: it is neither" >&2)
	@touch $@

setup-spark: $(SPARK_STAMP)

test-spark: $(SPARK_STAMP)
	$(PY) -c 'import pyspark'
	$(PY) -m pytest -q -m spark tests

# torch-xla 2.9.0 needs torch 2.9.0, so the XLA tests live in their own environment. It has
# every extra: the XLA tests train on a real TFDS builder directory with spaCy sidecars (written
# in a child process: TensorFlow and torch_xla cannot share one, see tests/xla_data.py).
$(XLA_STAMP): pyproject.toml constraints-xla.txt Makefile
	@test -x $(VENV_XLA)/bin/python || $(PYTHON) -m venv $(VENV_XLA)
	$(RETRY) $(VENV_XLA)/bin/python $(PIP_UPGRADE) 2>/dev/null
	$(RETRY) $(VENV_XLA)/bin/python $(PIP_INSTALL) -c constraints-xla.txt torch-xla -e '.[all]' 2> >(grep -v "is ignored: it is neither" >&2)
	@touch $@

# The import check first: the XLA tests skip themselves without torch_xla, which must not
# pass for a green run here.
test-xla: $(XLA_STAMP)
	PJRT_DEVICE=CPU $(VENV_XLA)/bin/python -c 'import torch_xla'
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
