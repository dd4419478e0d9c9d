"""The run log: a markdown table from the Trainer's history, a PNG, no secrets and no machine's paths."""
import re
import subprocess
from types import SimpleNamespace

from shared import REPO_ROOT
from shared.config.recipe import REDACTED
from shared.training.runlog import RunLog, redacted_command


def fake_state(history, seen=0):
    return SimpleNamespace(log_history=history, num_input_tokens_seen=seen, global_step=history[-1]["step"] if history else 0)


def test_table_merges_train_and_eval_rows_and_extra_metrics(tmp_path):
    log = RunLog("demo", {"data": "poems"})
    history = [
        {"step": 5, "epoch": 0.5, "loss": 4.0, "learning_rate": 1e-3, "grad_norm": 1.5, "aux_loss": 0.02},
        {"step": 5, "epoch": 0.5, "eval_loss": 3.9},
        {"step": 10, "epoch": 1.0, "loss": 3.0, "learning_rate": 5e-4, "grad_norm": 1.0, "aux_loss": 0.01},
        {"step": 10, "train_loss": 3.5, "train_runtime": 2.0},  # end-of-training summary: not a row
    ]
    log.on_log(None, fake_state(history), None, logs=history[-1])
    log.on_train_end(None, fake_state(history), None)
    text = log.render()
    assert "| step | epoch | train loss | eval loss | lr | grad_norm | tokens/s | aux_loss |" in text
    assert "| 5 | 0.5000 | 4.0000 | 3.9000 | 1.000e-03 | 1.5000 | – | 0.0200 |" in text
    assert text.count("\n| 10 |") == 1 and "- **data**: poems" in text
    written = log.write(tmp_path)
    assert written.read_text(encoding="utf-8").startswith("# demo")
    png = tmp_path / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # temporary files renamed away


def test_tokens_per_second_from_interval(monkeypatch):
    log = RunLog("demo", {})
    clock = iter([100.0, 102.0])
    monkeypatch.setattr("shared.training.runlog.time.perf_counter", lambda: next(clock))
    log.on_train_begin(None, fake_state([{"step": 0}], seen=0), None)
    log.on_log(None, fake_state([{"step": 4, "loss": 1.0}], seen=2048), None, logs={"loss": 1.0})
    assert log.speed == {4: 1024.0}


def test_secrets_never_reach_the_log(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETSECRET123")
    monkeypatch.setenv("WANDB_API_KEY", "wandbkey-987654")
    log = RunLog("demo", {"note": "token is hf_SECRETSECRET123 and wandbkey-987654"})
    text = log.render(png_name=None)
    assert "hf_SECRETSECRET123" not in text and "wandbkey-987654" not in text and REDACTED in text
    cmd = redacted_command(["train.py", "training.hub_token=hf_abc123456", "epochs=1"])
    assert "hf_abc123456" not in cmd and "epochs=1" in cmd


def test_reference_logs_record_paths_relative_to_the_repository():
    """A published log named /work/ref/runs/...: the machine it was made on, not a path anyone else has."""
    logs = subprocess.run(["git", "ls-files", "*_log.md"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    machine = re.compile(r"(?<![\w.~-])/(?:work|home|tmp|root|Users|mnt)/\S*")
    found = [f"{name}: {m.group()}" for name in logs
             for m in machine.finditer((REPO_ROOT / name).read_text(encoding="utf-8"))]
    assert logs and not found, found
