# Set-up and entry points. The README's two commands are `make repro` and `make test`.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup test repro bench clean-venv gpu-carry

setup: $(STAMP)

# Re-install only when the pins or the project metadata change.
# sam2 is published as source only and its build would pull a second torch into an isolated build
# environment and try to compile a CUDA extension: it builds here against the pinned setuptools, with
# SAM2_BUILD_CUDA=0 (the extension only speeds up an optional hole-filling step we do not use).
$(STAMP): requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --constraint requirements.lock setuptools
	SAM2_BUILD_CUDA=0 $(VENV)/bin/python -m pip install --quiet --no-build-isolation --constraint requirements.lock --requirement requirements.lock
	$(VENV)/bin/python -m pip install --quiet --constraint requirements.lock --no-deps --editable '.[test]'
	$(VENV)/bin/python -m pip check
	touch $(STAMP)

# Two workers, each taking whole test files (module fixtures such as the DVC study run once):
# the suite is mostly single-threaded. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Stages call `segpic`, so the environment's bin folder goes first on PATH.
repro: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

clean-venv:
	rm -rf $(VENV)

# What benchmarks/gpu.sh needs on a bare GPU machine (README, "GPU figures"), in .gpu/ (git-ignored): wheels for
# CPython 3.12 of the imports missing there, and kodim01-08 from KODAK when that folder exists.
KODAK ?= ../shared/datasets/kodak
gpu-carry:
	bash benchmarks/gpu_carry.sh .gpu $(KODAK)
