"""Reliability (issue 4): crash-safe resume under SIGKILL, non-finite loss, disk full, bad inputs, secrets.

Everything that trains runs `train_phi3/train.py` as a real subprocess with the tiny Phi-3 of conftest.py.
"""
from __future__ import annotations

import ast
import json
import os
import random
import re
import signal
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import PY, REPO, TINY_PHI3, run
from safetensors.torch import load_file

from shared.training.checkpoints import MARKER, find_resume, is_complete, mark_complete
from shared.config.errors import UserError

# Tiny, fast, deterministic: one log line per step (the kill points count them), a checkpoint every 4 steps.
FAST = [*TINY_PHI3, "training.eval_strategy=no", "training.logging_steps=1", "training.save_steps=4"]


def train_args(root: Path, *extra: str) -> list[str]:
    return ["train_phi3/train.py", *FAST, f"run.output_root={root}", *extra]


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The run failed the way a user error should: exit 2, exactly one `error:` line, no traceback."""
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def losses(checkpoint: Path) -> list[tuple]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [(e["step"], e["loss"], e["grad_norm"], e["learning_rate"]) for e in history if "loss" in e]


# ----------------------------------------------------------------------------------------------------------------
# 1a. checkpoints.py: what counts as complete, and what resume=auto does with the rest


def fake_checkpoint(run_dir: Path, step: int, complete: bool = True, state: str | None = None) -> Path:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(256))
    (folder / "optimizer.pt").write_bytes(os.urandom(512))
    (folder / "trainer_state.json").write_text(state if state is not None else json.dumps({"global_step": step}))
    if complete:
        mark_complete(folder)
    return folder


def test_a_marked_checkpoint_is_complete(tmp_path):
    folder = fake_checkpoint(tmp_path, 4)
    assert is_complete(folder)
    assert json.loads((folder / MARKER).read_text())["model.safetensors"] == 256


@pytest.mark.parametrize("damage", ["no marker", "truncated trainer_state.json", "file grew after marking",
                                    "file shrank after marking", "file removed after marking",
                                    "marker half-written", "trainer_state of another step"])
def test_damaged_checkpoints_are_not_complete(tmp_path, damage):
    folder = fake_checkpoint(tmp_path, 8, complete=damage != "no marker",
                             state='{"global_step": 8, "log_hi' if "truncated" in damage else
                             json.dumps({"global_step": 4}) if "another step" in damage else None)
    if damage == "file grew after marking":
        with open(folder / "optimizer.pt", "ab") as f:
            f.write(b"x")
    elif damage == "file shrank after marking":
        (folder / "model.safetensors").write_bytes(b"\0" * 100)
    elif damage == "file removed after marking":
        (folder / "optimizer.pt").unlink()
    elif damage == "marker half-written":
        (folder / MARKER).write_text('{"model.safetensors": 25')
    assert not is_complete(folder)


def test_auto_resume_skips_and_removes_incomplete_checkpoints(tmp_path, capsys):
    half_deleted = fake_checkpoint(tmp_path, 4)  # the Trainer's rotation was deleting it when the run died
    (half_deleted / "optimizer.pt").unlink()
    older = fake_checkpoint(tmp_path, 8)
    good = fake_checkpoint(tmp_path, 12)
    truncated = fake_checkpoint(tmp_path, 16, state='{"global_st')
    killed = fake_checkpoint(tmp_path, 20, complete=False)
    (tmp_path / "final").mkdir()  # not a checkpoint: left alone
    assert find_resume(tmp_path, "auto") == good
    assert not truncated.exists() and not killed.exists() and not half_deleted.exists()
    assert older.is_dir() and good.is_dir() and (tmp_path / "final").is_dir()
    out = capsys.readouterr().out
    for name in ("checkpoint-20", "checkpoint-16", "checkpoint-4"):
        assert f"resume: removing incomplete {name}" in out


def test_auto_resume_leaves_removal_to_the_main_process(tmp_path):
    good = fake_checkpoint(tmp_path, 4)
    killed = fake_checkpoint(tmp_path, 8, complete=False)
    assert find_resume(tmp_path, "auto", is_main=False) == good
    assert killed.is_dir()


def test_resume_policies(tmp_path):
    assert find_resume(tmp_path / "nothing-yet", "auto") is None
    good = fake_checkpoint(tmp_path, 4)
    killed = fake_checkpoint(tmp_path, 8, complete=False)
    assert find_resume(tmp_path, "never") is None and killed.is_dir()  # never: starts over, touches nothing
    assert find_resume(tmp_path, str(good)) == good
    with pytest.raises(UserError, match=r"checkpoint-8 is incomplete .* use run.resume=auto"):
        find_resume(tmp_path, str(killed))
    assert killed.is_dir()  # an explicit choice is reported, not deleted
    with pytest.raises(UserError, match="checkpoint not found"):
        find_resume(tmp_path, str(tmp_path / "checkpoint-99"))


# ----------------------------------------------------------------------------------------------------------------
# 1b. SIGKILL at random moments, rerun the same command each time: the final weights are bit-for-bit those of an
#     uninterrupted run (CPU, fixed seed). 40 steps of 33 per epoch, so resumes happen on both sides of an epoch
#     boundary; dropout is on, so the restored RNG state matters too; the learning rate never reaches 0, so one
#     optimizer step too many (or too few) would show in the weights.

DROPOUT = TINY_PHI3[0].rstrip("}") + ", attention_dropout: 0.1, resid_pdrop: 0.1, embd_pdrop: 0.1}"
RESUME = [DROPOUT, "training.max_steps=40", "data.max_samples=40", "training.lr_scheduler_type=cosine_with_min_lr",
          "training.lr_scheduler_kwargs={min_lr_rate: 0.1}"]
KILL_SEED = 4  # the kill points below are drawn from this seed, so a failure can be replayed


class Watched:
    """A training subprocess whose combined output we read while it runs."""

    def __init__(self, args: list[str], log: Path):
        self.log, self.data = log, b""
        with open(log, "wb") as f:
            self.proc = subprocess.Popen([PY, *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def output(self) -> str:
        with open(self.log, "rb") as f:  # only what is new since the last look (this is polled)
            f.seek(len(self.data))
            self.data += f.read()
        return self.data.decode("utf-8", errors="replace")

    def step(self) -> int:
        """The global step the run has logged (one log line per step; resumed runs start at their checkpoint)."""
        out = self.output()
        resumed = re.search(r"resume: continuing from .*checkpoint-(\d+)", out)
        return (int(resumed.group(1)) if resumed else 0) + out.count("{'loss': ")

    def wait_for(self, what: str, condition, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timeout waiting for {what}\n{self.output()[-3000:]}")
            time.sleep(0.0005)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def kill_mid_save(w: Watched, run_dir: Path, first: int) -> int:
    """Freeze the run (SIGSTOP) while checkpoint-N (N >= first) has its weights on disk but no marker yet, then
    SIGKILL it; if the save finished before the freeze landed, let it go on and try the next checkpoint."""
    step = first
    while True:
        folder = run_dir / f"checkpoint-{step}"
        w.wait_for(f"checkpoint-{step} to be written",
                   lambda: (folder / "model.safetensors").is_file() or (folder / MARKER).is_file())
        w.proc.send_signal(signal.SIGSTOP)
        if not (folder / MARKER).is_file():
            w.kill()
            return step
        w.proc.send_signal(signal.SIGCONT)
        step += 4


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_gives_bit_identical_weights(tmp_path, request):
    rng = random.Random(KILL_SEED)
    root = tmp_path / "runs"
    run_dir = root / "phi3" / "killed"
    killed = train_args(root, *RESUME, "run.name=killed")
    reference = Watched(train_args(root, *RESUME, "run.name=reference"), tmp_path / "reference.log")  # meanwhile
    request.addfinalizer(lambda: reference.proc.poll() is None and reference.kill())

    # kill 1: while a checkpoint is being written
    w = Watched(killed, tmp_path / "run1.log")
    torn = kill_mid_save(w, run_dir, first=rng.choice([8, 12]))
    assert (run_dir / f"checkpoint-{torn}").is_dir() and not is_complete(run_dir / f"checkpoint-{torn}")

    # kills 2 and 3: at a random step (and a random fraction of the next), before and after the epoch boundary
    outputs = []
    for n, (low, high) in enumerate([(14, 30), (34, 39)], start=2):
        target = rng.randint(low, high)
        w = Watched(killed, tmp_path / f"run{n}.log")
        w.wait_for(f"step {target}", lambda: w.step() >= target)
        time.sleep(rng.uniform(0, 0.01))
        w.kill()
        outputs.append(w.output())
    assert f"resume: removing incomplete checkpoint-{torn}" in outputs[0]

    # kill 4: while final/ is being written (it is written as .final-tmp/ and renamed into place when complete)
    w = Watched(killed, tmp_path / "run4.log")
    w.wait_for("final/ to be written", lambda: (run_dir / ".final-tmp").is_dir() or (run_dir / "final").is_dir())
    w.proc.send_signal(signal.SIGSTOP)
    if not (run_dir / "final").exists():  # (on a badly loaded machine the save can win the race: nothing to test)
        w.kill()
        assert not (run_dir / "final").exists()
    else:
        w.proc.send_signal(signal.SIGCONT)
        w.proc.wait()
    assert "resume: continuing from" in w.output()

    final = run([*killed], timeout=300)
    assert re.search(r"resume: continuing from .*checkpoint-40\b", final.stdout), final.stdout[-2000:]
    assert "checkpoint-40 is already at max_steps=40, nothing left to train" in final.stdout
    assert reference.proc.wait(timeout=300) == 0, reference.output()[-3000:]

    ref_dir = root / "phi3" / "reference"
    expected, got = weights(ref_dir / "final"), weights(run_dir / "final")
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's in {different}"
    assert losses(run_dir / "checkpoint-40") == losses(ref_dir / "checkpoint-40")  # every step, every value
    assert sorted(c.name for c in run_dir.glob("checkpoint-*")) == ["checkpoint-36", "checkpoint-40"]
    assert all(is_complete(c) for c in run_dir.glob("checkpoint-*"))


# ----------------------------------------------------------------------------------------------------------------
# 2. non-finite loss


@pytest.mark.slow
@pytest.mark.parametrize("logging_steps", [1, 5], ids=["seen-in-the-loss", "between-two-logs"])
def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(tmp_path, logging_steps):
    """lr=1e6 blows up within a few steps. With logging_steps=5 the loss is seen only at step 5, after the weights
    went NaN and checkpoint-4 was saved: that checkpoint must not be marked complete (nor named as good)."""
    root = tmp_path / "runs"
    proc = run(train_args(root, "training.learning_rate=1e6", "training.max_steps=12", "training.save_steps=2",
                          f"training.logging_steps={logging_steps}"), check=False)
    line = error_line(proc)
    m = re.match(r"error: non-finite .* at step (\d+); last good checkpoint (\S+) is kept\. .*run\.resume=never", line)
    assert m, line
    step, good = int(m.group(1)), Path(m.group(2))
    run_dir = root / "phi3" / "poetry"
    assert good.parent == run_dir and int(good.name.split("-")[1]) < step
    assert is_complete(good)
    assert all(torch.isfinite(t).all() for t in weights(good).values())
    for c in run_dir.glob("checkpoint-*"):  # nothing non-finite is presented as complete
        if is_complete(c):
            assert all(torch.isfinite(t).all() for t in weights(c).values()), c.name
    assert not (run_dir / "final").exists()


def test_guard_refuses_to_mark_a_checkpoint_with_nan_weights(tmp_path):
    from shared.training.guards import NonFiniteLossGuard

    model = torch.nn.Linear(2, 2)
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=6)
    fake_checkpoint(tmp_path, 4)
    NonFiniteLossGuard().on_save(args, state, None, model=model)  # finite: fine
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"non-finite weights .* at step 6; last good checkpoint .*checkpoint-4 is kept"):
        NonFiniteLossGuard().on_save(args, state, None, model=model)
    with pytest.raises(UserError, match=r"non-finite loss \(inf\) at step 6"):
        NonFiniteLossGuard().on_log(args, state, None, logs={"loss": float("inf")})


# ----------------------------------------------------------------------------------------------------------------
# 3. disk full while saving. A real full disk reports itself differently per writer (checked on a 5 MB tmpfs):
#    Python's open() -> OSError(ENOSPC); safetensors -> SafetensorError("... (os error 28)"); torch.save ->
#    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos ...") with no errno at all.
#    sitecustomize.py reproduces exactly that for one file: it writes a stub, raises the writer's own error and
#    from then on reports 0 bytes free.

FULL_DISK = '''
import errno, os, shutil
_target = os.environ["SLM_TEST_DISK_FULL_AT"]
_full = []
def _fail(path, error):
    path = os.fspath(path).replace(os.sep, "/")
    if path.endswith(_target) or _full:
        _full.append(path)
        with open(path, "wb") as f:
            f.write(b"\\0" * 64)
        raise error
import safetensors, safetensors.torch
_save_file = safetensors.torch.save_file
def save_file(tensors, filename, *args, **kwargs):
    _fail(filename, safetensors.SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"))
    return _save_file(tensors, filename, *args, **kwargs)
safetensors.torch.save_file = save_file
import torch
_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)):
        _fail(f, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))
    return _save(obj, f, *args, **kwargs)
torch.save = save
_disk_usage = shutil.disk_usage
def disk_usage(path):
    usage = _disk_usage(path)
    return usage._replace(used=usage.total, free=0) if _full else usage
shutil.disk_usage = disk_usage
'''


@pytest.mark.slow
@pytest.mark.parametrize("fails_at, intact", [
    ("checkpoint-8/optimizer.pt", "checkpoint-4"),  # torch.save, after the checkpoint's weights were written
    (".final-tmp/model.safetensors", "checkpoint-12"),  # safetensors, the final model after the last checkpoint
], ids=["checkpoint", "final"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, fails_at, intact):
    from transformers import AutoModelForCausalLM

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FULL_DISK)
    root = tmp_path / "runs"
    command = train_args(root, "training.max_steps=12")
    proc = run(command, check=False, env={"PYTHONPATH": str(tmp_path / "site"), "SLM_TEST_DISK_FULL_AT": fails_at})
    line = error_line(proc)
    run_dir = root / "phi3" / "poetry"
    assert re.fullmatch(rf"error: disk full while writing to {re.escape(str(run_dir))}; the previous checkpoint "
                        rf"{intact} is intact; free space and rerun the same command to resume", line), line
    assert is_complete(run_dir / intact)
    assert AutoModelForCausalLM.from_pretrained(run_dir / intact).config.hidden_size == 64
    assert not (run_dir / "final").exists()
    if fails_at.startswith("checkpoint-"):
        assert not is_complete(run_dir / fails_at.split("/")[0])
    if fails_at.endswith("optimizer.pt"):  # space freed: the same command resumes and finishes
        again = run(command)
        assert "resume: removing incomplete checkpoint-8" in again.stdout
        assert re.search(r"resume: continuing from .*checkpoint-4\b", again.stdout)
        assert (run_dir / "final" / "model.safetensors").is_file()


def test_disk_full_is_recognised_however_the_writer_reports_it(tmp_path, monkeypatch):
    import errno
    import shutil

    from safetensors import SafetensorError

    from shared.training.guards import is_disk_full

    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640 vs 598")
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                        tmp_path)
    assert not is_disk_full(torch_error, tmp_path)  # this disk has room: a real bug, keep its traceback
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path)
    assert not is_disk_full(ValueError("something else"), tmp_path)
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped, tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(used=usage.total, free=0))
    assert is_disk_full(torch_error, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# 5 (first, the tiny trained model that the generate rows of the bad-input table need). Secrets never reach disk.

SECRETS = {"hub_token": "hf_FAKESECRET123456", "HF_TOKEN": "hf_ENVSECRET987654",
           "WANDB_API_KEY": "0123456789abcdefWANDBSECRET0123456789abcd"}


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    """A tiny finished run (4 steps, 64 positions) trained with a hub token on the command line and in the env."""
    root = tmp_path_factory.mktemp("secret-runs")
    proc = run(train_args(root, "training.max_steps=4", "training.save_steps=2", "run.name=tiny",
                          f"training.hub_token={SECRETS['hub_token']}"),
               env={"HF_TOKEN": SECRETS["HF_TOKEN"], "WANDB_API_KEY": SECRETS["WANDB_API_KEY"]})
    return root, root / "phi3" / "tiny", proc


def file_texts(path: Path):
    """The bytes of a file, and of every member when it is a zip (torch's .bin/.pt/.pth pickles are)."""
    data = path.read_bytes()
    yield data
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                yield z.read(name)


@pytest.mark.slow
def test_secrets_never_reach_the_run_folder(secret_run):
    root, run_dir, proc = secret_run
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {"recipe.yaml", "train_log.md", "training_args.bin", "trainer_state.json", "config.json"} <= {p.name for p in files}
    for path in files:
        for blob in file_texts(path):
            for name, secret in SECRETS.items():
                assert secret.encode() not in blob, f"{name} leaked into {path.relative_to(root)}"
    for name, secret in SECRETS.items():
        assert secret not in proc.stdout and secret not in proc.stderr, f"{name} printed"
    recipe = (run_dir / "final" / "recipe.yaml").read_text()
    assert "hub_token: '***redacted***'" in recipe or "hub_token: ***redacted***" in recipe
    assert "training.hub_token=***redacted***" in (run_dir / "final" / "train_log.md").read_text()


def python_files() -> list[Path]:
    folders = [REPO / "shared", *sorted(REPO.glob("train_*")), REPO / "minigl"]
    return sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("*.py"))


def test_no_unsafe_torch_load_or_trust_remote_code_in_the_code():
    """torch.load unpickles arbitrary objects unless weights_only=True; remote code runs whatever a Hub repo holds
    (a recipe may opt in with model.trust_remote_code: true, but the code never hard-codes it)."""
    problems = []
    files = python_files()
    assert REPO / "shared" / "training" / "train.py" in files
    for path in files:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(REPO)
        try:
            tree = ast.parse(text)
        except SyntaxError:  # (being edited right now?) fall back to the text
            problems += [f"{where}: torch.load( without weights_only=True" for m in re.finditer(r"torch\.load\(", text)
                         if "weights_only=True" not in text[m.end():m.end() + 300].split(")")[0]]
            problems += [f"{where}: trust_remote_code=True" for _ in re.finditer(r"trust_remote_code\s*=\s*True", text)]
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "load" and \
                        isinstance(func.value, ast.Name) and func.value.id == "torch":
                    if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords):
                        problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
                for k in node.keywords:
                    if k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is True:
                        problems.append(f"{where}:{node.lineno}: trust_remote_code=True")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and \
                            isinstance(value, ast.Constant) and value.value is True:
                        problems.append(f"{where}:{node.lineno}: trust_remote_code: True")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------------------------
# 4. bad inputs through the real command line: exit 2, one `error:` line, no traceback, no final/ folder.
#    (The cases run two at a time: most of each one is Python importing torch and transformers.)

LONG_PROMPT = "春天来了，花开了。" * 30


def jsonl(tmp: Path, name: str, lines: list) -> str:
    path = tmp / name
    path.write_bytes(b"".join((l if isinstance(l, bytes) else json.dumps(l, ensure_ascii=False).encode()) + b"\n"
                              for l in lines))
    return f"data.path={path}"


def incomplete_checkpoint(tmp: Path) -> str:
    folder = tmp / "checkpoint-4"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return f"run.resume={folder}"


POEM = {"title": "春", "content": "春天来了，花开了。"}
# id -> (command line, given the case's scratch folder and the tiny trained run; what the error line says)
BAD_INPUTS = {
    "malformed-jsonl": (lambda t, r: train_args(t, jsonl(t, "bad.jsonl", [POEM, POEM, b'{"title": "x", "content": '])),
                        r"bad\.jsonl:3: malformed JSON"),
    "empty-dataset": (lambda t, r: train_args(t, jsonl(t, "empty.jsonl", [b""])), r"empty\.jsonl: empty dataset"),
    "missing-column": (lambda t, r: train_args(t, jsonl(t, "text.jsonl", [{"text": "春天来了"}] * 3)),
                       r"missing column 'title'.*columns are text"),
    "non-utf8": (lambda t, r: train_args(t, jsonl(t, "latin1.jsonl", [POEM, b'{"title": "caf\xe9", "content": "x"}'])),
                 r"latin1\.jsonl:2: not valid UTF-8"),
    "empty-texts": (lambda t, r: train_args(t, jsonl(t, "blank.jsonl", [{"title": "", "content": " "}] * 3)),
                    r"every record renders to an empty text"),
    "over-long-text": (lambda t, r: train_args(t, jsonl(t, "long.jsonl", [POEM, {"title": "t", "content": "字" * 200_001}])),
                       r"record 1 has 200003 characters, over data\.max_chars=200000"),
    "unknown-key": (lambda t, r: train_args(t, "data.shuffle_buffer=100"), r"unknown key 'data\.shuffle_buffer'"),
    "mistyped-key": (lambda t, r: train_args(t, "training.num_train_epoch=1"),
                     r"unknown key 'training\.num_train_epoch' \(did you mean 'num_train_epochs'\?\)"),
    "wrong-type": (lambda t, r: train_args(t, "training.per_device_train_batch_size=four"),
                   r"training\.per_device_train_batch_size must be int, got 'four'"),
    "negative-lr": (lambda t, r: train_args(t, "training.learning_rate=-1e-3"), r"learning_rate must be > 0, got -0\.001"),
    "dropout-1": (lambda t, r: train_args(t, "model.overrides={attention_dropout: 1.0}"),
                  r"attention_dropout must be in \[0, 1\), got 1\.0"),
    "heads-vs-hidden": (lambda t, r: train_args(t, "model.overrides={hidden_size: 64, num_attention_heads: 5}"),
                        r"num_attention_heads=5 does not divide hidden_size=64"),
    "missing-checkpoint": (lambda t, r: train_args(t, "run.resume=/nonexistent/checkpoint-4"),
                           r"run\.resume: checkpoint not found: /nonexistent/checkpoint-4"),
    "incomplete-checkpoint": (lambda t, r: train_args(t, incomplete_checkpoint(t)),
                              r"checkpoint-4 is incomplete .*run\.resume=auto"),
    "generate-missing-run": (lambda t, r: ["train_phi3/generate.py", "--run", "nope", "--root", str(t)],
                             r"run not found: .*nope has no final model"),
    "prompt-over-context": (lambda t, r: ["train_phi3/generate.py", "--root", str(r), "--run", "tiny",
                                          "--prompt", LONG_PROMPT],
                            r"prompt is \d+ tokens, the model's context is 64; shorten the prompt"),
}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory, secret_run):
    trained_root = secret_run[0]
    before = snapshot(trained_root)
    jobs = {}
    for case, (command, _) in BAD_INPUTS.items():
        scratch = tmp_path_factory.mktemp(case)
        jobs[case] = (scratch, command(scratch, trained_root))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(run, args, check=False, timeout=300) for case, (_, args) in jobs.items()}
        results = {case: (jobs[case][0], future.result()) for case, future in futures.items()}
    return results, snapshot(trained_root) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_error(case, bad_input_results):
    results, trained_run_untouched = bad_input_results
    scratch, proc = results[case]
    line = error_line(proc)
    assert re.search(BAD_INPUTS[case][1], line), line
    assert not [p for p in scratch.rglob("final") if p.is_dir()], "a final/ folder was created"
    assert not [p for p in scratch.rglob("checkpoint-*") if p.is_dir() and is_complete(p)]
    assert trained_run_untouched, "generate changed the run it was given"
