# The two commands of the README: `make demo` and `make test`. Both set up first (idempotent).
# `make sanitize`: the op tests against an AddressSanitizer + UBSan build (docs/ops.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test clean demo sanitize

setup:
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	PY=$(PY) bash tools/misc/run_demo.sh

sanitize: setup
	PY=$(PY) bash tools/misc/sanitize.sh $(PYTEST_ARGS)

clean:
	rm -rf build *.egg-info replk_mm/*.so work_dirs .pytest_cache
