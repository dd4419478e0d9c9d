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


def small_kb(folder: Path, doc_ids: set[str]) -> Path:
    """A knowledge base from the bundled 苇川 documents with these ids: a folder with two .jsonl files, as DOCS=
    would name it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("encyclopedia.jsonl", "news.jsonl"):
        lines = [line for line in (REPO / "data/world" / name).read_text(encoding="utf-8").splitlines()
                 if json.loads(line)["id"] in doc_ids]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def tiny_model(folder: Path, texts: list[str], positions: int = 512, seed: int = 0) -> Path:
    """A 2-layer random GPT-2 (seeded) with a byte-level BPE trained on `texts`, saved like a run's final/."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from shared.data.tokenizer import train_bpe

    tok = train_bpe(iter([texts]), vocab_size=600, min_frequency=1, folder=folder / "tok")
    config = GPT2Config(vocab_size=len(tok), n_positions=positions, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(str(folder / "model"))
    tok.save_pretrained(str(folder / "model"))
    return folder / "model"


def sft_first_batch(recipe) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of each row of the first training batch TRL's SFTTrainer builds for an sft recipe, padding
    removed: what the loss really sees."""
    from shared.models import registry as models
    from shared.training import train

    data = train.load_data(recipe)
    model = models.build_model(recipe, models.model_config(recipe), data.tokenizer)
    trainer = train.trainer_class("sft")(model=model, args=train.training_arguments(recipe), train_dataset=data.train,
                                         processing_class=data.tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    return [(ids[mask.bool()].tolist(), labels[mask.bool()].tolist())
            for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"])]


def split_at_loss(tokenizer, ids: list[int], labels: list[int]) -> tuple[str, str]:
    """(the text that carries no loss, the text that does), after checking the mask is one unbroken answer at the
    end that includes the final EOS: nothing before the first scored token is scored, everything after it is."""
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert all(label == -100 for label in labels[:first])
    assert all(label != -100 for label in labels[first:])  # the whole answer carries loss ...
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id  # ... and so does EOS
    return tokenizer.decode(ids[:first]), tokenizer.decode(ids[first:], skip_special_tokens=True)


class FakeTrainer:
    """What shared.training.train.save_final asks of a Trainer (one process, no DeepSpeed), around a model built in a test."""

    def __init__(self, model):
        from types import SimpleNamespace

        self.model, self.is_deepspeed_enabled = model, False
        self.accelerator = SimpleNamespace(wait_for_everyone=lambda: None, unwrap_model=lambda m: m)

    def is_world_process_zero(self):
        return True

    def save_model(self, folder):
        self.model.save_pretrained(folder)


# The real-browser test of the Gradio page skips where Chromium is missing: say at the end of every run whether it
# ran, so CI's output shows it (without listing all the other tests).
BROWSER_TEST = "test_webui.py::test_a_browser_types_a_question_and_sees_the_streamed_answer"
_browser: list[str] = []


def pytest_runtest_logreport(report):
    if report.nodeid.endswith(BROWSER_TEST) and (report.when == "call" or report.skipped):
        reason = f" ({report.longrepr[2]})" if report.skipped and isinstance(report.longrepr, tuple) else ""
        _browser.append(f"{report.outcome.upper()} in {report.duration:.1f} s{reason}")


def pytest_terminal_summary(terminalreporter):
    if _browser:
        terminalreporter.write_line(f"browser test (tests/{BROWSER_TEST}): {_browser[-1]}")
