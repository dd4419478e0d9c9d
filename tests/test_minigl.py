"""MiniGLM: the three data scripts on their bundled formats, the answer-only SFT loss token by token, the evaluation
questions kept out of training, the figures, and (slow) both models trained a few steps and evaluated through the
scripts, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, log_history, run


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(minigl_runs) -> Path:
    """The three data stages, as `make minigl-data` runs them, into a temporary runs/ folder."""
    return minigl_runs


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "minigl"))  # the scripts import their siblings, as when run
    import prepare
    import prepare_jynews
    import prepare_zhihudata

    return prepare, prepare_jynews, prepare_zhihudata


def test_readers_and_cleaning(scripts, tmp_path):
    prepare, jynews, zhihu = scripts
    assert prepare.clean("a\r\n\r\n\r\n\r\nb\t\t c\x07\u3000d  ") == "a\n\nb c d"
    story = tmp_path / "s.txt"
    story.write_text("第一章 起\n\n甲段。\n\n乙段。\n\n第二章 承\n\n丙段。", encoding="utf-8")
    assert [d["text"] for d in prepare.read_text(story)] == ["第一章 起\n\n甲段。\n\n乙段。", "第二章 承\n\n丙段。"]
    news = tmp_path / "n.jsonl"
    news.write_text(json.dumps({"id": "n1", "title": "标题", "date": "1995-11-20", "body": "正文"}) + "\n"
                    + json.dumps({"id": "e1", "title": "词条", "summary": "摘要",
                                  "sections": [{"title": "小节", "content": "内容"}]}) + "\n", encoding="utf-8")
    assert [d["text"] for d in jynews.read_jynews(news)] == ["标题\n1995-11-20\n正文", "词条\n摘要\n小节\n内容"]
    zh = tmp_path / "z.jsonl"
    zh.write_text(json.dumps({"title": "问？", "content": "答。"}) + "\n", encoding="utf-8")
    assert [d["text"] for d in zhihu.read_zhihu(zh)] == ["问？\n答。"]


def test_each_prepare_script_writes_jsonl_and_bins(data):
    import numpy as np

    from shared.data.bins import read_bin, read_meta

    for name, source in (("jynews", "data/world/news.jsonl"), ("zhihu", "data/zhihu/zhihu.jsonl"),
                         ("data", "data/world/story.txt")):
        final = data / "minigl" / name / "final"
        docs = read(final / "corpus.jsonl")
        assert {d["split"] for d in docs} == {"train", "val"} and any(d["source"] == source for d in docs)
        meta = read_meta(final)
        assert {"train", "val"} <= set(meta["splits"]) and (final / "tokenizer.json").is_file()
        train = read_bin(final / "train.bin")
        assert int(np.sum(train == meta["eos_token_id"])) == meta["splits"]["train"]["documents"]
    news = read(data / "minigl" / "jynews" / "final" / "corpus.jsonl")
    assert len(news) == 60 and news[0]["text"].startswith("望河门城墙列为市级文物保护单位")
    assert any("地理与气候" in d["text"] for d in news)  # an encyclopedia entry's section title
    own = [d for d in read(data / "minigl" / "data" / "final" / "corpus.jsonl") if d["source"] == "data/world/story.txt"]
    assert sum(d["split"] == "val" for d in own) == round(len(own) * 0.1)  # 90/10
    merged = {d["id"]: d["split"] for d in read(data / "minigl" / "data" / "final" / "corpus.jsonl")}
    assert all(merged[d["id"]] == d["split"] for d in news)  # included documents keep their split


def test_splits_are_deterministic(data, tmp_path):
    run(["minigl/prepare_zhihudata.py", f"run.output_root={tmp_path}", "data.max_samples=60"])
    again = read(tmp_path / "minigl" / "zhihu" / "final" / "corpus.jsonl")
    assert again == read(data / "minigl" / "zhihu" / "final" / "corpus.jsonl")


def test_eval_questions_never_reach_training(data):
    final = data / "minigl" / "data" / "final"
    train_q, eval_q = read(final / "qa_train.jsonl"), read(final / "qa_eval.jsonl")
    source = read(REPO / "data" / "qa" / "qa.jsonl")
    assert len(eval_q) == sum(r["split"] == "eval" for r in source) == 40 and len(train_q) == 160
    held = {q["Question"] for q in eval_q}
    assert not held & {q["Question"] for q in train_q}
    corpus = "\n".join(d["text"] for d in read(final / "corpus.jsonl"))
    assert not [q for q in held if q in corpus]


def test_sft_loss_covers_the_answer_tokens_only(data):
    """The SFT trainer's own dataloader batch: label -100 on every prompt token and on padding; the answer's
    tokens and the EOS after it carry their own ids (the model shifts them: logits at t predict label t+1)."""
    from shared.models import registry as models
    from shared.config.recipe import load_recipe
    from shared.training.train import load_data, trainer_class, training_arguments

    final = data / "minigl" / "data" / "final"
    recipe = load_recipe(REPO / "recipes/minigl/finetune.yaml", [
        f"run.output_root={data}", f"data.path={final}/qa_train.jsonl", f"tokenizer.name={final}",
        "model.init_from=null", "model.config=minigl/gpt_tiny.json",
        "model.overrides={n_layer: 1, n_head: 2, n_embd: 32}", "training.per_device_train_batch_size=8",
        "training.eval_strategy=no", "training.save_strategy=no"])
    args = training_arguments(recipe)
    d = load_data(recipe)
    held = {q["Question"] for q in read(final / "qa_eval.jsonl")}
    assert not [p for p in d.train["prompt"] if any(q in p for q in held)]
    tok = d.tokenizer
    template = recipe.data.templates
    expected = {}
    for r in read(final / "qa_train.jsonl"):
        prompt = tok(template["prompt"].format(**r), add_special_tokens=False).input_ids
        expected[tuple(prompt)] = tok(r["Answer"], add_special_tokens=False).input_ids + [tok.eos_token_id]
    model = models.build_model(recipe, models.model_config(recipe), tok)
    trainer = trainer_class("sft")(model=model, args=args, train_dataset=d.train, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    checked = 0
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        prompt = next(p for p in expected if tuple(ids[:len(p)]) == p)
        answer = expected[prompt]
        n, m = len(prompt), len(prompt) + len(answer)
        assert ids[n:m] == answer
        assert labels[:n] == [-100] * n  # no prompt token is scored
        assert labels[n:m] == answer  # every answer token and the EOS are
        assert labels[m:] == [-100] * (len(labels) - m)  # padding is not
        checked += 1
    assert checked == 8


def test_plots_are_written(tmp_path):
    from minigl import visualize

    history = [{"step": s, "loss": 5 - s / 10, "num_input_tokens_seen": 100 * s} for s in range(1, 6)]
    drawn = visualize.plot_losses({"transformer": history, "lstm": history}, tmp_path / "losses.png")
    keys = visualize.plot_metrics({"transformer": {"perplexity": 20.0, "rouge_l": 0.3},
                                   "lstm": {"perplexity": 40.0, "rouge_l": 0.1}}, tmp_path / "metrics.png")
    assert "lstm train" in drawn and keys == ["perplexity", "rouge_l"]
    assert (tmp_path / "losses.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "metrics.png").stat().st_size > 1000


TINY = ["data.block_size=32", "training.per_device_train_batch_size=8", "training.logging_steps=2",
        "training.eval_steps=10", "training.save_steps=10", "training.warmup_steps=2", "data.eval_subset=8",
        "generation.max_new_tokens=4"]


@pytest.mark.slow
def test_both_models_train_and_evaluate_end_to_end(data, tmp_path):
    final = data / "minigl" / "data" / "final"
    common = [f"run.output_root={data}", f"tokenizer.name={final}"]
    pre = [*TINY, *common, f"data.bins={final}", "training.max_steps=20", "training.learning_rate=3e-3"]
    ft = [*common, f"data.path={final}/qa_train.jsonl", "training.max_steps=4", "training.logging_steps=2",
          "training.eval_strategy=no", "training.save_strategy=no", "data.block_size=96", "generation.max_new_tokens=4"]
    run(["minigl/train.py", *pre, "model.overrides={n_layer: 2, n_head: 2, n_embd: 32}"])
    run(["minigl/train.py", "recipes/minigl/finetune.yaml", *ft, f"model.init_from={data}/minigl/pretrain"])
    run(["minigl/lstm_model.py", *pre, "model.overrides={n_embd: 32}"])
    run(["minigl/lstm_model.py", "recipes/minigl/lstm-finetune.yaml", *ft, f"model.init_from={data}/minigl/lstm"])
    losses = [e["loss"] for e in log_history(data / "minigl" / "pretrain") if "loss" in e]
    assert losses[-1] < losses[0] - 0.3, losses
    from transformers import AutoTokenizer

    from shared.inference.export import export

    for name in ("finetune", "lstm-finetune"):  # both QA finetunes carry the chat template of their format
        tok = AutoTokenizer.from_pretrained(data / "minigl" / name / "final")
        assert tok.apply_chat_template([{"role": "user", "content": "问？"}], add_generation_prompt=True,
                                       tokenize=False) == "Question: 问？\nAnswer:\n"
    assert "GPT2LMHeadModel" in export(data / "minigl" / "finetune" / "final", tmp_path / "gpt2")  # logits checked
    assert "trust_remote_code" in export(data / "minigl" / "lstm-finetune" / "final", tmp_path / "lstm")
    log = (data / "minigl" / "lstm" / "final" / "train_log.md").read_text(encoding="utf-8")
    assert "MiniGLM LSTM" in log and "random windows of 32 + 1" in log
    m = data / "minigl"
    published = tmp_path / "pub" / "train_log.md"
    run(["minigl/evaluations.py", f"run.output_root={data}", f"stage.data={final}", "stage.block_size=32",
         f"stage.models={{transformer: {{pretrain: {m}/pretrain, finetune: {m}/finetune}}, "
         f"lstm: {{pretrain: {m}/lstm, finetune: {m}/lstm-finetune}}}}",
         "stage.max_questions=3", "stage.max_windows=16", "stage.max_new_tokens=6", "--publish-log", str(published),
         "--publish-anyway"])  # overrides: published only when asked
    out = m / "eval" / "final"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics) == {"transformer", "lstm"}
    for r in metrics.values():
        assert r["perplexity"] > 1 and r["qa_perplexity"] > 1 and 0 <= r["rouge_l"] <= 1 and r["questions"] == 3
        assert r["tokens_seen"] > 0 and r["train_seconds"] > 0 and r["text_tokens"] == 16 * 32
    assert metrics["transformer"]["type"] == "slm_gpt" and metrics["lstm"]["type"] == "slm_lstm"
    answers = read(out / "answers_lstm.jsonl")
    assert len(answers) == 3 and all("Question:" not in a["answer"] for a in answers)
    text = published.read_text(encoding="utf-8")
    assert "Transformer vs LSTM" in text and "key recall" in text
    for png in ("losses.png", "finetune_losses.png", "metrics.png"):
        assert f"]({png})" in text and (published.parent / png).read_bytes()[:4] == b"\x89PNG"
    proc = run(["minigl/sample_for_test.py", "--root", str(data), "--run", "finetune", "--questions",
                str(final / "qa_eval.jsonl"), "--out", str(tmp_path / "a.jsonl"), "--max-new-tokens", "3"])
    assert "40 questions" in proc.stdout and len(read(tmp_path / "a.jsonl")) == 40
    proc = run(["minigl/sample.py", "--root", str(data), "--run", "pretrain", "--prompt", "苇川", "max_new_tokens=3"])
    assert "苇川" in proc.stdout
