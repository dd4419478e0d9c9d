"""The data card: what each bundled corpus in data/ is, who reads it, its format, counts, sizes, quality, sha256.

    python data/datacard.py           rewrite the card between the markers in data/README.md
    python data/datacard.py --check   exit 1 and list the differences when the card is out of date

Everything here is computed from the files, so the card is deterministic (fixed set order, sorted extra counts,
no timestamps) and the tests can check that it agrees with the data (tests/test_datasets.py).

Definitions used in the card:
- records: JSON lines of a .jsonl file; for story.txt the blank-line-separated paragraphs (what `load_local` reads).
- characters: Python `len()` summed over each record's *text fields* (listed per set; whitespace and punctuation
  included). Ids, labels (task, kind, topic, split, date, votes, about_world), id references (docs, source,
  sources) and the evidence/key spans (quoted from the documents) are not text fields. story.txt: the whole file.
- distinct n-gram ratio: distinct n-grams / all n-grams, n-grams taken inside each record's text (the text fields
  joined with newlines) and pooled over the set. Character 4-grams for Chinese, word 3-grams for English.
- near duplicates: two records of the same set whose character 5-gram sets have Jaccard similarity > 0.8; the
  rate is the share of the set's records that have at least one near duplicate.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shared import REPO_ROOT

README = "data/README.md"
BEGIN, END = "<!-- data-card:begin -->", "<!-- data-card:end -->"
LICENCE = "CC BY 4.0"
CHAPTER = re.compile(r"^第[一二三四五六七八九十百零]+章 .+$", re.M)

NEAR_DUP_N, NEAR_DUP_JACCARD = 5, 0.8

# Floors of the distinct n-gram ratio (the tests assert each set is above its floor).
# Natural, varied text of the sizes bundled here (3k-160k characters per set) measures 0.84-0.93 on character
# 4-grams in Chinese; the names of the fictional world (苇川, 青漪河, 林见秋 ...) recur in every world document,
# which is why the encyclopedia sits at the low end. 0.75 leaves room for the ratio's natural fall as a set
# grows, and is far above what repetition produces: a set whose records all appear twice scores at most half its
# ratio (0.42-0.47 here), and the facts rendered through a question/answer template score about 0.41 (both are
# checked in tests/test_datasets.py). The facts are (subject, relation, object) triples whose subjects repeat by design
# (up to a dozen facts about one place), so they get their own, lower floor. English character 4-grams are low
# for any English text (26 letters: ~0.15-0.2 here), so English sets are measured on word 3-grams, which reach
# ~0.96 on these sets (0.48 when doubled); 0.80 catches templated prompts/answers the same way.
FLOOR_CHAR4 = 0.75
FLOOR_FACTS_CHAR4 = 0.60
FLOOR_WORD3 = 0.80
MAX_NEAR_DUP_RATE = 0.01


# ----------------------------------------------------------------------------------------------------------------
# the sets


def _joined(*names: str) -> Callable[[dict], list[str]]:
    return lambda r: [r[n] for n in names if n in r]


def _enc_text(r: dict) -> list[str]:
    return [r["title"], r["summary"], *(x for s in r["sections"] for x in (s["title"], s["content"]))]


@dataclass(frozen=True)
class Spec:
    key: str
    path: str
    what: str
    used_by: str
    schema: dict = field(default_factory=dict)   # field -> str | int | bool | [str] | [{field: type}]
    optional: tuple[str, ...] = ()
    text: Callable[[dict], list[str]] | None = None
    text_fields: str = ""
    english: bool = False

    @property
    def floor(self) -> float:
        return FLOOR_WORD3 if self.english else FLOOR_FACTS_CHAR4 if self.key == "facts" else FLOOR_CHAR4


SPECS: list[Spec] = [
    Spec("poems", "data/poems/poems.jsonl", "original modern Chinese poems",
         "Phi-3 and Mixtral poetry (offline fallback of recipes/phi3/pretrain.yaml, recipes/mixtral/*.yaml)",
         {"id": str, "title": str, "content": str}, text=_joined("title", "content"), text_fields="title, content"),
    Spec("encyclopedia", "data/world/encyclopedia.jsonl", "encyclopedia entries about the fictional city of 苇川",
         "RAG knowledge base (Phi-2 RAG demo); Phi-2 pretraining + tokenizer training",
         {"id": str, "title": str, "summary": str, "sections": [{"title": str, "content": str}]},
         text=_enc_text, text_fields="title, summary, sections[].title, sections[].content"),
    Spec("news", "data/world/news.jsonl", "local news reports from 苇川",
         "MiniGLM prepare_jynews (news text); RAG knowledge base (Phi-2 RAG demo); Phi-2 pretraining",
         {"id": str, "date": str, "title": str, "body": str}, text=_joined("title", "body"), text_fields="title, body"),
    Spec("facts", "data/world/facts.jsonl", "the world's facts as triples, each citing the documents that state it",
         "the data tests (ground truth linking documents and questions); not trained on",
         {"id": str, "subject": str, "relation": str, "object": str, "docs": [str]},
         text=_joined("subject", "relation", "object"), text_fields="subject, relation, object"),
    Spec("story", "data/world/story.txt", "《码头鱼面》, a novella set in 苇川 (2019 and 1956-2012)",
         "MiniGLM prepare.py / prepare_jynews (novel text)", text_fields="the whole file"),
    Spec("qa", "data/qa/qa.jsonl", "questions about the world with reference answers and evidence spans",
         "MiniGLM QA finetune (split=train) + perplexity / Rouge-L eval (split=eval)",
         {"id": str, "Question": str, "Answer": str, "source": [str], "evidence": str, "key": str, "split": str},
         text=_joined("Question", "Answer"), text_fields="Question, Answer"),
    Spec("rag", "data/qa/rag.jsonl", "held-out questions answered by retrieving from encyclopedia + news",
         "Phi-2 RAG demo: eval questions against the encyclopedia+news knowledge base",
         {"id": str, "question": str, "answer": str, "sources": [str], "evidence": str, "key": str, "split": str},
         text=_joined("question", "answer"), text_fields="question, answer"),
    Spec("zhihu", "data/zhihu/zhihu.jsonl", "Zhihu-style questions with one long answer each (world + general)",
         "MiniGLM prepare_zhihudata",
         {"id": str, "topic": str, "title": str, "content": str, "votes": int, "about_world": bool},
         text=_joined("title", "content"), text_fields="title, content"),
    Spec("prose", "data/prose/prose.jsonl", "general Chinese prose: essays, stories, guides, letters, reviews",
         "Phi-2 pretraining + tokenizer training", {"id": str, "kind": str, "text": str},
         text=_joined("text"), text_fields="text"),
    Spec("instructions", "data/instructions/zh_instructions.jsonl", "Chinese instruction/response pairs",
         "Phi-2 SFT (all records); Phi-2 DPO (records with `rejected`)",
         {"id": str, "task": str, "instruction": str, "input": str, "output": str, "rejected": str},
         optional=("rejected",), text=_joined("instruction", "input", "output", "rejected"),
         text_fields="instruction, input, output, rejected"),
    Spec("alpaca", "data/english/alpaca.jsonl", "English instruction pairs (Alpaca format)",
         "nanoGPT data prep / finetune (English formats)",
         {"id": str, "instruction": str, "input": str, "output": str},
         text=_joined("instruction", "input", "output"), text_fields="instruction, input, output", english=True),
    Spec("conversations", "data/english/conversations.jsonl", "English multi-turn chats, user/assistant alternating",
         "nanoGPT data prep / chat finetune (English formats)",
         {"id": str, "messages": [{"role": str, "content": str}]},
         text=lambda r: [m["content"] for m in r["messages"]], text_fields="messages[].content", english=True),
]
BY_KEY = {s.key: s for s in SPECS}


# ----------------------------------------------------------------------------------------------------------------
# reading and validating


def schema_errors(value, schema, where: str, optional: tuple[str, ...] = ()) -> list[str]:
    """Type errors of `value` against a schema (type, [item schema], {field: schema}); empty when it fits."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        errors = [f"{where}: missing field '{k}'" for k in schema if k not in value and k not in optional]
        errors += [f"{where}: unexpected field '{k}'" for k in value if k not in schema]
        for k, sub in schema.items():
            if k in value:
                errors += schema_errors(value[k], sub, f"{where}.{k}")
        return errors
    if isinstance(schema, list):
        if not isinstance(value, list) or not value:
            return [f"{where}: expected a non-empty list"]
        return [e for i, x in enumerate(value) for e in schema_errors(x, schema[0], f"{where}[{i}]")]
    if type(value) is not schema:  # bool is not an int here, and vice versa
        return [f"{where}: expected {schema.__name__}, got {type(value).__name__}"]
    if schema is str and not value.strip() and not where.endswith(".input"):
        return [f"{where}: empty string"]
    return []


def load(spec: Spec, root: Path = REPO_ROOT) -> list[dict]:
    """The set's records (JSONL objects; story.txt: one record per paragraph, like `shared.data.sources.load_local`)."""
    from shared.data.sources import read_jsonl

    path = root / spec.path
    if spec.key == "story":
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
        return [{"text": p} for p in paragraphs if p]
    return list(read_jsonl(path))


def record_texts(spec: Spec, records: list[dict], root: Path = REPO_ROOT) -> list[str]:
    """One text per record for the quality measures; the story is measured per chapter."""
    if spec.key == "story":
        return story_chapters((root / spec.path).read_text(encoding="utf-8"))
    return ["\n".join(x for x in spec.text(r) if x) for r in records]


def story_chapters(text: str) -> list[str]:
    starts = [m.start() for m in CHAPTER.finditer(text)]
    return [text[a:b].strip() for a, b in zip(starts, starts[1:] + [len(text)])]


def non_whitespace(text: str) -> int:
    return len(re.sub(r"\s", "", text))


def characters(spec: Spec, records: list[dict], root: Path = REPO_ROOT) -> int:
    if spec.key == "story":
        return len((root / spec.path).read_text(encoding="utf-8"))
    return sum(len(x) for r in records for x in spec.text(r))


# ----------------------------------------------------------------------------------------------------------------
# quality measures


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def distinct_ratio(texts: list[str], english: bool = False) -> float:
    """Distinct / total n-grams: character 4-grams (Chinese) or word 3-grams (English), within each text."""
    seen: set = set()
    total = 0
    for text in texts:
        units = words(text) if english else text
        n = 3 if english else 4
        grams = [tuple(units[i:i + n]) if english else units[i:i + n] for i in range(len(units) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 1.0


def near_duplicates(texts: list[str], n: int = NEAR_DUP_N,
                    threshold: float = NEAR_DUP_JACCARD) -> list[tuple[int, int, float]]:
    """Index pairs whose character n-gram sets have Jaccard > threshold (J > t needs size ratio > t: pruned)."""
    grams = [frozenset(t[i:i + n] for i in range(max(1, len(t) - n + 1))) for t in texts]
    order = sorted(range(len(grams)), key=lambda i: (len(grams[i]), i))
    pairs = []
    for pos, i in enumerate(order):
        a = grams[i]
        for j in order[pos + 1:]:
            b = grams[j]
            if len(a) <= threshold * len(b):
                break
            inter = len(a & b)
            jac = inter / (len(a) + len(b) - inter)
            if jac > threshold:
                pairs.append((min(i, j), max(i, j), jac))
    return sorted(pairs)


def near_dup_rate(texts: list[str], pairs: list[tuple[int, int, float]]) -> float:
    involved = {i for p in pairs for i in p[:2]}
    return len(involved) / len(texts) if texts else 0.0


# ----------------------------------------------------------------------------------------------------------------
# the card


@dataclass
class Stats:
    spec: Spec
    records: int
    characters: int
    sha256: str
    ratio: float
    near_pairs: list
    near_rate: float
    extra: list[str]


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def extra_counts(spec: Spec, records: list[dict], root: Path = REPO_ROOT) -> list[str]:
    k = spec.key
    if k == "poems":
        lines = [len(r["content"].splitlines()) for r in records]
        return [f"lines per poem: {min(lines)}-{max(lines)}"]
    if k == "encyclopedia":
        sizes = [len(r["summary"]) + sum(len(s["content"]) for s in r["sections"]) for r in records]
        return [f"sections: {sum(len(r['sections']) for r in records)}",
                f"characters per entry (summary + section contents): {min(sizes)}-{max(sizes)}"]
    if k == "news":
        dates = sorted(r["date"] for r in records)
        return [f"dates: {dates[0]} to {dates[-1]}"]
    if k == "facts":
        docs = Counter(d.split("-")[0] for r in records for d in r["docs"])
        return [f"distinct subjects: {len({r['subject'] for r in records})}",
                f"citations: {_counts(docs)} (facts citing 2+ documents: {sum(len(r['docs']) > 1 for r in records)})"]
    if k == "story":
        text = (root / spec.path).read_text(encoding="utf-8")
        return [f"records = blank-line-separated paragraphs (how `load_local` reads a .txt): {len(records):,}",
                f"chapters: {len(story_chapters(text))}", f"characters without whitespace: {non_whitespace(text):,}"]
    if k in ("qa", "rag"):
        refs = Counter(d.split("-")[0] for r in records for d in r["source" if k == "qa" else "sources"])
        return [f"split: {_counts(Counter(r['split'] for r in records))}", f"cited documents: {_counts(refs)}"]
    if k == "zhihu":
        world = sum(r["about_world"] for r in records)
        return [f"about the world: {world}, general: {len(records) - world}",
                f"topics: {len({r['topic'] for r in records})}"]
    if k == "prose":
        return [f"kinds: {_counts(Counter(r['kind'] for r in records))}"]
    if k == "instructions":
        return [f"tasks ({len({r['task'] for r in records})}): {_counts(Counter(r['task'] for r in records))}",
                f"with `rejected` (DPO pairs): {sum('rejected' in r for r in records)}",
                f"with non-empty `input`: {sum(bool(r['input']) for r in records)}"]
    if k == "alpaca":
        return [f"with non-empty `input`: {sum(bool(r['input']) for r in records)}"]
    if k == "conversations":
        return [f"messages per conversation: {_counts(Counter(len(r['messages']) for r in records))}",
                f"user/assistant exchanges: {sum(len(r['messages']) // 2 for r in records)}"]
    return []


@functools.lru_cache(maxsize=None)
def _stats_cached(key: str, root: str, sha: str) -> Stats:
    spec, base = BY_KEY[key], Path(root)
    records = load(spec, base)
    texts = record_texts(spec, records, base)
    pairs = near_duplicates(texts)
    return Stats(spec, len(records), characters(spec, records, base), sha, distinct_ratio(texts, spec.english),
                 pairs, near_dup_rate(texts, pairs), extra_counts(spec, records, base))


def stats(spec: Spec, root: Path = REPO_ROOT) -> Stats:
    sha = hashlib.sha256((root / spec.path).read_bytes()).hexdigest()
    return _stats_cached(spec.key, str(root), sha)


def _format(spec: Spec) -> str:
    def show(schema) -> str:
        if isinstance(schema, list):
            return f"[{show(schema[0])}]"
        if isinstance(schema, dict):
            return "{" + ", ".join(schema) + "}"
        return schema.__name__

    if not spec.schema:
        return "plain UTF-8 text: chapter headings `第N章 标题`, paragraphs separated by blank lines"
    parts = []
    for name, sub in spec.schema.items():
        opt = "?" if name in spec.optional else ""
        parts.append(f"`{name}{opt}`" if sub is str else f"`{name}{opt}: {show(sub)}`")
    return ", ".join(parts)


def render(root: Path = REPO_ROOT) -> str:
    """The card (the text between the markers)."""
    all_stats = [stats(s, root) for s in SPECS]
    out = ["", "<!-- generated by `make data-card` (python data/datacard.py); do not edit by hand -->", "",
           f"All sets: licence {LICENCE}, written for slm. Characters = `len()` of the text fields listed below.",
           "", "| file | what | used by | records | characters | licence |", "|---|---|---|---:|---:|---|"]
    for st in all_stats:
        s = st.spec
        out.append(f"| `{s.path}` | {s.what} | {s.used_by} | {st.records:,} | {st.characters:,} | {LICENCE} |")
    total_chars = sum(st.characters for st in all_stats)
    out.append(f"| **total** | | | {sum(st.records for st in all_stats):,} | {total_chars:,} | |")
    out += ["", "Quality measures (floors asserted by `tests/test_datasets.py`):", "",
            "| set | distinct n-gram ratio | floor | near-duplicate pairs | near-duplicate rate |",
            "|---|---:|---:|---:|---:|"]
    for st in all_stats:
        s = st.spec
        unit = "word 3-grams" if s.english else "char 4-grams"
        out.append(f"| {s.key} | {st.ratio:.3f} ({unit}) | {s.floor:.2f} | {len(st.near_pairs)} | "
                   f"{st.near_rate:.2%} |")
    out += ["", "Per set:", ""]
    for st in all_stats:
        s = st.spec
        out.append(f"- **{s.key}** `{s.path}`")
        out.append(f"  - format: {_format(s)}")
        out.append(f"  - text fields: {s.text_fields}")
        for line in st.extra:
            out.append(f"  - {line}")
        out.append(f"  - sha256: `{st.sha256}`")
    out.append("")
    return "\n".join(out)


def updated_readme(root: Path = REPO_ROOT) -> tuple[str, str]:
    path = root / README
    current = path.read_text(encoding="utf-8")
    if current.count(BEGIN) != 1 or current.count(END) != 1 or current.index(BEGIN) > current.index(END):
        raise SystemExit(f"{README}: needs exactly one '{BEGIN}' followed by one '{END}'")
    head, rest = current.split(BEGIN)
    _, tail = rest.split(END)
    return current, head + BEGIN + "\n" + render(root) + "\n" + END + tail


def check(root: Path = REPO_ROOT) -> list[str]:
    """The differences between the card in data/README.md and the files (empty when it is up to date)."""
    current, new = updated_readme(root)
    return [line.rstrip("\n") for line in difflib.unified_diff(
        current.splitlines(), new.splitlines(), f"{README} (current)", f"{README} (from the files)", lineterm="")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python data/datacard.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 and list differences instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        diff = check()
        if diff:
            print(f"{README}: the data card is out of date (run `make data-card`):")
            print("\n".join(diff))
            return 1
        print(f"{README}: the data card agrees with the files")
        return 0
    current, new = updated_readme()
    if new != current:
        (REPO_ROOT / README).write_text(new, encoding="utf-8")
        print(f"{README}: data card updated")
    else:
        print(f"{README}: data card already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
