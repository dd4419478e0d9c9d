"""Stages and their outputs: every stage (a trainer or not) ends in `<run_dir>/final/`, written under a temporary
name and swapped in whole, with `final/stage.json` written last. That file is what make's chain targets depend on,
so `make <late stage>` builds a missing predecessor and reuses a complete one.

A stage that is not a trainer (cleaning, tokenizer, token bins, DPO pairs, a RAG index) writes its files through

    with stage.output(recipe, "Phi-2 data cleaning", publish_log=opts.publish_log) as out:
        ... write into out.dir ...;  out.log.facts["records"] = "..."; out.log.add_section("Rules", table)

and a later stage finds them with `stage.final_of("runs/phi2/clean")`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import UserError
from .recipe import Recipe, resolve_path
from .runlog import RunLog, now_utc, publish, run_facts

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


def swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` with `tmp` so that a crash leaves either the old or the new folder, never half of one."""
    old = final.with_name(".final-old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_marker(folder: Path, recipe: Recipe, title: str) -> None:
    info = {"stage": title, "recipe": recipe.source, "run": str(recipe.run_dir), "finished": now_utc()}
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, folder / MARKER)


class StageOutput:
    def __init__(self, folder: Path, log: RunLog):
        self.dir = folder  # write the stage's files here
        self.log = log  # .facts (header lines) and .add_section(heading, markdown)


@contextlib.contextmanager
def output(recipe: Recipe, title: str, publish_log: str | None = None) -> Iterator[StageOutput]:
    """Yield a temporary folder; on success add the log + recipe + marker and swap it into `<run_dir>/final/`.
    On an error the temporary folder is removed and an earlier final/ stays as it was."""
    run_dir = recipe.run_dir
    tmp = run_dir / ".final-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out = StageOutput(tmp, RunLog(title, run_facts()))
    try:
        yield out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out.log.add_section("Resolved recipe", f"```yaml\n{recipe.to_yaml()}```")
    (tmp / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    log = out.log.write(tmp, "stage_log.md")
    write_marker(tmp, recipe, title)
    swap_in(tmp, run_dir / "final")
    print(f"\nstage output: {run_dir / 'final'}\nlog: {run_dir / 'final' / log.name}", flush=True)
    if publish_log:
        publish(run_dir / "final" / log.name, publish_log)
