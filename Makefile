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
  $(if $(REPLACE),run.replace=$(REPLACE)) \
  $(ARGS))

# Launchers (multi-GPU / multi-node): NPROC processes per node, NNODES nodes; LAUNCHER = torchrun (default),
# accelerate (ACCELERATE_CONFIG=recipes/accelerate/zero3.yaml ...) or deepspeed (HOSTFILE=... for several nodes).
NPROC       ?= 1
NNODES      ?= 1
NODE_RANK   ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
LAUNCHER    ?= torchrun
ifeq ($(NPROC)$(NNODES)$(LAUNCHER),11torchrun)
LAUNCH = $(PY)
else ifeq ($(LAUNCHER),accelerate)
LAUNCH = $(VENV)/bin/accelerate launch --num_processes $$(( $(NPROC) * $(NNODES) )) --num_machines $(NNODES) \
  --machine_rank $(NODE_RANK) --main_process_ip $(MASTER_ADDR) --main_process_port $(MASTER_PORT) \
  $(if $(ACCELERATE_CONFIG),--config_file $(ACCELERATE_CONFIG),$(if $(filter 1,$(NPROC)$(NNODES)),,--multi_gpu))
else ifeq ($(LAUNCHER),deepspeed)
LAUNCH = $(VENV)/bin/deepspeed --no_local_rank --num_nodes $(NNODES) --master_addr $(MASTER_ADDR) \
  --master_port $(MASTER_PORT) $(if $(HOSTFILE),--hostfile $(HOSTFILE),--num_gpus $(NPROC))
else ifeq ($(LAUNCHER),torchrun)
LAUNCH = $(PY) -m torch.distributed.run --nproc_per_node $(NPROC) --nnodes $(NNODES) --node_rank $(NODE_RANK) \
  --master_addr $(MASTER_ADDR) --master_port $(MASTER_PORT)
else
$(error LAUNCHER must be torchrun, accelerate or deepspeed, got '$(LAUNCHER)')
endif
# the make targets publish each stage's reference log into its model folder (train_log.md for a model's main stage,
# <stage>_log.md for the others), but only from the run it documents: the stage's recipe without overrides. A run
# with RUN=, ARGS=, EPOCHS=... keeps its log in its run folder (the script decides, so direct calls are safe too);
# PUBLISH=yes publishes such a run anyway, PUBLISH=no never publishes. A RECIPE= run never publishes.
PUBLISH     ?= auto
ifeq ($(filter auto yes no,$(PUBLISH)),)
$(error PUBLISH must be auto, yes or no, got '$(PUBLISH)')
endif
no_publish  = $(or $(filter no,$(PUBLISH)),$(RECIPE))
publish     = $(if $(no_publish),,--publish-log $(1)$(if $(filter yes,$(PUBLISH)), --publish-anyway))
# $(call stage,<script>,<default recipe>,<published log>): one stage, under the chosen launcher, with the overrides
stage = $(LAUNCH) $(1) $(or $(RECIPE),$(2)) $(OVERRIDES) $(call publish,$(3))

# ---- Stages and the chain between them -----------------------------------------------------------------------------
# A stage is one recipe's run, in runs/<stage>/ (runs/phi2/sft/ is the stage phi2/sft); its completed output is
# runs/<stage>/final/stage.json (written last). A target that reads stages depends on those files, order-only: an
# existing result is reused, never retrained because of a timestamp; a missing one is built first with its recipe's
# defaults (no overrides: ARGS=... meant for the late stage do not leak into it). The stages a missing one reads are
# made only when it must be built: a finished stage is reused even if the runs it was built from were deleted since.
#
# Each model's section describes its stages, three variables each, and adds them to STAGES:
#   <stage>.make    the make target that runs it in full (overrides, launcher, published log)
#   <stage>.needs   the stages its recipe reads (init_from, tokenizer, data); with theirs in turn, every one of them
#   <stage>.build   script, recipe and default arguments: how a missing one is built
# A target names what it reads with $(call needs,<its stage>) or $(call done,<stages>); the chain rules, one per
# stage, are made from the three variables at the end of this file.
DONE        := final/stage.json
done         = $(patsubst %,runs/%/$(DONE),$(1))
needs        = $(call done,$($(1).needs))
missing      = >> runs/$(1) is missing: building it first with $(firstword $($(1).build)) and its recipe's \
  defaults (make $($(1).make) for the full stage)
define chain
	@echo "$(call missing,$(1))"
	$(if $($(1).needs),@$(MAKE) --no-print-directory $(call needs,$(1)))
	$(PY) $($(1).build)
endef
define chain_rule
$(call done,$(1)): | $$(STAMP)
	$$(call chain,$(1))
endef
STAGES      :=

# make estimate MODEL=mixtral-8x7b: memory per GPU of these recipes under ZeRO-2 / ZeRO-3 / offload
ESTIMATE_mixtral-8x7b := recipes/mixtral/finetune-8x7b-zero3.yaml recipes/mixtral/finetune-8x7b-lora.yaml

# generation: make generate MODEL=phi3 [PROMPT="春天来了，"] [RUN=poetry] [ARGS="temperature=0.7"]
MODEL       ?= phi3
# the web page and the OpenAI server listen on 127.0.0.1:PORT (default: 7860 for gradio-minigl, 8000 for serve)
PORT        ?=
# $(call script,generate|chat): MODEL's script, from the model table (shared/config/catalog.py); empty for a model
# the table does not know (`python -m shared.config.catalog generate <model>` says so in one line, exit code 2)
script       = $(shell $(PY) -m shared.config.catalog $(1) $(MODEL) 2>/dev/null)

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM   := false
export PYTHONUNBUFFERED         := 1
# user text goes to the scripts through the environment, byte for byte: no shell ever re-parses it
export SLM_PROMPT   = $(value PROMPT)
export SLM_QUESTION = $(value QUESTION)
export SLM_RUN      = $(value RUN)

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast train-phi3 train-mixtral estimate generate data-card bench clean-runs chat \
  phi2-clean phi2-tokenizer train-phi2 phi2-sft phi2-dpo-data phi2-dpo phi2-rag-data phi2-rag-sft rag rag-eval \
  bench-tokenizer nanogpt-data nanogpt-finetune-data train-nanogpt finetune-nanogpt \
  nanogpt-shakespeare-data train-nanogpt-shakespeare train-nanogpt-shakespeare-cpu

# make help prints each `target: ... ## text` line, the `## text` lines under it, the `##@ section` titles, then the
# model table (with the set-up's Python when there is one)
HELP_VARIABLES := EPOCHS MAX_STEPS LR BATCH RUN RESUME REPLACE ARGS RECIPE MODEL PROMPT PORT PUBLISH DATA
help: ## list the targets
	@echo "slm make targets (variables: $(HELP_VARIABLES)):"
	@awk 'BEGIN {FS = ":.*## "} /^##@/ {printf "\n%s\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_-]+:.*## / {printf "  make %-24s %s\n", $$1, $$2} \
	  /^## / {printf "  %29s %s\n", "", substr($$0, 4)}' $(MAKEFILE_LIST)
	@echo
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m shared.config.catalog

##@ Set-up and tests

setup: $(STAMP) ## create .venv and install the pinned dependencies + slm
## (editable; quick when nothing changed)

# what make setup imports at the end, to check the installation
OLD_PYTHON   = slm needs Python >= 3.11 (PYTHON=$(PYTHON) is older)
SETUP_CHECK := import torch, transformers, datasets, trl, accelerate, deepspeed, peft, gradio, faiss, langchain; \
  print('slm setup ok: torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', \
  torch.cuda.is_available())
$(STAMP): requirements.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "$(OLD_PYTHON)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_INDEX)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "$(SETUP_CHECK)"
	@touch $@

test: $(STAMP) ## run the test suite offline (HF_HUB_OFFLINE=1), ~10 min on 2 CPU cores
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the tests without the end-to-end training runs
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

##@ Phi-3 (train_phi3/)

train-phi3: $(STAMP) ## Phi-3 tiny poetry model (recipes/phi3/pretrain.yaml)
## -> runs/phi3/poetry/, train_phi3/logs/train_log.md
	$(call stage,train_phi3/train.py,recipes/phi3/pretrain.yaml,train_phi3/logs/train_log.md)

##@ Mixtral (train_mixtral/)

train-mixtral: $(STAMP) ## Mixtral MoE poetry (tiny config)
## RECIPE=recipes/mixtral/finetune-8x7b-zero3.yaml NPROC=8 for 8x7B
	$(call stage,train_mixtral/train.py,recipes/mixtral/pretrain.yaml,train_mixtral/logs/train_log.md)

NO_ESTIMATE  = error: no estimate for MODEL=$(MODEL); pass RECIPE=<recipe.yaml>
estimate: $(STAMP) ## per-GPU memory for ZeRO-2/3/offload on 1-16 GPUs, no download
## MODEL=mixtral-8x7b (or RECIPE=)
	@test -n "$(or $(ESTIMATE_$(MODEL)),$(RECIPE))" || { echo "$(NO_ESTIMATE)"; exit 2; }
	$(PY) -m shared.training.estimate $(or $(RECIPE),$(ESTIMATE_$(MODEL)))

##@ Phi-2 Chinese (train_phi2/)   PHI2_SIZE=gpu: the GPU-sized chain (recipes/phi2-gpu/, runs/phi2-gpu/, *-gpu_log.md)

P2      := $(if $(filter gpu,$(PHI2_SIZE)),phi2-gpu,phi2)
P2LOG    = train_phi2/logs/$(1)$(if $(filter gpu,$(PHI2_SIZE)),-gpu)_log.md

# Phi-2's stages (see "Stages" at the top). A missing pretrain or SFT is built from the bundled data even when the
# Hub is reachable (quick; `make train-phi2` / `make phi2-sft` for the full recipe).
STAGES                += $(addprefix $(P2)/,clean tokenizer pretrain sft dpo-data dpo rag-data rag-sft)
$(P2)/clean.make      := phi2-clean
$(P2)/tokenizer.make  := phi2-tokenizer
$(P2)/pretrain.make   := train-phi2
$(P2)/sft.make        := phi2-sft
$(P2)/dpo-data.make   := phi2-dpo-data
$(P2)/dpo.make        := phi2-dpo
$(P2)/rag-data.make   := phi2-rag-data
$(P2)/rag-sft.make    := phi2-rag-sft

$(P2)/tokenizer.needs := $(P2)/clean
$(P2)/pretrain.needs  := $(P2)/clean $(P2)/tokenizer
$(P2)/sft.needs       := $(P2)/pretrain
$(P2)/dpo-data.needs  := $(P2)/sft
$(P2)/dpo.needs       := $(P2)/dpo-data
$(P2)/rag-data.needs  := $(P2)/sft
$(P2)/rag-sft.needs   := $(P2)/rag-data

$(P2)/clean.build     := train_phi2/clean.py recipes/$(P2)/clean.yaml
$(P2)/tokenizer.build := train_phi2/tokenizer.py recipes/$(P2)/tokenizer.yaml
$(P2)/pretrain.build  := train_phi2/train.py recipes/$(P2)/pretrain.yaml data.dataset=null
$(P2)/sft.build       := train_phi2/train.py recipes/$(P2)/sft.yaml data.dataset=null
$(P2)/dpo-data.build  := train_phi2/dpo_data.py recipes/$(P2)/dpo-data.yaml data.dataset=null
$(P2)/dpo.build       := train_phi2/train.py recipes/$(P2)/dpo.yaml
$(P2)/rag-data.build  := train_phi2/rag_data.py recipes/$(P2)/rag-data.yaml
$(P2)/rag-sft.build   := train_phi2/train.py recipes/$(P2)/rag-sft.yaml

phi2-clean: $(STAMP) ## cleaning: full stops, repeated punctuation, width, whitespace, short/duplicate/
## near-duplicate records
	$(PY) train_phi2/clean.py $(or $(RECIPE),recipes/$(P2)/clean.yaml) $(OVERRIDES) $(call publish,$(call P2LOG,clean))

phi2-tokenizer: $(STAMP) | $(call needs,$(P2)/tokenizer) ## byte-level BPE on the cleaned text
## (ARGS="stage.kind=char": characters)
	$(PY) train_phi2/tokenizer.py $(or $(RECIPE),recipes/$(P2)/tokenizer.yaml) $(OVERRIDES) \
	  $(call publish,$(call P2LOG,tokenizer))

train-phi2: $(STAMP) | $(call needs,$(P2)/pretrain) ## pretrain PhiForCausalLM
## (CPU-sized; the 0.2B config in the recipe)
	$(call stage,train_phi2/train.py,recipes/$(P2)/pretrain.yaml,$(call P2LOG,train))

phi2-sft: $(STAMP) | $(call needs,$(P2)/sft) ## SFT from the pretrained model,
## answer-only loss (##提问: / ##回答:)
	$(call stage,train_phi2/train.py,recipes/$(P2)/sft.yaml,$(call P2LOG,sft))

phi2-dpo-data: $(STAMP) | $(call needs,$(P2)/dpo-data) ## DPO pairs: rejected answers from an early SFT
## checkpoint, similarity filter
	$(PY) train_phi2/dpo_data.py $(or $(RECIPE),recipes/$(P2)/dpo-data.yaml) $(OVERRIDES) \
	  $(call publish,$(call P2LOG,dpo-data))

phi2-dpo: $(STAMP) | $(call needs,$(P2)/dpo) ## DPO (TRL) from the SFT model; rewards, margins, accuracies in the log
	$(call stage,train_phi2/train.py,recipes/$(P2)/dpo.yaml,$(call P2LOG,dpo))

phi2-rag-data: $(STAMP) | $(call needs,$(P2)/rag-data) ## reading-comprehension data: the demo's prompts
## for qa.jsonl (train) + facts, quoted answers
	$(PY) train_phi2/rag_data.py $(or $(RECIPE),recipes/$(P2)/rag-data.yaml) $(OVERRIDES) \
	  $(call publish,$(call P2LOG,rag-data))

phi2-rag-sft: $(STAMP) | $(call needs,$(P2)/rag-sft) ## reading comprehension: SFT on the demo's own
## prompts, the RAG answerer
	$(call stage,train_phi2/train.py,recipes/$(P2)/rag-sft.yaml,$(call P2LOG,rag-sft))

rag: $(STAMP) | $(call done,$(P2)/rag-sft) ## RAG demo: FAISS + BM25 over the 苇川 encyclopedia/news,
## answered by Phi-2 [QUESTION=...] [DOCS=...]
	$(PY) train_phi2/rag.py $(or $(RECIPE),recipes/$(P2)/rag.yaml) $(if $(DOCS),stage.docs=$(DOCS)) $(OVERRIDES)

rag-eval: $(STAMP) | $(call done,$(P2)/sft $(P2)/rag-sft) ## retrieval recall@k + answers' key recall and
## Rouge-L, SFT vs RAG-SFT -> train_phi2/logs/rag_log.md
	$(PY) train_phi2/rag.py $(or $(RECIPE),recipes/$(P2)/rag.yaml) $(if $(DOCS),stage.docs=$(DOCS)) $(OVERRIDES) \
	  --eval $(call publish,$(call P2LOG,rag))

bench-tokenizer: $(STAMP) ## tokenizer training time + peak RSS, both kinds, on SIZE= generated Chinese
## characters (100M, 1B)
	$(PY) -m bench.tokenizer --chars $(or $(SIZE),100M) --publish train_phi2/logs/tokenizer_bench.md $(ARGS)

##@ nanoGPT (train_nanogpt/)

# nanoGPT's stages (see "Stages" at the top)
NANOGPT_DATA := train_nanogpt/create_first_training_data.py
SHAKESPEARE  := $(if $(DATA),data.path=$(DATA))
SHAKESPEARE_LOG     := train_nanogpt/logs/shakespeare-char_log.md
SHAKESPEARE_CPU_LOG := train_nanogpt/logs/shakespeare-char-cpu_log.md
STAGES                              += $(addprefix nanogpt/,data finetune-data pretrain finetune)
STAGES                              += $(addprefix nanogpt/,shakespeare-char-data shakespeare-char)
STAGES                              += nanogpt/shakespeare-char-cpu
nanogpt/data.make                   := nanogpt-data
nanogpt/finetune-data.make          := nanogpt-finetune-data
nanogpt/pretrain.make               := train-nanogpt
nanogpt/finetune.make               := finetune-nanogpt
nanogpt/shakespeare-char-data.make  := nanogpt-shakespeare-data
nanogpt/shakespeare-char.make       := train-nanogpt-shakespeare
nanogpt/shakespeare-char-cpu.make   := train-nanogpt-shakespeare-cpu

nanogpt/finetune-data.needs         := nanogpt/data
nanogpt/pretrain.needs              := nanogpt/data
nanogpt/finetune.needs              := nanogpt/pretrain nanogpt/finetune-data
nanogpt/shakespeare-char.needs      := nanogpt/shakespeare-char-data
nanogpt/shakespeare-char-cpu.needs  := nanogpt/shakespeare-char-data

nanogpt/data.build                  := $(NANOGPT_DATA) recipes/nanogpt/data.yaml
nanogpt/finetune-data.build         := $(NANOGPT_DATA) recipes/nanogpt/finetune-data.yaml
nanogpt/pretrain.build              := train_nanogpt/train.py recipes/nanogpt/pretrain.yaml
nanogpt/finetune.build              := train_nanogpt/train.py recipes/nanogpt/finetune.yaml
nanogpt/shakespeare-char-data.build := $(NANOGPT_DATA) recipes/nanogpt/data-shakespeare-char.yaml $(SHAKESPEARE)
nanogpt/shakespeare-char.build      := train_nanogpt/train.py recipes/nanogpt/pretrain-shakespeare-char.yaml
nanogpt/shakespeare-char-cpu.build  := train_nanogpt/train.py recipes/nanogpt/pretrain-shakespeare-char-cpu.yaml

nanogpt-data: $(STAMP) ## instruction + chat sets -> chat format -> train.bin/val.bin (runs/nanogpt/data)
	$(PY) $(NANOGPT_DATA) $(or $(RECIPE),recipes/nanogpt/data.yaml) $(OVERRIDES) \
	  $(call publish,train_nanogpt/logs/data_log.md)

nanogpt-finetune-data: $(STAMP) | $(call needs,nanogpt/finetune-data) ## conversations -> bins
## with the pretraining tokenizer
	$(PY) $(NANOGPT_DATA) $(or $(RECIPE),recipes/nanogpt/finetune-data.yaml) \
	  $(OVERRIDES) $(call publish,train_nanogpt/logs/finetune-data_log.md)

train-nanogpt: $(STAMP) | $(call needs,nanogpt/pretrain) ## pretrain our GPT on the bins
## (CPU-sized; the 124M config in the recipe)
	$(call stage,train_nanogpt/train.py,recipes/nanogpt/pretrain.yaml,train_nanogpt/logs/train_log.md)

finetune-nanogpt: $(STAMP) | $(call needs,nanogpt/finetune) ## finetune the pretrained GPT on conversations
	$(call stage,train_nanogpt/train.py,recipes/nanogpt/finetune.yaml,train_nanogpt/logs/finetune_log.md)

nanogpt-shakespeare-data: $(STAMP) ## nanoGPT's shakespeare_char: a text file -> char-level bins
## (DATA=input.txt; none: bundled English)
	$(PY) $(NANOGPT_DATA) $(or $(RECIPE),recipes/nanogpt/data-shakespeare-char.yaml) \
	  $(SHAKESPEARE) $(OVERRIDES) $(call publish,train_nanogpt/logs/shakespeare-char-data_log.md)

train-nanogpt-shakespeare: $(STAMP) | $(call needs,nanogpt/shakespeare-char) ## nanoGPT's shakespeare-char
## model, its GPU settings (6 x 6 x 384, block 256)
	$(call stage,train_nanogpt/train.py,recipes/nanogpt/pretrain-shakespeare-char.yaml,$(SHAKESPEARE_LOG))

train-nanogpt-shakespeare-cpu: $(STAMP) | $(call needs,nanogpt/shakespeare-char-cpu) ## the same at
## nanoGPT's CPU settings (4 x 4 x 128, block 64, batch 12, 2,000 iterations)
	$(call stage,train_nanogpt/train.py,recipes/nanogpt/pretrain-shakespeare-char-cpu.yaml,$(SHAKESPEARE_CPU_LOG))

##@ MiniGLM (minigl/)

.PHONY: minigl-data train-minigl finetune-minigl train-minigl-lstm eval-minigl gradio-minigl

# MiniGLM's stages (see "Stages" at the top); make minigl-data builds the first three
STAGES                       += $(addprefix minigl/,jynews zhihu data pretrain finetune lstm lstm-finetune eval)
minigl/jynews.make           := minigl-data
minigl/zhihu.make            := minigl-data
minigl/data.make             := minigl-data
minigl/pretrain.make         := train-minigl
minigl/finetune.make         := finetune-minigl
minigl/lstm.make             := train-minigl-lstm
minigl/lstm-finetune.make    := train-minigl-lstm
minigl/eval.make             := eval-minigl

minigl/data.needs            := minigl/jynews minigl/zhihu
minigl/pretrain.needs        := minigl/data
minigl/finetune.needs        := minigl/pretrain
minigl/lstm.needs            := minigl/data
minigl/lstm-finetune.needs   := minigl/lstm
minigl/eval.needs            := minigl/finetune minigl/lstm-finetune

minigl/jynews.build          := minigl/prepare_jynews.py recipes/minigl/jynews.yaml
minigl/zhihu.build           := minigl/prepare_zhihudata.py recipes/minigl/zhihu.yaml
minigl/data.build            := minigl/prepare.py recipes/minigl/data.yaml
minigl/pretrain.build        := minigl/train.py recipes/minigl/pretrain.yaml
minigl/finetune.build        := minigl/train.py recipes/minigl/finetune.yaml
minigl/lstm.build            := minigl/lstm_model.py recipes/minigl/lstm.yaml
minigl/lstm-finetune.build   := minigl/lstm_model.py recipes/minigl/lstm-finetune.yaml
minigl/eval.build            := minigl/evaluations.py recipes/minigl/eval.yaml

minigl-data: $(STAMP) ## news/encyclopedia, Zhihu, novella -> cleaned JSONL -> 90/10 token bins + QA
## train/eval files
	$(PY) minigl/prepare_jynews.py recipes/minigl/jynews.yaml $(OVERRIDES) $(call publish,minigl/logs/jynews_log.md)
	$(PY) minigl/prepare_zhihudata.py recipes/minigl/zhihu.yaml $(OVERRIDES) $(call publish,minigl/logs/zhihu_log.md)
	$(PY) minigl/prepare.py recipes/minigl/data.yaml $(OVERRIDES) $(call publish,minigl/logs/data_log.md)

train-minigl: $(STAMP) | $(call needs,minigl/pretrain) ## pretrain our GPT on the bins
## (CPU-sized; the document-scale config in the recipe)
	$(call stage,minigl/train.py,recipes/minigl/pretrain.yaml,minigl/logs/pretrain_log.md)

finetune-minigl: $(STAMP) | $(call needs,minigl/finetune) ## QA finetune ("Question: ... Answer:"),
## loss on the answer only
	$(call stage,minigl/train.py,recipes/minigl/finetune.yaml,minigl/logs/finetune_log.md)

train-minigl-lstm: $(STAMP) | $(call needs,minigl/lstm) ## the LSTM baseline: pretrain on the same
## bins, then the same QA finetune
	$(call stage,minigl/lstm_model.py,recipes/minigl/lstm.yaml,minigl/logs/lstm_log.md)
	$(LAUNCH) minigl/lstm_model.py recipes/minigl/lstm-finetune.yaml $(OVERRIDES) \
	  $(call publish,minigl/logs/lstm-finetune_log.md)

eval-minigl: $(STAMP) | $(call needs,minigl/eval) ## transformer vs LSTM: perplexity, Rouge-L, key
## recall, plots -> minigl/logs/train_log.md
	$(PY) minigl/evaluations.py $(or $(RECIPE),recipes/minigl/eval.yaml) $(OVERRIDES) \
	  $(call publish,minigl/logs/train_log.md)

gradio-minigl: $(STAMP) ## web page for a trained MiniGLM run [RUN=finetune] [PORT=7860]
	$(PY) minigl/sample_gradio.py $(if $(PORT),--port $(PORT)) $(ARGS)

##@ Tools   MODEL=<name>: the models at the end of this list

generate: $(STAMP) ## generate with a trained model: MODEL=<name> [PROMPT=...] [RUN=...]
	@$(PY) -m shared.config.catalog generate $(MODEL) >/dev/null
	$(PY) $(call script,generate) $(ARGS)

chat: $(STAMP) ## chat with a chat model: MODEL=<name> [RUN=...] [PROMPT=... one answer]
	@$(PY) -m shared.config.catalog chat $(MODEL) >/dev/null
	$(PY) $(call script,chat) $(ARGS)

serve: $(STAMP) ## OpenAI-compatible server (transformers serve) on 127.0.0.1:PORT
## MODEL=<name> (or a folder under runs/) [RUN=...] [PORT=8000]
	$(PY) -m shared.inference.serve $(MODEL) --port $(or $(PORT),8000) $(ARGS)

export: $(STAMP) ## a folder that loads without slm (GPT -> GPT2LMHeadModel, LSTM + its code,
## LoRA merged): MODEL=<name> (or a folder under runs/) [RUN=...] [OUT=...]
	$(PY) -m shared.inference.export $(MODEL) $(if $(OUT),--out $(OUT)) $(ARGS)

.PHONY: bench-quick gpu-check compare serve export

bench: $(STAMP) ## the performance benchmarks (packing, engine overhead, shakespeare-char, generation,
## MoE + router, bins, serving, throughput; ~45 min) -> bench/results.md
	nice -n $(or $(NICE),10) $(PY) -m bench.suite $(RECIPE) $(ARGS)

bench-quick: $(STAMP) ## every section of make bench at a smaller size (~12 min on 2 CPU cores)
## -> bench/results-quick.md
	nice -n $(or $(NICE),10) $(PY) -m bench.suite --quick $(RECIPE) $(ARGS)

compare: $(STAMP) | $(call done,minigl/data) ## every architecture from scratch on the same Chinese
## bins and budget [BUDGET=300k] [ONLY=phi3,minigl-lstm,...] -> bench/compare.md
	nice -n $(or $(NICE),10) $(PY) -m bench.compare --budget $(or $(BUDGET),300k) $(if $(ONLY),--only $(ONLY)) $(ARGS)

gpu-check: $(STAMP) ## on an NVIDIA GPU: each recipe's model in bf16, compile off/on: tokens/s, MFU,
## memory (< 8 min) -> bench/gpu_check.md
	$(PY) bench/gpu_check.py $(ARGS)

data-card: $(STAMP) ## regenerate data/README.md's data card (counts, sizes, sha256) from the files
	$(PY) data/datacard.py

clean-runs: ## delete runs/ (checkpoints and trained models)
	rm -rf runs

# the chain rules: one per stage, from its .make, .needs and .build (see "Stages" at the top)
$(foreach stage,$(STAGES),$(eval $(call chain_rule,$(stage))))
