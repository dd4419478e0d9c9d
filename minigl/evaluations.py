"""MiniGLM evaluation: the transformer and the LSTM side by side -> minigl/logs/train_log.md (the MiniGLM main log),
metrics.json, answers_<model>.jsonl, losses.png, finetune_losses.png, metrics.png (runs/minigl/eval/final/).

    make eval-minigl     # = python minigl/evaluations.py recipes/minigl/eval.yaml --publish-log minigl/logs/train_log.md

For each model (stage.models: its pretrained and its QA-finetuned run):
- perplexity of the pretrained model on held-out text: every token of val.bin, in fixed windows tiled over it
  (shared.eval.metrics.perplexity: exp of the mean next-token loss, logits shifted by one, summed over all tokens);
- answer perplexity of the finetuned model on the evaluation questions, the answer tokens (+ EOS) only;
- Rouge-L (Chinese: one token per character) and key recall on the evaluation questions: greedy answers, cut at
  EOS or a next "Question:", the prompt never counted (minigl/sample_for_test.py writes them to answers_<model>.jsonl);
- parameters, tokens seen and training time (pretraining + finetuning, from each run's final/train_summary.json).
The evaluation questions are qa_eval.jsonl of the data stage: split: eval in data/qa/qa.jsonl, never trained on.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import sample_for_test  # minigl/sample_for_test.py (this script's own folder is on the path)
import visualize  # minigl/visualize.py
from shared.config import cli
from shared.training import stage
from shared.data.bins import BinWindows
from shared.data.sources import read_jsonl
from shared.config.errors import UserError, run_main
from shared.inference.generate import load
from shared.eval.metrics import answer_only_examples, perplexity
from shared.models.registry import count_parameters
from shared.config.files import display_path
from shared.config.runs import final_of

PLOTS = ("losses.png", "finetune_losses.png", "metrics.png")


@dataclass
class EvalArgs:
    """The recipe's `stage:` section."""
    models: dict = field(default_factory=dict)  # name -> {pretrain: run folder, finetune: run folder}
    data: str = "runs/minigl/data"  # the data stage: val.bin and qa_eval.jsonl
    block_size: int = 128  # perplexity windows (at most the models' context)
    max_windows: int | None = None  # None: all of val.bin
    max_questions: int | None = None  # None: all evaluation questions
    max_new_tokens: int = 64
    batch_size: int = 16


def summary(run: Path) -> dict:
    path = run / "train_summary.json"  # written by shared/training/train.py into every final/
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def evaluate(name: str, runs: dict, data: Path, questions: list[dict], s: EvalArgs, out: Path) -> dict:
    if set(runs) != {"pretrain", "finetune"}:
        raise UserError(f"stage.models.{name} must name its pretrain and finetune runs, got {', '.join(runs)}")
    pre, ft = (final_of(runs[k], f"stage.models.{name}.{k}") for k in ("pretrain", "finetune"))
    model, tok, _ = load(pre)
    windows = BinWindows(data / "val.bin", s.block_size, s.max_windows, tiled=True)
    text = perplexity(model, windows, s.batch_size, tok.pad_token_id or 0)
    model, tok, recipe = load(ft)
    template = sample_for_test.prompt_template(recipe, str(ft / "recipe.yaml"))
    answers = perplexity(model, answer_only_examples(tok, questions, template), s.batch_size, tok.pad_token_id or 0)
    qa = sample_for_test.write_answers(model, tok, recipe, questions, out / f"answers_{name}.jsonl", s.max_new_tokens)
    a, b = summary(pre), summary(ft)
    return {"parameters": count_parameters(model)["total"], "type": model.config.model_type,
            "tokens_seen": (a.get("tokens_seen") or 0) + (b.get("tokens_seen") or 0),
            "train_seconds": (a.get("train_runtime_s") or 0) + (b.get("train_runtime_s") or 0),
            "perplexity": text["perplexity"], "text_tokens": text["tokens"], "qa_perplexity": answers["perplexity"],
            "answer_tokens": answers["tokens"], "rouge_l": qa["rouge_l"], "key_recall": qa["key_recall"],
            "questions": qa["questions"], "run": runs["pretrain"], "finetune_run": runs["finetune"],
            "example": qa["rows"][0]}


def main(argv: list[str]) -> None:
    recipe, opts = cli.parse(argv, "recipes/minigl/eval.yaml", "MiniGLM evaluation", stage=EvalArgs)
    s = recipe.stage
    if not s.models:
        raise UserError(f"{recipe.where('stage.models')}: stage.models is empty")
    data = final_of(s.data, "stage.data")
    questions = list(read_jsonl(data / "qa_eval.jsonl"))[:s.max_questions]
    trained = {r["Question"] for r in read_jsonl(data / "qa_train.jsonl")}
    if any(q["Question"] in trained for q in questions):
        raise UserError(f"{data}: an evaluation question is among the training questions")
    with stage.output(recipe, "MiniGLM: transformer vs LSTM", publish_log=opts.publish_log) as out:
        results = {name: evaluate(name, runs, data, questions, s, out.dir) for name, runs in s.models.items()}
        (out.dir / "metrics.json").write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
        visualize.plot_losses({n: visualize.run_history(final_of(r["run"])) for n, r in results.items()},
                              out.dir / PLOTS[0], title="MiniGLM pretraining: transformer vs LSTM")
        visualize.plot_losses({n: visualize.run_history(final_of(r["finetune_run"])) for n, r in results.items()},
                              out.dir / PLOTS[1], title="MiniGLM QA finetuning (answer tokens only)")
        visualize.plot_metrics(results, out.dir / PLOTS[2])
        out.log.facts.update({
            "held-out text": f"{display_path(data / 'val.bin')}: {next(iter(results.values()))['text_tokens']:,} tokens scored "
                             f"(windows of {s.block_size} + 1, tiled)",
            "QA": f"{len(questions)} evaluation questions (split: eval; none among the {len(trained)} training "
                  f"questions); greedy, at most {s.max_new_tokens} new tokens, cut at EOS / \"Question:\"",
        })
        rows = [("parameters", lambda r: f"{r['parameters'] / 1e6:.2f}M ({r['type']})"),
                ("tokens seen (pretrain + finetune)", lambda r: f"{r['tokens_seen']:,}"),
                ("training time (pretrain + finetune)", lambda r: f"{r['train_seconds']:.0f} s"),
                ("perplexity, held-out text", lambda r: f"{r['perplexity']:.2f}"),
                ("perplexity, QA answers only", lambda r: f"{r['qa_perplexity']:.2f}"),
                ("Rouge-L F (Chinese characters)", lambda r: f"{r['rouge_l']:.3f}"),
                ("key recall", lambda r: "–" if r["key_recall"] is None else f"{r['key_recall']:.3f}")]
        names = list(results)
        out.log.add_section("Transformer vs LSTM", "\n".join(
            ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
            + [f"| {label} | " + " | ".join(fmt(results[n]) for n in names) + " |" for label, fmt in rows]))
        out.log.add_section("Figures", "\n\n".join(f"![{p[:-4]}]({p})" for p in PLOTS))
        out.log.add_section("First evaluation question", "\n".join(
            f"- **{n}**: {r['example']['question']} -> {r['example']['answer']!r} (reference: "
            f"{r['example']['reference']}; Rouge-L {r['example']['rouge_l']:.3f})" for n, r in results.items()))
    if opts.publish_log:  # the figures next to the published log, where its links point
        for png in PLOTS:
            shutil.copyfile(recipe.run_dir / "final" / png, Path(stage.resolve_path(opts.publish_log)).parent / png)
    for name, r in results.items():
        print(f"{name}: ppl {r['perplexity']:.2f}, answer ppl {r['qa_perplexity']:.2f}, Rouge-L {r['rouge_l']:.3f}, "
              f"key recall {r['key_recall']}")


if __name__ == "__main__":
    run_main(main)
