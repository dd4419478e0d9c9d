"""nanoGPT (document: "Training an SLM", a modified nanoGPT): pretrain our GPT on the chat-formatted token bins, or
finetune a pretrained run; the same script, two recipes.

    make train-nanogpt        # = python train_nanogpt/train.py recipes/nanogpt/pretrain.yaml   (CPU-sized GPT)
    make finetune-nanogpt     # = python train_nanogpt/train.py recipes/nanogpt/finetune.yaml   (init_from pretrain)
    make train-nanogpt ARGS="model.config=train_nanogpt/gpt_124m.json data.block_size=1024"   # the document's 124M

1. the recipe; 2. the GPT config (shared/gpt.py: wte, wpe, pre-LayerNorm blocks, SDPA, tied lm_head), checked
against the block size; 3. random windows of the bins; 4. the model (random with nanoGPT's init, or the pretrained
weights with the recipe's dropout); 5. the shared Trainer path with nanoGPT's AdamW groups (no weight decay on
norms, biases and embeddings), warmup + cosine to lr/10, gradient clipping; checkpoints, resume, train_log.md.
"""
from shared import cli, models, train
from shared.errors import run_main


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/nanogpt/pretrain.yaml", __doc__.splitlines()[0])
    args = train.training_arguments(recipe)
    config = models.model_config(recipe)
    data = train.load_data(recipe)
    model = models.build_model(recipe, config, data.tokenizer)
    counted = f"{model.num_parameters_nanogpt():,} ({model.num_parameters_nanogpt() / 1e6:.2f}M) without wpe"
    print(f"GPT parameters: {counted}; {models.describe_parameters(model)}")
    train.train(recipe, model, data, args=args, title=f"nanoGPT {recipe.run.name}: train log",
                trainer_cls=train.NoDecayOnEmbeddingsTrainer, facts={"parameters as nanoGPT counts them": counted},
                publish_log=opts.publish_log)


if __name__ == "__main__":
    run_main(main)
