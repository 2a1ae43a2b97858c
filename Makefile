# The two commands of the README: `make demo` (set up, then the whole pipeline on built-in synthetic data)
# and `make test` (set up, then the whole test suite; `make test-fast` skips the slow end-to-end tests). Both create and reuse a local virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo demo-quick test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py $(ARGS)

demo-quick: $(STAMP)
	$(PY) tools/demo.py experiment=demo_quick $(ARGS)

# the tests run in one pytest worker process per core (pytest-xdist), at most 4 (2 cores: 6 min 15 s instead of 9 min 42 s)
test: $(STAMP)
	$(PY) -m pytest -q --full -n auto --maxprocesses=4 --dist worksteal $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf work outputs multirun .pytest_cache
