"""Files: how a log shows a path (relative to the repository), writes a crash can't leave half done (a temporary
sibling, then os.replace: the old content or the new, never a mix), and the one walk over a folder of data files.

    atomic_write(folder / "meta.json", json.dumps(meta))      # str (UTF-8) or bytes, fsynced, then renamed
    with atomic_path(folder / "loss.png") as tmp:             # for writers that want a path (savefig, tofile)
        fig.savefig(tmp)
    with atomic_folder(run_dir / "final") as tmp:             # a whole folder, swapped in when the block ends
        model.save_pretrained(tmp)

The temporary names are fixed (`.<name>.tmp`, `.<name>-tmp`), beside the target so os.replace never crosses a
file system, and removed when the write fails; one writer per target, as every run folder has.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from shared import REPO_ROOT


def display_path(path: str | Path) -> str:
    """A path as logs record it: relative to the repository when inside it, never this machine's layout."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed onto `path` when the block ends, removed if it raises.
    A block that writes nothing leaves `path` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` (a str as UTF-8) to `path` all or nothing: a temporary sibling, fsynced, then renamed."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def replace_folder(new: Path, folder: Path) -> None:
    """Put the finished folder `new` in place of `folder`: a crash leaves the old folder or the new one, never half."""
    old = folder.with_name(f".{folder.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """An empty temporary sibling of `folder` to fill; it replaces `folder` whole when the block ends (see
    `replace_folder`) and is removed if the block raises, leaving `folder` as it was."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}-tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier attempt's
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, folder)


def walk_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Every file under `folder` (at any depth, hidden ones too) whose suffix is one of `suffixes`, in sorted path
    order: the same files in the same order on every machine."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in suffixes)
