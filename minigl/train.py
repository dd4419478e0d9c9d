"""MiniGLM training: pretrain on the token bins, or finetune on the QA pairs with the loss on the answer only; the
same script for the GPT (shared/models/gpt.py) and the LSTM (shared/models/lstm.py), the recipe says which.

    make train-minigl       # = python minigl/train.py recipes/minigl/pretrain.yaml   (GPT, random windows of the bins)
    make finetune-minigl    # = python minigl/train.py recipes/minigl/finetune.yaml   (init_from the pretrained GPT)
    make train-minigl-lstm  # = python minigl/lstm_model.py, then the LSTM's QA finetune (recipes/minigl/lstm*.yaml)

Finetuning is `trainer: sft` with data.templates {prompt: "Question: ...\\nAnswer:\\n", completion: "{Answer}"}:
TRL's SFTTrainer masks the prompt, so only the answer and its EOS carry loss. Both go through shared/training/train.py, whose
final/train_summary.json (training time, tokens seen, parameters, peak memory) the evaluation reads.
"""
from shared.training import train
from shared.config.errors import run_main


def main(argv: list[str], default_recipe: str = "recipes/minigl/pretrain.yaml", title: str = "MiniGLM") -> None:
    train.main(argv, default_recipe, title)


if __name__ == "__main__":
    run_main(main)
