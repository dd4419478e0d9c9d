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
publish = $(if $(or $(filter no,$(PUBLISH)),$(RECIPE)),,--publish-log $(1)$(if $(filter yes,$(PUBLISH)), --publish-anyway))
# $(call stage,<script>,<default recipe>,<published log>): one stage, under the chosen launcher, with the overrides
stage = $(LAUNCH) $(1) $(or $(RECIPE),$(2)) $(OVERRIDES) $(call publish,$(3))
# A stage's completed output is <run>/final/stage.json (written last). Later stages depend on it as a file target
# (order-only: an existing result is reused, never retrained because of a timestamp); a missing one is built with
# its recipe's defaults (no overrides: ARGS=... meant for the late stage do not leak into it).
DONE        := final/stage.json
# Its predecessors ($(5)) are made only when the stage itself must be built: a finished stage is reused even if the
# runs it was built from were deleted since.
define chain
	@echo ">> $(1) is missing: building it first with $(2) and its recipe's defaults (make $(3) for the full stage)"
	$(if $(5),@$(MAKE) --no-print-directory $(5))
	$(PY) $(2) $(4)
endef

# make estimate MODEL=mixtral-8x7b: memory per GPU of these recipes under ZeRO-2 / ZeRO-3 / offload
ESTIMATE_mixtral-8x7b := recipes/mixtral/finetune-8x7b-zero3.yaml recipes/mixtral/finetune-8x7b-lora.yaml

# generation: make generate MODEL=phi3 [PROMPT="春天来了，"] [RUN=poetry] [ARGS="temperature=0.7"]
MODEL       ?= phi3
PORT        ?=
MODEL_DIR_phi3    := train_phi3
MODEL_DIR_mixtral := train_mixtral
MODEL_DIR_phi2    := train_phi2
MODEL_DIR_nanogpt := train_nanogpt
MODEL_DIR_minigl  := minigl
MODEL_DIR   = $(MODEL_DIR_$(MODEL))
# MiniGLM's generation script is sample.py (the document's name)
GENERATE    = $(if $(filter minigl,$(MODEL)),minigl/sample.py,$(MODEL_DIR)/generate.py)

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM   := false
export PYTHONUNBUFFERED         := 1
# user text goes to the scripts through the environment, byte for byte: no shell ever re-parses it
export SLM_PROMPT   = $(value PROMPT)
export SLM_QUESTION = $(value QUESTION)
export SLM_RUN      = $(value RUN)

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast train-phi3 train-mixtral estimate generate data-card bench clean-runs chat \
  phi2-clean phi2-tokenizer train-phi2 phi2-sft phi2-dpo-data phi2-dpo phi2-rag-data phi2-rag-sft rag rag-eval bench-tokenizer nanogpt-data nanogpt-finetune-data train-nanogpt finetune-nanogpt \
  nanogpt-shakespeare-data train-nanogpt-shakespeare train-nanogpt-shakespeare-cpu

help: ## list the targets
	@echo "slm make targets (variables: EPOCHS MAX_STEPS LR BATCH RUN RESUME REPLACE ARGS RECIPE MODEL PROMPT PORT PUBLISH DATA):"
	@awk 'BEGIN {FS = ":.*## "} /^##@/ {printf "\n%s\n", substr($$0, 5)} /^[a-zA-Z0-9_-]+:.*## / {printf "  make %-24s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Set-up and tests

setup: $(STAMP) ## create .venv and install the pinned dependencies + slm (editable; quick when nothing changed)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "slm needs Python >= 3.11 (PYTHON=$(PYTHON) is older)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_INDEX)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, transformers, datasets, trl, accelerate, deepspeed, peft, gradio, faiss, langchain; print('slm setup ok: torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
	@touch $@

test: $(STAMP) ## run the test suite offline (HF_HUB_OFFLINE=1), ~10 min on 2 CPU cores
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the tests without the end-to-end training runs
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

##@ Phi-3 (train_phi3/)

train-phi3: $(STAMP) ## Phi-3 tiny poetry model (recipes/phi3/pretrain.yaml) -> runs/phi3/poetry/, train_phi3/train_log.md
	$(call stage,train_phi3/train.py,recipes/phi3/pretrain.yaml,train_phi3/train_log.md)

##@ Mixtral (train_mixtral/)

train-mixtral: $(STAMP) ## Mixtral MoE poetry (tiny config); RECIPE=recipes/mixtral/finetune-8x7b-zero3.yaml NPROC=8 for 8x7B
	$(call stage,train_mixtral/train.py,recipes/mixtral/pretrain.yaml,train_mixtral/train_log.md)

estimate: $(STAMP) ## per-GPU memory for ZeRO-2/3/offload on 1-16 GPUs, no download: MODEL=mixtral-8x7b (or RECIPE=)
	@test -n "$(or $(ESTIMATE_$(MODEL)),$(RECIPE))" || { echo "error: no estimate for MODEL=$(MODEL); pass RECIPE=<recipe.yaml>"; exit 2; }
	$(PY) -m shared.training.estimate $(or $(RECIPE),$(ESTIMATE_$(MODEL)))

##@ Phi-2 Chinese (train_phi2/)   PHI2_SIZE=gpu: the GPU-sized chain (recipes/phi2-gpu/, runs/phi2-gpu/, *-gpu_log.md)

P2      := $(if $(filter gpu,$(PHI2_SIZE)),phi2-gpu,phi2)
P2LOG    = train_phi2/$(1)$(if $(filter gpu,$(PHI2_SIZE)),-gpu)_log.md
P2RUN    = runs/$(P2)/$(1)/$(DONE)

phi2-clean: $(STAMP) ## cleaning: full stops, repeated punctuation, width, whitespace, short/duplicate/near-duplicate records
	$(PY) train_phi2/clean.py $(or $(RECIPE),recipes/$(P2)/clean.yaml) $(OVERRIDES) $(call publish,$(call P2LOG,clean))

phi2-tokenizer: $(STAMP) | $(call P2RUN,clean) ## byte-level BPE (or ARGS="stage.kind=char") on the cleaned text
	$(PY) train_phi2/tokenizer.py $(or $(RECIPE),recipes/$(P2)/tokenizer.yaml) $(OVERRIDES) \
	  $(call publish,$(call P2LOG,tokenizer))

train-phi2: $(STAMP) | $(call P2RUN,clean) $(call P2RUN,tokenizer) ## pretrain PhiForCausalLM (CPU-sized; the 0.2B config in the recipe)
	$(call stage,train_phi2/train.py,recipes/$(P2)/pretrain.yaml,$(call P2LOG,train))

phi2-sft: $(STAMP) | $(call P2RUN,pretrain) ## SFT, answer-only loss (##提问: / ##回答:), from the pretrained model
	$(call stage,train_phi2/train.py,recipes/$(P2)/sft.yaml,$(call P2LOG,sft))

phi2-dpo-data: $(STAMP) | $(call P2RUN,sft) ## DPO pairs: rejected answers from an early SFT checkpoint, similarity filter
	$(PY) train_phi2/dpo_data.py $(or $(RECIPE),recipes/$(P2)/dpo-data.yaml) $(OVERRIDES) \
	  $(call publish,$(call P2LOG,dpo-data))

phi2-dpo: $(STAMP) | $(call P2RUN,dpo-data) ## DPO (TRL) from the SFT model; rewards, margins, accuracies in the log
	$(call stage,train_phi2/train.py,recipes/$(P2)/dpo.yaml,$(call P2LOG,dpo))

phi2-rag-data: $(STAMP) | $(call P2RUN,sft) ## reading-comprehension data: the demo's prompts for qa.jsonl (train) + facts, quoted answers
	$(PY) train_phi2/rag_data.py $(or $(RECIPE),recipes/$(P2)/rag-data.yaml) $(OVERRIDES) \
	  $(call publish,$(call P2LOG,rag-data))

phi2-rag-sft: $(STAMP) | $(call P2RUN,rag-data) ## reading comprehension: SFT on the demo's own prompts, the RAG answerer
	$(call stage,train_phi2/train.py,recipes/$(P2)/rag-sft.yaml,$(call P2LOG,rag-sft))

rag: $(STAMP) | $(call P2RUN,rag-sft) ## RAG demo: FAISS + BM25 over the 苇川 encyclopedia/news, answered by Phi-2 [QUESTION=...] [DOCS=...]
	$(PY) train_phi2/rag.py $(or $(RECIPE),recipes/$(P2)/rag.yaml) $(if $(DOCS),stage.docs=$(DOCS)) $(OVERRIDES)

rag-eval: $(STAMP) | $(call P2RUN,sft) $(call P2RUN,rag-sft) ## retrieval recall@k + answers' key recall and Rouge-L, SFT vs RAG-SFT -> train_phi2/rag_log.md
	$(PY) train_phi2/rag.py $(or $(RECIPE),recipes/$(P2)/rag.yaml) $(if $(DOCS),stage.docs=$(DOCS)) $(OVERRIDES) \
	  --eval $(call publish,$(call P2LOG,rag))

bench-tokenizer: $(STAMP) ## tokenizer training time + peak RSS, both kinds, on SIZE= generated Chinese characters (100M, 1B)
	$(PY) -m bench.tokenizer --chars $(or $(SIZE),100M) --publish train_phi2/tokenizer_bench.md $(ARGS)

# A missing stage is built with its recipe's defaults; pretrain and SFT from the bundled data even when the Hub is
# reachable (quick; `make train-phi2` / `make phi2-sft` for the full recipe).
$(call P2RUN,clean): | $(STAMP)
	$(call chain,runs/$(P2)/clean,train_phi2/clean.py,phi2-clean,recipes/$(P2)/clean.yaml)

$(call P2RUN,tokenizer): | $(STAMP)
	$(call chain,runs/$(P2)/tokenizer,train_phi2/tokenizer.py,phi2-tokenizer,recipes/$(P2)/tokenizer.yaml,$(call P2RUN,clean))

$(call P2RUN,pretrain): | $(STAMP)
	$(call chain,runs/$(P2)/pretrain,train_phi2/train.py,train-phi2,recipes/$(P2)/pretrain.yaml data.dataset=null,$(call P2RUN,tokenizer))

$(call P2RUN,sft): | $(STAMP)
	$(call chain,runs/$(P2)/sft,train_phi2/train.py,phi2-sft,recipes/$(P2)/sft.yaml data.dataset=null,$(call P2RUN,pretrain))

$(call P2RUN,rag-data): | $(STAMP)
	$(call chain,runs/$(P2)/rag-data,train_phi2/rag_data.py,phi2-rag-data,recipes/$(P2)/rag-data.yaml,$(call P2RUN,sft))

$(call P2RUN,rag-sft): | $(STAMP)
	$(call chain,runs/$(P2)/rag-sft,train_phi2/train.py,phi2-rag-sft,recipes/$(P2)/rag-sft.yaml,$(call P2RUN,rag-data))

$(call P2RUN,dpo-data): | $(STAMP)
	$(call chain,runs/$(P2)/dpo-data,train_phi2/dpo_data.py,phi2-dpo-data,recipes/$(P2)/dpo-data.yaml data.dataset=null,$(call P2RUN,sft))

##@ nanoGPT (train_nanogpt/)

nanogpt-data: $(STAMP) ## instruction + chat sets -> chat format -> train.bin/val.bin (runs/nanogpt/data)
	$(PY) train_nanogpt/create_first_training_data.py $(or $(RECIPE),recipes/nanogpt/data.yaml) $(OVERRIDES) \
	  $(call publish,train_nanogpt/data_log.md)

nanogpt-finetune-data: $(STAMP) | runs/nanogpt/data/$(DONE) ## conversations -> bins with the pretraining tokenizer
	$(PY) train_nanogpt/create_first_training_data.py $(or $(RECIPE),recipes/nanogpt/finetune-data.yaml) \
	  $(OVERRIDES) $(call publish,train_nanogpt/finetune-data_log.md)

train-nanogpt: $(STAMP) | runs/nanogpt/data/$(DONE) ## pretrain our GPT on the bins (CPU-sized; the 124M config in the recipe)
	$(call stage,train_nanogpt/train.py,recipes/nanogpt/pretrain.yaml,train_nanogpt/train_log.md)

finetune-nanogpt: $(STAMP) | runs/nanogpt/pretrain/$(DONE) runs/nanogpt/finetune-data/$(DONE) ## finetune the pretrained GPT on conversations
	$(call stage,train_nanogpt/train.py,recipes/nanogpt/finetune.yaml,train_nanogpt/finetune_log.md)

nanogpt-shakespeare-data: $(STAMP) ## nanoGPT's shakespeare_char: a text file (DATA=input.txt; none: bundled English) -> char-level bins
	$(PY) train_nanogpt/create_first_training_data.py $(or $(RECIPE),recipes/nanogpt/data-shakespeare-char.yaml) \
	  $(if $(DATA),data.path=$(DATA)) $(OVERRIDES) $(call publish,train_nanogpt/shakespeare-char-data_log.md)

train-nanogpt-shakespeare: $(STAMP) | runs/nanogpt/shakespeare-char-data/$(DONE) ## nanoGPT's shakespeare-char model, its GPU settings (6 x 6 x 384, block 256)
	$(call stage,train_nanogpt/train.py,recipes/nanogpt/pretrain-shakespeare-char.yaml,train_nanogpt/shakespeare-char_log.md)

train-nanogpt-shakespeare-cpu: $(STAMP) | runs/nanogpt/shakespeare-char-data/$(DONE) ## the same at nanoGPT's CPU settings (4 x 4 x 128, block 64, batch 12, 2,000 iterations)
	$(call stage,train_nanogpt/train.py,recipes/nanogpt/pretrain-shakespeare-char-cpu.yaml,train_nanogpt/shakespeare-char-cpu_log.md)

runs/nanogpt/data/$(DONE): | $(STAMP)
	$(call chain,runs/nanogpt/data,train_nanogpt/create_first_training_data.py,nanogpt-data,recipes/nanogpt/data.yaml)

runs/nanogpt/finetune-data/$(DONE): | $(STAMP)
	$(call chain,runs/nanogpt/finetune-data,train_nanogpt/create_first_training_data.py,nanogpt-finetune-data,recipes/nanogpt/finetune-data.yaml,runs/nanogpt/data/$(DONE))

runs/nanogpt/shakespeare-char-data/$(DONE): | $(STAMP)
	$(call chain,runs/nanogpt/shakespeare-char-data,train_nanogpt/create_first_training_data.py,nanogpt-shakespeare-data,recipes/nanogpt/data-shakespeare-char.yaml $(if $(DATA),data.path=$(DATA)))

runs/nanogpt/pretrain/$(DONE): | $(STAMP)
	$(call chain,runs/nanogpt/pretrain,train_nanogpt/train.py,train-nanogpt,recipes/nanogpt/pretrain.yaml,runs/nanogpt/data/$(DONE))

##@ MiniGLM (minigl/)

.PHONY: minigl-data train-minigl finetune-minigl train-minigl-lstm eval-minigl gradio-minigl

minigl-data: $(STAMP) ## news/encyclopedia, Zhihu, novella -> cleaned JSONL -> 90/10 token bins + QA train/eval files
	$(PY) minigl/prepare_jynews.py recipes/minigl/jynews.yaml $(OVERRIDES) $(call publish,minigl/jynews_log.md)
	$(PY) minigl/prepare_zhihudata.py recipes/minigl/zhihu.yaml $(OVERRIDES) $(call publish,minigl/zhihu_log.md)
	$(PY) minigl/prepare.py recipes/minigl/data.yaml $(OVERRIDES) $(call publish,minigl/data_log.md)

train-minigl: $(STAMP) | runs/minigl/data/$(DONE) ## pretrain our GPT on the bins (CPU-sized; the document-scale config in the recipe)
	$(call stage,minigl/train.py,recipes/minigl/pretrain.yaml,minigl/pretrain_log.md)

finetune-minigl: $(STAMP) | runs/minigl/pretrain/$(DONE) ## QA finetune ("Question: ... Answer:"), loss on the answer only
	$(call stage,minigl/train.py,recipes/minigl/finetune.yaml,minigl/finetune_log.md)

train-minigl-lstm: $(STAMP) | runs/minigl/data/$(DONE) ## the LSTM baseline: pretrain on the same bins, then the same QA finetune
	$(call stage,minigl/lstm_model.py,recipes/minigl/lstm.yaml,minigl/lstm_log.md)
	$(LAUNCH) minigl/lstm_model.py recipes/minigl/lstm-finetune.yaml $(OVERRIDES) $(call publish,minigl/lstm-finetune_log.md)

eval-minigl: $(STAMP) | runs/minigl/finetune/$(DONE) runs/minigl/lstm-finetune/$(DONE) ## transformer vs LSTM: perplexity, Rouge-L, key recall, plots -> minigl/train_log.md
	$(PY) minigl/evaluations.py $(or $(RECIPE),recipes/minigl/eval.yaml) $(OVERRIDES) $(call publish,minigl/train_log.md)

gradio-minigl: $(STAMP) ## web page for a trained MiniGLM run [RUN=finetune] [PORT=7861]
	$(PY) minigl/sample_gradio.py $(if $(PORT),--port $(PORT)) $(ARGS)

runs/minigl/jynews/$(DONE): | $(STAMP)
	$(call chain,runs/minigl/jynews,minigl/prepare_jynews.py,minigl-data,recipes/minigl/jynews.yaml)

runs/minigl/zhihu/$(DONE): | $(STAMP)
	$(call chain,runs/minigl/zhihu,minigl/prepare_zhihudata.py,minigl-data,recipes/minigl/zhihu.yaml)

runs/minigl/data/$(DONE): | $(STAMP)
	$(call chain,runs/minigl/data,minigl/prepare.py,minigl-data,recipes/minigl/data.yaml,runs/minigl/jynews/$(DONE) runs/minigl/zhihu/$(DONE))

runs/minigl/pretrain/$(DONE): | $(STAMP)
	$(call chain,runs/minigl/pretrain,minigl/train.py,train-minigl,recipes/minigl/pretrain.yaml,runs/minigl/data/$(DONE))

runs/minigl/finetune/$(DONE): | $(STAMP)
	$(call chain,runs/minigl/finetune,minigl/train.py,finetune-minigl,recipes/minigl/finetune.yaml,runs/minigl/pretrain/$(DONE))

runs/minigl/lstm/$(DONE): | $(STAMP)
	$(call chain,runs/minigl/lstm,minigl/lstm_model.py,train-minigl-lstm,recipes/minigl/lstm.yaml,runs/minigl/data/$(DONE))

runs/minigl/lstm-finetune/$(DONE): | $(STAMP)
	$(call chain,runs/minigl/lstm-finetune,minigl/lstm_model.py,train-minigl-lstm,recipes/minigl/lstm-finetune.yaml,runs/minigl/lstm/$(DONE))

##@ Tools

generate: $(STAMP) ## generate with a trained model: MODEL=phi3|mixtral|phi2|nanogpt|minigl [PROMPT=...] [RUN=...]
	@test -n "$(MODEL_DIR)" -a -f "$(GENERATE)" || { echo "error: unknown MODEL=$(MODEL) (phi3, mixtral, phi2, nanogpt, minigl)"; exit 2; }
	$(PY) $(GENERATE) $(ARGS)

chat: $(STAMP) ## chat with a chat model: MODEL=nanogpt|phi2|minigl [RUN=...] [PROMPT=... one answer]
	@test -n "$(MODEL_DIR)" -a -f "$(MODEL_DIR)/chat.py" || { echo "error: MODEL=$(MODEL) has no chat (nanogpt, phi2, minigl)"; exit 2; }
	$(PY) $(MODEL_DIR)/chat.py $(ARGS)

serve: $(STAMP) ## OpenAI-compatible server (transformers serve) on 127.0.0.1:PORT: MODEL=phi2|nanogpt|minigl|phi3|mixtral [RUN=...] [PORT=8000]
	$(PY) -m shared.inference.serve $(MODEL) --port $(or $(PORT),8000) $(ARGS)

export: $(STAMP) ## a folder that loads without slm (GPT -> GPT2LMHeadModel, LSTM + its code, LoRA merged): MODEL=... [RUN=...] [OUT=...]
	$(PY) -m shared.inference.export $(MODEL) $(if $(OUT),--out $(OUT)) $(ARGS)

.PHONY: bench-quick gpu-check compare serve export

bench: $(STAMP) ## the performance benchmarks (packing, engine overhead, shakespeare-char, generation, MoE + router, bins, serving, throughput; ~45 min) -> bench/results.md
	nice -n $(or $(NICE),10) $(PY) -m bench.suite $(RECIPE) $(ARGS)

bench-quick: $(STAMP) ## every section of make bench at a smaller size (~12 min on 2 CPU cores) -> bench/results-quick.md
	nice -n $(or $(NICE),10) $(PY) -m bench.suite --quick $(RECIPE) $(ARGS)

compare: $(STAMP) | runs/minigl/data/$(DONE) ## every architecture from scratch on the same Chinese bins and budget [BUDGET=300k] [ONLY=phi3,lstm..] -> bench/compare.md
	nice -n $(or $(NICE),10) $(PY) -m bench.compare --budget $(or $(BUDGET),300k) $(if $(ONLY),--only $(ONLY)) $(ARGS)

gpu-check: $(STAMP) ## on an NVIDIA GPU: each recipe's model in bf16, compile off/on: tokens/s, MFU, memory (< 8 min) -> bench/gpu_check.md
	$(PY) bench/gpu_check.py $(ARGS)

data-card: $(STAMP) ## regenerate data/README.md's data card (counts, sizes, sha256) from the files
	$(PY) data/datacard.py

clean-runs: ## delete runs/ (checkpoints and trained models)
	rm -rf runs
