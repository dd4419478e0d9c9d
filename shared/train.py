"""Training: recipe + data + model -> HF Trainer (or a TRL trainer) -> checkpoints, final HF folder, train_log.md.

Every recipe trains through `train()`, so every run gets the same precision choice, logging, checkpointing,
crash-safe resume, non-finite-loss guard, final safetensors folder and run log, under plain Python, torchrun,
`accelerate launch` or the `deepspeed` launcher alike.

Run layout:  runs/<model.name>/<run.name>/checkpoint-N/   resumable Trainer checkpoints (marked complete)
                                          final/           model.safetensors + config + tokenizer + recipe.yaml
                                                           + train_log.md + loss.png (AutoModelForCausalLM-loadable)
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from datasets import Dataset
from transformers import (AutoConfig, AutoModelForCausalLM, DataCollatorForLanguageModeling, PreTrainedModel,
                          Trainer, TrainingArguments)
from transformers.trainer_utils import IntervalStrategy

from .checkpoints import CompleteMarker, find_resume
from .data import Provenance, hub_reachable, load_source, pack, split_train_eval, to_texts, warn_loudly
from .errors import UserError
from .guards import NonFiniteLossGuard, RunFinished, StopIfFinished, disk_full_is_a_user_error
from .recipe import Recipe, resolve_path
from .runlog import RunLog, git_commit, hardware, now_utc, package_versions, redacted_command
from .tokenizer import TokenizerProvenance, load_tokenizer

DEFAULT_TRAINING = dict(
    report_to="none", logging_steps=10, logging_first_step=True, logging_nan_inf_filter=False,
    eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, include_num_input_tokens_seen=True,
    lr_scheduler_type="cosine", warmup_steps=0, seed=42, dataloader_num_workers=0, disable_tqdm=False,
)


@dataclass
class LMData:
    """What a causal-LM recipe trains on, with where it came from."""
    tokenizer: object
    train: Dataset
    eval: Dataset | None
    data: Provenance
    tokenizer_source: TokenizerProvenance


def lm_data(recipe: Recipe) -> LMData:
    """Source -> texts (template) -> deterministic split -> tokenizer (Hub or trained) -> packed token blocks."""
    records, prov = load_source(recipe.data)
    texts = to_texts(records, recipe.data, prov.source)
    train_texts, eval_texts = split_train_eval(texts, recipe.data.validation_fraction, recipe.training.get("seed", 42))
    tokenizer, tok_prov = load_tokenizer(recipe.tokenizer, train_texts, prov.fingerprint, cache_root(recipe),
                                         recipe.model.trust_remote_code)
    train = pack(train_texts, tokenizer, recipe.data.block_size, "train")
    evals = pack(eval_texts, tokenizer, recipe.data.block_size, "validation") if eval_texts is not None else None
    prov.notes.append(f"{len(train_texts)} train / {len(eval_texts) if eval_texts is not None else 0} validation "
                      f"records -> {len(train)} / {len(evals) if evals is not None else 0} blocks of "
                      f"{recipe.data.block_size} tokens")
    return LMData(tokenizer, train, evals, prov, tok_prov)


def cache_root(recipe: Recipe) -> Path:
    return recipe.run_dir.parent.parent / ".cache"


# ----------------------------------------------------------------------------------------------------------------
# models


def model_config(recipe: Recipe, tokenizer=None, **fixed):
    """The recipe's JSON config (or Hub config) + overrides; vocab and special ids follow the tokenizer."""
    ref = recipe.model.config
    if ref is None:
        raise UserError(f"{recipe.where('model.config')}: model.config is required to build a model")
    if resolve_path(ref).is_file():
        config = config_from_json(ref)
    else:
        reason = "the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE=1)"
        config = None
        if hub_reachable():
            try:
                config = AutoConfig.from_pretrained(ref, trust_remote_code=recipe.model.trust_remote_code)
            except Exception as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if config is None:
            if not recipe.model.config_fallback:
                raise UserError(f"model.config: cannot load '{ref}' (not a file here; {reason})")
            warn_loudly(f"CONFIG FALLBACK: using {recipe.model.config_fallback} for '{ref}': {reason}")
            config = config_from_json(recipe.model.config_fallback)
    for key, value in {**recipe.model.overrides, **fixed}.items():
        if not hasattr(config, key):
            raise UserError(f"{recipe.where('model.overrides')}: model.overrides.{key} is not a field of "
                            f"{type(config).__name__}")
        setattr(config, key, value)
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    check_config(config, ref)
    return config


def config_from_json(ref: str):
    try:
        data = json.loads(resolve_path(ref).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{ref}:{e.lineno}: malformed JSON ({e.msg})") from None
    except OSError:
        raise UserError(f"model config not found: {ref}") from None
    if "model_type" not in data:
        raise UserError(f"{ref}: the config needs a model_type (e.g. \"phi3\")")
    data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" keys document the file
    try:
        return AutoConfig.for_model(**data)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{ref}: {' '.join(str(e).split())[:200]}") from None


def check_config(config, where: str) -> None:
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if hidden and heads and hidden % heads:
        raise UserError(f"{where}: num_attention_heads={heads} does not divide hidden_size={hidden}")
    kv = getattr(config, "num_key_value_heads", None)
    if heads and kv and heads % kv:
        raise UserError(f"{where}: num_key_value_heads={kv} does not divide num_attention_heads={heads}")
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)) and not 0 <= value < 1:
            raise UserError(f"{where}: {key} must be in [0, 1), got {value}")
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value <= 0:
            raise UserError(f"{where}: {key} must be > 0, got {value}")


def build_model(recipe: Recipe, config) -> PreTrainedModel:
    """Random init from `config`, or the weights of `model.init_from` (a run, a folder or a Hub id).

    Create the TrainingArguments first (`training_arguments(recipe)`) and keep them: with a DeepSpeed ZeRO-3 config
    they make `from_pretrained` / `from_config` build the model already sharded across the GPUs (zero.Init), which
    is what lets a 46.7B model load at all.
    """
    torch.manual_seed(recipe.training.get("seed", 42))
    if recipe.model.init_from:
        source = resolve_final(recipe.model.init_from)
        try:
            return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=recipe.model.trust_remote_code)
        except OSError as e:
            raise UserError(f"model.init_from: cannot load '{recipe.model.init_from}' ({str(e).splitlines()[0]})") from None
    return AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)


def resolve_final(ref: str) -> str:
    """A run folder means its final/ model; anything else is passed through (local folder or Hub id)."""
    path = resolve_path(ref)
    if (path / "final" / "config.json").is_file():
        return str(path / "final")
    return str(path) if path.exists() else ref


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"total": total, "trainable": trainable, "embeddings": embeddings}


def describe_parameters(model: torch.nn.Module) -> str:
    n = count_parameters(model)
    text = f"{n['total']:,} ({n['total'] / 1e6:.2f}M); without embedding tables {(n['total'] - n['embeddings']) / 1e6:.2f}M"
    if n["trainable"] != n["total"]:
        text += f"; trainable {n['trainable']:,} ({100 * n['trainable'] / n['total']:.2f}%)"
    return text


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
    # use_cpu on a machine without CUDA also makes torchrun / accelerate runs data-parallel over CPU processes (gloo)
    return {"bf16": choice == "bf16", "fp16": choice == "fp16", "use_cpu": not torch.cuda.is_available()}


def training_arguments(recipe: Recipe, **fixed) -> TrainingArguments:
    kwargs = {**DEFAULT_TRAINING, **precision(recipe.run.precision), **recipe.training, **fixed,
              "output_dir": str(recipe.run_dir)}
    if kwargs.get("save_total_limit") == 1:
        raise UserError(f"{recipe.where('training.save_total_limit')}: training.save_total_limit must be >= 2 "
                        f"(or null): with 1, a crash while saving could leave no complete checkpoint")
    if kwargs.get("eval_strategy") == "no":
        kwargs.pop("load_best_model_at_end", None)
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"{recipe.source}: invalid training settings: {str(e).splitlines()[0]}") from None


def train(recipe: Recipe, model: PreTrainedModel, tokenizer, train_dataset: Dataset, eval_dataset: Dataset | None,
          *, title: str, facts: dict[str, str] | None = None, data_collator=None, trainer_cls=Trainer,
          trainer_kwargs: dict | None = None, callbacks: list | None = None, args: TrainingArguments | None = None,
          samples: Callable[[PreTrainedModel, object], str] | None = None,
          extra_sections: Callable[[PreTrainedModel], list[tuple[str, str]]] | None = None,
          publish_log: str | None = None) -> Trainer:
    """Train with resume, save the final HF folder atomically, write the run log; returns the Trainer."""
    run_dir = recipe.run_dir
    args = args or training_arguments(recipe)
    if eval_dataset is None:
        args.eval_strategy = IntervalStrategy.NO
    if getattr(args, "hub_token", None):  # the Trainer pickles args into every checkpoint (training_args.bin):
        os.environ["HF_TOKEN"] = args.hub_token  # hand the token to the Hub client through the environment instead
        args.hub_token = None  # (train_log.md redacts secret variables' values)
    resume = find_resume(run_dir, recipe.run.resume, is_main=args.process_index == 0)
    if resume:
        check_same_recipe(recipe, run_dir / RUN_RECIPE)
    if args.process_index == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_RECIPE).write_text(recipe.to_yaml(), encoding="utf-8")
    runlog = RunLog(title, {
        "date": now_utc(), "git commit": git_commit(), "command": f"`{redacted_command()}`",
        "hardware": hardware() + (f", {args.world_size} processes" if args.world_size > 1 else ""),
        "packages": package_versions(), "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "parameters": describe_parameters(model), **(facts or {}),
        "resumed from": str(resume.relative_to(run_dir)) if resume else "– (fresh start)",
    })
    if data_collator is None and not trainer_cls.__module__.startswith("trl"):  # TRL trainers bring their own
        data_collator = lm_collator(tokenizer)
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                          data_collator=data_collator, processing_class=tokenizer,
                          callbacks=[NonFiniteLossGuard(), CompleteMarker(), runlog, StopIfFinished(),  # guard first
                                     *(callbacks or [])],
                          **(trainer_kwargs or {}))
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
    metrics = trainer.evaluate() if eval_dataset is not None else {}
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    if metrics:
        runlog.add_section("Final evaluation", "\n".join(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}"
                                                         for k, v in metrics.items()))
    sync = ranks_in_sync(trainer)
    if sync:
        runlog.facts["ranks in sync"] = sync
    # every rank runs these: under ZeRO-3 each forward pass gathers the sharded weights collectively
    for heading, body in (extra_sections(trainer.model) if extra_sections else []):
        runlog.add_section(heading, body)
    if samples is not None:
        trainer.model.eval()
        runlog.add_section("Samples (the model's generation preset)", samples(trainer.model, tokenizer))
    runlog.add_section("Resolved recipe", f"```yaml\n{recipe.to_yaml()}```")
    with disk_full_is_a_user_error(run_dir):
        final = save_final(trainer, tokenizer, recipe, runlog)
    if trainer.is_world_process_zero():
        log = final / "train_log.md"
        print(f"\nrun saved: {final}\nlog: {log}", flush=True)
        if publish_log:
            dest = resolve_path(publish_log)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, dest)
            if (final / "loss.png").is_file():
                shutil.copyfile(final / "loss.png", dest.with_name("loss.png"))
            print(f"reference log published: {dest}", flush=True)
    return trainer


RUN_RECIPE = "recipe.yaml"  # the recipe the run's checkpoints were trained with
# what may change between a run and its resumption: how long, how often to log/evaluate/save, how to sample
RESUMABLE = ("training.num_train_epochs", "training.max_steps", "training.logging_steps", "training.logging_first_step",
             "training.eval_steps", "training.eval_strategy", "training.save_steps", "training.save_strategy",
             "training.save_total_limit", "training.per_device_eval_batch_size", "training.report_to",
             "training.disable_tqdm", "training.dataloader_num_workers", "run.resume", "run.output_root", "generation")


def check_same_recipe(recipe: Recipe, saved: Path) -> None:
    """Resuming with another model, tokenizer, data or optimiser setting would fail deep in the Trainer (shape
    mismatch) or, worse, silently mix two runs: name what changed and how to start over instead."""
    if not saved.is_file():
        return

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) and key.count(".") < 1 else {key: v})
        return out

    before, now = flat(yaml.safe_load(saved.read_text(encoding="utf-8")) or {}), flat(recipe.to_dict())
    changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
               if before.get(k) != now.get(k) and not k.startswith(RESUMABLE)]
    if changed:
        raise UserError(f"{saved.parent} was trained with another recipe ({'; '.join(changed[:4])}"
                        f"{'; ...' if len(changed) > 4 else ''}); its checkpoints can't continue this run: "
                        f"start over with RESUME=never (run.resume=never) or pick another RUN=<name>")


def lm_collator(tokenizer):
    """Causal-LM batches: labels = input_ids (the model shifts them), padding masked out with -100."""
    return DataCollatorForLanguageModeling(tokenizer, mlm=False)


def apply_lora(recipe: Recipe, model: PreTrainedModel) -> PreTrainedModel:
    """Wrap the model with peft LoRA adapters when the recipe has `model.lora` (fewer GPUs, same Trainer path)."""
    if not recipe.model.lora:
        return model
    from peft import LoraConfig, get_peft_model

    try:
        config = LoraConfig(task_type="CAUSAL_LM", **recipe.model.lora)
    except TypeError as e:
        raise UserError(f"{recipe.where('model.lora')}: model.lora: {e}") from None
    if recipe.training.get("activation_checkpointing"):
        model.enable_input_require_grads()
    return get_peft_model(model, config)


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


def save_final(trainer: Trainer, tokenizer, recipe: Recipe, runlog: RunLog | None = None) -> Path:
    """Write final/ (model, tokenizer, recipe, log) under a temporary name and swap it in, so a crash never leaves
    a half-written final model, or one without its log."""
    run_dir = recipe.run_dir
    tmp, final, old = run_dir / ".final-tmp", run_dir / "final", run_dir / ".final-old"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every rank takes part (DeepSpeed ZeRO-3 gathers the shards here)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(tmp))
        (tmp / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        if runlog is not None:
            runlog.write(tmp)
        for junk in ("training_args.bin",):  # pickled; the resolved recipe.yaml says the same, safely
            (tmp / junk).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return final
