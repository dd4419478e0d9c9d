"""Phi-2 Chinese: [EOS]/[BOS] placement and packing, the SFT answer-only mask token by token, the DPO similarity
filter, and a tiny clean -> tokenizer -> pretrain -> reload -> generate -> SFT -> DPO chain on CPU."""
from __future__ import annotations

import json

import pytest
from conftest import REPO, log_history, run, sft_first_batch, split_at_loss
from datasets import Dataset

from shared.data.sources import pack


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The Phi-2 stages as the make targets run them, tiny: each stage reads the previous one's final/."""
    root = tmp_path_factory.mktemp("runs")
    run(["train_phi2/clean.py", f"run.output_root={root}", "stage.workers=1"])
    run(["train_phi2/tokenizer.py", f"run.output_root={root}", f"stage.input={root}/phi2/clean",
         "stage.min_frequency=2", "stage.vocab_size=2000"])
    tiny = ["model.overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2, "
            "num_key_value_heads: 2}",
            "data.block_size=64", "training.per_device_train_batch_size=8", "training.logging_steps=2",
            "training.warmup_steps=2", "generation.max_new_tokens=8"]
    run(["train_phi2/train.py", *tiny, f"run.output_root={root}", f"tokenizer.name={root}/phi2/tokenizer",
         f"data.fallback={root}/phi2/clean/final/clean.jsonl", "data.dataset=null", "training.max_steps=40",
         "training.eval_steps=20", "training.save_steps=20", "training.learning_rate=3e-3"])
    return root


@pytest.fixture(scope="module")
def tokenizer(chain):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chain / "phi2" / "tokenizer" / "final")


def test_every_document_ends_with_eos_and_bos_is_a_switch(tokenizer):
    texts = Dataset.from_list([{"text": "苇川的春天来得早。"}, {"text": "河上有船。"}, {"text": "岸边有柳。"}])
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    plain = [t for block in pack(texts, tokenizer, 4)["input_ids"] for t in block]
    with_bos = [t for block in pack(texts, tokenizer, 4, add_bos=True)["input_ids"] for t in block]
    ids = [tokenizer(t["text"], add_special_tokens=False).input_ids for t in texts]
    stream = [t for x in ids for t in x + [eos]]
    assert plain == stream[: len(stream) // 4 * 4]  # packed: documents run on across blocks, nothing padded
    stream = [t for x in ids for t in [bos] + x + [eos]]
    assert with_bos == stream[: len(stream) // 4 * 4] and plain.count(eos) >= 2 and bos not in plain


@pytest.mark.slow
def test_pretraining_lowers_the_loss_and_the_model_reloads_and_generates(chain):
    from transformers import AutoModelForCausalLM

    run_dir = chain / "phi2" / "pretrain"
    losses = [e["loss"] for e in log_history(run_dir) if "loss" in e]
    assert losses[-1] < losses[0] - 0.5, losses
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert type(model).__name__ == "PhiForCausalLM" and model.config.vocab_size % 64 == 0
    assert model.generation_config.no_repeat_ngram_size == 4 and model.generation_config.do_sample is False
    assert "sdpa" in model.config._attn_implementation
    proc = run(["train_phi2/generate.py", "--root", str(chain), "--run", "pretrain", "--prompt", "苇川的春天"])
    assert "苇川的春天" in proc.stdout and "no_repeat_ngram_size=4" in proc.stdout


@pytest.mark.slow
def test_sft_loss_covers_the_answer_and_eos_only(chain, tmp_path):
    from shared.training import train
    from shared.config.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes/phi2/sft.yaml", [
        f"run.output_root={chain}", f"model.init_from={chain}/phi2/pretrain", f"tokenizer.name={chain}/phi2/pretrain",
        "data.dataset=null", "data.max_samples=16", "training.max_steps=1", "training.eval_strategy=no",
        "training.save_strategy=no"])
    data = train.load_data(recipe)
    completions = {r["completion"] for r in data.train}
    for ids, labels in sft_first_batch(recipe):
        prompt, answer = split_at_loss(data.tokenizer, ids, labels)
        assert prompt.endswith("##回答:\n") and prompt.startswith("##提问:")  # everything up to the marker: no loss
        assert answer in completions, answer


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_sft_and_dpo_runs_print_no_deprecation_warnings(stage, tmp_path):
    """TRL's configs default `gradient_checkpointing` (transformers 5's old name) to True: ~10 FutureWarnings a run."""
    import warnings

    from shared.models import registry as models
    from shared.training import train
    from shared.config.recipe import load_recipe
    from shared.data.tokenizer import train_tokenizer, wrap

    qa = [("苇川在哪里？", "苇川在河的东岸。"), ("老街叫什么？", "老街叫望河街。"), ("谁修的桥？", "桥是一九五六年修的。")] * 4
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "input": "", "output": a, "rejected": a[::-1]},
                                       ensure_ascii=False) + "\n" for q, a in qa), encoding="utf-8")
    specials = ["[PAD]", "[EOS]", "[SEP]", "[BOS]", "[UNK]"]
    tok = wrap(train_tokenizer(iter([[f"{q}\n{a}" for q, a in qa]]), "bpe", 500, 1, specials), specials, 512)
    tok.save_pretrained(str(tmp_path / "tok"))
    recipe = load_recipe(REPO / f"recipes/phi2/{stage}.yaml", [
        f"run.output_root={tmp_path}", f"data.path={data}", "data.dataset=null", f"tokenizer.name={tmp_path}/tok",
        "model.init_from=null", "model.config=train_phi2/phi2_tiny.json",
        "model.overrides={hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 2, num_hidden_layers: 1}",
        "training.max_steps=2", "training.per_device_train_batch_size=4", "training.save_strategy=no",
        "generation.prompts=[]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = train.training_arguments(recipe)
        data = train.load_data(recipe)
        train.train(recipe, models.build_model(recipe, models.model_config(recipe), data.tokenizer), data, args=args,
                    title=stage)
    assert args.activation_checkpointing is True  # TRL's default, kept: only the name changed
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_dpo_pairs_drop_a_rejected_answer_too_similar_to_the_chosen():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dpo_data", REPO / "train_phi2/dpo_data.py")
    dpo_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dpo_data)
    chosen = "本周六上午九点到十二点停水，请提前储水。"
    assert dpo_data.too_similar(chosen, chosen, 0.9)
    assert dpo_data.too_similar(chosen, "本周六上午九点到十二点停水，请提前储水", 0.9)  # a full stop apart
    assert not dpo_data.too_similar(chosen, "周六停水。", 0.9)  # Rouge-L F = 0.4
    assert dpo_data.too_similar(chosen, "   ", 0.9)  # an empty answer teaches nothing
    assert not dpo_data.too_similar(chosen, "Water off on Saturday.", 0.9)


@pytest.mark.slow
def test_dpo_learns_to_prefer_the_chosen_answers(chain, tmp_path):
    rows = [{"instruction": f"第{i}个问题：苇川的河叫什么？", "input": "", "output": "苇川的河叫长河。",
             "rejected": "我不知道你在说什么东西。"} for i in range(16)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run(["train_phi2/train.py", "recipes/phi2/dpo.yaml", f"run.output_root={chain}",
         f"model.init_from={chain}/phi2/pretrain", f"tokenizer.name={chain}/phi2/pretrain", f"data.path={pairs}",
         "validation_fraction=0", "training.num_train_epochs=4", "training.learning_rate=1e-3",
         "training.per_device_train_batch_size=4", "training.logging_steps=1", "training.eval_strategy=no",
         "training.save_strategy=no", "generation.max_new_tokens=4"])
    history = json.loads((chain / "phi2" / "dpo" / "final" / "log_history.json").read_text())
    accuracies = [e["rewards/accuracies"] for e in history if "rewards/accuracies" in e]
    log = (chain / "phi2" / "dpo" / "final" / "train_log.md").read_text(encoding="utf-8")
    assert accuracies and max(accuracies[-4:]) >= 0.75, accuracies  # clearly above chance (0.5)
    assert "rewards/margins" in log and "eval_perplexity" not in log


@pytest.mark.slow
def test_make_rag_answers_offline_from_a_clean_run_folder(chain, tmp_path):
    """`make rag QUESTION=...` in a fresh copy of the repository whose only run is an answering model: the index is
    built (and signed), the question answered, the sources printed; a second call reuses the verified index."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    clone = tmp_path / "slm"
    for name in files:
        if (REPO / name).is_file() and not name.startswith("runs/"):
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    shutil.copytree(chain / "phi2" / "pretrain" / "final", clone / "runs" / "phi2" / "rag-sft" / "final")  # the answerer
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(clone), "SLM_KEY_DIR": str(tmp_path / "key")}
    make = ["make", "rag", f"VENV={Path(sys.executable).parent.parent}", "QUESTION=苇川的老街叫什么名字？",
            "ARGS=stage.embedding_fallback=use generation.max_new_tokens=8"]
    first = subprocess.run(make, cwd=clone, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "is missing" not in first.stdout and "sources:" in first.stdout and "Traceback" not in first.stderr
    assert (clone / "runs" / "phi2" / "rag" / "final" / "stage.json").is_file()
