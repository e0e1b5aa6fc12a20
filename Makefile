# The README's two commands: `make demo` and `make test`. Both set up what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-quick lint clean

setup:
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(PY) -m kubesim demo

test: setup
	$(PY) scripts/run_tests.py $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench

bench-quick: setup
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .tools .pytest_cache
