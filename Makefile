# The two README commands: `make demo` and `make test`.
# Both create .venv (if missing), install the pinned requirements, build and
# install visionops (incrementally: build/ persists between runs), then run.
# `make test VENV=` builds and tests with the current python3 instead of a venv
# (for machines without network whose Python already has torch, like the GPU one).

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=

ifeq ($(strip $(VENV)),)
PY := $(PYTHON)
DEPS :=
else
PY := $(VENV)/bin/python
DEPS := $(VENV)/.requirements-installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
endif

.PHONY: demo test build check bench asan clean

demo: build
	$(PY) -m visionops demo

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

check: build
	$(PY) -m visionops check

# pytest-benchmark over bench/ (the report with ratios: python -m visionops bench)
bench: build
	$(PY) -m pytest bench --benchmark-enable $(PYTEST_ARGS)

build: $(DEPS)
	$(PY) -m pip install --no-build-isolation --no-deps --no-index --disable-pip-version-check -q .

$(VENV)/.requirements-installed: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

# C++ CPU kernels under AddressSanitizer + UBSan (build/asan, CUDA off), then the
# CPU tests against that build (tools/asan.sh; PYTEST_ARGS replaces its test selection)
asan: $(DEPS)
	PY=$(PY) tools/asan.sh $(PYTEST_ARGS)

clean:
	rm -rf build dist
