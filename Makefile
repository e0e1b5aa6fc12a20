# The README's two commands: `make demo` and `make test`. Both set up what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-quick lint clean images demo-images

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

clean:
	rm -rf $(VENV) .tools .pytest_cache
