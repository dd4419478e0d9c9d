"""Mixtral mixture-of-experts poetry model, trained from scratch (document: train-mixtral).

    make train-mixtral                   # = python train_mixtral/train.py recipes/mixtral/poetry.yaml
    make train-mixtral RECIPE=recipes/mixtral/8x7b-zero3.yaml NPROC=8          # fine-tune Mixtral-8x7B, DeepSpeed

Same path as Phi-3, plus what is special about a mixture of experts: the router's load-balancing (auxiliary) loss
is part of the training loss and is logged apart from the LM loss (MoETrainer), and after training the log shows
how many tokens each expert receives in every layer, so a collapsed router is visible.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import cli, generate, moe, train
from shared.errors import run_main


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/mixtral/poetry.yaml", __doc__.splitlines()[0])
    args = train.training_arguments(recipe)  # first: under ZeRO-3 they shard the model as it is built
    data = train.lm_data(recipe)
    config = train.model_config(recipe, data.tokenizer, output_router_logits=True)
    model = train.build_model(recipe, config)
    model = train.apply_lora(recipe, model)
    print(f"Mixtral parameters: {train.describe_parameters(model)}  "
          f"({config.num_local_experts} experts, {config.num_experts_per_tok} per token, vocab {config.vocab_size})")
    train.train(
        recipe, model, data.tokenizer, data.train, data.eval, args=args,
        title="Mixtral MoE poetry model: train log", trainer_cls=moe.MoETrainer,
        facts={"data": data.data.describe(), "data split": "; ".join(data.data.notes),
               "tokenizer": data.tokenizer_source.describe(),
               "experts": f"{config.num_local_experts} per layer, top-{config.num_experts_per_tok}, "
                          f"router_aux_loss_coef {config.router_aux_loss_coef}"},
        extra_sections=lambda m: [("Expert load after training (validation tokens)",
                                   moe.expert_load_markdown(moe.expert_load(m, data.eval or data.train)))],
        samples=lambda m, tok: generate.samples_markdown(m, tok, recipe.generation),
        publish_log=opts.publish_log,
    )


if __name__ == "__main__":
    run_main(main)
