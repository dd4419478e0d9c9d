"""Shared test helpers: offline always, tiny model settings, running a repo script as a real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# A Phi-3 small enough to train a few steps in seconds on 2 CPU cores.
TINY_PHI3 = [
    "model.overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
    "num_key_value_heads: 4, max_position_embeddings: 64, original_max_position_embeddings: 64}",
    "tokenizer.vocab_size=600", "data.block_size=32", "data.max_samples=120",
    "training.per_device_train_batch_size=4", "training.per_device_eval_batch_size=8",
    "training.logging_steps=2", "training.eval_strategy=steps", "training.eval_steps=10",
    "training.save_steps=10", "training.warmup_steps=2", "training.learning_rate=3e-3",
    "generation.max_new_tokens=12", "generation.min_new_tokens=4",
]


def run(args: list[str], check: bool = True, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repo root; on failure show the tail of the output."""
    proc = subprocess.run([PY, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                             f"--- stderr\n{proc.stderr[-3000:]}")
    return proc


def log_history(run_dir: Path) -> list[dict]:
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads(states[-1].read_text())["log_history"]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def minigl_runs(tmp_path_factory) -> Path:
    """MiniGLM's three data stages, as `make minigl-data` runs them, on a slice of the bundled corpora, into a
    temporary runs/ folder (shared by the MiniGLM and compare tests: built once per session)."""
    root = tmp_path_factory.mktemp("runs")
    run(["minigl/prepare_jynews.py", f"run.output_root={root}", "data.max_samples=30"])
    run(["minigl/prepare_zhihudata.py", f"run.output_root={root}", "data.max_samples=60"])
    run(["minigl/prepare.py", f"run.output_root={root}",
         f"stage.include=[{root}/minigl/jynews, {root}/minigl/zhihu]"])
    return root
