"""The bundled corpora in data/: schema, sizes, duplicates, variety, grounding, references, encoding, data card.

Fast and offline (a few seconds): no model, no tokenizer, only the files. The set definitions (paths, schemas,
text fields, quality floors and their justification) live in data/datacard.py, which also writes the card in
data/README.md; see that file's "Quality checks" section for the thresholds in prose.
"""
from __future__ import annotations

import datetime
import json
import re
import unicodedata
from collections import Counter, defaultdict

import pytest

from shared.data import sources as D
from shared.data.text import record_text
from data import datacard as C
from conftest import REPO
from data.datacard import BY_KEY, SPECS

JSONL_SPECS = [s for s in SPECS if s.schema]
ID_PATTERNS = {
    "poems": r"poem-\d{3}", "encyclopedia": r"enc-\d{3}", "news": r"news-\d{3}", "facts": r"fact-w\d-\d{3}",
    "qa": r"qa-\d{3}", "rag": r"rag-\d{3}", "zhihu": r"zh-\d{3}", "prose": r"prose-\d{3}",
    "instructions": r"ins-\d{3}", "alpaca": r"en-a-\d{3}", "conversations": r"en-c-\d{3}",
}
CHINESE_NUMERALS = "一二三四五六七八九十"


_cache: dict[str, list[dict]] = {}


def records(key: str) -> list[dict]:
    if key not in _cache:
        _cache[key] = C.load(BY_KEY[key])
    return _cache[key]


def texts(key: str) -> list[str]:
    return C.record_texts(BY_KEY[key], records(key))


def documents() -> dict[str, str]:
    """The text a question may quote: encyclopedia title + summary + section titles and contents; news title + body."""
    return {r["id"]: record_text(r, date=False) for r in records("encyclopedia") + records("news")}


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for x in value:
            yield from strings(x)
    elif isinstance(value, dict):
        for x in value.values():
            yield from strings(x)


# ----------------------------------------------------------------------------------------------------------------
# schema


@pytest.mark.parametrize("spec", JSONL_SPECS, ids=lambda s: s.key)
def test_schema(spec):
    rows = records(spec.key)
    errors = [e for r in rows for e in C.schema_errors(r, spec.schema, f"{spec.path}:{r.get('id')}", spec.optional)]
    assert not errors, "\n".join(errors[:20])
    ids = [r["id"] for r in rows]
    bad_ids = [i for i in ids if not re.fullmatch(ID_PATTERNS[spec.key], i)]
    assert not bad_ids, bad_ids[:10]
    assert ids == sorted(set(ids)), f"{spec.path}: ids must be unique and in order"
    # the recipes' loader reads every file into one table with the schema's columns (optional ones included)
    ds = D.load_local(REPO / spec.path)
    assert len(ds) == len(rows) and sorted(ds.column_names) == sorted(spec.schema)


def test_ids_unique_across_sets():
    counts = Counter(r["id"] for s in JSONL_SPECS for r in records(s.key))
    assert not [i for i, n in counts.items() if n > 1]


def test_set_specific_rules():
    for r in records("news"):
        datetime.date.fromisoformat(r["date"])
    for key in ("qa", "rag"):
        assert {r["split"] for r in records(key)} <= {"train", "eval"}, key
    assert {r["split"] for r in records("rag")} == {"eval"}, "RAG questions are evaluation questions"
    assert all(r["votes"] >= 0 for r in records("zhihu"))
    for r in records("instructions"):
        assert r.get("rejected") != r["output"], r["id"]
    for r in records("conversations"):
        roles = [m["role"] for m in r["messages"]]
        assert len(roles) % 2 == 0 and roles == ["user", "assistant"] * (len(roles) // 2), (r["id"], roles)


def test_story_is_chaptered_text():
    text = (REPO / BY_KEY["story"].path).read_text(encoding="utf-8")
    headings = C.CHAPTER.findall(text)
    assert len(headings) >= 12
    assert text.startswith(headings[0])
    numerals = [h.split(" ")[0][1:-1] for h in headings]
    expected = [(CHINESE_NUMERALS[n // 10 - 1] if n >= 20 else "") + ("十" if n >= 10 else "")
                + (CHINESE_NUMERALS[n % 10 - 1] if n % 10 else "") for n in range(1, len(headings) + 1)]
    assert numerals == expected, "chapters must be numbered 第一章, 第二章, ... in order"
    assert len(D.load_local(REPO / BY_KEY["story"].path)) == len(records("story"))


# ----------------------------------------------------------------------------------------------------------------
# sizes (the table)


def test_counts():
    n = {s.key: len(records(s.key)) for s in SPECS}
    assert n["poems"] >= 300
    assert n["encyclopedia"] >= 40
    sizes = {r["id"]: len(r["summary"]) + sum(len(s["content"]) for s in r["sections"])
             for r in records("encyclopedia")}
    assert all(300 <= v <= 900 for v in sizes.values()), {k: v for k, v in sizes.items() if not 300 <= v <= 900}
    assert n["news"] >= 40
    assert n["prose"] >= 100 and sum(len(r["text"]) for r in records("prose")) >= 100_000
    assert n["zhihu"] >= 300 and sum(r["about_world"] for r in records("zhihu")) >= 150
    assert n["qa"] >= 200
    titles = {r["title"] for r in records("zhihu")}
    assert not [r["id"] for r in records("qa") if r["Question"] in titles], "QA questions must not be Zhihu titles"
    assert n["instructions"] >= 300 and len({r["task"] for r in records("instructions")}) >= 10
    assert sum("rejected" in r for r in records("instructions")) >= 100, "DPO needs preference pairs"
    assert n["rag"] >= 60
    assert n["alpaca"] > 0 and n["conversations"] > 0 and n["alpaca"] + n["conversations"] >= 300
    story = (REPO / BY_KEY["story"].path).read_text(encoding="utf-8")
    assert C.non_whitespace(story) >= 30_000


# ----------------------------------------------------------------------------------------------------------------
# duplicates and variety


def main_texts(key: str) -> list[tuple[str, str, str]]:
    """(id, field, text) of the text that makes a record what it is; two records must never share one."""
    out = []
    for r in records(key) if key != "story" else []:
        if key == "poems":
            out.append((r["id"], "content", r["content"]))
        elif key == "encyclopedia":
            out.append((r["id"], "summary+sections", "\n".join([r["summary"], *(s["content"] for s in r["sections"])])))
        elif key == "news":
            out.append((r["id"], "body", r["body"]))
        elif key == "facts":
            out.append((r["id"], "triple", f"{r['subject']} | {r['relation']} | {r['object']}"))
        elif key in ("qa", "rag"):
            q, a = ("Question", "Answer") if key == "qa" else ("question", "answer")
            out += [(r["id"], "question", r[q]), (r["id"], "answer", r[a])]
        elif key == "zhihu":
            out += [(r["id"], "title", r["title"]), (r["id"], "content", r["content"])]
        elif key == "prose":
            out.append((r["id"], "text", r["text"]))
        elif key in ("instructions", "alpaca"):
            out.append((r["id"], "instruction+input", r["instruction"] + "\n" + r["input"]))
        elif key == "conversations":
            out.append((r["id"], "messages", "\n".join(m["content"] for m in r["messages"])))
    if key == "story":
        out = [(f"chapter {i + 1}", "chapter", t) for i, t in enumerate(texts("story"))]
    return out


def test_no_exact_duplicates_within_or_across_sets():
    seen = defaultdict(list)
    for spec in SPECS:
        for rid, fld, text in main_texts(spec.key):
            seen[" ".join(text.split())].append(f"{spec.key}:{rid}.{fld}")
    dups = {t[:40]: where for t, where in seen.items() if len(where) > 1}
    assert not dups, dups


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_near_duplicate_rate(spec):
    st = C.stats(spec)
    pairs = [(records(spec.key)[i].get("id", i) if spec.key != "story" else i, j, round(jac, 3))
             for i, j, jac in st.near_pairs]
    print(f"{spec.key}: near-duplicate rate {st.near_rate:.2%} ({len(st.near_pairs)} pairs with character "
          f"{C.NEAR_DUP_N}-gram Jaccard > {C.NEAR_DUP_JACCARD})")
    assert st.near_rate <= C.MAX_NEAR_DUP_RATE, pairs[:10]


# Floors (data/datacard.py, where they are justified at length): 0.75 for Chinese character 4-grams (the sets
# measure 0.84-0.93), 0.60 for the facts (triples whose subjects repeat by design; 0.73), 0.80 for English word
# 3-grams (character 4-grams of any English text are ~0.15-0.2; word 3-grams measure ~0.96). Repeated or
# templated text scores about half of natural text, well under each floor (test_floors_catch_repetition).
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_distinct_ngram_ratio(spec):
    st = C.stats(spec)
    unit = "word 3-grams" if spec.english else "character 4-grams"
    print(f"{spec.key}: distinct {unit} ratio {st.ratio:.3f} (floor {spec.floor:.2f})")
    assert st.ratio > spec.floor


def test_floors_catch_repetition():
    for key in ("encyclopedia", "zhihu", "prose", "qa", "alpaca", "conversations"):
        spec = BY_KEY[key]
        assert C.distinct_ratio(texts(key) * 2, spec.english) < spec.floor, f"{key} doubled passes the floor"
    templated = [f"{f['subject']}的{f['relation']}是什么？\n{f['subject']}的{f['relation']}是{f['object']}。"
                 for f in records("facts")]
    assert C.distinct_ratio(templated) < C.FLOOR_CHAR4
    templated_en = [f"Write a short note about item {i}.\nHere is a short note about item {i}: it is a fine item."
                    for i in range(300)]
    assert C.distinct_ratio(templated_en, english=True) < C.FLOOR_WORD3
    # the near-duplicate measure sees a lightly edited copy
    text = records("prose")[0]["text"]
    assert C.near_duplicates([text, text.replace("。", "，", 1), records("prose")[1]["text"]]) != []


# ----------------------------------------------------------------------------------------------------------------
# grounding and references


def test_questions_are_answered_by_their_documents():
    docs = documents()
    problems = []
    for key, q, a, src in (("qa", "Question", "Answer", "source"), ("rag", "question", "answer", "sources")):
        for r in records(key):
            if not any(r["evidence"] in docs.get(d, "") for d in r[src]):
                problems.append(f"{r['id']}: evidence not in {r[src]}: {r['evidence']}")
            if r["key"] not in r["evidence"]:
                problems.append(f"{r['id']}: key {r['key']!r} not in the evidence")
            if r["key"] not in r[a]:
                problems.append(f"{r['id']}: key {r['key']!r} not in the answer")
    assert not problems, "\n".join(problems)


def test_facts_are_stated_in_every_document_they_cite():
    docs = documents()
    problems = [f"{f['id']}: {f['object']!r} not in {d}" for f in records("facts") for d in f["docs"]
                if f["object"] not in docs.get(d, "")]
    assert not problems, "\n".join(problems)


def test_referenced_ids_exist():
    docs = documents()
    refs = [(f["id"], d) for f in records("facts") for d in f["docs"]]
    refs += [(r["id"], d) for r in records("qa") for d in r["source"]]
    refs += [(r["id"], d) for r in records("rag") for d in r["sources"]]
    assert not [(i, d) for i, d in refs if d not in docs]
    cited = {d for _, d in refs}
    assert cited == set(docs), f"documents no fact or question cites: {sorted(set(docs) - cited)}"


# ----------------------------------------------------------------------------------------------------------------
# encoding and the card


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_utf8_and_clean_text(spec):
    raw = (REPO / spec.path).read_bytes()
    text = raw.decode("utf-8")  # strict: raises on invalid UTF-8
    assert "\ufffd" not in text and not text.startswith("\ufeff")
    assert "\r" not in text and text.endswith("\n")
    if spec.schema:
        for number, line in enumerate(text.splitlines(), start=1):
            assert line == json.dumps(json.loads(line), ensure_ascii=False), f"{spec.path}:{number}: not compact JSON"
        values = [v for r in records(spec.key) for v in strings(r)]
    else:
        values = [p for p in text.split("\n\n")]
        assert all(p == p.strip() for p in values[:-1]) and values[-1] == values[-1].strip() + "\n"
        values = [p.strip() for p in values]
    bad = [v[:30] for v in values if v != v.strip()
           or any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") and c != "\n" for c in v)]
    assert not bad, bad[:5]


def test_data_card_agrees_with_the_files():
    diff = C.check()
    assert not diff, "data/README.md is out of date, run `make data-card`:\n" + "\n".join(diff[:40])
