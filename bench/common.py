"""What the benchmarks share: the machine's load (os.getloadavg, printed beside every timing), interleaved
repetitions and their paired median ratio, and the environment block every results file starts with."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from typing import Callable

import torch

from shared import REPO_ROOT


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(fns: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Run each fn (returning seconds, or a measure) once per repetition, in turn: A B C A B C ..."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            out[k].append(fn())
    return out


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over repetitions of a[i] / b[i] (paired: the two ran back to back)."""
    return statistics.median(x / y for x, y in zip(a, b))


def environment(argv: list[str], module: str = "bench.suite") -> dict:
    import transformers

    from shared.training.runlog import hardware

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"command": "python -m " + module + " " + " ".join(argv), "hardware": hardware(),
            "cpu": platform.processor() or platform.machine(), "torch threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "git commit": git("rev-parse", "HEAD") + (" (with uncommitted changes)" if dirty else ""),
            "nice": os.nice(0), "load at start": load_avg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
