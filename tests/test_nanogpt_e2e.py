"""nanoGPT end to end on CPU: bins -> pretrain (tiny GPT) -> finetune from it -> reload + generate; and make's stage
chain on a fresh copy of the repository (a missing predecessor is built, an existing one reused)."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, log_history, run

pytestmark = pytest.mark.slow

TINY_GPT = ["model.overrides={n_layer: 2, n_head: 2, n_embd: 32, block_size: 64}", "data.block_size=32",
            "training.per_device_train_batch_size=8", "training.logging_steps=2", "training.eval_steps=10",
            "training.save_steps=10", "training.warmup_steps=2", "data.eval_subset=8",
            "generation.max_new_tokens=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run(["train_nanogpt/create_first_training_data.py", f"run.output_root={root}", "data.max_samples=60"])
    run(["train_nanogpt/create_first_training_data.py", "recipes/nanogpt/finetune-data.yaml",
         f"run.output_root={root}", f"tokenizer.name={root}/nanogpt/data", "data.max_samples=60"])
    run(["train_nanogpt/train.py", *TINY_GPT, f"run.output_root={root}", f"data.bins={root}/nanogpt/data",
         f"tokenizer.name={root}/nanogpt/data", "training.max_steps=30", "training.learning_rate=3e-3"])
    return root


def test_pretraining_lowers_the_loss_and_saves_a_gpt(runs):
    run_dir = runs / "nanogpt" / "pretrain"
    losses = [e["loss"] for e in log_history(run_dir) if "loss" in e]
    assert losses[-1] < losses[0] - 1.0, losses
    log = (run_dir / "final" / "train_log.md").read_text(encoding="utf-8")
    assert "parameters as nanoGPT counts them" in log and "random windows of 32 + 1" in log


def test_finetune_starts_from_the_pretrained_weights(runs):
    sizes, *rest = TINY_GPT  # the finetune takes its sizes from the pretrained config (+ the recipe's dropout)
    common = [*rest, f"run.output_root={runs}", f"data.bins={runs}/nanogpt/finetune-data",
              f"tokenizer.name={runs}/nanogpt/finetune-data", "training.max_steps=2", "training.logging_steps=1"]
    run(["train_nanogpt/train.py", "recipes/nanogpt/finetune.yaml", *common, f"model.init_from={runs}/nanogpt/pretrain"])
    run(["train_nanogpt/train.py", "recipes/nanogpt/finetune.yaml", *common, "model.init_from=null", sizes,
         "model.config=train_nanogpt/gpt_tiny.json", "run.name=scratch"])
    tuned = [e["loss"] for e in log_history(runs / "nanogpt" / "finetune") if "loss" in e][0]
    scratch = [e["loss"] for e in log_history(runs / "nanogpt" / "scratch") if "loss" in e][0]
    assert tuned < scratch - 1.0, (tuned, scratch)  # a random init starts near ln(vocab)
    from transformers import AutoConfig

    import shared.models.registry  # noqa: F401  (registers slm_gpt)

    assert AutoConfig.from_pretrained(runs / "nanogpt" / "finetune" / "final").dropout == 0.1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(runs / "nanogpt" / "finetune" / "final")  # saved with the chat template
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "How are you?"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        "<user>Hi<end>\n<assistant>Hello!<end>\n<user>How are you?<end>\n<assistant>"


def test_reload_and_generate_with_and_without_the_cache(runs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import shared.models.registry  # noqa: F401

    final = runs / "nanogpt" / "pretrain" / "final"
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    assert type(model).__name__ == "GPTForCausalLM"
    ids = tok("<user>Hello, how are you?<end>\n<assistant>", return_tensors="pt").input_ids
    kw = dict(do_sample=False, max_new_tokens=12, attention_mask=torch.ones_like(ids))
    assert torch.equal(model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw))
    proc = run(["train_nanogpt/generate.py", "--root", str(runs), "--run", "pretrain", "--prompt", "<user>Hi<end>",
                "max_new_tokens=5"])
    assert "<user>Hi<end>" in proc.stdout or "Hi" in proc.stdout


def test_make_chain_builds_the_missing_data_stage_once(tmp_path):
    """A fresh copy of the repository (tracked + new files, no runs/): `make train-nanogpt` first builds
    runs/nanogpt/data (it says so), then trains; a second call reuses the data stage."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    clone = tmp_path / "slm"
    for name in files:
        src = REPO / name
        if src.is_file() and not name.startswith("runs/"):
            dest = clone / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)  # mtimes kept: make must not see a "newer" requirements.txt
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(clone)}  # the copy's shared/, not the editable one
    make = ["make", "train-nanogpt", f"VENV={venv}", "PUBLISH=no", "MAX_STEPS=2",
            "ARGS=" + shlex.join(TINY_GPT)]  # make hands ARGS to a shell, which splits it as written
    first = subprocess.run(make, cwd=clone, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert ">> runs/nanogpt/data is missing: building it first" in first.stdout
    marker = clone / "runs" / "nanogpt" / "data" / "final" / "stage.json"
    assert marker.is_file() and (clone / "runs" / "nanogpt" / "pretrain" / "final" / "stage.json").is_file()
    stamp = marker.stat().st_mtime_ns
    second = subprocess.run([*make, "RESUME=never"], cwd=clone, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "is missing" not in second.stdout and marker.stat().st_mtime_ns == stamp
