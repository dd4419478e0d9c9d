"""Benchmarks (the performance issue): packing vs padding, engine overhead, nanoGPT's shakespeare-char CPU workload,
generation speed, MoE expert implementations, serving (make serve: requests/s, time to first token), and each
recipe's training throughput + peak memory.

    make bench          # = python -m bench.suite            every section, full size  -> bench/results.md + .json
    make bench-quick    # = python -m bench.suite --quick    a few minutes on a CPU
    python -m bench.suite --only packing,moe --quick --out /tmp/b
    python -m bench.suite --only throughput recipes/mixtral/pretrain.yaml model.config=train_mixtral/mixtral_large.json

How it measures: every comparison (A vs B) runs in ONE process with A and B interleaved, several repetitions, and
reports the median ratio, next to the machine's load average (os.getloadavg) at the time; absolute seconds are
printed for reference only. On a shared CPU the ratios are what to read. Speed and memory belong here, never in the
test suite (tests/test_bench.py checks the bench's bookkeeping on tiny inputs: useful-token counts, the router flag).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from shared import REPO_ROOT
from bench.common import environment, interleaved, load_avg, median_ratio
from shared.config.errors import run_main

SECTIONS = ("packing", "engine", "shakespeare", "generation", "moe", "router", "bins", "serving", "scale",
            "throughput")


# ----------------------------------------------------------------------------------------------------------------
# shared inputs: the bundled poems and a BPE trained on them


def poem_texts() -> list[str]:
    from shared.data.sources import read_jsonl

    return [f"{r['title']}\n{r['content']}".strip() for r in read_jsonl(REPO_ROOT / "data/poems/poems.jsonl")]


_TOKENIZER = None


def poem_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from shared.data.tokenizer import train_bpe

        texts = poem_texts()
        folder = Path(tempfile.mkdtemp(prefix="slm-bench-")) / "bpe"
        _TOKENIZER = train_bpe(iter([texts]), 8000, 2, folder)
    return _TOKENIZER


def model_from(config_path: str, vocab: int, **overrides):
    from transformers import AutoModelForCausalLM

    from shared.models.registry import config_from_json

    config = config_from_json(config_path)
    config.vocab_size = vocab
    for k, v in overrides.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


# ----------------------------------------------------------------------------------------------------------------
# 1. packing vs padding


def padded_batches(docs: list[list[int]], batch: int, max_len: int, pad_id: int, grouped: bool) -> list[dict]:
    """Documents truncated to max_len, in batches of `batch`: padded to max_len (the documents' pad-to-max), or, with
    `grouped`, sorted by length and padded to each batch's longest (group_by_length). Labels are -100 on padding."""
    docs = [d[:max_len] for d in docs]
    if grouped:
        docs = sorted(docs, key=len, reverse=True)
    out = []
    for i in range(0, len(docs) - batch + 1, batch):
        chunk = docs[i:i + batch]
        width = max(map(len, chunk)) if grouped else max_len
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for j, d in enumerate(chunk):
            ids[j, :len(d)] = torch.tensor(d)
            mask[j, :len(d)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def packed_batches(blocks: list[list[int]], batch: int) -> list[dict]:
    out = []
    for i in range(0, len(blocks) - batch + 1, batch):
        ids = torch.tensor(blocks[i:i + batch])
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def useful_tokens(b: dict) -> int:
    """Tokens that carry a training target: the real (non-pad) positions of a batch."""
    mask = b.get("attention_mask")
    return int(mask.sum()) if mask is not None else b["input_ids"].numel()


def train_step_fn(model, opt) -> Callable[[dict], None]:
    def step(b: dict) -> None:
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_packing(quick: bool) -> dict:
    from datasets import Dataset

    from shared.data.sources import pack

    tok = poem_tokenizer()
    texts = poem_texts()
    docs = [x + [tok.eos_token_id] for x in tok(texts, add_special_tokens=False)["input_ids"]]
    lengths = sorted(map(len, docs))
    cases = [("phi3", "train_phi3/phi3_config.json", 8, 128, "the recipe's block size"),
             ("mixtral tiny", "train_mixtral/mixtral_tiny.json", 12, 512, "the document's max_length 512")]
    reps, nb = (2, 2) if quick else (3, 4)
    rows = []
    for name, cfg, batch, length, why in cases:
        model = model_from(cfg, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step = train_step_fn(model, opt)
        blocks = pack(Dataset.from_dict({"text": texts}), tok, length, "bench")["input_ids"]
        modes = {"pad to max": padded_batches(docs, batch, length, tok.pad_token_id, grouped=False),
                 "length-grouped": padded_batches(docs, batch, length, tok.pad_token_id, grouped=True),
                 "packed": packed_batches(blocks, batch)}
        # the same share of each mode's epoch: its first batches (length-grouped: spread over the sorted order)
        picks = {}
        for mode, bs in modes.items():
            idx = [round(i * (len(bs) - 1) / max(nb - 1, 1)) for i in range(nb)] if mode == "length-grouped" else range(nb)
            picks[mode] = [bs[i] for i in idx]
        step(picks["packed"][0])  # warm-up

        def run(mode):
            def fn():
                start = time.perf_counter()
                for b in picks[mode]:
                    step(b)
                return time.perf_counter() - start
            return fn

        la = load_avg()
        times = interleaved({m: run(m) for m in modes}, reps)
        per_epoch = {m: sum(map(useful_tokens, bs)) / (len(bs) * batch) for m, bs in modes.items()}
        rates = {m: [sum(map(useful_tokens, picks[m])) / t for t in times[m]] for m in modes}
        for m in modes:
            rows.append({"model": name, "mode": m, "seq": length, "batch": batch,
                         "useful fraction (epoch)": round(sum(map(useful_tokens, modes[m])) /
                                                          sum(b["input_ids"].numel() for b in modes[m]), 3),
                         "useful tokens/s": round(statistics.median(rates[m]), 1),
                         "x pad-to-max": round(statistics.median(r / p for r, p in zip(rates[m], rates["pad to max"])), 2),
                         "useful tokens per sequence": round(per_epoch[m], 1),
                         "length from": why, "load": la})
        del model, opt
    md = ["Useful (non-pad) tokens per second of training steps (forward, backward, clip, AdamW) on the bundled poems "
          f"(BPE vocab {len(tok)}; {len(docs)} poems, tokens per poem: median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]}). `x pad-to-max` is the median over {reps} interleaved repetitions of {nb} batches each.",
          "", "| model | batching | sequence | batch | useful share of positions | useful tokens/s | x pad-to-max | load |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['mode']} | {r['seq']} ({r['length from']}) | {r['batch']} | "
           f"{r['useful fraction (epoch)']:.1%} | {r['useful tokens/s']:,.0f} | {r['x pad-to-max']:.2f} | {r['load'][0]} |"
           for r in rows]
    return {"rows": rows, "markdown": "\n".join(md)}


# ----------------------------------------------------------------------------------------------------------------
# 2. engine overhead: the Trainer as shared/training/train.py builds it vs a bare loop


class StepClock:
    """A TrainerCallback recording the time at each optimizer step's end (the loop's whole cost between two: data
    loading, collation, forward/backward/step, callbacks, logging)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self):
                self.marks: list[float] = []

            def on_step_end(self, args, state, control, **kwargs):
                self.marks.append(time.perf_counter())

        return _Clock()


def make_trainer(model, dataset, tokenizer, out_dir: str, training: dict, trainer_cls=None):
    """The Trainer a run trains with (shared/training/build.py's `build_trainer`, as train() calls it: DEFAULT_TRAINING
    + the settings, our callbacks, the LM collator), with no evaluation or checkpoint inside the timed steps."""
    from transformers import TrainingArguments

    from shared.training.build import build_trainer
    from shared.training.train import DEFAULT_TRAINING, precision

    kwargs = {**DEFAULT_TRAINING, **precision("auto"), "disable_tqdm": True, **training,
              "eval_strategy": "no", "save_strategy": "no", "output_dir": out_dir}
    clock = StepClock()
    trainer = build_trainer("lm", model, TrainingArguments(**kwargs), dataset, tokenizer, trainer_cls=trainer_cls,
                            callbacks=[clock])
    return trainer, clock


def bare_optimizer(model, args):
    """AdamW with the Trainer's hyper-parameters and implementation (fused when args.optim says so)."""
    fused = "fused" in str(args.optim)
    return torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, weight_decay=args.weight_decay, **({"fused": True} if fused else {}))


def engine_case(name, model, dataset, tokenizer, training, steps, warm, reps, trainer_cls=None, variants=None):
    """Trainer (per variant) vs bare loop on copies of the same model and the same batches: median s/step each."""
    from transformers import DataCollatorForLanguageModeling

    variants = variants or {"train.py defaults": {}}
    collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    bs = training["per_device_train_batch_size"]
    batches = [collate([dataset[j] for j in range(i * bs, (i + 1) * bs)]) for i in range(warm + steps)]
    base = copy.deepcopy(model)
    tmp = tempfile.mkdtemp(prefix="slm-bench-engine-")
    optim_name = []

    def trainer_run(extra):
        def fn():
            m = copy.deepcopy(base)
            trainer, clock = make_trainer(m, dataset, tokenizer, tmp, {**training, **extra, "max_steps": warm + steps},
                                          trainer_cls)
            optim_name.append(str(trainer.args.optim))
            trainer.train()
            gaps = [b - a for a, b in zip(clock.marks[warm - 1:], clock.marks[warm:])]
            return statistics.median(gaps)
        return fn

    def bare():
        m = copy.deepcopy(base).train()
        from transformers import TrainingArguments

        from shared.training.train import DEFAULT_TRAINING, precision
        args = TrainingArguments(**{**DEFAULT_TRAINING, **precision("auto"), **training, "output_dir": tmp})
        opt = bare_optimizer(m, args)
        step = train_step_fn(m, opt)
        marks = []
        for b in batches:
            step(b)
            marks.append(time.perf_counter())
        return statistics.median(b - a for a, b in zip(marks[warm - 1:], marks[warm:]))

    la = load_avg()
    fns = {"bare loop": bare, **{v: trainer_run(extra) for v, extra in variants.items()}}
    times = interleaved(fns, reps)
    # collation alone, per batch (the Trainer collates in the loop; the bare loop got pre-collated batches)
    feats = [[dataset[j] for j in range(i * bs, (i + 1) * bs)] for i in range(4)]
    t0 = time.perf_counter()
    for f in feats:
        collate(f)
    collate_s = (time.perf_counter() - t0) / len(feats)
    rows = []
    for v in fns:
        rows.append({"model": name, "path": v, "s/step (median)": round(statistics.median(times[v]), 4),
                     "x bare": round(median_ratio(times[v], times["bare loop"]), 3), "load": la,
                     "optim": optim_name[0] if optim_name else "", "collate s/batch": round(collate_s, 5)})
    return rows


def bench_engine(quick: bool) -> dict:
    from datasets import Dataset

    from shared.data.sources import pack
    from shared.training.moe_trainer import MoETrainer

    tok = poem_tokenizer()
    texts = Dataset.from_dict({"text": poem_texts()})
    steps, warm, reps = (6, 2, 2) if quick else (12, 3, 3)
    variants = {"train.py defaults": {},
                "- token counting": {"include_num_input_tokens_seen": False},
                "- token counting - logging": {"include_num_input_tokens_seen": False, "logging_steps": 10_000,
                                               "logging_first_step": False}}
    if quick:
        variants.pop("- token counting - logging")
    common = dict(learning_rate=1e-3, weight_decay=0.01, max_grad_norm=1.0, seed=42)
    cases = [("phi3", "train_phi3/phi3_config.json", 128, dict(per_device_train_batch_size=8, logging_steps=5), None),
             ("nanoGPT tiny", "train_nanogpt/gpt_tiny.json", 256, dict(per_device_train_batch_size=12, logging_steps=25), None),
             ("mixtral tiny", "train_mixtral/mixtral_tiny.json", 128, dict(per_device_train_batch_size=12, logging_steps=5),
              MoETrainer)]
    rows = []
    for name, cfg, block, training, cls in cases:
        data = pack(texts, tok, block, "bench")
        model = model_from(cfg, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        need = training["per_device_train_batch_size"] * (warm + steps)
        while len(data) < need:  # a bigger model block than the poems fill: repeat them
            from datasets import concatenate_datasets
            data = concatenate_datasets([data, data])
        rows += engine_case(name, model, data, tok, {**common, **training}, steps, warm, reps, cls, variants)
        del model
    md = [f"Median seconds per optimizer step (micro-batch = step, no gradient accumulation; eval and checkpoints "
          f"off inside the timed steps), {steps} timed steps after {warm} warm-up, {reps} interleaved repetitions; "
          f"`x bare` is the median of the paired ratios. The Trainer is built as shared/training/train.py's `train()` builds "
          f"it (DEFAULT_TRAINING, our callbacks, DataCollatorForLanguageModeling); the bare loop gets the same "
          f"batches already collated and the same AdamW implementation.", "",
          "| model | path | s/step | x bare | collation alone, s/batch | optimizer | load |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['path']} | {r['s/step (median)']:.4f} | {r['x bare']:.3f} | {r['collate s/batch']:.5f} | "
           f"{r['optim']} | {r['load'][0]} |" for r in rows]
    return {"rows": rows, "markdown": "\n".join(md)}


# ----------------------------------------------------------------------------------------------------------------
# 3. nanoGPT's shakespeare-char CPU workload: our targets (data stage + train()) vs a bare nanoGPT-style loop

SHAKESPEARE_DATA = "recipes/nanogpt/data-shakespeare-char.yaml"
SHAKESPEARE_CPU = "recipes/nanogpt/pretrain-shakespeare-char-cpu.yaml"


def nanogpt_get_batch(path: Path, block: int, batch: int, generator: torch.Generator):
    """nanoGPT's train.py `get_batch` on a CPU: a fresh memmap each call, random starts, the windows stacked."""
    import numpy as np

    data = np.memmap(path, dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - block, (batch,), generator=generator)
    x = torch.stack([torch.from_numpy((data[i:i + block]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block]).astype(np.int64)) for i in ix])
    return x, y


class BareNanoGPTLoop:
    """nanoGPT's training loop as its train.py runs it on a CPU (no GradScaler, no compile, log_interval=1: the loss
    is read every iteration), on our GPT: nanoGPT's AdamW groups (every >= 2-D tensor decayed, embeddings too) with
    the fused implementation where torch has it, its get_lr (linear warm-up, cosine to min_lr at lr_decay_iters),
    clipping, zero_grad(set_to_none=True), the next batch fetched right after the forward pass. No collator, no
    callbacks. `steps(n)` runs n iterations and records each one's seconds."""

    def __init__(self, model, train_bin: Path, block: int, batch: int, iters: int, lr: float, min_lr: float,
                 warmup: int, weight_decay: float, betas: tuple, grad_clip: float, seed: int = 1337):
        import inspect

        self.model, self.train_bin, self.block, self.batch = model.train(), train_bin, block, batch
        self.iters, self.lr, self.min_lr, self.warmup, self.grad_clip = iters, lr, min_lr, warmup, grad_clip
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters
        self.fused = fused
        self.opt = torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))
        self.gen = torch.Generator().manual_seed(seed)  # its own: the Trainer's random state is left alone
        self.it, self.seconds = 0, []
        self.X, self.Y = nanogpt_get_batch(train_bin, block, batch, self.gen)

    def get_lr(self, it: int) -> float:
        if it < self.warmup:
            return self.lr * (it + 1) / (self.warmup + 1)
        ratio = (it - self.warmup) / (self.iters - self.warmup)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)

    def steps(self, n: int) -> None:
        t0 = time.perf_counter()
        for _ in range(min(n, self.iters - self.it)):
            for group in self.opt.param_groups:
                group["lr"] = self.get_lr(self.it)
            loss = self.model(input_ids=self.X, shift_labels=self.Y).loss
            self.X, self.Y = nanogpt_get_batch(self.train_bin, self.block, self.batch, self.gen)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            loss.item()  # log_interval=1
            self.it += 1
            t1 = time.perf_counter()
            self.seconds.append(t1 - t0)
            t0 = t1


@torch.no_grad()
def windows_loss(model, windows, batch: int = 48) -> float:
    """Mean next-token loss over `windows` (a BinWindows), all positions: the same measure for both paths."""
    from shared.data.bins import stack_windows

    was = model.training
    model.eval()
    total = count = 0
    for i in range(0, len(windows), batch):
        b = stack_windows(windows.__getitems__(list(range(i, min(i + batch, len(windows))))))
        total += model(input_ids=b["input_ids"], shift_labels=b["shift_labels"]).loss.item() * b["input_ids"].numel()
        count += b["input_ids"].numel()
    model.train(was)
    return total / count


def shakespeare_run(root: Path, run: str, iters: int, chunk: int, every: int) -> dict:
    """One interleaved pair: `train()` on the CPU recipe, with a callback that runs `chunk` iterations of the bare
    loop after every `chunk` Trainer steps (so both see the same machine load), each timed per iteration."""
    from transformers import TrainerCallback

    from shared.models import registry as models
    from shared.training import train as T
    from shared.config.recipe import load_recipe

    bins_run = root / "nanogpt" / "shakespeare-char-data"
    recipe = load_recipe(SHAKESPEARE_CPU, [f"run.output_root={root}", f"data.bins={bins_run}",
                                           f"tokenizer.name={bins_run}", f"training.max_steps={iters}",
                                           "run.resume=never", f"run.name={run}", f"training.eval_steps={every}"])
    t, block = recipe.training, recipe.data.block_size
    args = T.training_arguments(recipe)
    config = models.model_config(recipe)
    data = T.load_data(recipe)
    model = models.build_model(recipe, config, data.tokenizer)
    bare = BareNanoGPTLoop(models.build_model(recipe, models.model_config(recipe), data.tokenizer),  # same init
                           bins_run / "final" / "train.bin", block, t["per_device_train_batch_size"], iters,
                           t["learning_rate"], t["learning_rate"] * t["lr_scheduler_kwargs"]["min_lr_rate"],
                           t["warmup_steps"], t["weight_decay"], (t["adam_beta1"], t["adam_beta2"]),
                           t["max_grad_norm"])
    curves: dict = {"Trainer": [], "bare loop": []}

    class Interleave(TrainerCallback):
        def __init__(self):
            self.last, self.skip, self.gaps = None, True, []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            now = time.perf_counter()
            if not self.skip:
                self.gaps.append(now - self.last)
            self.skip = False
            if state.global_step % every == 0 or state.global_step == iters:
                curves["Trainer"].append((state.global_step, windows_loss(model, data.eval_during)))
                self.skip = True
            if state.global_step % chunk == 0 or state.global_step == iters:
                bare.steps(state.global_step - bare.it)
                if bare.it % every == 0 or bare.it == iters:
                    curves["bare loop"].append((bare.it, windows_loss(bare.model, data.eval_during)))
                self.skip = True
            self.last = time.perf_counter()

        def on_evaluate(self, *a, **k):
            self.skip = True  # the Trainer's own evaluation fell inside this gap

        def on_save(self, *a, **k):
            self.skip = True

    clock = Interleave()
    la0 = load_avg()
    t0 = time.perf_counter()
    trainer = T.train(recipe, model, data, args=args, title="bench: shakespeare-char CPU",
                      trainer_cls=T.NoDecayOnEmbeddingsTrainer, callbacks=[clock])
    total = time.perf_counter() - t0
    la1 = load_avg()
    final = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), {})
    ours, theirs = clock.gaps[5:], bare.seconds[5:]
    tokens = block * t["per_device_train_batch_size"]
    return {"iterations": iters, "chunk": chunk, "tokens/iter": tokens,
            "Trainer s/iter (median)": statistics.median(ours), "bare s/iter (median)": statistics.median(theirs),
            "Trainer s/iter (mean)": statistics.mean(ours), "bare s/iter (mean)": statistics.mean(theirs),
            "Trainer tokens/s": tokens / statistics.median(ours), "bare tokens/s": tokens / statistics.median(theirs),
            "x bare (tokens/s, median)": statistics.median(theirs) / statistics.median(ours),
            "x bare (tokens/s, mean)": statistics.mean(theirs) / statistics.mean(ours),
            "val loss Trainer (all of val.bin)": windows_loss(trainer.model, data.eval),
            "val loss bare (all of val.bin)": windows_loss(bare.model, data.eval),
            "Trainer final eval_loss (its log)": final.get("eval_loss"), "val windows": len(data.eval),
            "curve": curves, "train curve": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
            "train() wall s (evaluations, saves, final/ and the bare chunks included)": round(total, 1),
            "fused AdamW (bare)": bare.fused, "optim (Trainer)": str(trainer.args.optim), "load": [la0, la1]}


def bench_shakespeare(quick: bool, out_dir: Path) -> dict:
    import shutil

    text = os.environ.get("SLM_SHAKESPEARE")  # nanoGPT's input.txt, if you have it; else the bundled stand-in
    iters, chunk, every, reps = (300, 25, 100, 1) if quick else (2000, 25, 250, 2)
    tmp = Path(tempfile.mkdtemp(prefix="slm-bench-shakespeare-"))
    try:
        data_cmd = [sys.executable, "train_nanogpt/create_first_training_data.py", SHAKESPEARE_DATA,
                    f"run.output_root={tmp}", *([f"data.path={text}"] if text else [])]
        subprocess.run(data_cmd, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
        meta = json.loads((tmp / "nanogpt" / "shakespeare-char-data" / "final" / "meta.json").read_text())
        runs = [shakespeare_run(tmp, f"bench-{r}", iters, chunk, every) for r in range(reps)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    vocab, ntrain, nval = meta["vocab_size"], meta["splits"]["train"]["tokens"], meta["splits"]["val"]["tokens"]
    source = text or "the bundled stand-in (data/english/alpaca.jsonl's instructions, inputs and answers)"
    png = out_dir / f"shakespeare_char_loss{'-quick' if quick else ''}.png"  # make bench and bench-quick apart
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*runs[0]["train curve"]), label="train loss (Trainer, logged every 10)", alpha=0.6)
        for k, pts in runs[0]["curve"].items():
            ax.plot(*zip(*pts), marker="o", label=f"val loss, fixed 240 windows ({k})")
        ax.axhline(1.88, ls="--", c="grey", label="nanoGPT shakespeare-char val @2000 (its text)")
        ax.set_xlabel("iteration"), ax.set_ylabel("loss (nats/char)"), ax.legend(fontsize=7)
        ax.set_title(f"our GPT 4x4x128, block 64, batch 12, {vocab}-char text")
        fig.tight_layout()
        fig.savefig(png, dpi=90)
        plt.close(fig)
    except ImportError:
        png = None
    md = [f"nanoGPT's shakespeare-char CPU settings (4 layers, 4 heads, 128 wide, block 64, batch 12, {iters:,} "
          f"iterations, dropout 0, lr 1e-3 / warm-up 100 / cosine to 1e-4, beta2 0.99, clip 1.0) through our targets: "
          f"`{SHAKESPEARE_DATA}` writes the char-level bins ({vocab} characters; {ntrain:,} train / {nval:,} val "
          f"tokens of {source}), then `train()` runs `{SHAKESPEARE_CPU}` (the path `make train-nanogpt-shakespeare-cpu` "
          f"takes: BinWindows, the stacking collator, our callbacks, evaluations every {every} and checkpoints). "
          f"The bare loop is nanoGPT's train.py loop on a CPU (its get_batch from a fresh memmap, its AdamW groups, "
          f"fused AdamW, get_lr, clipping, the loss read every iteration, no collator), on the same GPT with the "
          f"same initial weights. The two are interleaved in one process: after every {chunk} Trainer steps a "
          f"callback runs the next {chunk} bare iterations, so both see the same load. Each iteration is timed; "
          f"tokens/s = {runs[0]['tokens/iter']} / median seconds per iteration (gaps holding an evaluation, a save "
          f"or a switch between the two are left out). Validation losses use the same function for both.", "",
          "| run | Trainer tokens/s | bare tokens/s | x bare (median) | x bare (mean) | val loss Trainer | "
          "val loss bare | load before -> after |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        md.append(f"| {i} | {r['Trainer tokens/s']:,.0f} | {r['bare tokens/s']:,.0f} | "
                  f"**{r['x bare (tokens/s, median)']:.3f}** | {r['x bare (tokens/s, mean)']:.3f} | "
                  f"{r['val loss Trainer (all of val.bin)']:.3f} | {r['val loss bare (all of val.bin)']:.3f} | "
                  f"{r['load'][0][0]} -> {r['load'][1][0]} |")
    md += ["", f"Val loss: all {runs[0]['val windows']} windows of val.bin after {iters:,} iterations (the Trainer's own "
           f"final evaluation says {runs[0]['Trainer final eval_loss (its log)']:.3f}). The bare loop decays the "
           f"embeddings as nanoGPT does; our recipe's NoDecayOnEmbeddingsTrainer does not. nanoGPT's own train.py "
           f"(its model.py) measured 15.3k-15.6k tokens/s on this machine at these settings (REFERENCE.md); it is not "
           f"in this repository, so it is not rerun here. nanoGPT reports ~1.88 after 2,000 iterations on tiny "
           f"Shakespeare (1.1M characters, 65-character vocabulary); "
           + ("this run used that file." if text else f"this run used the bundled stand-in ({ntrain / 1e6:.2f}M train "
              f"characters, {vocab}-character vocabulary, so it overfits sooner): the losses are not comparable one to "
              f"one. SLM_SHAKESPEARE=input.txt reruns it on nanoGPT's text.")
           + (f"\n\n![loss curve]({png.name})" if png else "")]
    return {"rows": runs, "markdown": "\n".join(md)}


# ----------------------------------------------------------------------------------------------------------------
# 4. generation


OURS_VS_GPT2 = "our time / GPT-2's"


def bench_generation(quick: bool) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    from shared.models.gpt import GPTConfig, GPTForCausalLM

    new, reps, prompt_len = (32, 3, 16) if quick else (64, 5, 16)
    sizes = [("tiny (4 layers, 128 wide)", dict(n_layer=4, n_head=4, n_embd=128))]
    if not quick:
        sizes.append(("GPT-2 small (12 layers, 768 wide)", dict(n_layer=12, n_head=12, n_embd=768)))
    vocab, block = 8064, 256
    rows = []
    for size, dims in sizes:
        torch.manual_seed(0)
        ours = GPTForCausalLM(GPTConfig(vocab_size=vocab, block_size=block, bias=True, dropout=0.0, **dims)).eval()
        gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=block, resid_pdrop=0, embd_pdrop=0, bos_token_id=0, eos_token_id=0,
                                          attn_pdrop=0, **dims)).eval()
        for batch in (1, 8):
            ids = torch.randint(0, vocab, (batch, prompt_len))

            def gen(m):
                def fn():
                    t = time.perf_counter()
                    with torch.no_grad():
                        out = m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                                         min_new_tokens=new, use_cache=True, pad_token_id=0, eos_token_id=None)
                    assert out.shape[1] == prompt_len + new
                    return batch * new / (time.perf_counter() - t)
                return fn
            gen(ours)(), gen(gpt2)()  # warm-up
            la = load_avg()
            r = interleaved({"ours": gen(ours), "gpt2": gen(gpt2)}, reps)
            rows.append({"size": size, "batch": batch, "new tokens": new, "ours tokens/s": round(statistics.median(r["ours"]), 1),
                         "GPT2LMHeadModel tokens/s": round(statistics.median(r["gpt2"]), 1),
                         OURS_VS_GPT2: round(median_ratio(r["gpt2"], r["ours"]), 3), "load": la})
    # the recipes' own models with their presets (random weights; the BPE's vocabulary)
    tok = poem_tokenizer()
    presets = []
    for name, cfg, kwargs in [
        ("phi3 tiny, greedy", "train_phi3/phi3_config.json", dict(do_sample=False)),
        ("mixtral tiny, its beam preset (5 beams + sampling)", "train_mixtral/mixtral_tiny.json",
         dict(num_beams=5, do_sample=True, temperature=0.8, top_k=30, top_p=0.9, repetition_penalty=1.5,
              no_repeat_ngram_size=3, length_penalty=1.2))]:
        m = model_from(cfg, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id).eval()
        ids = torch.tensor([tok("春天来了，", add_special_tokens=False)["input_ids"]])
        times = []
        for _ in range(1 + (2 if quick else 3)):
            t = time.perf_counter()
            with torch.no_grad():
                out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                 pad_token_id=tok.pad_token_id, **kwargs)
            times.append(time.perf_counter() - t)
        presets.append({"model": name, "new tokens": out.shape[1] - ids.shape[1],
                        "tokens/s (median, batch 1)": round(new / statistics.median(times[1:]), 1), "load": load_avg()})
    md = [f"Greedy decoding with the KV cache, random weights, prompt {prompt_len} tokens, exactly {new} new tokens, "
          f"vocabulary {vocab}; our GPT built with bias=True so both have GPT-2's parameters (ours: exact GELU, "
          f"GPT-2: tanh GELU). Median of {reps} interleaved repetitions of the paired ratio `our time / GPT-2's` (= GPT-2's tokens/s "
          f"/ ours; > 1: ours is slower; the goal: <= 1.2).", "",
          "| size | batch | ours tokens/s | GPT2LMHeadModel tokens/s | our time / GPT-2's | load |", "|---|---|---|---|---|---|"]
    md += [f"| {r['size']} | {r['batch']} | {r['ours tokens/s']:,.0f} | {r['GPT2LMHeadModel tokens/s']:,.0f} | "
           f"{r[OURS_VS_GPT2]:.2f} | {r['load'][0]} |" for r in rows]
    md += ["", "The recipes' models with their generation presets (random weights, batch 1, tokens/s of new tokens):", "",
           "| model | new tokens | tokens/s | load |", "|---|---|---|---|"]
    md += [f"| {p['model']} | {p['new tokens']} | {p['tokens/s (median, batch 1)']:,.1f} | {p['load'][0]} |" for p in presets]
    return {"rows": rows + presets, "markdown": "\n".join(md)}


# ----------------------------------------------------------------------------------------------------------------
# 5. MoE expert implementations


def bench_moe(quick: bool) -> dict:
    tok = poem_tokenizer()
    reps, steps = (2, 2) if quick else (3, 4)
    base = model_from("train_mixtral/mixtral_tiny.json", len(tok), pad_token_id=tok.pad_token_id)
    # batched_mm gathers each routed token's expert weights ((tokens x top-k) copies of [256 x 1024] + [512 x 256]
    # floats: ~1.6 MB per choice, forward and backward); at the recipe's 12 x 128 it took > 10 GB here, so it runs at
    # a small batch only
    shapes = [((4, 64), ["eager", "batched_mm", "grouped_mm"]), ((12, 128), ["eager", "grouped_mm"])]
    rows = []
    for (batch, seq), impls in shapes:
        torch.manual_seed(1)
        ids = torch.randint(0, len(tok), (batch, seq))
        steppers, first_loss, grads = {}, {}, {}
        for impl in impls:
            m = copy.deepcopy(base).train()
            m.set_experts_implementation(impl)
            out = m(input_ids=ids, labels=ids)
            out.loss.backward()
            first_loss[impl] = out.loss.item()
            grads[impl] = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
            m.zero_grad(set_to_none=True)
            steppers[impl] = train_step_fn(m, torch.optim.AdamW(m.parameters(), lr=5e-5))
            steppers[impl]({"input_ids": ids, "labels": ids})  # warm-up

        def run(impl):
            def fn():
                t = time.perf_counter()
                for _ in range(steps):
                    steppers[impl]({"input_ids": ids, "labels": ids})
                return (time.perf_counter() - t) / steps
            return fn
        la = load_avg()
        times = interleaved({i: run(i) for i in impls}, reps)
        rows += [{"batch x seq": f"{batch} x {seq}", "experts_implementation": i,
                  "s/step (median)": round(statistics.median(times[i]), 4),
                  "x eager": round(median_ratio(times[i], times["eager"]), 3), "loss": round(first_loss[i], 6),
                  "max |grad - eager grad|": float((grads[i] - grads["eager"]).abs().max()), "load": la} for i in impls]
        del steppers, grads
    md = [f"Mixtral tiny (4 layers, 8 experts, top-2, 256 wide), one training step (forward with the router aux "
          f"loss, backward, clip, AdamW) per implementation, switched with `model.set_experts_implementation()` "
          f"(the config's `experts_implementation`; transformers {__import__('transformers').__version__}, whose "
          f"default is grouped_mm when it can dispatch, else eager). Same weights, same batch; median of {reps} "
          f"interleaved repetitions of {steps} steps. batched_mm materialises every routed token's expert weights "
          f"(> 10 GB at 12 x 128 on this machine), so it is timed at 4 x 64 only.", "",
          "| batch x seq | experts_implementation | s/step | x eager | loss (same batch) | max abs grad diff vs eager | load |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['batch x seq']} | {r['experts_implementation']} | {r['s/step (median)']:.4f} | {r['x eager']:.3f} | "
           f"{r['loss']:.6f} | {r['max |grad - eager grad|']:.2e} | {r['load'][0]} |" for r in rows]
    big = [r for r in rows if r["batch x seq"] == "12 x 128"]
    fastest = min(big, key=lambda r: r["x eager"])
    md += ["", f"Fastest at the recipe's batch (12 x 128): **{fastest['experts_implementation']}**."]
    # the router-health flag on the reference log's table
    from shared.models.moe import router_health
    md += ["", "Router-health flag (shared/models/moe.py `router_health`) on train_mixtral/logs/train_log.md's expert-load table "
           "(shares as printed, rounded to 0.1%, so max/min differs from the log's count-based figure):", "",
           "| layer | top-2 share | max/min | flag |", "|---|---|---|---|"]
    for layer, shares in enumerate(REFERENCE_EXPERT_SHARES):
        h = router_health(torch.tensor(shares), top_k=2)
        md.append(f"| {layer} | {h['top_k_share']:.1f}% | {h['max_min']:.1f} | {h['flag'] or '–'} |")
    return {"rows": rows, "markdown": "\n".join(md)}


# the settings the Mixtral document leaves open; transformers' Mixtral has no router z-loss (it would be a loss of our
# own), so the sweep covers the auxiliary-loss coefficient, how the loss is taken (over all layers pooled, as
# transformers does, or per layer: shared/models/moe.py) and the router's input jitter
ROUTER_SETTINGS = [  # every key explicit: the config's own defaults are what this sweep chose
    ("pooled (transformers), coef 0.02: the document", {"router_aux_loss_per_layer": False, "router_aux_loss_coef": 0.02,
                                                        "router_jitter_noise": 0.0}),
    ("pooled, coef 0.1", {"router_aux_loss_per_layer": False, "router_aux_loss_coef": 0.1, "router_jitter_noise": 0.0}),
    ("pooled, coef 0.02, jitter 0.01", {"router_aux_loss_per_layer": False, "router_aux_loss_coef": 0.02,
                                        "router_jitter_noise": 0.01}),
    ("per layer, coef 0.02", {"router_aux_loss_per_layer": True, "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0}),
    ("per layer, coef 0.1", {"router_aux_loss_per_layer": True, "router_aux_loss_coef": 0.1, "router_jitter_noise": 0.0}),
]


def expert_table(log: Path) -> list[list[float]]:
    """The expert-load shares (percent per expert, one row per layer) from a Mixtral run's train_log.md."""
    lines = log.read_text(encoding="utf-8").split("## Expert load", 1)[1].split("\n## ", 1)[0].splitlines()
    header = next(line for line in lines if line.startswith("| layer"))
    experts = sum(1 for cell in header.split("|") if cell.strip()[:1] == "e" and cell.strip()[1:].isdigit())
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    return [[float(c) for c in row[1:1 + experts]] for row in cells if row[0].isdigit()]


def bench_router(quick: bool, steps: int | None = None) -> dict:
    from bench.compare import ARCHS, read_run, train_one
    from shared.models.moe import router_health

    steps = steps or (100 if quick else 300)
    recipe = "recipes/compare/mixtral.yaml"
    bins = REPO_ROOT / "runs" / "minigl" / "data" / "final"
    if not (bins / "meta.json").is_file():
        subprocess.run(["make", "-C", str(REPO_ROOT), "minigl-data", "PUBLISH=no"], check=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="slm-router-") as tmp:
        for label, cfg in ROUTER_SETTINGS:
            la = load_avg()
            out = Path(tmp) / label.split(":")[0].replace(" ", "_").replace(",", "")
            overrides = [f"run.output_root={out}", *[f"model.overrides.{k}={v}" for k, v in cfg.items()]]
            train_one(f"mixtral, {label}", ARCHS["mixtral"], REPO_ROOT / recipe, steps, overrides, out / "mixtral.out.txt")
            final = out / "compare" / "mixtral" / "final"
            run = read_run(final)
            shares = expert_table(final / "train_log.md")
            health = [router_health(torch.tensor(r), top_k=2) for r in shares]
            rows.append({"setting": label, "config": cfg, "val_loss": run["final_eval"]["eval_loss"],
                         "shares": shares, "health": health, "load": la,
                         "collapsed layers": sum(h["flag"].startswith("collapsed") for h in health),
                         "min share": min(min(r) for r in shares), "worst top-2": max(h["top_k_share"] for h in health)})
    base = rows[0]
    md = [f"`{recipe}` (Mixtral, 4 layers x 128, 8 experts of 172, top-2; 3.25M parameters) trained from scratch "
          f"for {steps} steps x 16 x 128 tokens on MiniGLM's Chinese bins, seeded, once per setting through "
          f"train_mixtral/train.py; the expert load is counted on validation tokens after training, the loss is the "
          f"validation language-model loss (no router loss). transformers' Mixtral has no router z-loss, so the "
          f"sweep covers the coefficient, the jitter and how the balance loss is taken: pooled over all layers "
          f"(transformers' `load_balancing_loss_func`) or per layer (shared/models/moe.py).", "",
          "| setting | val loss | vs the document | collapsed layers | worst layer's top-2 share | least-used expert | load |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['setting']} | {r['val_loss']:.4f} | {r['val_loss'] - base['val_loss']:+.4f} | "
           f"{r['collapsed layers']} of {len(r['health'])} | {r['worst top-2']:.1f}% | {r['min share']:.1f}% | "
           f"{r['load'][0]} |" for r in rows]
    healthy = [r for r in rows if r["collapsed layers"] == 0 and r["val_loss"] <= base["val_loss"] + 0.01]
    best = min(healthy, key=lambda r: r["val_loss"]) if healthy else None
    md += ["", f"Every expert in use without a worse loss (no collapsed layer, loss within +0.01): "
           f"**{best['setting'] if best else 'none of these settings'}**."]
    other = best or min(rows[1:], key=lambda r: (r["collapsed layers"], r["val_loss"]))
    experts = " | ".join(f"e{e}" for e in range(len(base["shares"][0])))
    md += ["", f"Expert shares per layer (%), the document's setting beside {other['setting']}:", "",
           f"| layer | {experts} | flag || {experts} | flag |", "|---|" + "---|" * (2 * len(base["shares"][0]) + 3)]
    for layer, (a, b) in enumerate(zip(base["shares"], other["shares"])):
        md.append(f"| {layer} | " + " | ".join(f"{x:.1f}" for x in a) + f" | {base['health'][layer]['flag'] or '–'} || "
                  + " | ".join(f"{x:.1f}" for x in b) + f" | {other['health'][layer]['flag'] or '–'} |")
    return {"rows": rows, "best": best["setting"] if best else None, "markdown": "\n".join(md)}


# train_mixtral/logs/train_log.md, "Expert load after training": share of routed tokens per expert, per layer
REFERENCE_EXPERT_SHARES = [
    [19.6, 7.8, 2.8, 2.9, 26.5, 28.1, 4.0, 8.2],
    [0.1, 2.4, 42.7, 44.9, 2.9, 4.8, 1.6, 0.6],
    [28.5, 13.8, 4.7, 0.8, 1.2, 7.5, 42.8, 0.7],
    [0.1, 32.7, 2.8, 1.8, 11.5, 3.9, 2.9, 44.3],
]


# ----------------------------------------------------------------------------------------------------------------
# 6. the bin writer's tokens/s with parallel workers (tokenizer training at scale: make bench-tokenizer)


def bench_bins(quick: bool, chars: int | None = None) -> dict:
    from datasets import Dataset

    from shared.data.bins import write_bins
    from bench.textgen import NgramModel, bundled_chinese_texts

    chars = chars or (2_000_000 if quick else 20_000_000)
    t0 = time.perf_counter()
    docs = list(NgramModel.from_texts(bundled_chinese_texts(), order=4).generate(chars, seed=0))
    made = time.perf_counter() - t0
    tok = poem_tokenizer()
    split = {"train": Dataset.from_dict({"text": docs})}
    workers = sorted({1, 2, os.cpu_count() or 1})
    rows = []
    for n in workers:
        with tempfile.TemporaryDirectory(prefix="slm-bins-") as d:
            la = load_avg()
            t = time.perf_counter()
            meta = write_bins(d, split, tok, num_proc=n)
            sec = time.perf_counter() - t
        tokens = meta["splits"]["train"]["tokens"]
        rows.append({"workers": n, "seconds": round(sec, 2), "tokens": tokens, "tokens/s": round(tokens / sec),
                     "sha256": meta["splits"]["train"]["sha256"], "load": la})
    for r in rows:
        r["x 1 worker"] = round(rows[0]["seconds"] / r["seconds"], 2)
    same = len({r["sha256"] for r in rows}) == 1
    md = [f"`shared/data/bins.write_bins` (the writer behind every `*-data` stage: documents tokenised in chunks by a "
          f"process pool, appended in document order) on {chars:,} characters of generated Chinese text "
          f"({len(docs):,} documents, `bench/textgen.py`, made in {made:.0f} s) with the bench's BPE tokenizer "
          f"(vocab {len(tok)}). The bins are {'byte-identical' if same else 'NOT identical'} for every worker count "
          f"(sha256). {os.cpu_count()} CPU cores.", "",
          "| workers (num_proc) | seconds | tokens | tokens/s | x 1 worker | load |", "|---|---|---|---|---|---|"]
    md += [f"| {r['workers']} | {r['seconds']:.1f} | {r['tokens']:,} | {r['tokens/s']:,} | {r['x 1 worker']:.2f} "
           f"| {r['load'][0]} |" for r in rows]
    table = REPO_ROOT / "train_phi2" / "logs" / "tokenizer_bench.md"
    if table.is_file():
        md += ["", f"Tokenizer training at scale (`make bench-tokenizer SIZE=100M|1B`, its own process per run; "
               f"from `{table.relative_to(REPO_ROOT)}`, measured when that file says):", ""]
        md += [line for line in table.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    return {"rows": rows, "identical": same, "markdown": "\n".join(md)}


# ----------------------------------------------------------------------------------------------------------------
# 7. serving (make serve): requests/s and time to first token, 1 and 8 concurrent clients


def serving_runs(root: Path, new: int) -> dict[str, Path]:
    """MiniGLM's CPU-sized GPT (minigl/gpt_tiny.json, random weights, the bench's BPE) saved as a run, with a greedy
    preset of exactly `new` tokens per answer, and the same run exported to GPT2LMHeadModel (shared/inference/export.py)."""
    import yaml

    from shared.inference.export import export
    from shared.inference.generate import generation_config

    tok = poem_tokenizer()
    model = model_from("minigl/gpt_tiny.json", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.eos_token_id)
    preset = {"do_sample": False, "max_new_tokens": new, "min_new_tokens": new,
              "chat_format": {"user": "Question: {text}\nAnswer:\n", "end": "<|endoftext|>"}}
    final = root / "minigl" / "bench" / "final"
    model.generation_config = generation_config(preset, tok)
    model.save_pretrained(final)
    tok.save_pretrained(final)
    (final / "recipe.yaml").write_text(yaml.safe_dump({"generation": preset}, allow_unicode=True), encoding="utf-8")
    export(final, root / "minigl" / "bench-gpt2" / "final")
    return {"ours": final, "gpt2": root / "minigl" / "bench-gpt2" / "final"}


def serve_process(root: Path, run: str, port: int, continuous_batching: bool) -> subprocess.Popen:
    """`python -m shared.inference.serve` (what make serve runs) in its own process; returns once /v1/models answers."""
    import httpx

    cmd = [sys.executable, "-m", "shared.inference.serve", "minigl", "--root", str(root), "--run", run, "--port", str(port)]
    proc = subprocess.Popen(cmd + (["--continuous-batching"] if continuous_batching else []), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not start: {' '.join(cmd)}")
        time.sleep(0.5)


def client_load(url: str, model: str, questions: list[str], clients: int, per_client: int) -> dict:
    """`clients` threads, each sending `per_client` streamed chat requests one after another (the openai client):
    requests/s over the wall time, time to the first content chunk per request, completion tokens/s."""
    import threading

    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    ttft, tokens, errors = [], [], []

    def one(question: str):
        t = time.perf_counter()
        first, n = None, 0
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                stream=True)
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t
            if chunk.usage:
                n = chunk.usage.completion_tokens
        ttft.append(first if first is not None else time.perf_counter() - t)
        tokens.append(n)

    def worker(c: int):
        try:
            for i in range(per_client):
                one(questions[(c * per_client + i) % len(questions)])
        except Exception as e:  # noqa: BLE001  (counted and reported)
            errors.append(repr(e))

    la = load_avg()
    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    ttft.sort()
    return {"clients": clients, "requests": len(ttft), "errors": len(errors), "seconds": round(wall, 2),
            "requests/s": round(len(ttft) / wall, 2), "ttft median ms": round(1000 * statistics.median(ttft)),
            "ttft p90 ms": round(1000 * ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))]),
            "tokens/request": round(statistics.mean(tokens), 1), "tokens/s": round(sum(tokens) / wall, 1),
            "load": la}


def bench_serving(quick: bool) -> dict:
    import socket

    from shared.data.sources import read_jsonl

    new, per_client = (16, 2) if quick else (32, 4)
    questions = [r["Question"] for r in read_jsonl(REPO_ROOT / "data/qa/qa.jsonl")]
    servers = [("our GPT (slm_gpt), sequential generate()", "ours", False),
               ("exported GPT2LMHeadModel, sequential generate()", "gpt2", False),
               ("exported GPT2LMHeadModel, continuous batching", "gpt2", True)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="slm-serve-") as d:
        root = Path(d) / "runs"
        runs = serving_runs(root, new)
        for label, which, cb in servers:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            proc = serve_process(root, runs[which].parent.name, port, cb)
            try:
                url, model = f"http://127.0.0.1:{port}/v1", f"minigl/{runs[which].parent.name}"
                client_load(url, model, questions, 1, 2)  # warm-up (and, under continuous batching, its start)
                for clients in (1, 8):
                    r = client_load(url, model, questions, clients, per_client * (2 if clients == 1 else 1))
                    rows.append({"server": label, **r})
                    print(rows[-1], flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    md = [f"`make serve` (transformers' OpenAI server through shared/inference/serve.py, its own process) serving MiniGLM's "
          f"CPU-sized GPT (minigl/gpt_tiny.json: 4 layers, 128 wide, random weights, the bench's {len(poem_tokenizer())}"
          f"-token BPE), greedy, {new} new tokens per answer; clients are threads of the bench process using the "
          f"`openai` client, each sending streamed chat requests (MiniGLM's QA questions) one after another. "
          f"Time to first token (TTFT) is the time to the first content chunk, queueing included. Continuous "
          f"batching needs transformers' attention interface: our GPT can't use it, its GPT-2 export can. "
          f"{os.cpu_count()} CPU cores shared by the server and the clients.", "",
          "| server | clients | requests | requests/s | TTFT median | TTFT p90 | tokens/s | errors | load |",
          "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['server']} | {r['clients']} | {r['requests']} | {r['requests/s']:.2f} | {r['ttft median ms']} ms | "
           f"{r['ttft p90 ms']} ms | {r['tokens/s']:,.0f} | {r['errors']} | {r['load'][0]} |" for r in rows]
    return {"rows": rows, "markdown": "\n".join(md)}


# ----------------------------------------------------------------------------------------------------------------
# 8. each recipe's training throughput + peak memory (synthetic tokens)


def bench_throughput(path: str, overrides: list[str], steps: int, warmup: int) -> dict:
    from shared.models.registry import build_model, count_parameters, model_config
    from shared.config.recipe import load_recipe

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
    return {"recipe": f"{path} {' '.join(overrides)}".strip(), "params": count_parameters(model)["total"],
            "batch": batch, "block": block, "gc": bool(recipe.training.get("activation_checkpointing")),
            "s/step": round(seconds, 4), "tokens/s": round(batch * block / seconds, 1),
            "peak GiB": round(memory / 2**30, 2), "where": "GPU" if device == "cuda" else "process RSS", "load": load_avg()}


def throughput_section(groups: list[tuple[str, list[str]]], quick: bool) -> dict:
    rows = [bench_throughput(p, o, 2 if quick else 5, 1 if quick else 2) for p, o in groups]
    md = ["Full optimizer steps at each recipe's micro-batch and block size, synthetic tokens (absolute figures: "
          "machine- and load-dependent; peak memory on CPU is the process's high-water RSS, cumulative).", "",
          "| recipe | parameters | batch x block | grad. checkpointing | s/step | tokens/s | peak memory | load |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['recipe']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['block']} | {'yes' if r['gc'] else 'no'} | "
           f"{r['s/step']:.3f} | {r['tokens/s']:,.0f} | {r['peak GiB']:.2f} GiB ({r['where']}) | {r['load'][0]} |"
           for r in rows]
    return {"rows": rows, "markdown": "\n".join(md)}


# ----------------------------------------------------------------------------------------------------------------


TITLES = {"packing": "1. Packing vs padding (useful tokens/s; goal: packing >= 3x pad-to-max)",
          "engine": "2. Engine overhead: Trainer path vs bare loop (goal: <= 1.1x)",
          "shakespeare": "3. nanoGPT shakespeare-char CPU workload (Trainer vs bare loop)",
          "generation": "4. Generation (goal: ours within 1.2x of GPT2LMHeadModel)",
          "moe": "5. MoE expert implementations and the router-health flag",
          "router": "5b. Router health: load-balancing settings (the same Mixtral, data and budget)",
          "bins": "6. Token bins with parallel workers; tokenizer training at scale",
          "serving": "7. Serving (make serve): requests/s and time to first token, 1 and 8 clients",
          "scale": "8. Scale: the main job's data path at 10M / 100M / 1B characters (goals: 1B in <= 4 GB peak, "
                   "a 2-step run's final evaluation < 5 min)",
          "throughput": "Training throughput and peak memory per recipe"}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="throughput section: recipe YAML files, each optionally followed "
                        "by key=value overrides (default: the phi3 and mixtral pretrain recipes)")
    parser.add_argument("--quick", action="store_true", help="smaller runs (make bench-quick)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench"), help="folder for results.md / results.json")
    parser.add_argument("--update", action="store_true", help="keep the other sections of the existing results.json "
                        "and rerun only --only's (each section records the commit and command that measured it)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; on a CPU shared "
                        "with other jobs 1 avoids intra-op barrier stalls)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        parser.error(f"unknown sections {bad}; choose from {SECTIONS}")
    groups: list[tuple[str, list[str]]] = []
    for item in args.recipes or ["recipes/phi3/pretrain.yaml", "recipes/mixtral/pretrain.yaml"]:
        if "=" in item and groups:
            groups[-1][1].append(item)
        else:
            groups.append((item, []))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "results-quick" if args.quick else "results"
    env = environment(argv)
    print(json.dumps(env, indent=1), flush=True)
    results: dict = {"environment": env, "quick": args.quick, "sections": {}}
    previous = out / f"{stem}.json"
    if args.update and previous.is_file():
        results = json.loads(previous.read_text(encoding="utf-8"))
    for name in only:
        t = time.perf_counter()
        print(f"\n== {TITLES[name]}", flush=True)
        if name == "shakespeare":
            r = bench_shakespeare(args.quick, out)
        elif name == "throughput":
            r = throughput_section(groups, args.quick)
        elif name == "scale":  # its own module: it measures in subprocesses, and 1B runs by hand (an hour)
            from bench.scale import bench_scale
            r = bench_scale(args.quick)
        else:
            r = globals()[f"bench_{name}"](args.quick)
        r["seconds"] = round(time.perf_counter() - t, 1)
        r["load after"] = load_avg()
        r["measured"] = {k: env[k] for k in ("command", "git commit", "date")}
        results["sections"][name] = r
        results["sections"] = {k: results["sections"][k] for k in SECTIONS if k in results["sections"]}
        print(r["markdown"], flush=True)
        print(f"({r['seconds']} s; load after {r['load after']})", flush=True)
        write(out, stem, results)
    print(f"\nwritten: {out / (stem + '.md')}, {out / (stem + '.json')}")


def write(out: Path, stem: str, results: dict) -> None:
    env = results["environment"]
    lines = [f"# Benchmarks{' (quick)' if results['quick'] else ''}", "",
             "Written by `bench/suite.py`; every figure below comes from the run described here. Ratios are "
             "measured inside one process with the compared paths interleaved; the load average beside each "
             "table says how busy the machine was (on a shared CPU, absolute speeds mean little).", "",
             f"- **command**: `{env['command']}`", f"- **date**: {env['date']}", f"- **hardware**: {env['hardware']}",
             f"- **versions**: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             f"- **git commit**: {env['git commit']}", f"- **niceness**: {env['nice']}",
             f"- **load average (1, 5, 15 min) at start**: {env['load at start']}", ""]
    for name, r in results["sections"].items():
        lines += [f"## {TITLES[name]}", "", r["markdown"], "", f"_{r['seconds']} s; load after: {r['load after']}_", ""]
        m = r.get("measured", env)
        if m["git commit"] != env["git commit"]:
            lines[-1:] = [f"_Measured apart from the rest: `{m['command']}` at commit {m['git commit']}, {m['date']}._", ""]
    gpu = out / "gpu_check.md"
    lines += ["## GPU check (`make gpu-check`)", ""]
    if gpu.is_file():
        lines += [f"On an NVIDIA GPU: [{gpu.name}]({gpu.name}) (its own run, command and GPU named there).", ""]
    else:
        lines += ["Not run: no NVIDIA GPU has been available to this project yet. `make gpu-check` "
                  "(bench/gpu_check.py, < 8 minutes) writes bench/gpu_check.md where one is.", ""]
    (out / f"{stem}.md").write_text("\n".join(lines), encoding="utf-8")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
