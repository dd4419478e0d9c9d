"""Phi-3 tiny poetry model, trained from scratch (document: train-phi3).

    make train-phi3                      # = python train_phi3/train.py recipes/phi3/poetry.yaml
    python train_phi3/train.py recipes/phi3/poetry.yaml training.num_train_epochs=1

1. the recipe says what to run; 2. poems -> texts -> tokenizer -> 128-token blocks; 3. a Phi3ForCausalLM from
phi3_config.json with the tokenizer's vocabulary; 4. the shared Trainer loop (checkpoints, resume, eval, log);
5. sample poems with the generation preset into train_log.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import cli, generate, train
from shared.errors import run_main


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/phi3/poetry.yaml", __doc__.splitlines()[0])
    args = train.training_arguments(recipe)  # first: under ZeRO-3 they shard the model as it is built
    data = train.lm_data(recipe)
    config = train.model_config(recipe, data.tokenizer)
    model = train.build_model(recipe, config)
    print(f"Phi-3 parameters: {train.describe_parameters(model)}  (vocab {config.vocab_size})")
    train.train(
        recipe, model, data.tokenizer, data.train, data.eval, args=args,
        title="Phi-3 tiny poetry model: train log",
        facts={"data": data.data.describe(), "data split": "; ".join(data.data.notes),
               "tokenizer": data.tokenizer_source.describe()},
        samples=lambda m, tok: generate.samples_markdown(m, tok, recipe.generation),
        publish_log=opts.publish_log,
    )


if __name__ == "__main__":
    run_main(main)
