"""nanoGPT (document: "Training an SLM", a modified nanoGPT): pretrain our GPT on the chat-formatted token bins, or
finetune a pretrained run; the same script, two recipes.

    make train-nanogpt        # = python train_nanogpt/train.py recipes/nanogpt/pretrain.yaml   (CPU-sized GPT)
    make finetune-nanogpt     # = python train_nanogpt/train.py recipes/nanogpt/finetune.yaml   (init_from pretrain)
    make train-nanogpt ARGS="model.config=train_nanogpt/gpt_124m.json data.block_size=1024"   # the document's 124M

The model is shared/models/gpt.py (wte, wpe, pre-LayerNorm blocks with SDPA attention, tied lm_head, nanoGPT's init);
the data, random windows of the bins (`data.bins`); the rest is the shared Trainer path with nanoGPT's AdamW groups
(no weight decay on norms, biases and embeddings), warmup + cosine to lr/10 and gradient clipping from the recipe.
Finetuning starts from the pretrained weights (`model.init_from`) with the recipe's dropout.
"""
from shared.training import train
from shared.config.errors import run_main


def nanogpt_count(model) -> dict[str, str]:
    n = model.num_parameters_nanogpt()
    return {"parameters as nanoGPT counts them": f"{n:,} ({n / 1e6:.2f}M, without wpe)"}


if __name__ == "__main__":
    run_main(lambda argv: train.main(argv, "recipes/nanogpt/pretrain.yaml", "nanoGPT",
                                     trainer_cls=train.NoDecayOnEmbeddingsTrainer, facts=nanogpt_count))
