"""Guards that stop a run safely: non-finite loss or weights, a run that is already finished, a full disk.

Each turns the situation into one `UserError` line that names the step and the checkpoint that is still good,
and none lets a bad checkpoint be marked complete (so `run.resume=auto` can never pick it).
"""
from __future__ import annotations

import contextlib
import errno
import math
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

from shared.training.checkpoints import checkpoints, is_complete
from shared.config.errors import UserError


class NonFiniteLossGuard(TrainerCallback):
    """Stop at the first NaN/inf loss (or gradient norm), naming the step and the last good checkpoint.

    The loss is only seen every `logging_steps`, so the weights are also checked at every save: a checkpoint with
    NaN/inf weights is never marked complete (this callback runs before `CompleteMarker`), so `resume=auto` can't
    pick it. (Sharded weights, ZeRO-3/FSDP: each rank checks what it holds.)
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(self.message(f"{key} ({value})", state.global_step, args))

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and not finite_weights(model):
            raise UserError(self.message(f"weights (checkpoint-{state.global_step} is not marked complete)",
                                         state.global_step, args))

    @staticmethod
    def message(what: str, step: int, args) -> str:
        good = [c for c in checkpoints(Path(args.output_dir)) if c.name != f"checkpoint-{step}" and is_complete(c)]
        keep = f"last good checkpoint {good[-1]} is kept" if good else "no checkpoint was saved yet"
        return (f"non-finite {what} at step {step}; {keep}. Lower training.learning_rate, raise warmup_steps or use "
                f"bf16 instead of fp16, and start over with run.resume=never (a resumed run keeps its checkpoint's "
                f"learning-rate schedule)")


class RunFinished(Exception):
    """Raised by `StopIfFinished` before the training loop; `train()` catches it."""


class StopIfFinished(TrainerCallback):
    """Resuming from a checkpoint already at max_steps (a run killed while writing final/, or rerun when done):
    the Trainer would still take one more optimizer step (it checks max_steps after a step, and with any schedule
    but one that ends at lr 0 that changes the weights), so stop before the loop; the weights are already loaded."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise RunFinished


def finite_weights(model: torch.nn.Module) -> bool:
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2 DTensor: this rank's shard
        if not bool(torch.isfinite(local).all()):
            return False
    return True


DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """ENOSPC / EDQUOT, however the writer reports it: OSError (Python), SafetensorError "... (os error 28)" (Rust),
    or torch.save's RuntimeError ("[enforce fail at inline_container.cc] unexpected pos ...", which carries no
    errno; then the free space of `folder` decides)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if any(s in text for s in DISK_FULL_TEXT):
            return True
        if "inline_container" in text or "PytorchStreamWriter" in text:
            try:
                return shutil.disk_usage(folder).free < 64 * 2**20
            except OSError:
                return False
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def disk_full_is_a_user_error(run_dir: Path):
    """A full disk while saving (checkpoint, final/ or the log) -> one line naming the checkpoint that is intact."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if not is_disk_full(e, run_dir):
            raise
        good = [c for c in checkpoints(run_dir) if is_complete(c)]
        raise UserError(f"disk full while writing to {run_dir}; "
                        + (f"the previous checkpoint {good[-1].name} is intact" if good else "no checkpoint was complete")
                        + "; free space and rerun the same command to resume") from None
