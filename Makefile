# The two commands of the README: `make demo` and `make test`. Both set up first (idempotent).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test clean demo

setup:
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	PY=$(PY) bash tools/misc/run_demo.sh

clean:
	rm -rf build *.egg-info replk_mm/*.so work_dirs .pytest_cache
