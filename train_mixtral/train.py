"""Mixtral mixture-of-experts poetry model, trained from scratch (document: train-mixtral).

    make train-mixtral                   # = python train_mixtral/train.py recipes/mixtral/pretrain.yaml
    make train-mixtral RECIPE=recipes/mixtral/finetune-8x7b-zero3.yaml NPROC=8     # fine-tune Mixtral-8x7B, DeepSpeed

Same path as Phi-3, plus what is special about a mixture of experts: the router's load-balancing (auxiliary) loss
is part of the training loss and is logged apart from the LM loss (MoETrainer), and after training the log shows
how many tokens each expert receives in every layer, so a collapsed router is visible.
"""
from shared import cli, models, moe, train
from shared.errors import run_main


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/mixtral/pretrain.yaml", __doc__.splitlines()[0])
    args = train.training_arguments(recipe)  # first: under ZeRO-3 they shard the model as it is built
    config = models.model_config(recipe, output_router_logits=True)
    data = train.load_data(recipe)
    model = models.build_model(recipe, config, data.tokenizer)
    print(f"Mixtral parameters: {models.describe_parameters(model)}  "
          f"({config.num_local_experts} experts, {config.num_experts_per_tok} per token, vocab {config.vocab_size})")
    train.train(
        recipe, model, data, args=args, title="Mixtral MoE poetry model: train log", trainer_cls=moe.MoETrainer,
        facts={"experts": f"{config.num_local_experts} per layer, top-{config.num_experts_per_tok}, "
                          f"router_aux_loss_coef {config.router_aux_loss_coef}"},
        extra_sections=lambda m: [("Expert load after training (validation tokens)",
                                   moe.expert_load_markdown(moe.expert_load(m, data.eval or data.train)))],
        publish_log=opts.publish_log)


if __name__ == "__main__":
    run_main(main)
