# The README's two commands: `make demo` and `make test`. Both set up what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-quick soak soak-ci lint clean

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

# The chaos soak (soak/README.md): SOAK_MINUTES of churn, kills, API faults, policy reloads and chain
# flushes in the simulated cluster, invariants checked all along; report and plots in SOAK_REPORT.
SOAK_MINUTES ?= 10
SOAK_REPORT ?= soak-report
soak: setup
	$(PY) -m soak --minutes $(SOAK_MINUTES) --report $(SOAK_REPORT)

# The 2-minute variant CI runs (also as tests/test_soak.py inside `make test`)
soak-ci: setup
	$(PY) -m soak --ci --report $(SOAK_REPORT)

clean:
	rm -rf $(VENV) .tools .pytest_cache
