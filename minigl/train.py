"""MiniGLM training: pretrain on the token bins, or finetune on the QA pairs with the loss on the answer only; the
same script for the GPT (shared/gpt.py) and the LSTM (shared/lstm.py), the recipe says which.

    make train-minigl       # = python minigl/train.py recipes/minigl/pretrain.yaml   (GPT, random windows of the bins)
    make finetune-minigl    # = python minigl/train.py recipes/minigl/finetune.yaml   (init_from the pretrained GPT)
    make train-minigl-lstm  # = python minigl/lstm_model.py, then the LSTM's QA finetune (recipes/minigl/lstm*.yaml)

Finetuning is `trainer: sft` with data.templates {prompt: "Question: ...\\nAnswer:\\n", completion: "{Answer}"}:
TRL's SFTTrainer masks the prompt, so only the answer and its EOS carry loss. Both go through shared/train.py; this
script adds what the evaluation compares: `<run>/train_summary.json` (training time, tokens seen, steps).
"""
from __future__ import annotations

import json
import os

from shared import models, train
from shared.errors import run_main


def main(argv: list[str], default_recipe: str = "recipes/minigl/pretrain.yaml", title: str = "MiniGLM") -> None:
    trainer = train.main(argv, default_recipe, title)
    if not trainer.is_world_process_zero():
        return
    summary = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    out = os.path.join(trainer.args.output_dir, "train_summary.json")
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"train_runtime_s": summary.get("train_runtime"), "steps": trainer.state.global_step,
                   "tokens_seen": trainer.state.num_input_tokens_seen,
                   "parameters": models.count_parameters(trainer.model)["total"]}, f, indent=1)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    run_main(main)
