"""Training: recipe + data + model -> transformers.Trainer, trl.SFTTrainer or trl.DPOTrainer (the recipe's
`trainer:` kind) -> checkpoints, the final HF folder, the run log.

Every stage that trains goes through `train()`, so every run gets the same precision choice, logging,
checkpointing, crash-safe resume, non-finite-loss guard, final safetensors folder and run log, under plain Python,
torchrun, `accelerate launch` or the `deepspeed` launcher alike, whichever trainer kind it uses.

    args = training_arguments(recipe)      # first: under DeepSpeed ZeRO-3 they shard the model as it is built
    config = models.model_config(recipe)   # checked before any data is read
    data = load_data(recipe)               # lm: packed blocks | bins: windows | sft: prompt/completion | dpo: +chosen/rejected
    model = models.build_model(recipe, config, data.tokenizer)
    train(recipe, model, data, args=args, title=..., publish_log=...)

is `main()`, which every model's train script calls with what is special about that model (its default recipe,
a trainer subclass, extra log lines). The Trainer itself is made by shared/training/build.py's `build_trainer()`,
the one the benchmarks use too.

Run layout:  runs/<model.name>/<run.name>/checkpoint-N/   resumable Trainer checkpoints (marked complete)
                                          final/           model.safetensors + config + generation_config (the
                                                           recipe's preset) + tokenizer + recipe.yaml + train_log.md
                                                           + loss.png + stage.json (AutoModelForCausalLM-loadable);
                                                           a chat model's tokenizer carries its chat template
                                          final/merged/    a LoRA run: the adapters merged into a full model
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from shared.data import bins
from shared.config import cli
from shared.models import registry as models
from shared.inference.chat import chat_template
from shared.training.build import NoDecayOnEmbeddingsTrainer, build_trainer  # noqa: F401 (train.NoDecay...: the scripts' name)
from shared.training.checkpoints import find_resume
from shared.data.sources import Provenance, load_source, pack, render, sample_for_eval, split_train_eval
from shared.config.errors import UserError
from shared.config.files import replace_folder
from shared.inference.generate import generation_config, samples_markdown
from shared.training.guards import RunFinished, disk_full_is_a_user_error
from shared.config.recipe import Recipe, trainer_classes, training_config_class
from shared.training.runlog import RunLog, publish, run_facts
from shared.config.runs import final_of
from shared.training.stage import check_replace, recipe_changes, write_marker
from shared.data.tokenizer import load_tokenizer

DEFAULT_TRAINING = dict(
    report_to="none", logging_steps=10, logging_first_step=True, logging_nan_inf_filter=False,
    eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, include_num_input_tokens_seen=True,
    lr_scheduler_type="cosine", warmup_steps=0, seed=42, dataloader_num_workers=0, disable_tqdm=False,
)
COLUMNS = {"lm": ("text",), "sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected")}


@dataclass
class Data:
    """What a recipe trains on, with where it came from (the run log's data and tokenizer lines)."""
    tokenizer: object
    train: Dataset
    eval: Dataset | None  # the whole validation split: evaluated once at the end
    provenance: Provenance
    tokenizer_source: Provenance
    eval_during: Dataset | None = None  # the seeded subset evaluated during training (data.eval_subset)
    notes: list[str] = field(default_factory=list)

    def facts(self) -> dict[str, str]:
        return {"data": self.provenance.describe(), "data split": "; ".join(self.provenance.notes + self.notes),
                "tokenizer": self.tokenizer_source.describe() + f" ({len(self.tokenizer)} tokens)"}


def load_data(recipe: Recipe) -> Data:
    """Source -> rendered columns (the trainer kind's) -> deterministic split -> tokenizer -> (lm) packed blocks;
    or, with `data.bins`, random windows of a token-bin stage's output."""
    spec, kind = recipe.data, recipe.trainer
    if spec.bins:
        return bin_data(recipe)
    templates = spec.templates or {"text": spec.template}
    if tuple(sorted(templates)) != tuple(sorted(COLUMNS[kind])):
        raise UserError(f"{recipe.where('data.templates')}: trainer {kind} needs data.templates for "
                        f"{', '.join(COLUMNS[kind])}, got {', '.join(templates) or 'none'}")
    records, prov = load_source(spec)
    if spec.fallback_template and not spec.templates and prov.source == spec.fallback:  # the bundled file's layout
        templates = {"text": spec.fallback_template}
    rows = render(records, spec, templates, prov.source)
    seed = recipe.training.get("seed", 42)
    train_rows, eval_rows = split_train_eval(rows, spec.validation_fraction, seed)
    corpus = train_rows if kind == "lm" else train_rows.map(
        lambda b: {"text": ["\n".join(r) for r in zip(*(b[c] for c in COLUMNS[kind]))]}, batched=True,
        remove_columns=list(COLUMNS[kind]))
    tokenizer, tok_prov = load_tokenizer(recipe.tokenizer, corpus, prov.fingerprint, cache_root(recipe),
                                         recipe.model.trust_remote_code)
    unit, cap = "records", None
    if eval_rows is not None and spec.eval_max_tokens:  # characters enough for the cap with any tokenizer
        n_all = len(eval_rows)
        eval_rows = sample_for_eval(eval_rows, list(COLUMNS[kind]), spec.eval_max_tokens * (4 if kind == "lm" else 1),
                                    seed)
        cap = n_all if len(eval_rows) < n_all else None
    if kind == "lm":  # TRL's trainers tokenise prompt/completion/chosen/rejected themselves
        train_rows = pack(train_rows, tokenizer, spec.block_size, "train", spec.add_bos, spec.num_proc)
        if eval_rows is not None:
            eval_rows = pack(eval_rows, tokenizer, spec.block_size, "validation", spec.add_bos, spec.num_proc)
            n_blocks = max(1, spec.eval_max_tokens // spec.block_size) if spec.eval_max_tokens else len(eval_rows)
            if len(eval_rows) > n_blocks:
                eval_rows = eval_rows.select(np.sort(np.random.default_rng(seed).permutation(len(eval_rows))[:n_blocks]))
        unit = f"blocks of {spec.block_size} tokens"
    notes = [f"{len(train_rows)} train / {len(eval_rows) if eval_rows is not None else 0} validation {unit}"]
    if cap:
        notes.append(f"the validation split ({cap:,} records) is cut to {eval_tokens(eval_rows, tokenizer, kind):,} "
                     f"tokens ({len(eval_rows):,} {unit}; data.eval_max_tokens={spec.eval_max_tokens:,}), a seeded "
                     f"random choice spread over the whole split")
    return Data(tokenizer, train_rows, eval_rows, prov, tok_prov, *eval_subset(eval_rows, spec.eval_subset, seed, notes))


def eval_tokens(rows, tokenizer, kind: str) -> int:
    if kind == "lm":
        return sum(len(x) for x in rows["input_ids"])
    return sum(len(tokenizer("".join(r[c] for c in COLUMNS[kind]), add_special_tokens=False).input_ids) for r in rows)


def eval_subset(rows, size: int | None, seed: int, notes: list[str]) -> tuple:
    """(the seeded subset evaluated during training, notes): the final evaluation reads all of `rows`."""
    if rows is None or size is None or len(rows) <= size:
        return rows, notes
    during = rows.shuffle(seed=seed).select(range(size))
    return during, notes + [f"evaluations during training use a fixed seeded subset of {size} (data.eval_subset), "
                            f"the final evaluation all {len(rows)}"]


def bin_data(recipe: Recipe) -> Data:
    """Token bins (shared/data/bins.py): training windows at positions drawn from (seed, index), so a resumed run reads
    what an uninterrupted one would; evaluation on fixed windows tiled over val.bin. The bins' own tokenizer."""
    spec, t = recipe.data, recipe.training
    folder = final_of(spec.bins, "data.bins")
    meta = bins.read_meta(folder)
    tokenizer, tok_prov = load_tokenizer(recipe.tokenizer, None, "", cache_root(recipe))
    if len(tokenizer) != meta["vocab_size"]:
        raise UserError(f"{recipe.where('tokenizer.name')}: the tokenizer has {len(tokenizer)} tokens but {folder} "
                        f"was written with {meta['vocab_size']}; use tokenizer.name: {spec.bins}")
    steps = t.get("max_steps", -1)
    per_step = t.get("per_device_train_batch_size", 8) * t.get("gradient_accumulation_steps", 1)
    train_set = bins.BinWindows(folder / "train.bin", spec.block_size, per_step * steps if steps > 0 else None,
                                seed=t.get("seed", 42))
    evals = during = None
    if (folder / "val.bin").is_file():
        most = max(1, spec.eval_max_tokens // spec.block_size) if spec.eval_max_tokens else None
        evals = bins.BinWindows(folder / "val.bin", spec.block_size, most, tiled=True)
        during = evals if spec.eval_subset is None or len(evals) <= spec.eval_subset else \
            bins.BinWindows(folder / "val.bin", spec.block_size, spec.eval_subset, tiled=True)
    prov = Provenance(source=f"{spec.bins} (token bins)", fingerprint=meta["splits"]["train"]["sha256"],
                      records=meta["splits"]["train"]["documents"])
    note = (f"{meta['splits']['train']['tokens']:,} train tokens -> {len(train_set)} random windows of "
            f"{spec.block_size} + 1 (seed {t.get('seed', 42)}); validation: {len(evals) if evals else 0} fixed windows")
    if evals is not None and evals.num_windows < evals.fit:
        note += (f" ({evals.num_windows * spec.block_size:,} of val.bin's {evals.n_tokens:,} tokens, "
                 f"data.eval_max_tokens={spec.eval_max_tokens:,}: windows spread evenly over the file)")
    if during is not evals:
        note += f", {len(during)} of them (spread evenly) during training"
    return Data(tokenizer, train_set, evals, prov, tok_prov, during, [note])


def main(argv: list[str], default_recipe: str, title: str, *, config_fixed: dict | None = None,
         trainer_cls: type | None = None, facts: Callable[[PreTrainedModel], dict[str, str]] | None = None,
         extra_sections: Callable[[PreTrainedModel, Data], list[tuple[str, str]]] | None = None) -> Trainer:
    """One training stage from the command line: `[recipe.yaml] [key=value ...] [--publish-log PATH]`."""
    recipe, opts = cli.parse(argv, default_recipe, title)
    args = training_arguments(recipe)
    config = models.model_config(recipe, **(config_fixed or {}))
    data = load_data(recipe)
    model = models.build_model(recipe, config, data.tokenizer)
    more = facts(model) if facts else {}
    print(f"{title}: {models.describe_parameters(model)}; vocab {config.vocab_size}"
          + "".join(f"; {k} {v}" for k, v in more.items()), flush=True)
    return train(recipe, model, data, args=args, title=f"{title}: train log (run {recipe.run.name})", trainer_cls=trainer_cls,
                 facts=more, publish_log=opts.publish_log,
                 extra_sections=(lambda m: extra_sections(m, data)) if extra_sections else None)


def cache_root(recipe: Recipe) -> Path:
    return recipe.run_dir.parent.parent / ".cache"


# ----------------------------------------------------------------------------------------------------------------
# training


def precision(choice: str) -> dict:
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            choice = "fp32"
    if choice == "fp16" and not torch.cuda.is_available():
        raise UserError("run.precision=fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    # explicit bf16/fp16 (TRL's configs default to bf16, which fails on a CPU); use_cpu on a machine without CUDA
    # also makes torchrun / accelerate runs data-parallel over CPU processes (gloo)
    return {"bf16": choice == "bf16", "fp16": choice == "fp16", "use_cpu": not torch.cuda.is_available()}


def training_arguments(recipe: Recipe, **fixed) -> TrainingArguments:
    """The recipe's `training` section as its trainer kind's config class (TrainingArguments/SFTConfig/DPOConfig)."""
    kwargs = {**DEFAULT_TRAINING, **precision(recipe.run.precision), **recipe.training, **fixed,
              "output_dir": str(recipe.run_dir)}
    if recipe.trainer in ("sft", "dpo"):
        kwargs.setdefault("max_length", recipe.data.block_size)
    # transformers 5 calls gradient_checkpointing* activation_checkpointing*: the old names warn at every use. TRL's
    # configs default the old one to True, so its default (on) is set here under the current name
    for old in ("gradient_checkpointing", "gradient_checkpointing_kwargs"):
        if old in kwargs:
            kwargs.setdefault(old.replace("gradient", "activation"), kwargs.pop(old))
    if recipe.trainer in ("sft", "dpo"):
        kwargs.setdefault("activation_checkpointing", True)
    if kwargs.get("save_total_limit") == 1:
        raise UserError(f"{recipe.where('training.save_total_limit')}: training.save_total_limit must be >= 2 "
                        f"(or null): with 1, a crash while saving could leave no complete checkpoint")
    if kwargs.get("eval_strategy") == "no":
        kwargs.pop("load_best_model_at_end", None)
    try:
        return training_config_class(recipe.trainer)(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"{recipe.source}: invalid training settings: {str(e).splitlines()[0]}") from None


def trainer_class(kind: str) -> type:
    return trainer_classes(kind)[0]


def train(recipe: Recipe, model: PreTrainedModel, data: Data, *, title: str, args: TrainingArguments | None = None,
          trainer_cls: type | None = None, facts: dict[str, str] | None = None, callbacks: list | None = None,
          extra_sections: Callable[[PreTrainedModel], list[tuple[str, str]]] | None = None,
          publish_log: str | None = None) -> Trainer:
    """Train with resume, save the final HF folder atomically, write (and publish) the run log; returns the Trainer.

    `trainer_cls`: a subclass of the recipe's trainer kind (e.g. MoETrainer); `extra_sections(model)`: more log
    sections after training. Samples come from the recipe's generation preset (`generation.prompts`)."""
    from shared.inference.generate import check_prompts

    run_dir, kind = recipe.run_dir, recipe.trainer
    # TRL 1.16's DPOTrainer asks the model for `is_gradient_checkpointing` (and toggles it by the old names) at every
    # reference pass: transformers' deprecation warnings about TRL's code, which no recipe can change
    warnings.filterwarnings("ignore", r"`(is_gradient_checkpointing|gradient_checkpointing_(enable|disable))` is "
                            r"deprecated", FutureWarning, r"transformers\.modeling_utils")
    # the samples come after training: a prompt that can't be encoded must stop the run before it, not after
    check_prompts(recipe.generation, data.tokenizer, recipe.where("generation.prompts"),
                  models.context_length(model.config))
    args = args or training_arguments(recipe)
    if data.eval is None:
        args.eval_strategy = IntervalStrategy.NO
    if getattr(args, "hub_token", None):  # the Trainer pickles args into every checkpoint (training_args.bin):
        os.environ["HF_TOKEN"] = args.hub_token  # hand the token to the Hub client through the environment instead
        args.hub_token = None  # (train_log.md redacts secret variables' values)
    check_replace(recipe)  # before anything is removed or trained
    resume = find_resume(run_dir, recipe.run.resume, is_main=args.process_index == 0)
    if resume:
        check_same_recipe(recipe, run_dir / RUN_RECIPE)
    if args.process_index == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_RECIPE).write_text(recipe.to_yaml(), encoding="utf-8")
    header = run_facts()
    if args.world_size > 1:
        header["hardware"] += f", {args.world_size} processes"
    runlog = RunLog(title, {
        **header, "trainer": f"{kind} ({trainer_cls.__name__ if trainer_cls else trainer_class(kind).__name__}, "
                             f"{type(args).__name__})",
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "parameters": models.describe_parameters(model), **data.facts(), **(facts or {}),
        "resumed from": str(resume.relative_to(run_dir)) if resume else "– (fresh start)",
    })
    trainer = build_trainer(kind, model, args, data.train, data.tokenizer, eval_dataset=data.eval_during,
                            trainer_cls=trainer_cls, runlog=runlog, callbacks=callbacks or [])
    if resume:
        print(f"resume: continuing from {resume}", flush=True)
    with disk_full_is_a_user_error(run_dir):
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except RunFinished:
            trainer.is_in_train = False
            runlog.log_history = list(trainer.state.log_history)
            print(f"resume: {resume.name} is already at max_steps={trainer.state.max_steps}, nothing left to train "
                  f"(run.resume=never starts over)", flush=True)
    final_metrics(trainer, data, kind, runlog)
    sync = ranks_in_sync(trainer)
    if sync:
        runlog.facts["ranks in sync"] = sync
    # every rank runs these: under ZeRO-3 each forward pass gathers the sharded weights collectively. Neither can
    # lose the trained model: a failure is recorded in the log and final/ is saved all the same.
    add_sections(runlog, "Extra sections", lambda: extra_sections(trainer.model) if extra_sections else [])
    if recipe.generation.get("prompts"):
        trainer.model.eval()
        heading = "Samples (the model's generation preset)"
        add_sections(runlog, heading, lambda: [(heading, samples_markdown(trainer.model, data.tokenizer,
                                                                          recipe.generation))])
    runlog.add_section("Resolved recipe", f"```yaml\n{recipe.to_yaml()}```")
    with disk_full_is_a_user_error(run_dir):
        final = save_final(trainer, data.tokenizer, recipe, runlog, title)
    if trainer.is_world_process_zero():
        print(f"\nrun saved: {final}\nlog: {final / 'train_log.md'}", flush=True)
        if publish_log:
            publish(final / "train_log.md", publish_log)
    return trainer


def add_sections(runlog: RunLog, heading: str, make: Callable[[], list[tuple[str, str]]]) -> None:
    """Add the (heading, body) sections `make()` returns to the log; if it fails, a section saying so instead (the
    finished model is saved either way)."""
    try:
        sections = make()
    except Exception as e:
        what = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
        print(f"warning: {heading.lower()} failed after training ({what}); final/ is saved without them", flush=True)
        sections = [(heading, f"**Failed after training** ({what}); the model was saved without this section.")]
    for title, body in sections:
        runlog.add_section(title, body)


def final_metrics(trainer: Trainer, data: Data, kind: str, runlog: RunLog) -> None:
    """Evaluate the validation split (within data.eval_max_tokens) once; perplexity where the loss is a mean token loss (lm, sft)."""
    if data.eval is None:
        return
    metrics = trainer.evaluate(eval_dataset=data.eval)
    if "eval_loss" in metrics and kind in ("lm", "sft"):
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    capped = any("data.eval_max_tokens" in n for n in data.notes)
    scope = (f"{len(data.eval)} validation samples (the split cut to data.eval_max_tokens: see the data split line)"
             if capped else f"all {len(data.eval)} validation samples")
    if data.eval_during is not data.eval:
        scope += f" (the table's eval loss: a fixed subset of {len(data.eval_during)})"
    runlog.add_section("Final evaluation", f"On {scope}" + (", answer tokens only" if kind == "sft" else "") + ":\n\n"
                       + "\n".join(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}"
                                   for k, v in metrics.items()))


RUN_RECIPE = "recipe.yaml"  # the recipe the run's checkpoints were trained with
# what may change between a run and its resumption: how long, how often to log/evaluate/save, how to sample
RESUMABLE = ("training.num_train_epochs", "training.max_steps", "training.logging_steps", "training.logging_first_step",
             "training.eval_steps", "training.eval_strategy", "training.save_steps", "training.save_strategy",
             "training.save_total_limit", "training.per_device_eval_batch_size", "training.report_to",
             "training.disable_tqdm", "training.dataloader_num_workers", "run.resume", "run.replace", "run.output_root",
             "generation")


def check_same_recipe(recipe: Recipe, saved: Path) -> None:
    """Resuming with another model, tokenizer, data or optimiser setting would fail deep in the Trainer (shape
    mismatch) or, worse, silently mix two runs: name what changed and how to start over instead."""
    if not saved.is_file():
        return
    changed = recipe_changes(saved, recipe, RESUMABLE)
    if changed:
        raise UserError(f"{saved.parent} was trained with another recipe ({'; '.join(changed[:4])}"
                        f"{'; ...' if len(changed) > 4 else ''}); its checkpoints can't continue this run: "
                        f"start over with RESUME=never (run.resume=never) or pick another RUN=<name>")


def ranks_in_sync(trainer: Trainer) -> str | None:
    """Under DDP every rank must end with the same weights: compare a checksum of each rank's parameters."""
    import hashlib

    import torch.distributed as dist

    if trainer.args.world_size < 2 or not dist.is_initialized() or trainer.is_deepspeed_enabled:
        return None  # (ZeRO-3 shards the weights: the gathered copy is what save_model writes)
    h = hashlib.sha256()
    for name, p in sorted(trainer.accelerator.unwrap_model(trainer.model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    sums: list = [None] * dist.get_world_size()
    dist.all_gather_object(sums, h.hexdigest())
    if len(set(sums)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {sums}")
    if trainer.is_world_process_zero():
        (Path(trainer.args.output_dir) / "rank_checksums.json").write_text(json.dumps(sums, indent=1))
    return f"{len(sums)} ranks, identical weights (sha256 {sums[0][:16]})"


def train_summary(trainer: Trainer, model: PreTrainedModel, runlog: RunLog) -> dict:
    """What comparisons of runs read (make compare, eval-minigl): time, steps, tokens, size, peak memory."""
    end = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    n = models.count_parameters(model)
    return {"train_runtime_s": end.get("train_runtime"), "steps": trainer.state.global_step,
            "tokens_seen": trainer.state.num_input_tokens_seen or None, "parameters": n["total"],
            "embedding_parameters": n["embeddings"], "peak_memory_bytes": (runlog.peak_memory or {}).get("bytes"),
            "peak_memory_of": (runlog.peak_memory or {}).get("of"), "hardware": runlog.facts.get("hardware")}


def is_lora(model) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def save_merged(model, tokenizer, final: Path, deepspeed: bool = False) -> None:
    """A LoRA run's final/ holds its adapters; final/merged/ the full model with them merged in (peft's
    merge_and_unload on a copy), which loads, generates and serves like any other run's final/."""
    if deepspeed:  # ZeRO shards the weights this process holds: a copy of them would be a copy of shards
        print(f"LoRA under DeepSpeed: {final.name}/ keeps the adapters only; merge them with peft "
              f"(AutoPeftModelForCausalLM.from_pretrained(final).merge_and_unload()) to get a full model", flush=True)
        return
    merged = copy.deepcopy(model).merge_and_unload()
    merged.generation_config = model.generation_config
    merged.save_pretrained(str(final / "merged"))
    tokenizer.save_pretrained(str(final / "merged"))
    shutil.copy2(final / "recipe.yaml", final / "merged" / "recipe.yaml")


def save_final(trainer: Trainer, tokenizer, recipe: Recipe, runlog: RunLog | None = None, title: str = "") -> Path:
    """Write final/ (model, generation preset, tokenizer, recipe, log, stage.json) under a temporary name and swap it
    in, so a crash never leaves a half-written final model, or one without its log."""
    run_dir = recipe.run_dir
    tmp, final = run_dir / ".final-tmp", run_dir / "final"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    # the recipe's preset as the model's generation_config.json: plain `model.generate()` decodes like `make generate`
    model.generation_config = generation_config(recipe.generation, tokenizer, recipe.where("generation"))
    trainer.save_model(str(tmp))  # every rank takes part (DeepSpeed ZeRO-3 gathers the shards here)
    if trainer.is_world_process_zero():
        limit = models.context_length(model.config)
        if limit:
            tokenizer.model_max_length = limit  # the real context, not transformers' 1e30 "unknown"
        template = chat_template(recipe.generation, recipe.where("generation.chat_format"))
        if template:  # a chat model: `apply_chat_template` (and every server) writes the turns it was trained on
            tokenizer.chat_template = template  # (none in the recipe: the tokenizer's own, e.g. its SFT model's)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        if is_lora(model):
            save_merged(model, tokenizer, tmp, deepspeed=trainer.is_deepspeed_enabled)
        if runlog is not None:
            runlog.write(tmp)
            (tmp / "log_history.json").write_text(json.dumps(runlog.log_history, indent=0), encoding="utf-8")
            (tmp / "train_summary.json").write_text(json.dumps(train_summary(trainer, model, runlog), indent=1),
                                                    encoding="utf-8")
        for junk in ("training_args.bin",):  # pickled; the resolved recipe.yaml says the same, safely
            (tmp / junk).unlink(missing_ok=True)
        write_marker(tmp, recipe, title or "training")
        replace_folder(tmp, final)  # old or new, never half (every rank writes tmp: not one atomic_folder block)
    trainer.accelerator.wait_for_everyone()
    return final
