"""Stages and their outputs: every stage (a trainer or not) ends in `<run_dir>/final/`, written under a temporary
name and swapped in whole, with `final/stage.json` written last. That file is what make's chain targets depend on,
so `make <late stage>` builds a missing predecessor and reuses a complete one.

A stage that is not a trainer (cleaning, tokenizer, token bins, DPO pairs, a RAG index) writes its files through

    with stage.output(recipe, "Phi-2 data cleaning", publish_log=opts.publish_log) as out:
        ... write into out.dir ...;  out.log.facts["records"] = "..."; out.log.add_section("Rules", table)

and a later stage finds them with `shared.config.runs.final_of("runs/phi2/clean")`.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import yaml

from shared.config.errors import UserError
from shared.config.files import atomic_folder, atomic_write, display_path
from shared.config.recipe import Recipe, resolve_path
from shared.config.runs import MARKER
from shared.training.runlog import RunLog, now_utc, publish, run_facts


def recipe_changes(saved: Path, recipe: Recipe, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: before -> now` for each setting of `recipe` that differs from the recipe saved at `saved` (keys that
    start with one of `ignore` left out)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) and key.count(".") < 1 else {key: v})
        return out

    before = flat(yaml.safe_load(saved.read_text(encoding="utf-8")) or {})
    now = flat(yaml.safe_load(recipe.to_yaml()))
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k) and not k.startswith(ignore)]


def dependants(run_dir: Path) -> list[Path]:
    """The runs beside `run_dir` (same output root) whose final/recipe.yaml names it, or a file in it, as an input."""
    def strings(v):
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str) and v and "\n" not in v:
            yield v

    def inside(text: str) -> bool:
        path = Path(os.path.normpath(resolve_path(text)))
        return path == run_dir or run_dir in path.parents

    run_dir = Path(os.path.normpath(run_dir))
    found = []
    for saved in sorted(run_dir.parent.parent.glob("*/*/final/recipe.yaml")):
        other = saved.parent.parent
        try:
            recorded = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if other != run_dir and any(inside(s) for s in strings(recorded)):
            found.append(other)
    return found


# settings that change nothing a stage writes: a rerun with only these changed replaces final/ freely
REPLACE_NEUTRAL = ("run.resume", "run.replace", "run.output_root", "training.logging_steps",
                   "training.logging_first_step", "training.report_to", "training.disable_tqdm",
                   "training.dataloader_num_workers")


def check_replace(recipe: Recipe) -> None:
    """A final/ that later runs were built from is replaced only by the same recipe, or when run.replace says so:
    otherwise they no longer match their input (a pretrained model whose tokenizer changed under it). Like resuming
    with a changed recipe, it is refused, naming what changed and the runs that depend on it."""
    saved = recipe.run_dir / "final" / "recipe.yaml"
    if recipe.run.replace or not saved.is_file():
        return
    changed = recipe_changes(saved, recipe, REPLACE_NEUTRAL)
    users = dependants(recipe.run_dir) if changed else []
    if users:
        raise UserError(f"{display_path(saved.parent)} was built with another recipe ({'; '.join(changed[:3])}"
                        f"{'; ...' if len(changed) > 3 else ''}) and runs were built from it "
                        f"({', '.join(map(display_path, users))}): replacing it would leave them inconsistent; pick "
                        f"another RUN=<name>, or replace it anyway with REPLACE=yes (run.replace=true) and rebuild them")


def write_marker(folder: Path, recipe: Recipe, title: str) -> None:
    info = {"stage": title, "recipe": recipe.source, "run": str(recipe.run_dir), "finished": now_utc()}
    atomic_write(folder / MARKER, json.dumps(info, ensure_ascii=False, indent=1))


class StageOutput:
    def __init__(self, folder: Path, log: RunLog):
        self.dir = folder  # write the stage's files here
        self.log = log  # .facts (header lines) and .add_section(heading, markdown)


@contextlib.contextmanager
def output(recipe: Recipe, title: str, publish_log: str | None = None) -> Iterator[StageOutput]:
    """Yield a temporary folder; on success add the log + recipe + marker and swap it into `<run_dir>/final/`.
    On an error the temporary folder is removed and an earlier final/ stays as it was."""
    run_dir = recipe.run_dir
    check_replace(recipe)
    with atomic_folder(run_dir / "final") as tmp:
        out = StageOutput(tmp, RunLog(title, run_facts()))
        yield out
        out.log.add_section("Resolved recipe", f"```yaml\n{recipe.to_yaml()}```")
        (tmp / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        log = out.log.write(tmp, "stage_log.md")
        write_marker(tmp, recipe, title)
    print(f"\nstage output: {run_dir / 'final'}\nlog: {run_dir / 'final' / log.name}", flush=True)
    if publish_log:
        publish(run_dir / "final" / log.name, publish_log)
