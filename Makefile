# Set-up and entry points. The README's two commands are `make repro` and `make test`.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup test repro bench clean-venv warm-start gpu-carry

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
# the suite is mostly single-threaded. TEST_WORKERS=0 runs it in this process. One torch thread per
# process (OMP_NUM_THREADS, inherited by the commands tests run): two workers whose intra-op threads
# spin on each other's cores ran the suite in 10 min 19 s, against 8 min 07 s with one thread each.
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Stages call `segpic`, so the environment's bin folder goes first on PATH.
repro: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

# The default study's warm starts, data/warm_start/tiny-grid-<λ>.pth.tar (see its README): the tiny preset on the
# `sample` photos, grid partition, trained at λ=0.18 (above the study's λs, so every start lowers its rate), then
# at each λ of params.yaml's train.lambdas. About 80 minutes on a 2-core CPU (bf16 autocast where the CPU has it);
# the runs stay in build/warm-start.
WARM_START_WORK := build/warm-start
WARM_START_BASE_LAMBDA := 0.18
WARM_START_TRAIN := $(VENV)/bin/segpic train --images $(WARM_START_WORK)/images --partition grid --preset tiny \
	--crop 128 --batch-size 4 --aux-lr 0.01 --bf16 --val-every 500 --checkpoint-every 500 --log-every 50 --resume
STUDY_LAMBDAS = $$($(VENV)/bin/python -c 'import yaml; print(*yaml.safe_load(open("params.yaml"))["train"]["lambdas"])')
warm-start: setup
	$(VENV)/bin/segpic ingest sample --out $(WARM_START_WORK)/images
	$(WARM_START_TRAIN) --lmbda $(WARM_START_BASE_LAMBDA) --steps 6000 --out $(WARM_START_WORK)/base
	for lmbda in $(STUDY_LAMBDAS); do \
		$(WARM_START_TRAIN) --lmbda $$lmbda --steps 1500 --init $(WARM_START_WORK)/base/checkpoint.pt \
			--out $(WARM_START_WORK)/$$lmbda && \
		$(VENV)/bin/segpic export $(WARM_START_WORK)/$$lmbda/checkpoint.pt -o data/warm_start/tiny-grid-$$lmbda.pth.tar --overwrite \
			|| exit 1; \
	done

clean-venv:
	rm -rf $(VENV)

# What benchmarks/gpu.sh needs on a bare GPU machine (README, "GPU figures"), in .gpu/ (git-ignored): wheels for
# CPython 3.12 of the imports missing there, and kodim01-08 from KODAK when that folder exists.
KODAK ?= ../shared/datasets/kodak
gpu-carry:
	bash benchmarks/gpu_carry.sh .gpu $(KODAK)
