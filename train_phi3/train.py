"""Phi-3 tiny poetry model, trained from scratch (document: train-phi3).

    make train-phi3                      # = python train_phi3/train.py recipes/phi3/pretrain.yaml
    python train_phi3/train.py recipes/phi3/pretrain.yaml training.num_train_epochs=1

Nothing here is special to Phi-3 beyond its recipe: transformers' Phi3ForCausalLM from phi3_config.json (6 layers,
512 wide, 256 positions) with the tokenizer's vocabulary; poems -> texts -> tokenizer -> packed 128-token blocks;
the shared Trainer path (`shared/training/train.py`: checkpoints, resume, evaluation, samples from the recipe's generation
preset, train_log.md).
"""
from shared.training import train
from shared.config.errors import run_main

if __name__ == "__main__":
    run_main(lambda argv: train.main(argv, "recipes/phi3/pretrain.yaml", "Phi-3 tiny poetry model"))
