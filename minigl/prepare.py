"""MiniGLM data: source files -> cleaned documents (JSONL) -> 90/10 split -> tokenizer -> train/val token bins.

    make minigl-data   # prepare_jynews.py, prepare_zhihudata.py, then this script (recipes/minigl/data.yaml)
    python minigl/prepare.py [recipes/minigl/data.yaml] [key=value ...]    # plain text files (the novella)

This file is the one writer of the three data scripts; each script only says how its source format becomes
documents (`reader(path) -> iterable of {id, text}`):

    prepare.py           plain text files: paragraphs, grouped into documents of about stage.chunk_chars characters,
                         a new document at every chapter heading (第…章)
    prepare_jynews.py    news reports (title, date, body) and encyclopedic entries (title, summary, sections)
    prepare_zhihudata.py Zhihu-style dumps (title = question, content = answer)

The writer then, for every stage alike:
1. cleans each text with the rules every preparation stage shares (shared/data/text.py: line breaks, invisible
   characters, runs of spaces, blank lines) and drops short and duplicate documents, counting what it dropped; one document at a time (only ids and digests are kept);
2. splits the new documents 90/10 (seeded shuffle, data.validation_fraction), and adds the documents of the
   earlier stages named in stage.include with the split they already had, so a validation document never becomes
   a training one;
3. writes them all to corpus.jsonl ({id, source, split, text});
4. with stage.qa, writes the QA file's `split: train` questions to qa_train.jsonl (the finetuning samples) and its
   `split: eval` questions to qa_eval.jsonl (scored, never trained on), and refuses a corpus that contains an
   evaluation question verbatim;
5. loads the recipe's tokenizer (offline: a byte-level BPE with one token per Chinese character, trained on the
   training documents) and writes train.bin / val.bin / meta.json (shared/data/bins.py) + the tokenizer into
   runs/minigl/<stage>/final/.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from datasets import Dataset

from shared.data import bins
from shared.config import cli
from shared.training import stage
from shared.data.sources import file_digest, load_local, read_jsonl, split_train_eval
from shared.data.text import collapse_blank_lines, drop_invisible, squeeze_spaces
from shared.config.errors import UserError, run_main
from shared.config.recipe import resolve_path
from shared.data.tokenizer import load_tokenizer
from shared.training.train import cache_root
from shared.config.runs import final_of

CHAPTER = re.compile(r"^第[一二三四五六七八九十百零〇\d]+[章回节]")


@dataclass
class PrepareArgs:
    """The recipe's `stage:` section (all three data scripts)."""
    inputs: list = field(default_factory=list)  # source files in this script's format
    include: list = field(default_factory=list)  # earlier minigl data stages whose corpus.jsonl joins this one
    qa: str | None = None  # QA JSONL (Question, Answer, key, split): -> qa_train.jsonl / qa_eval.jsonl
    min_chars: int = 20  # shorter documents (after cleaning) are dropped
    chunk_chars: int = 1000  # plain text: paragraphs are grouped into documents of about this many characters
    seed: int = 42  # the 90/10 split's shuffle
    num_proc: int | None = 1  # tokenising processes (None: the CPU count, at most 8)


# ----------------------------------------------------------------------------------------------------------------
# readers (this script's: plain text) and cleaning


def read_text(path: Path, chunk_chars: int = 1000) -> Iterable[dict]:
    """A plain text file -> documents: its paragraphs (blank-line separated) grouped up to `chunk_chars`, a new
    document at each chapter heading."""
    docs: list[list[str]] = [[]]
    for para in (p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")):
        if not para:
            continue
        if docs[-1] and (CHAPTER.match(para) or sum(map(len, docs[-1])) + len(para) > chunk_chars):
            docs.append([])
        docs[-1].append(para)
    for i, paras in enumerate(d for d in docs if d):
        yield {"id": f"{path.stem}-{i + 1:03d}", "text": "\n\n".join(paras)}


def clean(text: str) -> str:
    """The shared rules only (shared/data/text.py): \n line breaks, no invisible characters, single spaces, lines
    stripped, at most one blank line; the text's ends stripped."""
    lines = (squeeze_spaces(line) for line in drop_invisible(text).split("\n"))
    return collapse_blank_lines("\n".join(lines)).strip()


def read_qa(path: str) -> tuple[list[dict], list[dict]]:
    """(train questions, eval questions) of a QA JSONL, cleaned; anything but split train/eval is an error."""
    out: dict[str, list[dict]] = {"train": [], "eval": []}
    for n, r in enumerate(read_jsonl(resolve_path(path)), start=1):
        if r.get("split") not in out or not r.get("Question") or not r.get("Answer"):
            raise UserError(f"{path}:{n}: a QA record needs Question, Answer and split train|eval")
        out[r["split"]].append({"id": r.get("id", f"qa-{n}"), "Question": clean(r["Question"]),
                                "Answer": clean(r["Answer"]), "key": r.get("key") or ""})
    return out["train"], out["eval"]


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# ----------------------------------------------------------------------------------------------------------------
# the writer


def documents(recipe, reader: Callable[[Path], Iterable[dict]], corpus: Path, eval_questions: list[str]) -> list[dict]:
    """Write this stage's cleaned, split documents + those of the included stages to `corpus` (JSONL), one at a time:
    only their ids and a digest of each text are held, so a corpus of any size streams through. Returns one report
    row per source."""
    s, report, seen, ids = recipe.stage, [], set(), []
    pending = corpus.with_name(corpus.name + ".new")
    with open(pending, "w", encoding="utf-8") as f:
        for path in s.inputs:
            file = resolve_path(path)
            if not file.is_file():
                raise UserError(f"{recipe.where('stage.inputs')}: input not found: {path}")
            records = kept = 0
            for d in itertools.islice(reader(file), recipe.data.max_samples):
                records += 1
                text = clean(d["text"])
                digest = hashlib.sha1(text.encode()).digest()
                if len(text) >= s.min_chars and digest not in seen:
                    seen.add(digest)
                    ids.append(d["id"])
                    kept += 1
                    f.write(json.dumps({"id": d["id"], "source": path, "text": text}, ensure_ascii=False) + "\n")
            report.append({"source": path, "records": records, "kept": kept, "sha256": file_digest(file)})
    val_ids = set()
    if len(ids) >= 2 and recipe.data.validation_fraction > 0:  # the seeded shuffle depends on the count only
        val_ids = set(split_train_eval(Dataset.from_dict({"id": ids}), recipe.data.validation_fraction, s.seed)[1]["id"])
    counts = {"train": 0, "val": 0}

    def add(row: dict, out) -> None:
        leaked = next((q for q in eval_questions if q in row["text"]), None)
        if leaked:
            raise UserError(f"{recipe.where('stage.qa')}: evaluation question found in the corpus: {leaked!r}")
        counts[row["split"]] += 1
        out.write(json.dumps(row, ensure_ascii=False) + "\n")

    with open(corpus, "w", encoding="utf-8") as out:
        for row in read_jsonl(pending):
            add({**row, "split": "val" if row["id"] in val_ids else "train"}, out)
        for ref in s.include:
            h, n = hashlib.sha256(), 0
            for row in read_jsonl(final_of(ref, "stage.include") / "corpus.jsonl"):
                h.update(json.dumps(row, ensure_ascii=False).encode())
                n += 1
                if hashlib.sha1(row["text"].encode()).digest() not in seen:
                    add(row, out)
            report.append({"source": f"{ref} (corpus.jsonl, splits kept)", "records": n, "kept": n,
                           "sha256": h.hexdigest()})
    pending.unlink()
    if not counts["train"] or not counts["val"]:
        raise UserError(f"{recipe.source}: {sum(counts.values())} documents give an empty train or val split; add "
                        f"inputs or lower stage.min_chars")
    return report


def main(argv: list[str], default_recipe: str, title: str, reader: Callable[[Path], Iterable[dict]] | None = None):
    recipe, opts = cli.parse(argv, default_recipe, title, stage=PrepareArgs)
    s = recipe.stage
    reader = reader or (lambda path: read_text(path, s.chunk_chars))
    started = time.perf_counter()
    qa_train, qa_eval = read_qa(s.qa) if s.qa else ([], [])
    with stage.output(recipe, title, publish_log=opts.publish_log) as out:
        report = documents(recipe, reader, out.dir / "corpus.jsonl", [q["Question"] for q in qa_eval])
        docs = load_local(out.dir / "corpus.jsonl")  # Arrow, memory-mapped
        split = {name: docs.filter(lambda b: [x == name for x in b["split"]], batched=True).select_columns(["text"])
                 for name in ("train", "val")}
        key = hashlib.sha256()
        for batch in split["train"].iter(batch_size=10_000):
            key.update(json.dumps(batch["text"], ensure_ascii=False).encode())
        tokenizer, tok_prov = load_tokenizer(recipe.tokenizer, split["train"], key.hexdigest(), cache_root(recipe))
        if s.qa:
            write_jsonl(out.dir / "qa_train.jsonl", qa_train)
            write_jsonl(out.dir / "qa_eval.jsonl", qa_eval)
        meta = bins.write_bins(out.dir, split, tokenizer, num_proc=s.num_proc, tokenizer_source=tok_prov.describe(),
                               sources=report, extra={"seed": s.seed})
        tokenizer.save_pretrained(str(out.dir))  # later stages load it from this folder
        sample = "苇川的青漪河"
        out.log.facts.update({
            "documents": f"{len(docs)} (train {len(split['train'])}, val {len(split['val'])}; seed {s.seed})",
            "tokenizer": f"{tok_prov.describe()}; {len(tokenizer)} tokens; {sample!r} -> "
                         f"{len(tokenizer(sample, add_special_tokens=False).input_ids)} tokens",
            "tokens": ", ".join(f"{n} {v['tokens']:,}" for n, v in meta["splits"].items()) + f" ({meta['dtype']})",
            "time": f"{time.perf_counter() - started:.1f} s",
        })
        if s.qa:
            out.log.facts["QA"] = (f"{len(qa_train)} train questions -> qa_train.jsonl (finetuning), {len(qa_eval)} "
                                   f"eval questions -> qa_eval.jsonl (never trained on; none appears in the corpus)")
        out.log.add_section("Sources", "\n".join(
            ["| source | records | kept after cleaning | sha256 |", "|---|---:|---:|---|"]
            + [f"| {r['source']} | {r['records']} | {r['kept']} | `{r['sha256'][:16]}` |" for r in report]))
        out.log.add_section("First training document", f"```\n{split['train'][0]['text'][:400]}\n```")


if __name__ == "__main__":
    run_main(lambda argv: main(argv, "recipes/minigl/data.yaml", "MiniGLM data: plain text + earlier stages -> bins"))
