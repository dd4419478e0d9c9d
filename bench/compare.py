"""make compare: every architecture of the repo trained from scratch on the same bundled Chinese corpus, with the
same tokenizer, the same number of training tokens and similar sizes, each through its own training script (the
script its make target runs). One table and one plot: validation loss vs tokens and vs estimated training FLOPs,
tokens/s and peak memory -> bench/compare.md + compare.json + compare.png.

    make compare                          # BUDGET=300k training tokens per model (suffixes k, M, G)
    make compare BUDGET=2M ONLY=phi3,minigl-gpt ARGS="data.block_size=64"   # ARGS: overrides for every model

The recipes are recipes/compare/<name>.yaml; they must agree on tokenizer:, data: and training: (checked here, so
no model gets a different budget or schedule by accident); only model: and run: differ. Every run is seeded and
starts from scratch (run.resume: never), so a rerun gives the same losses on the same machine.

Training FLOPs are estimated as nanoGPT's estimate_mfu (PaLM appendix B) does: 6 N + 12 L d T per token, N the
parameters of every matrix multiply a token goes through (the output head included, input embedding tables not;
for Mixtral the router plus top-k of num_experts of the experts), L layers, d the width, T the context; the LSTM
has no attention term.

ARCHS is not the model table (shared/config/catalog.py) but read from it: a row of the table is a model with its
folder, runs and generation scripts; an entry here is one architecture to train, and MiniGLM's folder holds two, its
GPT (minigl-gpt) and its LSTM baseline (minigl-lstm). Each entry names its model in the table, which gives the folder
of its training script.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from shared import REPO_ROOT
from shared.config.catalog import MODELS
from shared.config.errors import UserError, run_main

# architecture -> the training script its make target runs, in its model's folder; the recipe is
# recipes/compare/<architecture>.yaml
ARCHS = {name: f"{MODELS[model].folder}/{script}" for name, model, script in [
    ("phi3", "phi3", "train.py"),
    ("mixtral", "mixtral", "train.py"),
    ("phi2", "phi2", "train.py"),
    ("nanogpt", "nanogpt", "train.py"),
    ("minigl-gpt", "minigl", "train.py"),
    ("minigl-lstm", "minigl", "lstm_model.py"),
]}
SHARED = ("trainer", "tokenizer", "data", "training", "generation")  # identical in every compare recipe


def parse_budget(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        raise UserError(f"BUDGET={text!r}: give a number of training tokens, e.g. 300k, 2M or 1.5G")
    tokens = int(float(m[1]) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m[2].lower()])
    if tokens <= 0:
        raise UserError(f"BUDGET={text!r}: the budget must be positive")
    return tokens


def load_recipes(names: list[str], recipe_dir: Path, overrides: list[str]) -> dict:
    """The compare recipes, validated like any recipe, and checked to share one budget."""
    from shared.config.recipe import load_recipe

    recipes = {}
    for name in names:
        path = recipe_dir / f"{name}.yaml"
        if not path.is_file():
            raise UserError(f"{path}: no compare recipe for {name!r}")
        recipes[name] = load_recipe(path, overrides)
    first = names[0]
    base = recipes[first].to_dict(redact=False)
    for name in names[1:]:
        this = recipes[name].to_dict(redact=False)
        for section in SHARED:
            a, b = base.get(section), this.get(section)
            if a != b:
                keys = sorted(k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k)) \
                    if isinstance(a, dict) and isinstance(b, dict) else []
                at = recipes[name].where(f"{section}.{keys[0]}" if keys else section)
                raise UserError(f"{at}: {', '.join(f'{section}.{k}' for k in keys) or section} differs from "
                                f"{first}.yaml; a comparison needs the same {', '.join(SHARED)} in every recipe")
    return recipes


def tokens_per_step(recipe) -> int:
    t = recipe.training
    return t.get("per_device_train_batch_size", 8) * t.get("gradient_accumulation_steps", 1) * recipe.data.block_size


def train_one(name: str, script: str, recipe_path: Path, steps: int, overrides: list[str], log: Path) -> dict:
    """Run the model's training script as its make target does; the child's wall time and peak resident memory."""
    cmd = [sys.executable, script, str(recipe_path), f"training.max_steps={steps}", *overrides]
    print(f"\n== {name}: {' '.join(cmd[1:])}  (output: {log})", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise UserError(f"compare: {name} failed (exit {proc.returncode}): {tail[0] if tail else ''} (see {log})")
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024}


def matmul_parameters(config) -> dict:
    """Parameter counts from the model's config (built on the meta device): total, embedding tables, and the
    parameters one token's forward pass multiplies by (for an MoE: top-k of the experts)."""
    from transformers import AutoModelForCausalLM

    from shared.models.registry import count_parameters  # (importing shared.models.registry registers our GPT and LSTM)

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    counts = count_parameters(model)
    total, embeddings = counts["total"], counts["embeddings"]
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    active = total - embeddings + (head.weight.numel() if tied else 0)
    experts = getattr(config, "num_local_experts", None)
    if experts:
        expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
        active -= expert - expert * config.num_experts_per_tok // experts
    return {"total": total, "embeddings": embeddings, "matmul_per_token": active}


def read_run(final: Path) -> dict:
    """From a finished run's final/: the validation curve (evaluations during training, on the recipe's fixed
    subset), the final evaluation on all of val.bin, training time without the evaluations, train_summary.json."""
    history = json.loads((final / "log_history.json").read_text(encoding="utf-8"))
    summary = json.loads((final / "train_summary.json").read_text(encoding="utf-8"))
    # the Trainer's closing entry (train_loss, total_flos); our run log adds an elapsed train_runtime to every entry
    end = next(i for i, e in enumerate(history) if "train_loss" in e)
    during = [e for e in history[:end] if "eval_loss" in e]
    final_eval = next((e for e in history[end:] if "eval_loss" in e), None)
    train_loss = [e["loss"] for e in history[:end] if "loss" in e]
    eval_seconds = sum(e.get("eval_runtime", 0) for e in during)
    return {"curve": [(e["step"], e["eval_loss"]) for e in during], "final_eval": final_eval,
            "last_train_loss": train_loss[-1] if train_loss else None,
            "train_s": history[end]["train_runtime"] - eval_seconds, "summary": summary}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every model's recipe")
    parser.add_argument("--budget", default="300k", help="training tokens per model (default 300k; k/M/G suffixes)")
    parser.add_argument("--only", default=",".join(ARCHS), help=f"comma-separated subset of {', '.join(ARCHS)}")
    parser.add_argument("--recipes", default=str(REPO_ROOT / "recipes" / "compare"), help="folder of <name>.yaml recipes")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench"), help="folder for compare.md / .json / .png")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARCHS]
    if unknown or not names:
        raise UserError(f"ONLY={args.only!r}: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(ARCHS)}")
    budget = parse_budget(args.budget)
    overrides = [o for o in args.overrides if o.strip()]
    recipes = load_recipes(names, Path(args.recipes), overrides)
    per_step = tokens_per_step(recipes[names[0]])
    steps = max(1, round(budget / per_step))
    print(f"compare: {len(names)} models x {steps} steps x {per_step} tokens = {steps * per_step:,} training tokens "
          f"each (BUDGET={args.budget})", flush=True)

    from transformers import AutoConfig

    from shared.models.registry import flops_per_token  # (the import registers our GPT and LSTM with the Auto classes)
    from bench.common import environment, load_avg

    env = environment(argv, "bench.compare")
    rows = []
    for name in names:
        recipe = recipes[name]
        load = load_avg()
        child = train_one(name, ARCHS[name], Path(args.recipes) / f"{name}.yaml", steps, overrides,
                          recipe.run_dir.parent / f"{name}.out.txt")
        final = recipe.run_dir / "final"
        run = read_run(final)
        config = AutoConfig.from_pretrained(final)
        params = matmul_parameters(config)
        per_token = flops_per_token(config, params["matmul_per_token"], recipe.data.block_size)
        tokens = run["summary"]["steps"] * per_step
        rows.append({"model": name, "type": config.model_type, "parameters": params, "tokens": tokens,
                     "flops_per_token": per_token, "train_flops": per_token * tokens,
                     "curve": [{"step": s, "tokens": s * per_step, "flops": s * per_step * per_token, "eval_loss": v}
                               for s, v in run["curve"]],
                     "val_loss": run["final_eval"]["eval_loss"] if run["final_eval"] else None,
                     "last_train_loss": run["last_train_loss"], "train_s": run["train_s"],
                     "tokens_per_s": tokens / run["train_s"] if run["train_s"] else None,
                     "peak_memory_bytes": run["summary"].get("peak_memory_bytes") or child["peak_rss_bytes"],
                     "peak_memory_of": run["summary"].get("peak_memory_of") or "process peak RSS",
                     "wall_s": child["wall_s"], "load at start": load, "run": str(final.relative_to(REPO_ROOT))
                     if final.is_relative_to(REPO_ROOT) else str(final)})
        r = rows[-1]
        print(f"{name}: val loss {fmt(r['val_loss'], '.4f')}, {fmt(r['tokens_per_s'], ',.0f')} tokens/s, "
              f"peak {r['peak_memory_bytes'] / 2**30:.2f} GiB", flush=True)
    write(Path(args.out), env, rows, recipes[names[0]], steps, per_step)


def fmt(value, spec: str, suffix: str = "") -> str:
    """A figure for the table, or a dash where the run did not produce it."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def write(out: Path, env: dict, rows: list[dict], recipe, steps: int, per_step: int) -> None:
    import math

    out.mkdir(parents=True, exist_ok=True)
    t = recipe.training
    lines = ["# make compare: every architecture, same data, tokenizer and token budget", "",
             "Written by `bench/compare.py` from the runs it trained; every figure below comes from that run.", "",
             f"- **command**: `{env['command']}`", f"- **date**: {env['date']}", f"- **hardware**: {env['hardware']}",
             "- **versions**: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             f"- **git commit**: {env['git commit']}", f"- **load average at start**: {env['load at start']}",
             f"- **data**: `{recipe.data.bins}` (MiniGLM's bins of the bundled Chinese corpus), its tokenizer "
             f"({recipe.tokenizer.name}); random windows of {recipe.data.block_size} + 1 tokens, the same "
             f"for every model (seed {t.get('seed')})",
             f"- **budget**: {steps} steps x {per_step} tokens = {steps * per_step:,} training tokens per model; "
             f"AdamW lr {t.get('learning_rate')}, {t.get('lr_scheduler_type')}, warm-up {t.get('warmup_steps')}, "
             f"weight decay {t.get('weight_decay')}, clip {t.get('max_grad_norm')}; the same for all",
             "- **validation loss**: the mean token loss on all of val.bin after training (the curve: a fixed subset "
             "of its windows during training); Mixtral's is the language-model loss alone (no router loss)",
             "- **FLOPs**: estimated, 6 N + 12 L d T per training token (nanoGPT's estimate_mfu); N counts the "
             "matrices a token passes through (head yes, input embeddings no, top-2 of 8 experts)",
             f"- **tokens/s**: training tokens / training time without the evaluations; **peak memory**: "
             f"{rows[0]['peak_memory_of']} (on a CPU that includes ~0.7 GB of Python, torch and transformers "
             f"themselves)", "",
             "| model | type | parameters | without embeddings | per token (matmul) | training tokens | est. training FLOPs "
             "| val loss | val perplexity | last train loss | tokens/s | peak memory | wall s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["val_loss"] if r["val_loss"] is not None else 1e9):
        p = r["parameters"]
        lines.append(f"| {r['model']} | {r['type']} | {p['total'] / 1e6:.2f}M | {(p['total'] - p['embeddings']) / 1e6:.2f}M "
                     f"| {p['matmul_per_token'] / 1e6:.2f}M | {r['tokens']:,} | {r['train_flops']:.2e} "
                     f"| {fmt(r['val_loss'], '.4f')} "
                     f"| {fmt(None if r['val_loss'] is None else math.exp(min(r['val_loss'], 50)), '.1f')} "
                     f"| {fmt(r['last_train_loss'], '.4f')} | {fmt(r['tokens_per_s'], ',.0f')} "
                     f"| {fmt(r['peak_memory_bytes'] / 2**30, '.2f', ' GiB')} | {r['wall_s']:.0f} "
                     f"| {r['load at start'][0]} |")
    lines += ["", "Sorted by validation loss. `without embeddings`: every parameter but the input embedding tables; "
              "`per token (matmul)`: what one token's forward pass multiplies by (the FLOPs' N); `last train loss`: "
              "the training objective (Mixtral's includes its router loss).", ""]
    if plot(out / "compare.png", rows):
        lines += ["![validation loss vs training tokens and vs estimated training FLOPs](compare.png)", ""]
    lines += ["Each model's run (final/ with train_log.md, log_history.json, train_summary.json) is under "
              "runs/compare/<model>/; its console output beside it in runs/compare/<model>.out.txt.", ""]
    tmp = out / ".compare.md.tmp"
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, out / "compare.md")
    (out / "compare.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1), encoding="utf-8")
    print(f"\nwritten: {out / 'compare.md'}, {out / 'compare.json'}", flush=True)


def plot(path: Path, rows: list[dict]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r in rows:
        xs = [c["tokens"] for c in r["curve"]]
        ys = [c["eval_loss"] for c in r["curve"]]
        a.plot(xs, ys, marker=".", label=r["model"])
        b.plot([c["flops"] for c in r["curve"]], ys, marker=".", label=r["model"])
    a.set_xlabel("training tokens")
    b.set_xlabel("estimated training FLOPs")
    b.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    a.set_ylabel("validation loss (fixed subset)")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


if __name__ == "__main__":
    run_main(main)
