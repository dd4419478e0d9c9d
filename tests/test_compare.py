"""make compare's bookkeeping: the budget, the recipes it refuses to compare, parameter and FLOPs counting (tied heads,
top-k of the experts), reading a run's log, and (slow) two architectures trained through their own scripts into one
table, twice, with the same losses."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, run
from transformers import MixtralConfig

from bench.compare import load_recipes, matmul_parameters, parse_budget, read_run
from shared.config.errors import UserError
from shared.models.gpt import GPTConfig
from shared.models.lstm import LSTMConfig
from shared.models.registry import flops_per_token


def test_budget_suffixes_and_errors():
    assert parse_budget("300k") == 300_000 and parse_budget("1.5M") == 1_500_000 and parse_budget("2G") == 2 * 10**9
    assert parse_budget(" 4096 ") == 4096
    for bad in ("lots", "3x", "0", "-5k"):
        with pytest.raises(UserError, match="BUDGET="):
            parse_budget(bad)


def test_recipes_with_a_different_budget_are_refused_with_file_and_line(tmp_path):
    for name in ("phi3", "nanogpt"):
        shutil.copy(REPO / "recipes" / "compare" / f"{name}.yaml", tmp_path)
    assert set(load_recipes(["phi3", "nanogpt"], tmp_path, [])) == {"phi3", "nanogpt"}
    path = tmp_path / "nanogpt.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("learning_rate: 2.0e-3", "learning_rate: 1.0e-3"), encoding="utf-8")
    line = 1 + text[:text.index("learning_rate: 2.0e-3")].count("\n")
    with pytest.raises(UserError) as e:
        load_recipes(["phi3", "nanogpt"], tmp_path, [])
    assert f"nanogpt.yaml:{line}" in str(e.value) and "training.learning_rate differs from phi3.yaml" in str(e.value)
    # an override for every model keeps them comparable
    assert load_recipes(["phi3", "nanogpt"], tmp_path, ["training.learning_rate=5e-4"])


def test_parameters_count_a_tied_head_and_top_k_of_the_experts():
    gpt = matmul_parameters(GPTConfig(vocab_size=100, block_size=32, n_layer=1, n_head=2, n_embd=16, bias=False))
    # token 100x16 + positions 32x16 are tables; the tied head (100x16) is a matmul every token goes through
    assert gpt["embeddings"] == 100 * 16 + 32 * 16
    assert gpt["matmul_per_token"] == gpt["total"] - gpt["embeddings"] + 100 * 16
    moe = MixtralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)
    p = matmul_parameters(moe)
    attention, router, norms, head, expert = 4 * 16 * 16, 16 * 4, 3 * 16, 50 * 16, 3 * 16 * 32
    assert p["total"] == 50 * 16 + attention + router + norms + head + 4 * expert
    assert p["matmul_per_token"] == attention + router + norms + head + 2 * expert


def test_flops_have_an_attention_term_for_transformers_only():
    gpt = GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=16)
    assert flops_per_token(gpt, 1000, context=32) == 6 * 1000 + 12 * 3 * 16 * 32
    mixtral = MixtralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)  # transformers' names
    assert flops_per_token(mixtral, 1000, context=32) == 6 * 1000 + 12 * 2 * 64 * 32
    lstm = LSTMConfig(vocab_size=100, n_embd=16, n_layer=2)
    assert flops_per_token(lstm, 1000, context=32) == 6 * 1000


def test_read_run_finds_the_closing_entry_and_the_final_evaluation(tmp_path):
    # our run log stamps an elapsed train_runtime on every entry; the Trainer's closing one has train_loss
    history = [{"step": 1, "loss": 5.0, "train_runtime": 1.0}, {"step": 1, "eval_loss": 4.9, "eval_runtime": 0.5},
               {"step": 2, "loss": 4.0, "train_runtime": 2.5}, {"step": 2, "eval_loss": 3.9, "eval_runtime": 0.5},
               {"step": 2, "train_loss": 4.5, "train_runtime": 3.0}, {"step": 2, "eval_loss": 3.7, "eval_runtime": 2}]
    (tmp_path / "log_history.json").write_text(json.dumps(history), encoding="utf-8")
    (tmp_path / "train_summary.json").write_text(json.dumps({"steps": 2}), encoding="utf-8")
    r = read_run(tmp_path)
    assert r["curve"] == [(1, 4.9), (2, 3.9)] and r["final_eval"]["eval_loss"] == 3.7
    assert r["last_train_loss"] == 4.0 and r["train_s"] == 2.0  # 3 s minus the two evaluations during training


@pytest.fixture(scope="module")
def bins(minigl_runs) -> Path:
    return minigl_runs / "minigl" / "data" / "final"


@pytest.mark.slow
def test_two_architectures_on_one_budget_and_a_rerun_gives_the_same_losses(bins, tmp_path):
    common = [f"tokenizer.name={bins}", f"data.bins={bins}", "data.block_size=32", "data.eval_subset=8",
              "training.per_device_train_batch_size=4", "training.per_device_eval_batch_size=8"]
    tables = []
    for attempt, only in (("a", "minigl-gpt,minigl-lstm"), ("b", "minigl-gpt")):
        out = tmp_path / attempt
        run(["-m", "bench.compare", "--budget", "1k", "--only", only, "--out", str(out),
             f"run.output_root={tmp_path / ('runs-' + attempt)}", *common], timeout=300)
        tables.append(json.loads((out / "compare.json").read_text(encoding="utf-8"))["rows"])
        md = (out / "compare.md").read_text(encoding="utf-8")
        assert "8 steps x 128 tokens = 1,024 training tokens per model" in md
        assert "| minigl-gpt | slm_gpt |" in md and ("| minigl-lstm | slm_lstm |" in md) == (attempt == "a")
        assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    first, again = tables
    for r in first:
        assert r["tokens"] == 1024 and len(r["curve"]) >= 4 and r["tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0
        assert r["val_loss"] < r["curve"][0]["eval_loss"]  # it learned something in 8 steps
        assert r["train_flops"] == r["flops_per_token"] * 1024
    assert first[0]["model"] == again[0]["model"] == "minigl-gpt"  # the rerun, alone, learns exactly the same
    assert first[0]["val_loss"] == pytest.approx(again[0]["val_loss"], abs=1e-5)
    assert [c["eval_loss"] for c in first[0]["curve"]] == pytest.approx([c["eval_loss"] for c in again[0]["curve"]],
                                                                          abs=1e-5)


def test_a_mismatched_override_and_an_unknown_model_fail_in_one_line():
    proc = run(["-m", "bench.compare", "--only", "phi3,gpt5", "--budget", "1k"], check=False)
    assert proc.returncode != 0 and "unknown gpt5" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(["-m", "bench.compare", "--budget", "lots"], check=False)
    assert proc.returncode != 0 and "BUDGET='lots'" in proc.stderr
