"""Crash-safe checkpoints on top of the HF Trainer's.

The Trainer writes `checkpoint-N/` in place (weights, optimizer, scheduler, RNG, then trainer_state.json), so a
process killed mid-save leaves a folder that looks like a checkpoint but is not one. `CompleteMarker` writes
`checkpoint-N/.complete` (the list of files and their sizes, fsynced, renamed into place) once the Trainer has
finished the save; `find_resume` only ever takes a checkpoint whose marker matches what is on disk, and removes
incomplete ones so the Trainer's own checkpoint rotation never counts them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from shared.config.errors import UserError
from shared.config.files import atomic_write

MARKER = ".complete"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _inventory(folder: Path) -> dict[str, int]:
    """Every file of the checkpoint and its size, but the marker (and the temporary name atomic_write gives it)."""
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (MARKER, f".{MARKER}.tmp")}


def mark_complete(folder: Path) -> None:
    for p in folder.rglob("*"):  # make the data durable before the marker says it is
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    atomic_write(folder / MARKER, json.dumps(_inventory(folder), indent=0))


def is_complete(folder: Path) -> bool:
    try:
        listed = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return listed == _inventory(folder) and state.get("global_step") == step_of(folder)


def step_of(folder: Path) -> int:
    m = CHECKPOINT.match(folder.name)
    return int(m.group(1)) if m else -1


def checkpoints(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)), key=step_of)


def find_resume(run_dir: Path, policy: str, is_main: bool = True) -> Path | None:
    """`auto`: the newest complete checkpoint (None when there is none); `never`: None; else that checkpoint."""
    if policy == "never":
        return None
    if policy != "auto":
        folder = Path(policy)
        if not folder.is_dir():
            raise UserError(f"run.resume: checkpoint not found: {policy}")
        if not is_complete(folder):
            raise UserError(f"run.resume: {policy} is incomplete (the process died while saving it); "
                            f"use run.resume=auto to take the newest complete one")
        return folder
    found = None
    for folder in reversed(checkpoints(run_dir)):
        if is_complete(folder):
            found = found or folder
        elif is_main:  # older ones too: one the Trainer's rotation was deleting when the run died looks newest by
            # mtime, and the next rotation would delete a complete checkpoint instead of it
            print(f"resume: removing incomplete {folder.name} (the previous run died while writing or deleting it)",
                  flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    return found


class CompleteMarker(TrainerCallback):
    """After each Trainer save, mark the new checkpoint complete (main process only)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                mark_complete(folder)
