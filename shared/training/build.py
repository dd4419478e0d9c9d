"""The one trainer builder: every Trainer slm trains with (train(), make bench's engine and throughput sections, and
through train() every stage and make compare) is made by `build_trainer()`, so a benchmark measures exactly the
trainer a run uses: the recipe kind's class (Trainer, trl.SFTTrainer, trl.DPOTrainer) or a subclass, with
LeanSteps mixed in, the collator the data needs, our callbacks in their order, and for DPO a frozen reference.

    trainer = build_trainer("lm", model, args, train_set, tokenizer, eval_dataset=evals, runlog=runlog)
"""
from __future__ import annotations

import copy

import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, Trainer, TrainingArguments

from shared.config.recipe import trainer_classes
from shared.data import bins
from shared.training.checkpoints import CompleteMarker
from shared.training.guards import NonFiniteLossGuard, StopIfFinished
from shared.training.runlog import RunLog


def build_trainer(kind: str, model: PreTrainedModel, args: TrainingArguments, train_dataset, tokenizer, *,
                  eval_dataset=None, trainer_cls: type | None = None, runlog: RunLog | None = None,
                  callbacks: list | tuple = ()) -> Trainer:
    """The Trainer for a recipe's `trainer:` kind (lm, sft, dpo); `trainer_cls`: a subclass of that kind's class
    (MoETrainer, NoDecayOnEmbeddingsTrainer). Token-bin windows carry their own shifted labels and are stacked, never
    padded; packed text blocks get the causal-LM collator; SFT and DPO data are collated by TRL. Callbacks: the
    non-finite-loss guard first, the checkpoint marker, the run log, the stop-when-finished guard, then `callbacks`."""
    kwargs: dict = {}
    if isinstance(train_dataset, bins.BinWindows):  # windows carry their own labels (shift_labels: all block_size
        args.remove_unused_columns = False  # targets of a block_size + 1 window, as nanoGPT trains)
        kwargs["data_collator"] = bins.stack_windows  # fixed length: stacked, never padded (no pad token needed)
    elif kind == "lm":
        kwargs["data_collator"] = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    if kind == "dpo" and not getattr(args, "precompute_ref_log_probs", False):
        kwargs["ref_model"] = frozen_copy(model)  # the reference: the starting model, frozen
    cls = lean_steps(trainer_cls or trainer_classes(kind)[0])
    return cls(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
               processing_class=tokenizer,
               callbacks=[NonFiniteLossGuard(), CompleteMarker(), runlog or RunLog(kind, {}), StopIfFinished(),
                          *callbacks], **kwargs)


class LeanSteps:
    """Per-step costs of the Trainer that a small model notices (nanoGPT's shakespeare-char CPU run: ~1.5 ms of a
    ~50 ms step, profiled; bench/results.md, section 3), removed without changing what is computed:
    - FLOPs are counted every step from `num_parameters(exclude_embeddings=True)`, which walks every module: the
      FLOPs per input token are taken once and reused (the model doesn't change shape while it trains);
    - gradient clipping goes through accelerate's DTensor-aware path (a pass over the modules, version checks):
      a single process without a gradient scaler gets torch's `clip_grad_norm_` directly, the same arithmetic, on
      the trainable parameters listed once;
    - accelerate's optimizer step asks `is_lomo_available()` twice per step, each a search of sys.path on disk: the
      answer is cached (`cache_package_checks`).
    Mixed in by `lean_steps()` ahead of any trainer class (Trainer, SFTTrainer, DPOTrainer, MoETrainer, ...)."""

    _flops_per_token: float | None = None
    _clip_params: list | None = None

    def floating_point_ops(self, inputs: dict) -> float:
        ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
        if not isinstance(ids, torch.Tensor) or not ids.numel():
            return super().floating_point_ops(inputs)
        if self._flops_per_token is None:
            self._flops_per_token = super().floating_point_ops(inputs) / ids.numel()
        return self._flops_per_token * ids.numel()

    def _clip_grad_norm(self, model):
        acc = self.accelerator
        if acc.distributed_type != "NO" or acc.scaler is not None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._clip_grad_norm(model)
        if self._clip_params is None:
            self._clip_params = [p for p in model.parameters() if p.requires_grad]
        return torch.nn.utils.clip_grad_norm_(self._clip_params, self.args.max_grad_norm)  # skips grad-less ones


def cache_package_checks() -> None:
    """accelerate looks for the `lomo_optim` package on disk at every optimizer step (`is_lomo_available`, in
    accelerate.optimizer and accelerate.accelerator): the installed packages don't change while a run trains."""
    import functools

    import accelerate.accelerator
    import accelerate.optimizer

    for module in (accelerate.optimizer, accelerate.accelerator):
        check = getattr(module, "is_lomo_available", None)
        if check is not None and not hasattr(check, "cache_info"):
            module.is_lomo_available = functools.cache(check)


def lean_steps(cls: type) -> type:
    """`cls` with LeanSteps mixed in first (same name, so logs and errors read as before)."""
    cache_package_checks()
    if issubclass(cls, LeanSteps):
        return cls
    return type(cls.__name__, (LeanSteps, cls), {"__module__": cls.__module__, "__doc__": cls.__doc__})


class NoDecayOnEmbeddingsTrainer(Trainer):
    """nanoGPT's AdamW groups: weight decay on the Linear weights only; none on norms, biases (the Trainer's own
    rule) and embedding tables (wte, wpe; the tied lm_head is wte)."""

    def get_decay_parameter_names(self, model) -> list[str]:
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        decay = set(super().get_decay_parameter_names(model))
        return [n for n, p in model.named_parameters() if n in decay and id(p) not in embeddings]


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
