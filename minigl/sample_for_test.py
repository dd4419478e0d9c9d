"""Answer a file of questions with a trained MiniGLM run: one JSONL line per question with the generated answer
only (greedy, stopped at EOS or a next "Question:"), the reference, and its Rouge-L / key hit. That file is what
the Rouge-L evaluation (minigl/evaluations.py) scores and keeps.

    python minigl/sample_for_test.py [--run finetune] [--questions runs/minigl/data/final/qa_eval.jsonl] [--out answers.jsonl]

Questions are JSONL with Question (or question) and, for scoring, Answer and key. The prompt template is the one
the run was finetuned with (its recipe's data.templates.prompt).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from shared.data.sources import read_jsonl
from shared.config.errors import UserError, run_main
from shared.config.files import atomic_write
from shared.config.runs import find_run
from shared.inference.generate import load
from shared.eval.metrics import qa_eval
from shared.config.recipe import resolve_path


def prompt_template(recipe: dict, where: str) -> str:
    template = ((recipe.get("data") or {}).get("templates") or {}).get("prompt")
    if not template:
        raise UserError(f"{where}: no data.templates.prompt: not a QA-finetuned run (use the finetune run)")
    return template


def write_answers(model, tokenizer, recipe: dict, questions: list[dict], out: Path, max_new_tokens: int = 64) -> dict:
    """qa_eval (greedy, answer only, stop at EOS / "Question:") -> `out` JSONL; returns qa_eval's result."""
    template = prompt_template(recipe, str(out))
    result = qa_eval(model, tokenizer, questions, template, {"max_new_tokens": max_new_tokens},
                     stops=[template.split("{")[0].strip()] if template.split("{")[0].strip() else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result["rows"]))
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=os.environ.get("SLM_RUN") or "finetune", help="run under runs/minigl/ or a folder")
    parser.add_argument("--root", default="runs")
    parser.add_argument("--questions", default="runs/minigl/data/final/qa_eval.jsonl")
    parser.add_argument("--out", default=None, help="answers JSONL (default: <run>/answers.jsonl)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    path = find_run("minigl", args.run, args.root)
    model, tok, recipe = load(path)
    questions = list(read_jsonl(resolve_path(args.questions)))
    out = Path(args.out) if args.out else path.parent / "answers.jsonl"
    result = write_answers(model, tok, recipe, questions, out, args.max_new_tokens)
    recall = "–" if result["key_recall"] is None else f"{result['key_recall']:.3f}"
    print(f"{result['questions']} questions -> {out}: Rouge-L {result['rouge_l']:.3f}, key recall {recall}")


if __name__ == "__main__":
    run_main(main)
