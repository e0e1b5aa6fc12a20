# The README's two commands: `make demo` and `make test`. Both set up what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-quick soak soak-ci lint clean images demo-images

setup:
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(PY) -m kubesim demo

test: setup
	$(PY) scripts/run_tests.py $(PYTEST_ARGS)

# The four images and the example app's, from their Dockerfiles, with podman (installed if missing);
# a local Debian bookworm base when the official python base cannot be pulled. See scripts/images.sh.
images: setup
	bash scripts/images.sh

# The tutorial on the real images: the netns kubelet runs every pod's containers with podman.
demo-images: images
	$(PY) -m kubesim demo --runtime=podman

# ruff (ruff.toml), shellcheck and mypy (setup.cfg [mypy]) over the repository; CI runs it first.
lint: setup
	VENV=$(VENV) bash scripts/lint.sh

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
