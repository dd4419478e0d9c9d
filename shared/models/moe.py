"""Mixture-of-experts helpers: the per-layer load-balancing loss and the expert-load counts (the Trainer that logs
the router loss apart is shared.training.moe_trainer.MoETrainer).

MoETrainer is the HF Trainer with two additions: the model's `aux_loss` (and the LM loss without it) is averaged
over each logging interval and logged next to `loss`, so train_log.md shows both; and, where the config says
`router_aux_loss_per_layer: true`, the load-balancing loss is taken layer by layer (transformers' own
`load_balancing_loss_func` on each layer's router logits, averaged) instead of once over all layers' routings pooled.
Pooled, as transformers computes it, the loss is already at its balanced minimum when every layer sends its tokens
to a *different* pair of experts: each layer may collapse onto two experts, which is what train_mixtral's reference
log showed (aux_loss 2.00 = balanced, layer 1's top-2 experts taking 87.6%); per layer that is penalised (bench/results.md,
section 5b, measures both). `expert_load` routes held-out
tokens through the model and counts, per layer, how many tokens each expert receives (top-k choices), which makes a
collapsed router (a few experts taking everything) visible.
"""
from __future__ import annotations

import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func


def per_layer_balance_loss(router_logits, experts: int, top_k: int, attention_mask=None) -> torch.Tensor:
    """transformers' Switch-style load-balancing loss of each layer on its own, averaged over the layers (the same
    scale: top_k when a layer's routing is even)."""
    return torch.stack([load_balancing_loss_func((layer,), experts, top_k, attention_mask)
                        for layer in router_logits]).mean()


@torch.no_grad()
def expert_load(model, dataset, batch_size: int = 8, max_batches: int = 8) -> torch.Tensor:
    """Tokens routed to each expert, per layer: a [layers, experts] tensor of counts over (part of) `dataset`
    (equal-length rows: packed blocks of a datasets.Dataset, or token-bin windows, read one item at a time)."""
    config = model.config
    counts = torch.zeros(config.num_hidden_layers, config.num_local_experts, dtype=torch.long)
    was_training = model.training
    model.eval()
    for start in range(0, min(len(dataset), batch_size * max_batches), batch_size):
        rows = [dataset[i]["input_ids"] for i in range(start, min(start + batch_size, len(dataset)))]
        ids = torch.stack([torch.as_tensor(r) for r in rows]).to(model.device)
        out = model(input_ids=ids, output_router_logits=True)
        for layer, logits in enumerate(out.router_logits):
            chosen = logits.float().topk(config.num_experts_per_tok, dim=-1).indices.flatten().cpu()
            counts[layer] += torch.bincount(chosen, minlength=config.num_local_experts)
    model.train(was_training)
    return counts


def router_health(counts: torch.Tensor, top_k: int = 2) -> dict:
    """Per-layer router health from one layer's expert counts (or shares): the busiest top_k experts' share of the
    routed choices, the max/min ratio, and a flag.

    "collapsed?" when an expert gets nothing, or when the top_k busiest experts take more than
    k/E + 2/3 * (1 - k/E) of the choices (75% for top-2 of 8: the other six then get under a third of their even
    share between them, so the layer computes like a k-expert MLP), or when max/min > 100 (the least-used expert sees
    under 1% of the busiest's tokens: its weights barely train). "skewed" when the top_k take more than twice their
    even share (50% for top-2 of 8) or max/min > 10. On the reference log (train_mixtral/logs/train_log.md) layers 1
    (top-2 87.6%) and 3 (max/min ~870) are collapsed, 0 and 2 skewed; the old rule (an expert at 0% or one over 50%)
    flagged none of them."""
    row = counts.double()
    experts = row.numel()
    share = 100 * row / row.sum().clamp(min=1e-12)
    top = share.topk(min(top_k, experts)).values.sum().item()
    ratio = (row.max() / row.min()).item() if row.min() > 0 else float("inf")
    even = 100 * min(top_k, experts) / experts
    if row.min() <= 0 or top > even + (100 - even) * 2 / 3 or ratio > 100:
        flag = f"collapsed? top-{top_k} {top:.1f}%, max/min {ratio:.0f}"
    elif top > 2 * even or ratio > 10:
        flag = "skewed"
    else:
        flag = ""
    return {"top_k_share": top, "max_min": ratio, "flag": flag}


def expert_load_markdown(counts: torch.Tensor, top_k: int = 2) -> str:
    """A table of each expert's share of routed tokens per layer; flags collapsed or skewed layers (router_health)."""
    layers, experts = counts.shape
    header = "| layer | " + " | ".join(f"e{e}" for e in range(experts)) + f" | top-{top_k} | max/min | |"
    lines = [f"Share of routed tokens per expert (top-k choices; an even split is {100 / experts:.1f}% each). "
             f"Flag: collapsed? when the top-{top_k} take > {100 * top_k / experts + (100 - 100 * top_k / experts) * 2 / 3:.0f}% "
             f"or max/min > 100 or an expert gets none; skewed when the top-{top_k} take > "
             f"{min(100.0, 200 * top_k / experts):.0f}% or max/min > 10.", "",
             header, "|" + "---|" * (experts + 4)]
    for layer in range(layers):
        row = counts[layer].double()
        share = 100 * row / row.sum().clamp(min=1)
        h = router_health(row, top_k)
        lines.append(f"| {layer} | " + " | ".join(f"{s:.1f}" for s in share.tolist())
                     + f" | {h['top_k_share']:.1f} | {h['max_min']:.1f} | {h['flag']} |")
    return "\n".join(lines)
