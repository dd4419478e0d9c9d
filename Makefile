# slm: small language models, trained reproducibly.   `make help` lists the targets.
#
# Every target depends on the set-up step, so on a fresh clone `make train-phi3` or `make test` does everything.
# Make variables become recipe overrides:  make train-phi3 EPOCHS=1 LR=5e-4 RUN=try1 ARGS="warmup_steps=20"

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Where torch comes from: empty = pip's default (CPU wheel on this project's CI machines). The Dockerfile sets a
# CUDA index, e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu126".
TORCH_INDEX ?=
STAMP       := $(VENV)/.slm-setup

# recipe overrides from make variables (empty ones are left out)
OVERRIDES = $(strip \
  $(if $(EPOCHS),training.num_train_epochs=$(EPOCHS)) \
  $(if $(MAX_STEPS),training.max_steps=$(MAX_STEPS)) \
  $(if $(LR),training.learning_rate=$(LR)) \
  $(if $(BATCH),training.per_device_train_batch_size=$(BATCH)) \
  $(if $(RUN),run.name=$(RUN)) \
  $(if $(RESUME),run.resume=$(RESUME)) \
  $(ARGS))

# generation: make generate MODEL=phi3 [PROMPT="春天来了，"] [RUN=poetry] [ARGS="temperature=0.7"]
MODEL       ?= phi3
MODEL_DIR_phi3    := train_phi3
MODEL_DIR_mixtral := train_mixtral
MODEL_DIR_phi2    := train_phi2
MODEL_DIR_nanogpt := train_nanogpt
MODEL_DIR_minigl  := minigl
MODEL_DIR   = $(MODEL_DIR_$(MODEL))

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM   := false
export PYTHONUNBUFFERED         := 1

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast train-phi3 generate clean-runs

help: ## list the targets
	@echo "slm make targets (variables: EPOCHS MAX_STEPS LR BATCH RUN RESUME ARGS RECIPE MODEL PROMPT):"
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install the pinned dependencies (quick when nothing changed)

$(STAMP): requirements.txt constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "slm needs Python >= 3.11 (PYTHON=$(PYTHON) is older)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_INDEX)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -c "import torch, transformers, datasets, trl, accelerate, deepspeed, peft, gradio, faiss, langchain; print('slm setup ok: torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
	@touch $@

test: $(STAMP) ## run the test suite offline (HF_HUB_OFFLINE=1), ~10 min on 2 CPU cores
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the tests without the end-to-end training runs
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

train-phi3: $(STAMP) ## Phi-3 tiny poetry model (recipes/phi3/poetry.yaml) -> runs/phi3/, train_phi3/train_log.md
	$(PY) train_phi3/train.py $(or $(RECIPE),recipes/phi3/poetry.yaml) $(OVERRIDES) --publish-log train_phi3/train_log.md

generate: $(STAMP) ## generate with a trained model: MODEL=phi3|mixtral|... [PROMPT=...] [RUN=...]
	@test -n "$(MODEL_DIR)" -a -f "$(MODEL_DIR)/generate.py" || { echo "error: unknown MODEL=$(MODEL)"; exit 2; }
	$(PY) $(MODEL_DIR)/generate.py $(if $(RUN),--run $(RUN)) $(if $(PROMPT),--prompt "$(PROMPT)") $(ARGS)

clean-runs: ## delete runs/ (checkpoints and trained models)
	rm -rf runs
