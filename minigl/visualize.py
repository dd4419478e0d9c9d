"""MiniGLM figures: the transformer's and the LSTM's loss curves in one plot, their evaluation metrics side by side.

    python minigl/visualize.py runs/minigl/metrics.json --out minigl/          # what the evaluation wrote
    python minigl/visualize.py runs/minigl/pretrain runs/minigl/lstm --out /tmp/figs   # run folders: curves only

Writes `<out>/losses.png` (train loss as a line, eval loss as dots on a dashed line, one colour per model) and
`<out>/metrics.png` (one panel per metric, one bar per model). The two models' losses are comparable only when they
share a tokenizer: both are nats per token of the same tokens.

A metrics JSON maps a model's name to its numbers, with the run whose losses to draw (paths are relative to the
repository root, like recipe paths), or the log history itself:

    {"transformer": {"perplexity": 23.1, "qa_perplexity": 8.4, "rouge_l": 0.31, "key_recall": 0.25,
                     "run": "runs/minigl/pretrain"},
     "lstm":        {"perplexity": 41.7, ..., "log_history": [{"step": 10, "loss": 5.2}, ...]}}

(`{"models": {...}}` around it works too.) A run folder's loss history is, in this order: final/log_history.json,
the table of final/train_log.md (shared/training/runlog.py writes it from the whole run), or the newest checkpoint's
trainer_state.json (a run still training). The x axis is tokens seen when every point records them
(num_input_tokens_seen: fair when the models use different batch or block sizes), else the optimizer step.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from shared import REPO_ROOT
from shared.config.errors import UserError, run_main
from shared.config.files import atomic_path

METRICS = {  # key -> panel title, in panel order
    "perplexity": "perplexity (validation)\nlower is better",
    "qa_perplexity": "answer perplexity (QA)\nlower is better",
    "rouge_l": "Rouge-L F (QA)\nhigher is better",
    "key_recall": "key recall (QA)\nhigher is better",
}
TABLE_COLUMNS = {"step": "step", "train loss": "loss", "eval loss": "eval_loss"}  # train_log.md header -> key


# ----------------------------------------------------------------------------------------------------------------
# reading histories


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({str(e).splitlines()[0][:80]})") from None


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None  # "–": no value at that step


def table_history(log: Path) -> list[dict]:
    """The "Training log" table of a train_log.md as log entries ({step, loss} and {step, eval_loss})."""
    header, entries = None, []
    for line in log.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            if header and entries:
                break  # the table ended
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if "step" in cells:
                header = cells
            continue
        if set(line) <= set("|-: "):
            continue  # the |---| separator
        row = dict(zip(header, cells))
        step = _number(row.get("step", ""))
        for column, key in TABLE_COLUMNS.items():
            value = _number(row.get(column, "–")) if key != "step" else None
            if value is not None and step is not None:
                entries.append({"step": int(step), key: value})
    return entries


def run_history(run: Path) -> list[dict]:
    """A run folder's (or its final/'s) log history, from the first source that has one."""
    run = run.parent if run.name == "final" else run
    if (run / "final" / "log_history.json").is_file():
        history = read_json(run / "final" / "log_history.json")
        if not isinstance(history, list):
            raise UserError(f"{run / 'final' / 'log_history.json'}: expected a list of log entries")
        return history
    if (run / "final" / "train_log.md").is_file():
        entries = table_history(run / "final" / "train_log.md")
        if entries:
            return entries
    states = sorted(run.glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    if states:
        return read_json(states[-1]).get("log_history", [])
    raise UserError(f"{run}: no loss history (no final/log_history.json, final/train_log.md or "
                    f"checkpoint-*/trainer_state.json); train it first, or give its metrics JSON a log_history")


def read_inputs(paths: list[Path]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """(histories, metrics) by model name, from metrics JSON files and run folders."""
    histories, metrics = {}, {}
    for path in paths:
        if path.is_dir():
            name = (path.parent if path.name == "final" else path).name
            histories[name] = run_history(path)
            continue
        if not path.is_file():
            raise UserError(f"{path}: no such file or folder (give a metrics JSON or a run folder)")
        data = read_json(path)
        models = data.get("models", data) if isinstance(data, dict) else None
        if not isinstance(models, dict) or not any(isinstance(v, dict) for v in models.values()):
            raise UserError(f"{path}: expected {{model name: {{metric: value, 'run': folder}}}}")
        for name, entry in models.items():
            if not isinstance(entry, dict):
                continue
            numbers = {k: v for k, v in entry.items() if k in METRICS and isinstance(v, (int, float))}
            if numbers:
                metrics[name] = numbers
            if isinstance(entry.get("log_history"), list):
                histories[name] = entry["log_history"]
            elif entry.get("run"):
                run = Path(entry["run"])
                histories[name] = run_history(run if run.is_absolute() else REPO_ROOT / run)
    return histories, metrics


# ----------------------------------------------------------------------------------------------------------------
# plotting


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write the PNG under a temporary name first: a crash never leaves half a figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _points(history: list[dict], key: str, x: str) -> list[tuple[float, float]]:
    out = []
    for e in history:
        value = e.get(key)
        if "train_loss" in e or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue  # the end-of-training summary, or no value
        out.append((e.get("num_input_tokens_seen") if x == "tokens" else e.get("step"), value))
    return out


def _axis(histories: dict[str, list[dict]], x: str) -> str:
    if x != "auto":
        return x
    scored = [e for h in histories.values() for e in h
              if "train_loss" not in e and isinstance(e.get("loss", e.get("eval_loss")), (int, float))]
    return "tokens" if scored and all(e.get("num_input_tokens_seen") for e in scored) else "step"


def plot_losses(histories: dict[str, list[dict]], path: str | Path, x: str = "auto",
                title: str = "MiniGLM: transformer vs LSTM") -> list[str]:
    """Train and eval loss of every model against step or tokens seen (x: auto | step | tokens) in one PNG.
    Returns the labels of the curves drawn."""
    if x not in ("auto", "step", "tokens"):
        raise UserError(f"x axis must be auto, step or tokens, got {x!r}")
    x = _axis(histories, x)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    labels = []
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i % 10}"
        for key, kind, style in (("loss", "train", dict(linestyle="-")),
                                 ("eval_loss", "eval", dict(linestyle="--", marker="o", markersize=4))):
            points = [p for p in _points(history, key, x) if p[0] is not None]
            if points:
                ax.plot(*zip(*sorted(points)), color=color, label=f"{name} {kind}", **style)
                labels.append(f"{name} {kind}")
    if not labels:
        plt.close(fig)
        raise UserError(f"no loss values to plot for {', '.join(histories) or 'any model'}")
    ax.set_xlabel("tokens seen" if x == "tokens" else "step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return labels


def plot_metrics(metrics: dict[str, dict], path: str | Path, title: str = "MiniGLM evaluation") -> list[str]:
    """One panel per metric (perplexity, answer perplexity, Rouge-L, key recall: those present), one bar per model,
    in one PNG. Returns the metrics drawn."""
    keys = [k for k in METRICS if any(isinstance(m.get(k), (int, float)) for m in metrics.values())]
    if not keys:
        raise UserError(f"no metrics to plot (expected some of {', '.join(METRICS)})")
    names = list(metrics)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys) + 1, 4), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [metrics[n].get(key) if isinstance(metrics[n].get(key), (int, float)) else math.nan for n in names]
        bars = ax.bar(range(len(names)), values, color=[f"C{i % 10}" for i in range(len(names))])
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.3g}" for v in values], padding=2)
        for i, v in enumerate(values):
            if math.isnan(v):
                ax.text(i, 0, "not measured", ha="center", va="bottom", fontsize=8, color="grey")
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)  # a model without this metric keeps its place
        ax.set_title(METRICS[key], fontsize=10)
        if key in ("rouge_l", "key_recall"):
            ax.set_ylim(0, 1.05)
        else:
            ax.set_ylim(0, max([v for v in values if not math.isnan(v)] or [1]) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return keys


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Plot MiniGLM loss curves and metrics (transformer vs LSTM).")
    parser.add_argument("inputs", nargs="+", type=Path, help="metrics JSON files and/or run folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for losses.png and metrics.png (default: the first input's folder)")
    parser.add_argument("--x", choices=("auto", "step", "tokens"), default="auto", help="x axis of the loss plot")
    args = parser.parse_args(argv)
    histories, metrics = read_inputs(args.inputs)
    first = args.inputs[0]
    out = args.out or (first if first.is_dir() else first.parent)
    if histories:
        plot_losses(histories, out / "losses.png", x=args.x)
        print(f"loss curves: {out / 'losses.png'} ({', '.join(histories)})")
    if metrics:
        plot_metrics(metrics, out / "metrics.png")
        print(f"metrics: {out / 'metrics.png'} ({', '.join(metrics)})")
    if not histories and not metrics:
        raise UserError("nothing to plot: no loss histories or metrics in " + ", ".join(map(str, args.inputs)))


if __name__ == "__main__":
    run_main(main)
