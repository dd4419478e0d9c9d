"""Per-GPU memory for a recipe's model states under DeepSpeed ZeRO-2, ZeRO-3 and ZeRO-3 + CPU offload, without
downloading a single weight: the model is built on the meta device from its config (offline: the recipe's bundled
config_fallback), and DeepSpeed's own estimators do the arithmetic.

    make estimate MODEL=mixtral-8x7b            # = python -m shared.training.estimate recipes/mixtral/finetune-8x7b-zero3.yaml ...lora.yaml

Model states only (weights, gradients, Adam moments, fp32 master copy): activations come on top and depend on the
batch size, sequence length and gradient checkpointing. For a LoRA recipe the frozen base weights need no
gradients or optimizer states, which DeepSpeed's estimators (written for full training) don't model; its rows are
computed with the same byte counts: 2 bytes per frozen weight (bf16), 18 per trainable one (weight 2 + grad 2 +
fp32 master 4 + Adam 8 + 2 for buffers), sharded across GPUs under ZeRO-3.
"""
from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM

from shared.config.errors import UserError, run_main
from shared.models.registry import apply_lora, model_config
from shared.config.recipe import load_recipe

GPUS = (1, 2, 4, 8, 16)
GPUS_PER_NODE = 8
GIB = 2 ** 30


def meta_model(recipe):
    config = model_config(recipe)
    with torch.device("meta"):
        model = apply_lora(recipe, AutoModelForCausalLM.from_config(config))
    return model, config


def largest_layer(model) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def nodes_for(gpus: int) -> tuple[int, int]:
    return (1, gpus) if gpus <= GPUS_PER_NODE else (gpus // GPUS_PER_NODE, GPUS_PER_NODE)


def full_training_rows(total: int, largest: int) -> list[tuple[int, float, float, float, float]]:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    rows = []
    for gpus in GPUS:
        nodes, per_node = nodes_for(gpus)
        _, z2_gpu = estimate_zero2_model_states_mem_needs(total, per_node, nodes, cpu_offload=False)
        z3 = estimate_zero3_model_states_mem_needs(total, largest, per_node, nodes, cpu_offload=False,
                                                   cpu_offload_params=False)
        z3o = estimate_zero3_model_states_mem_needs(total, largest, per_node, nodes, cpu_offload=True,
                                                    cpu_offload_params=True)
        rows.append((gpus, z2_gpu / GIB, z3[1] / GIB, z3o[1] / GIB, z3o[0] / GIB))  # z3o[0]: CPU memory per node
    return rows


def lora_rows(frozen: int, trainable: int, largest: int) -> list[tuple[int, float, float, float]]:
    rows = []
    for gpus in GPUS:
        z2 = 2 * frozen + 18 * trainable  # weights replicated on every GPU
        z3 = (2 * frozen + 18 * trainable) / gpus + 4 * largest  # sharded + one gathered layer
        z3o = 4 * largest  # everything offloaded; one layer gathered at a time
        rows.append((gpus, z2 / GIB, z3 / GIB, z3o / GIB))
    return rows


def report(path: str) -> str:
    recipe = load_recipe(path)
    model, config = meta_model(recipe)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if recipe.model.lora else total
    largest = largest_layer(model)
    lines = [f"## {recipe.model.config} — {path}", ""]
    lines.append(f"parameters: {total:,} ({total / 1e9:.2f}B); largest layer {largest:,}")
    experts = getattr(config, "num_local_experts", None)
    if experts:
        per_expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n) // experts
        active = total - (experts - config.num_experts_per_tok) * per_expert
        lines.append(f"mixture of experts: {experts} experts, top-{config.num_experts_per_tok}: "
                     f"{active / 1e9:.2f}B parameters active per token")
    lines.append("")
    if recipe.model.lora:
        lines.append(f"LoRA: {trainable:,} trainable ({100 * trainable / total:.3f}%), {total - trainable:,} frozen")
        lines += ["", "| GPUs | ZeRO-2 GiB/GPU | ZeRO-3 GiB/GPU | ZeRO-3+offload GiB/GPU |", "|---|---|---|---|"]
        lines += [f"| {g} | {a:.1f} | {b:.1f} | {c:.1f} |" for g, a, b, c in lora_rows(total - trainable, trainable, largest)]
        lines.append("\n(2 bytes per frozen weight, 18 per trainable one; see the module docstring)")
    else:
        lines += ["| GPUs | ZeRO-2 GiB/GPU | ZeRO-3 GiB/GPU | ZeRO-3+offload GiB/GPU | offload: CPU GiB/node |",
                  "|---|---|---|---|---|"]
        lines += [f"| {g} | {z2:.1f} | {z3:.1f} | {z3o:.1f} | {cpu:.0f} |"
                  for g, z2, z3, z3o, cpu in full_training_rows(total, largest)]
        lines.append(f"\n(DeepSpeed's estimate_zero2/zero3_model_states_mem_needs; {GPUS_PER_NODE} GPUs per node)")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv:
        raise UserError("usage: python -m shared.training.estimate <recipe.yaml> [<recipe.yaml> ...]")
    print("\n\n".join(report(path) for path in argv))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
