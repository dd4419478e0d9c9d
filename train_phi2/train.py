"""Phi-2 Chinese (document: "Phi2-Tiny-0.2B: train your own Phi2 small model from scratch"): the three training
stages, one script, the recipe's `trainer:` kind choosing the trainer.

    make train-phi2     # = python train_phi2/train.py recipes/phi2/pretrain.yaml  (Trainer: packed blocks, [EOS] per doc)
    make phi2-sft       # = ... recipes/phi2/sft.yaml        (trl.SFTTrainer: ##提问:/##回答: prompt, answer-only loss)
    make phi2-dpo       # = ... recipes/phi2/dpo.yaml        (trl.DPOTrainer: the SFT model, frozen, as reference)

The model is transformers' PhiForCausalLM (phi2_tiny.json on a CPU, phi2_0.2b.json the document's), its embedding
rows = len(tokenizer) rounded up to 64, SDPA attention (or flash_attention_2 on a GPU with flash-attn); SFT and DPO
start from the previous stage's final model (`model.init_from`). Everything else is `shared/training/train.py`.
"""
from shared.training import train
from shared.config.errors import run_main

if __name__ == "__main__":
    run_main(lambda argv: train.main(argv, "recipes/phi2/pretrain.yaml", "Phi-2 Chinese"))
