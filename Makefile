# spectro — every target wires one `spectro <command>`; override any variable: make train STEPS=300 TASK=anomaly
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
SPECTRO    := $(BIN)/spectro
STAMP      := $(VENV)/.installed

DATA       ?= data/raw
IMAGES     ?= data/images
MODELS     ?= models
RUN        ?= $(MODELS)/latest
JOBS       ?= 0
SEED       ?= 0
TASK       ?= failure
BACKBONE   ?= mobilenet_v2
WEIGHTS    ?= imagenet
STEPS      ?= 1500
IMAGE_SIZE ?= 96
QUANTIZE   ?= int8
MACHINES   ?= fan pump slider valve
SNRS       ?= 6dB 0dB -6dB
FILE       ?=
DIR        ?=
MACHINE    ?=
HOST       ?= 127.0.0.1
PORT       ?= 8000
TEST_ARGS  ?=
TEST_JOBS  ?= 2
IMAGES_ARGS ?=
TRAIN_ARGS ?=
SECTIONS   ?=
BENCH_ARGS ?=

.PHONY: help venv data download images train enroll evaluate classify predict report export serve bench test lint docs clean distclean

help: ## list the targets and the variables they take
	@echo "spectro — make <target> [VAR=value ...]"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'
	@echo "variables: DATA=$(DATA) IMAGES=$(IMAGES) MODELS=$(MODELS) RUN=$(RUN) JOBS=$(JOBS) (0 = all cores)"
	@echo "           TASK=$(TASK) BACKBONE=$(BACKBONE) WEIGHTS=$(WEIGHTS) STEPS=$(STEPS) IMAGE_SIZE=$(IMAGE_SIZE) SEED=$(SEED)"
	@echo "           QUANTIZE=$(QUANTIZE) FILE=... DIR=... MACHINE=... MACHINES=\"$(MACHINES)\" SNRS=\"$(SNRS)\" HOST=$(HOST) PORT=$(PORT)"

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP) ## create .venv and install requirements.txt (done by every target on first use)

data: $(STAMP) ## write the built-in synthetic dataset to $(DATA)/synthetic
	$(SPECTRO) synth --out $(DATA)/synthetic --seed $(SEED)

download: $(STAMP) ## download MIMII archives: make download MACHINES="fan pump" SNRS="6dB"
	$(SPECTRO) download --machines $(MACHINES) --snrs $(SNRS) --out $(DATA)

images: $(STAMP) ## render $(DATA) to spectrogram PNGs in $(IMAGES) (synthetic data first if $(DATA) holds no audio)
	$(SPECTRO) images $(DATA) --out $(IMAGES) --jobs $(JOBS) --synth-if-empty $(IMAGES_ARGS)

$(IMAGES)/manifest.csv: | $(STAMP)
	$(SPECTRO) images $(DATA) --out $(IMAGES) --jobs $(JOBS) --synth-if-empty $(IMAGES_ARGS)

train: $(IMAGES)/manifest.csv ## train a model on $(IMAGES) into $(MODELS)/<run>: make train STEPS=300 TASK=normal-only
	$(SPECTRO) train $(IMAGES) --out $(MODELS) --task $(TASK) --backbone $(BACKBONE) --weights $(WEIGHTS) \
		--steps $(STEPS) --image-size $(IMAGE_SIZE) --seed $(SEED) $(TRAIN_ARGS)

enroll: $(STAMP) ## add DIR's normal recordings to normal-only $(RUN): make enroll DIR=rec/fan/id_02 MACHINE=fan/id_02
	@test -n "$(DIR)" || { echo "error: give a folder of normal recordings: make enroll DIR=path MACHINE=fan/id_02 (MACHINE when the paths name none)" >&2; exit 2; }
	$(SPECTRO) enroll $(RUN) $(DIR) $(if $(MACHINE),--machine $(MACHINE))

evaluate: $(STAMP) ## metrics, plots, threshold and predictions.csv for $(RUN)
	$(SPECTRO) evaluate $(RUN)

classify: $(STAMP) ## classify a PNG, WAV or folder: make classify FILE=path/to/clip.wav
	@test -n "$(FILE)" || { echo "error: give a file: make classify FILE=path/to/clip.wav" >&2; exit 2; }
	$(SPECTRO) classify $(FILE) --model $(RUN)

predict: classify # the target's former name

report: $(STAMP) ## write $(RUN)/report.html
	$(SPECTRO) report $(RUN)

export: $(STAMP) ## export $(RUN) to TFLite and verify it: make export QUANTIZE="none dynamic int8"
	$(SPECTRO) export $(RUN) --quantize $(QUANTIZE)

serve: $(STAMP) ## serve $(RUN) at http://$(HOST):$(PORT)/ (page + API): make serve HOST=0.0.0.0 for the network
	$(SPECTRO) serve $(RUN) --host $(HOST) --port $(PORT)

bench: $(STAMP) ## every benchmark section into docs/benchmarks.md; SECTIONS="serve normal": those, into reports/bench/
	PYTHONUNBUFFERED=1 $(BIN)/python -m bench $(if $(strip $(SECTIONS)),--only $(SECTIONS)) $(BENCH_ARGS)

test: $(STAMP) ## run the test suite (TEST_JOBS processes, one test file each at a time)
	$(BIN)/python -m pytest tests -n $(TEST_JOBS) --dist loadfile $(TEST_ARGS)

lint: $(STAMP) ## check the code with ruff (rules in pyproject.toml)
	$(BIN)/ruff check spectro tests bench examples tools

docs: $(STAMP) ## build the documentation site (mkdocs.yml, docs/) into site/; broken links fail
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean: ## remove generated images, models and reports (keeps data/raw and .venv)
	rm -rf $(IMAGES) reports/bench site
	find $(MODELS) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

distclean: clean ## also remove the synthetic dataset and .venv
	rm -rf $(DATA)/synthetic $(VENV)
