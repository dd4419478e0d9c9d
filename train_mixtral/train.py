"""Mixtral mixture-of-experts poetry model, trained from scratch (document: train-mixtral).

    make train-mixtral                   # = python train_mixtral/train.py recipes/mixtral/pretrain.yaml
    make train-mixtral RECIPE=recipes/mixtral/finetune-8x7b-zero3.yaml NPROC=8     # fine-tune Mixtral-8x7B, DeepSpeed

Same path as Phi-3 (`shared/training/train.py`), plus what is special about a mixture of experts: the router's
load-balancing (auxiliary) loss is part of the training loss and is logged apart from the LM loss (MoETrainer), and
after training the log shows how many tokens each expert receives in every layer, so a collapsed router is visible.
"""
from shared.models import moe
from shared.training.moe_trainer import MoETrainer
from shared.training import train
from shared.config.errors import run_main


def experts(model) -> dict[str, str]:
    c = model.config
    return {"experts": f"{c.num_local_experts} per layer, top-{c.num_experts_per_tok}, "
                       f"router_aux_loss_coef {c.router_aux_loss_coef}, balanced "
                       f"{'per layer' if getattr(c, 'router_aux_loss_per_layer', False) else 'over all layers pooled'}, "
                       f"router_jitter_noise {c.router_jitter_noise}; experts_implementation "
                       f"{model.get_experts_implementation().get('', '')}"}


def expert_load(model, data) -> list[tuple[str, str]]:
    counts = moe.expert_load(model, data.eval or data.train)
    return [("Expert load after training (validation tokens)", moe.expert_load_markdown(counts, top_k=model.config.num_experts_per_tok))]


if __name__ == "__main__":
    run_main(lambda argv: train.main(argv, "recipes/mixtral/pretrain.yaml", "Mixtral MoE poetry model",
                                     config_fixed={"output_router_logits": True}, trainer_cls=MoETrainer,
                                     facts=experts, extra_sections=expert_load))
