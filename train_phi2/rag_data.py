"""Phi-2 reading comprehension data (`make phi2-rag-data`): questions about the 苇川 knowledge base, each in exactly
the prompt `make rag` sends (the demo recipe's instruction, retriever, top-k chunks or their best sentences, and
prompt budget), answered by quoting the background.

Sources, all from the knowledge base and never from the evaluation questions (stage.eval_questions, checked):
1. the train split of data/qa/qa.jsonl (question, key, source documents);
2. questions written from the fact triples of data/world/facts.jsonl ("{subject}的{relation}是什么？"), the answer
   being the triple's object as the passages state it;
3. cloze questions: the clause of a fact's own document that states the object, the object replaced by what asks
   for it ("年降水量约1480毫米" -> "苇川，年降水量多少毫米？"), so questions also come in the words of the text, as a
   reader's do (the template questions use the triple's relation name, which the text rarely has);
4. unanswerable prompts: a question whose retrieved chunks are replaced by the next ones that do not hold its
   answer, answered with the instruction's fixed sentence (retrieval.NO_ANSWER).

The background is what the demo's retriever returns for the question (its chunks, or with stage.sentences the best
sentences of them), wrong ones included. When none of them holds the answer, the chunk (or sentence) that does,
from the question's own documents, takes a seeded place among them. The answer quotes the background
(retrieval.quote): from where the question's own words begin in the key's sentence to the end of the key's clause
("降水量约1480毫米。"), so the model learns to find the question's words and copy on from there, which a model this
small can learn. Writes final/train.jsonl ({prompt, completion, question, key, source, context, id}; context:
answered | inserted | unanswerable).
"""
import json
import random
import re
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from shared.config import cli
from shared.eval import retrieval
from shared.training import stage
from shared.data.sources import read_jsonl
from shared.config.errors import UserError, run_main
from shared.inference.generate import load_tokenizer_and_budget
from shared.eval.metrics import normalize
from shared.config.recipe import load_recipe, resolve_path
from shared.config.runs import final_of


@dataclass
class RagData:
    demo: str = "recipes/phi2/rag.yaml"  # the demo's recipe: knowledge base, retriever, k, template, instruction
    demo_overrides: list = field(default_factory=list)  # key=value for it, as `make rag ARGS=...` would pass them
    tokenizer_from: str = "runs/phi2/sft"  # the model the stage trains: its tokenizer and context cut the prompts
    qa: str = "data/qa/qa.jsonl"  # its split == "train" records only
    facts: str = "data/world/facts.jsonl"
    fact_templates: list = field(default_factory=lambda: [
        "{subject}的{relation}是什么？", "请问{subject}的{relation}是多少？", "{subject}的{relation}是怎样的？"])
    questions_per_fact: int = 2  # phrasings per triple (distinct templates, seeded)
    cloze_per_fact: int = 1  # cloze questions per triple, from the clauses that state it (0: none)
    negative_share: float = 0.2  # share of unanswerable examples among all
    eval_questions: list = field(default_factory=lambda: ["data/qa/rag.jsonl"])  # never in training (plus qa eval)
    seed: int = 42


def questions_from_qa(path: str) -> tuple[list[dict], set[str]]:
    """(train questions, the eval split's question texts)."""
    train, held_out = [], set()
    for r in read_jsonl(resolve_path(path)):
        if r.get("split") == "train":
            train.append({"id": r["id"], "source": "qa", "question": r["Question"], "key": r["key"],
                          "docs": r.get("source") or []})
        else:
            held_out.add(normalize(r["Question"]))
    return train, held_out


def questions_from_facts(facts: list[dict], templates: list[str], per_fact: int, rng: random.Random) -> list[dict]:
    out = []
    for f in facts:
        for n, template in enumerate(rng.sample(templates, min(per_fact, len(templates)))):
            out.append({"id": f"{f['id']}/{n}", "source": "facts", "key": f["object"], "docs": f["docs"],
                        "question": template.format(subject=f["subject"], relation=f["relation"])})
    return out


ASKING = [  # (the part of a key a question asks for, what asks for it): the first that matches wins
    (re.compile(r"(\d{4}年)?\d{1,2}月\d{1,2}日"), "哪一天"),
    (re.compile(r"\d{4}年"), "哪一年"),
    (re.compile(r"\d{1,2}月|[一二三四五六七八九十]{1,2}月"), "几月"),
    (re.compile(r"(约|近|超过)?\d[\d.,]*(万|亿)?"), "多少"),
    (re.compile(r"(约|近)?[二两三四五六七八九十百千万][一二两三四五六七八九十百千万]*"), "多少"),
]


def cloze(sentence: str, key: str, subject: str) -> str | None:
    """A question in the text's own words: the clause of `sentence` that holds `key`, the key's number, date or
    (else) the whole key replaced by what asks for it; the clause before it too when the key's clause is little
    more than the key; `subject` first when the clause does not name it. None: no clause holds the key as written."""
    clauses = retrieval.CLAUSE.findall(sentence)
    hit = next((i for i, c in enumerate(clauses) if key in c), None)
    if hit is None:
        return None
    pattern, word = next(((p, w) for p, w in ASKING if p.search(key)), (None, "什么"))
    asked = pattern.sub(word, key, count=1) if pattern else word
    text = clauses[hit].replace(key, asked, 1)
    if len(clauses[hit].strip("，；：。！？")) - len(key) < 4 and hit > 0:
        text = clauses[hit - 1] + text
    question = text.rstrip("，；：。！？")
    if normalize(subject) not in normalize(question):
        question = f"{subject}，{question}"
    return question + "？"


def questions_from_passages(facts: list[dict], by_doc: dict, per_fact: int, rng: random.Random) -> list[dict]:
    """Cloze questions (`cloze`) from the clauses of each fact's documents that state its object."""
    out = []
    for f in facts:
        written = {cloze(sent, f["object"], f["subject"]) for doc in f["docs"] for ch in by_doc.get(doc, [])
                   for sent in retrieval.sentences(ch.page_content) if f["object"] in sent} - {None}
        for n, question in enumerate(rng.sample(sorted(written), min(per_fact, len(written)))):
            out.append({"id": f"{f['id']}/cloze{n}", "source": "cloze", "key": f["object"], "docs": f["docs"],
                        "question": question})
    return out


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/phi2/rag-data.yaml", __doc__.splitlines()[0], stage=RagData)
    s, rng = recipe.stage, random.Random(recipe.stage.seed)
    if not 0 <= s.negative_share < 1:
        raise UserError(f"{recipe.where('stage.negative_share')}: stage.negative_share must be in [0, 1)")
    demo = load_recipe(s.demo, [str(o) for o in s.demo_overrides], stage=retrieval.RagSettings)
    d = retrieval.check_settings(demo)
    tokenizer, budget = load_tokenizer_and_budget(final_of(s.tokenizer_from, "stage.tokenizer_from"),
                                                   demo.generation.get("max_new_tokens", 0))
    index = retrieval.index_stage(demo)
    demo_retriever = retrieval.context_retriever(index.store, index.chunks, d)  # what make rag puts in its prompt
    pieces = retrieval.context_size(d)  # chunks, or sentences when the demo keeps only the best sentences
    deeper = retrieval.retrievers(index.store, index.chunks, d.k + 6, d.weights)[d.retriever]  # for unanswerable ones
    squeeze = demo_retriever.base_compressor if d.sentences else None  # the demo's SentenceFilter
    by_doc: dict[str, list] = {}
    for chunk in index.chunks:
        by_doc.setdefault(chunk.metadata["doc_id"], []).append(chunk)

    qa, held_out = questions_from_qa(s.qa)
    for path in s.eval_questions:
        held_out |= {normalize(q["question"]) for q in retrieval.load_questions(path)}
    facts = list(read_jsonl(resolve_path(s.facts)))
    questions = (qa + questions_from_facts(facts, s.fact_templates, s.questions_per_fact, rng)
                 + questions_from_passages(facts, by_doc, s.cloze_per_fact, rng))
    counts = {src: dict.fromkeys(("answered", "inserted", "unanswerable", "skipped"), 0)
              for src in ("qa", "facts", "cloze")}
    excluded, examples = 0, []
    for q in tqdm(questions, desc="reading-comprehension examples"):
        if normalize(q["question"]) in held_out:
            excluded += 1
            continue
        c = counts[q["source"]]
        ranked = retrieval.retrieve(deeper, q["question"], d.k + 6)
        holds = [ch for ch in ranked if retrieval.contains(ch.page_content, q["key"])]
        stating = [ch for doc in q["docs"] for ch in by_doc.get(doc, []) if retrieval.contains(ch.page_content, q["key"])]
        pool = stating or holds  # what an "inserted" example puts into the background: a chunk, or its sentence
        if squeeze:
            pool = [x for x in squeeze.split(pool) if retrieval.contains(x.page_content, q["key"])]
        if not pool:
            c["skipped"] += 1  # the documents never state the key verbatim: no quote to learn from
            continue
        if rng.random() < s.negative_share:
            others = [ch for ch in ranked if ch not in holds][:d.k]
            others = squeeze.compress_documents(others, q["question"]) if squeeze else others
            prompt, _ = retrieval.fit_prompt(q["question"], others, d.template, d.instruction, tokenizer, budget)
            examples.append({"id": q["id"], "source": q["source"], "context": "unanswerable", "question": q["question"],
                             "key": q["key"], "prompt": prompt, "completion": retrieval.NO_ANSWER + "。"})
            c["unanswerable"] += 1
            continue
        context = retrieval.retrieve(demo_retriever, q["question"], pieces)  # (a deeper fusion ranks differently)
        prompt, kept = retrieval.fit_prompt(q["question"], context, d.template, d.instruction, tokenizer, budget)
        if not any(retrieval.contains(ch.page_content, q["key"]) for ch in kept):
            place = rng.randrange(len(kept)) if kept else 0
            kept = kept[:place] + [rng.choice(pool)] + kept[place + 1:]
            prompt, kept = retrieval.fit_prompt(q["question"], kept, d.template, d.instruction, tokenizer, budget)
            if not any(retrieval.contains(ch.page_content, q["key"]) for ch in kept):  # cut again: put it first
                prompt, kept = retrieval.fit_prompt(q["question"], [rng.choice(pool), *kept],
                                                    d.template, d.instruction, tokenizer, budget)
            kind = "inserted"
        else:
            kind = "answered"
        c[kind] += 1
        source = next(ch for ch in kept if retrieval.contains(ch.page_content, q["key"]))
        examples.append({"id": q["id"], "source": q["source"], "context": kind, "question": q["question"],
                         "key": q["key"], "prompt": prompt,
                         "completion": retrieval.quote(source.page_content, q["key"], q["question"])})
    if not examples:
        raise UserError(f"stage.qa / stage.facts: no example could be built from {s.qa} and {s.facts}")
    rng.shuffle(examples)

    with stage.output(recipe, "Phi-2 reading comprehension data", publish_log=opts.publish_log) as out:
        with open(out.dir / "train.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)
        rows = [f"| {src} | {c['answered']} | {c['inserted']} | {c['unanswerable']} | {c['skipped']} |"
                for src, c in counts.items()]
        out.log.facts.update({
            "examples": f"{len(examples)} (final/train.jsonl: prompt, completion, question, key, source, context, id)",
            "prompts": f"as `make rag` sends them: {s.demo} (retriever {d.retriever}, {retrieval.context_words(d)}, "
                       f"{d.chunk_size}-character chunks), cut to {budget} tokens with {s.tokenizer_from}'s tokenizer",
            "held out": f"{len(held_out)} evaluation questions ({', '.join(s.eval_questions)} and the eval split of "
                        f"{s.qa}); {excluded} generated questions equal to one of them were dropped",
        })
        out.log.add_section("Examples per source", (
            f"answered: the background the demo retrieves ({retrieval.context_words(d)}) holds the key; inserted: "
            "it doesn't, so a piece of the question's own document that does took a seeded place in it; "
            "unanswerable: the chunks holding the key replaced by the next retrieved ones, answer "
            f"“{retrieval.NO_ANSWER}。”; skipped: no chunk (or sentence) states the key verbatim.\n\n"
            "| source | answered | inserted | unanswerable | skipped |\n|---|---:|---:|---:|---:|\n"
            + "\n".join(rows)))
        out.log.add_section("Examples", "\n\n".join(
            f"```text\n{e['prompt']}{e['completion']}\n```" for e in examples[:3]))


if __name__ == "__main__":
    run_main(main)
