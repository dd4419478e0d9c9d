"""Run folders: `runs/<model>/<run>/final` is a stage's completed output (final/stage.json written last, or a
model's config.json). One resolver for both ways of naming one: a recipe's input (`model.init_from:
runs/phi2/sft`, final_of) and a model plus an optional run name on the command line (find_run: the newest run
when none is named)."""
from __future__ import annotations

from pathlib import Path

from shared.config.errors import UserError
from shared.config.files import display_path
from shared.config.recipe import resolve_path

MARKER = "stage.json"  # written last into final/: the stage finished


def final_of(ref: str | Path, what: str = "input") -> Path:
    """A run folder's completed output (`<ref>/final`), or `ref` itself when it is one; else one line saying which
    folder is missing and how to build it."""
    path = resolve_path(ref)
    for candidate in (path / "final", path):
        if (candidate / MARKER).is_file() or (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"{what}: {ref} has no completed output (no final/{MARKER}); build that stage first "
                    f"(`make help` lists the stages) or point the recipe elsewhere")


def find_run(model: str, run: str | None = None, root: str | Path = "runs") -> Path:
    """runs/<model>/<run>/final (final/merged for a LoRA run), or the newest final model of that model when `run`
    is None."""
    base = resolve_path(root) / model
    if run:
        path = Path(run) if Path(run).is_absolute() else base / run
        for candidate in (path / "final", path / "final" / "merged", path):  # merged: a LoRA run's full model
            if (candidate / "config.json").is_file():
                return candidate
        raise UserError(f"run not found: {path} has no final model (train it first: make train-{model})")
    finals = sorted([*base.glob("*/final/config.json"), *base.glob("*/final/merged/config.json")],
                    key=lambda p: p.stat().st_mtime)
    if not finals:
        raise UserError(f"no trained {model} model under {display_path(base)}; train one first: make train-{model}")
    return finals[-1].parent
