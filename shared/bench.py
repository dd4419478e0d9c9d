"""Benchmarks: training throughput and peak memory of each recipe's model, on this machine, with synthetic tokens.

    make bench                      # = python -m shared.bench recipes/phi3/pretrain.yaml recipes/mixtral/pretrain.yaml
    python -m shared.bench recipes/mixtral/pretrain.yaml --steps 10 model.config=train_mixtral/mixtral_large.json

Times full optimizer steps (forward, backward, AdamW) at the recipe's micro-batch size and block size, after warm-up
steps, with the vocabulary the offline tokenizer would give (tokenizer.vocab_size). Speed and memory belong here,
not in the tests: the numbers depend on the machine, and the test suite must not.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from .errors import run_main
from .models import build_model, count_parameters, model_config
from .recipe import load_recipe
from .runlog import hardware


def bench(path: str, overrides: list[str], steps: int, warmup: int) -> dict:
    recipe = load_recipe(path, overrides)
    config = model_config(recipe)
    config.vocab_size = recipe.tokenizer.vocab_size
    model = build_model(recipe, config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    if recipe.training.get("activation_checkpointing"):
        model.activation_checkpointing_enable()
    batch = recipe.training.get("per_device_train_batch_size", 8)
    block = recipe.data.block_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, block), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    memory = (torch.cuda.max_memory_allocated() if device == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"recipe": path, "params": count_parameters(model)["total"], "batch": batch, "block": block,
            "gc": bool(recipe.training.get("activation_checkpointing")), "s/step": seconds,
            "tokens/s": batch * block / seconds, "peak": memory / 2**30, "where": "GPU" if device == "cuda" else "RSS"}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", help="recipe YAML files, each optionally followed by key=value overrides")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    groups: list[tuple[str, list[str]]] = []
    for item in args.recipes:
        if "=" in item and groups:
            groups[-1][1].append(item)
        else:
            groups.append((item, []))
    torch.manual_seed(0)
    print(f"hardware: {hardware()}; torch {torch.__version__}")
    print("| recipe | parameters | batch x block | grad. checkpointing | s/step | tokens/s | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for path, overrides in groups:
        r = bench(path, overrides, args.steps, args.warmup)
        print(f"| {r['recipe']} {' '.join(overrides)} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['block']} | "
              f"{'yes' if r['gc'] else 'no'} | {r['s/step']:.3f} | {r['tokens/s']:,.0f} | "
              f"{r['peak']:.2f} GiB ({r['where']}) |", flush=True)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
