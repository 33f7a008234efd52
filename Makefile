# The two front-door commands: `make demo` and `make test`. Each sets itself up first.
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test

setup:
	@EXTRA_APT_PACKAGES="$(APT)" ./scripts/setup.sh

demo: setup
	$(VENV)/bin/guidediff demo

test: APT = chromium
test: setup
	$(PY) -m pytest -q -ra
