"""`train_log.md` + `loss.png` written from what the run really did (a TrainerCallback collects it).

The header records when, where (git commit, hardware, packages), what (resolved recipe, data and tokenizer
provenance, parameter count); the table is the Trainer's own log history; final metrics and generation samples
are appended by `shared.training.train` after training.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from transformers import TrainerCallback

from shared import REPO_ROOT
from shared.config.files import atomic_path, atomic_write
from shared.config.recipe import REDACTED, is_secret_key

PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "accelerate", "trl", "peft", "deepspeed")
STANDARD = ("loss", "eval_loss", "learning_rate", "grad_norm")
SKIP = {"epoch", "step", "num_input_tokens_seen", "total_flos", "train_runtime", "train_samples_per_second",
        "train_steps_per_second", "train_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
        "train_tokens_per_second"}


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True).stdout.splitlines()
        # the reference logs that `make train-*` publishes are outputs, not changes to the code that made them
        dirty = [line for line in status if not line.endswith(("/train_log.md", "/loss.png"))]
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n} x {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU only: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def package_versions() -> str:
    out = []
    for name in PACKAGES:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out) + f"; Python {platform.python_version()}"


def redacted_command(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    parts = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        parts.append(f"{key}={REDACTED}" if "=" in arg and is_secret_key(key.split(".")[-1]) else arg)
    return shlex.join(parts)


def redact_env_values(text: str) -> str:
    """Remove the values of secret environment variables (HF_TOKEN, WANDB_API_KEY, ...) wherever they appear."""
    for name, value in os.environ.items():
        if is_secret_key(name) and len(value) >= 6:
            text = text.replace(value, REDACTED)
    return text


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.3e}" if (abs(v) < 1e-2 and v != 0) or abs(v) >= 1e5 else f"{v:.4f}"
    return str(v)


class RunLog(TrainerCallback):
    """Collects tokens/s per logging interval; renders the Trainer's log history as a markdown table + PNG."""

    def __init__(self, title: str, facts: dict[str, str]):
        self.title = title
        self.facts = dict(facts)  # shown in the header, in order
        self.sections: list[tuple[str, str]] = []  # (heading, markdown body) appended after the table
        self.speed: dict[int, float] = {}  # step -> tokens/s over the interval ending there
        self.started = dt.datetime.now(dt.timezone.utc)
        self.log_history: list[dict] = []
        self.peak_memory: dict | None = None  # set at the end of training (peak_memory())
        self._mark: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark = (time.perf_counter(), state.num_input_tokens_seen or 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and self._mark:
            now, seen = time.perf_counter(), state.num_input_tokens_seen or 0
            if seen > self._mark[1] and now > self._mark[0]:
                self.speed[state.global_step] = (seen - self._mark[1]) / (now - self._mark[0])
            self._mark = (now, seen)
        self.log_history = list(state.log_history)

    def on_train_end(self, args, state, control, **kwargs):
        self.log_history = list(state.log_history)
        self.peak_memory = peak_memory()
        self.facts["peak memory"] = f"{self.peak_memory['bytes'] / 2**30:.2f} GiB ({self.peak_memory['of']})"

    def add_section(self, heading: str, body: str) -> None:
        self.sections.append((heading, body))

    # ------------------------------------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        by_step: dict[int, dict] = {}
        for entry in self.log_history:
            if "step" not in entry or "train_loss" in entry:  # the end-of-training summary
                continue
            row = by_step.setdefault(entry["step"], {"step": entry["step"]})
            row.update({k: v for k, v in entry.items() if k != "step"})
        for step, speed in self.speed.items():
            by_step.setdefault(step, {"step": step})["tokens/s"] = speed
        return [by_step[s] for s in sorted(by_step)]

    def render(self, png_name: str | None = "loss.png") -> str:
        rows = self.rows()
        if not rows:  # a stage that is not a trainer: header + sections
            lines = [f"# {self.title}", "", "Written by `shared/training/runlog.py` from the run itself; regenerate it with the "
                     "command below.", "", *[f"- **{k}**: {v}" for k, v in self.facts.items()]]
            for heading, body in self.sections:
                lines += ["", f"## {heading}", "", body.rstrip()]
            return redact_env_values("\n".join(lines) + "\n")
        extra = sorted({k for r in rows for k, v in r.items()
                        if isinstance(v, (int, float)) and k not in STANDARD and k not in SKIP and k != "tokens/s"})
        cols = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens/s", *extra]
        names = {"loss": "train loss", "eval_loss": "eval loss", "learning_rate": "lr"}
        lines = [f"# {self.title}", "",
                 "Written by `shared/training/runlog.py` from the run itself; regenerate it with the command below.", ""]
        lines += [f"- **{k}**: {v}" for k, v in self.facts.items()]
        lines += ["", "## Training log", "",
                  "| " + " | ".join(names.get(c, c) for c in cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
        if png_name:
            lines += ["", f"![loss curve]({png_name})"]
        for heading, body in self.sections:
            lines += ["", f"## {heading}", "", body.rstrip()]
        return redact_env_values("\n".join(lines) + "\n")

    def plot(self, path: Path) -> bool:
        rows = self.rows()
        train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
        evals = [(r["step"], r["eval_loss"]) for r in rows if isinstance(r.get("eval_loss"), (int, float))]
        if not train and not evals:
            return False
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if train:
            ax.plot(*zip(*train), label="train loss")
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)
        return True

    def write(self, folder: Path, name: str = "train_log.md") -> Path:
        """Write `name` (+ loss.png) into `folder` via temporary names, so a crash leaves no half file."""
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "loss.png") as tmp:
            has_png = self.plot(tmp)
        atomic_write(folder / name, self.render("loss.png" if has_png else None))
        return folder / name


def peak_memory() -> dict:
    """The run's peak memory so far: the GPU's allocated peak (torch's counter) on CUDA, else the process's peak
    resident set (the OS's counter, which includes data loading)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"bytes": torch.cuda.max_memory_allocated(), "of": f"{torch.cuda.get_device_name()}, torch's allocated peak"}
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"bytes": kib * 1024, "of": "CPU: the process's peak resident set"}


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run_facts() -> dict[str, str]:
    """What every log's header records: when, which commit, the command, the machine and the packages."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy = f"; load average {load:.1f} at the start (other work shares the CPU: timings are slower)" \
        if load is not None and load > (os.cpu_count() or 1) * 0.75 else ""
    return {"date": now_utc(), "git commit": git_commit(), "command": f"`{redacted_command()}`",
            "hardware": hardware() + busy, "packages": package_versions()}


def publish(log: Path, dest: str | Path) -> Path:
    """Copy a run's log (and its loss.png as `<stem>.png` beside it) to the model folder: the reference log.
    `train_log.md` keeps the name `loss.png`; `<stage>_log.md` publishes `<stage>_loss.png`."""
    from shared.config.recipe import resolve_path

    dest = resolve_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stem = dest.name.removesuffix("_log.md").removesuffix(".md")
    png_name = "loss.png" if stem == "train" else f"{stem}_loss.png"
    text = log.read_text(encoding="utf-8").replace("](loss.png)", f"]({png_name})")
    atomic_write(dest, text)
    if log.with_name("loss.png").is_file():
        atomic_write(dest.with_name(png_name), log.with_name("loss.png").read_bytes())
    print(f"reference log published: {dest}", flush=True)
    return dest
