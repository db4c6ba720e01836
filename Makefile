# One command runs the demo, one runs the tests; both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test quick lint

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,data]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunekit demo

test: $(STAMP)
	$(PY) -m pytest

quick: $(STAMP)
	$(PY) -m pytest -m "not slow" -x -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy
