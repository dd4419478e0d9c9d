"""Phi-3 end to end on CPU: train (tiny config, bundled poems, offline) -> save -> reload -> generate."""
import json
import re
import shutil
import subprocess

import pytest
from conftest import REPO, TINY_PHI3, log_history, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    published = REPO / "train_phi3" / "logs" / "train_log.md"
    before = published.read_bytes() if published.exists() else None
    proc = run(["train_phi3/train.py", *TINY_PHI3, "training.max_steps=30", "run.name=e2e", f"run.output_root={root}"])
    assert (published.read_bytes() if published.exists() else None) == before, "a plain run must not publish its log"
    return root, root / "phi3" / "e2e", proc


def test_training_lowers_the_loss_and_keeps_checkpoints(trained):
    _, run_dir, proc = trained
    losses = [e["loss"] for e in log_history(run_dir) if "loss" in e]
    evals = [e["eval_loss"] for e in log_history(run_dir) if "eval_loss" in e]
    assert len(losses) >= 5 and len(evals) >= 2
    assert losses[-1] < losses[0] - 0.5, losses
    assert evals[-1] < evals[0], evals
    assert (run_dir / "checkpoint-30" / ".complete").is_file()
    assert "Phi-3 tiny poetry model: " in proc.stdout and "parameters" not in proc.stderr[-200:]


def test_final_folder_is_a_loadable_hf_checkpoint(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run_dir, _ = trained
    final = run_dir / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert model.config.vocab_size == len(tok) and model.config.hidden_size == 64
    assert (final / "model.safetensors").is_file()
    assert not [p.name for p in final.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert json.loads((final / "config.json").read_text())["model_type"] == "phi3"


def test_run_log_records_what_happened(trained):
    _, run_dir, _ = trained
    log = (run_dir / "final" / "train_log.md").read_text(encoding="utf-8")
    for needle in ("git commit", "hardware", "packages", "parameters", "OFFLINE FALLBACK", "data/poems/poems.jsonl",
                   "| step |", "## Final evaluation", "eval_perplexity", "## Samples", "**春天来了，**",
                   "## Resolved recipe", "max_steps: 30"):
        assert needle in log, needle
    assert (run_dir / "final" / "loss.png").is_file()


def test_generate_cli_streams_a_poem(trained):
    root, _, _ = trained
    proc = run(["train_phi3/generate.py", "--root", str(root), "--prompt", "远方的山，", "max_new_tokens=10"])
    assert "远方的山，" in proc.stdout
    after = proc.stdout.split("远方的山，", 1)[1].strip()
    assert after, "nothing was generated"
    assert "temperature=0.8" in proc.stdout  # the recipe's preset is applied


def test_rerun_resumes_instead_of_starting_over(trained):
    root, run_dir, _ = trained
    proc = run(["train_phi3/train.py", *TINY_PHI3, "training.max_steps=32", "run.name=e2e", f"run.output_root={root}"])
    assert "resume: continuing from" in proc.stdout and "checkpoint-30" in proc.stdout
    assert max(e["step"] for e in log_history(run_dir)) == 32


def test_rerun_with_an_incompatible_recipe_says_what_changed(trained):
    root, run_dir, _ = trained
    args = [a.replace("tokenizer.vocab_size=600", "tokenizer.vocab_size=700") for a in TINY_PHI3]
    proc = run(["train_phi3/train.py", *args, "training.max_steps=34", "run.name=e2e", f"run.output_root={root}"],
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "was trained with another recipe (tokenizer.vocab_size: 600 -> 700)" in proc.stderr
    assert "RESUME=never" in proc.stderr
    assert max(e["step"] for e in log_history(run_dir)) == 32  # nothing was trained or overwritten


def test_a_model_other_runs_were_built_from_is_not_retrained_with_another_recipe(trained):
    """RESUME=never with a changed recipe would replace final/ under a finetuned run that started from it."""
    root, run_dir, _ = trained
    finetune = root / "phi3" / "finetune" / "final"
    finetune.mkdir(parents=True)
    (finetune / "recipe.yaml").write_text(f"model: {{name: phi3, init_from: {run_dir}}}\n")
    stamp, steps = (run_dir / "final" / "model.safetensors").stat().st_mtime_ns, log_history(run_dir)[-1]["step"]
    try:
        proc = run(["train_phi3/train.py", *TINY_PHI3, "training.max_steps=4", "run.resume=never", "run.name=e2e",
                    f"run.output_root={root}"], check=False)
    finally:
        shutil.rmtree(finetune.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"e2e/final was built with another recipe \(training.max_steps: 3\d -> 4\)", proc.stderr)
    assert f"runs were built from it ({root}/phi3/finetune)" in proc.stderr and "REPLACE=yes" in proc.stderr
    assert (run_dir / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    assert log_history(run_dir)[-1]["step"] == steps  # nothing was trained or removed


@pytest.mark.parametrize("args, message", [
    (["train_phi3/train.py", "training.num_train_epoch=1"], "unknown key 'training.num_train_epoch'"),
    (["train_phi3/train.py", "model.overrides={num_attention_heads: 7}"], "num_attention_heads=7 does not divide hidden_size=512"),
    (["train_phi3/generate.py", "--run", "does-not-exist"], "run not found"),
])
def test_user_errors_exit_2_with_one_line(args, message, tmp_path):
    proc = run([*args, f"run.output_root={tmp_path}"] if "train.py" in args[0] else [*args, "--root", str(tmp_path)],
               check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run(["train_phi3/train.py", "training.num_train_epoch=1", "--debug"], check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_make_passes_variables_to_the_recipe():
    out = subprocess.run(["make", "-n", "train-phi3", "EPOCHS=1", "LR=5e-4", "RUN=try", 'ARGS=warmup_steps=3'],
                         cwd=REPO, capture_output=True, text=True).stdout
    assert "training.num_train_epochs=1 training.learning_rate=5e-4 run.name=try warmup_steps=3" in out
    assert "--publish-log train_phi3/logs/train_log.md" in out
    out = subprocess.run(["make", "-n", "train-phi3", "PUBLISH=no"], cwd=REPO, capture_output=True, text=True).stdout
    assert "--publish-log" not in out
