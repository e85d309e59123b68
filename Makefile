# The README's two commands: `make reproduce` and `make test`. Both set themselves up.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
KERNEL := python3
DATASET ?= fashion_mnist
PROFILE ?= quick
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
RUN_DIR := build/$(DATASET)/$(PROFILE)
SMOKE_DIR := build/smoke
export TQDM_DISABLE ?= 0
export PYTHONUNBUFFERED := 1

.PHONY: reproduce test slides lab setup clean gpu-check gpu-data

setup: $(VENV)/.installed

# Re-run only when the dependency list changes; a second `make` skips this in well under a second.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) > /dev/null
	@touch $@

# Every numbered notebook for one dataset and profile; executed copies go to build/, figures to figures/.
# No progress bars in the kernel: papermill saves no widget state, so each bar would stay in the
# executed notebook (and its slides) as a frozen "0%" line. `make lab` keeps them.
reproduce: setup
	@mkdir -p $(RUN_DIR)
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($(DATASET), $(PROFILE)) -> $(RUN_DIR)/$$(basename $$nb)"; \
	  EFFNETV2_MAKE="make reproduce DATASET=$(DATASET) PROFILE=$(PROFILE)" TQDM_DISABLE=1 \
	  $(PY) -m papermill -k $(KERNEL) --execution-timeout 7200 -f params/$(DATASET).yaml \
	    -p profile $(PROFILE) -p figures_dir figures -p runs_dir runs $$nb $(RUN_DIR)/$$(basename $$nb) || exit 1; \
	done
	@echo "executed notebooks: $(RUN_DIR)/   figures: figures/$(DATASET)/"

# ruff (lint and format, pyproject.toml), unit tests, then nbval over every notebook with the smoke
# profile injected (outputs to build/smoke). conftest.py fails a cell that shows a warning or an error
# and saves executed copies to build/smoke/executed.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@rm -rf $(SMOKE_DIR) && mkdir -p $(SMOKE_DIR)
	@for nb in $(NOTEBOOKS); do \
	  $(PY) -m papermill --prepare-only -k $(KERNEL) -p profile smoke -p figures_dir $(SMOKE_DIR)/figures -p runs_dir $(SMOKE_DIR)/runs \
	    $$nb $(SMOKE_DIR)/$$(basename $$nb) 2> /dev/null; \
	done
	TQDM_DISABLE=1 $(PY) -m pytest tests $(SMOKE_DIR) --nbval-lax --durations=8

# Executed notebooks in $(RUN_DIR) -> offline reveal.js decks in $(RUN_DIR)/slides, one per notebook and
# talk.slides.html from the cells tagged `talk` (+ vendor/, fetched
# once from npm into build/vendor). Code hidden; `make slides SLIDES_CODE=1` keeps it.
slides: setup
	@ls $(RUN_DIR)/[0-9][0-9]_*.ipynb > /dev/null 2>&1 || { echo "no executed notebooks in $(RUN_DIR)/: run \`make reproduce DATASET=$(DATASET) PROFILE=$(PROFILE)\` first" >&2; exit 1; }
	$(PY) scripts/slides.py $(RUN_DIR) $(RUN_DIR)/slides $(if $(filter 1 yes true,$(SLIDES_CODE)),--code)

# JupyterLab at the repository root, with the project's `python3` kernel (installed into .venv by setup).
# Options pass through, e.g. on a remote machine: make lab LAB_ARGS="--no-browser --port 8899".
# As root (containers) JupyterLab refuses to start without --allow-root.
lab: setup
	$(PY) -m jupyterlab --ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# The GPU evidence (benchmarks/gpu_check.py has the device call): the tests that take a device, the
# paper preflights and a short real training on CUDA in 8 minutes at most, measured into
# OUT/gpu_check.json and its log; where torch sees no CUDA device, the same check as a dry run on the
# CPU. No `setup` first: the GPU machine has no package registry, so there it runs on its own python3.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	@test -n "$(OUT)" || { echo "usage: make gpu-check OUT=DIR [COMMIT=sha] [GPU_PYTHON=python3]" >&2; exit 2; }
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_PYTHON) benchmarks/gpu_check.py --out "$(OUT)" $(if $(COMMIT),--commit $(COMMIT))

# The four Fashion-MNIST .gz files (about 30 MB) for the GPU machine, which cannot download: carry build/gpu-data.
gpu-data:
	$(GPU_PYTHON) benchmarks/gpu_check.py --prepare-data build/gpu-data

clean:
	rm -rf build .pytest_cache
