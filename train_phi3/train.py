"""Phi-3 tiny poetry model, trained from scratch (document: train-phi3).

    make train-phi3                      # = python train_phi3/train.py recipes/phi3/pretrain.yaml
    python train_phi3/train.py recipes/phi3/pretrain.yaml training.num_train_epochs=1

1. the recipe says what to run; 2. a Phi3ForCausalLM config from phi3_config.json, checked; 3. poems -> texts ->
tokenizer -> 128-token blocks; 4. the model with the tokenizer's vocabulary; 5. the shared Trainer path
(checkpoints, resume, eval, samples from the generation preset, train_log.md).
"""
from shared import cli, models, train
from shared.errors import run_main


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/phi3/pretrain.yaml", __doc__.splitlines()[0])
    args = train.training_arguments(recipe)  # first: under ZeRO-3 they shard the model as it is built
    config = models.model_config(recipe)
    data = train.load_data(recipe)
    model = models.build_model(recipe, config, data.tokenizer)
    print(f"Phi-3 parameters: {models.describe_parameters(model)}  (vocab {config.vocab_size})")
    train.train(recipe, model, data, args=args, title="Phi-3 tiny poetry model: train log",
                publish_log=opts.publish_log)


if __name__ == "__main__":
    run_main(main)
