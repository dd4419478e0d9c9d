"""Phi-2 RAG: answer questions about the 苇川 knowledge base from retrieved background.

    make rag [QUESTION="苇川大学的校训是什么？"] [DOCS=my/folder]     # = python train_phi2/rag.py recipes/phi2/rag.yaml
    make rag-eval                              # retrieval recall@k + answer-level scores -> train_phi2/logs/rag_log.md
    python train_phi2/rag.py recipes/phi2/rag.yaml stage.retriever=dense --question "..."
    python train_phi2/rag.py < questions.txt   # one question a line; without QUESTION and a terminal: an error

1. documents (stage.docs) -> chunks ending at Chinese sentence punctuation -> embeddings (a Hub model, else one
   shipped in a PyPI package) -> FAISS, saved with a signed manifest in runs/phi2/rag/final/ and rebuilt only when
   the documents, the embedding model or the splitter change; 2. BM25 over jieba words beside it, and their
   weighted fusion (stage.retriever picks one); 3. the top stage.k chunks (or, with stage.sentences, their
   sentences closest to the question, ranked by the same fusion: LangChain's ContextualCompressionRetriever) go
   into the SFT prompt (stage.template + stage.instruction), the reading-comprehension model (stage.model,
   `make phi2-rag-sft`, trained on exactly these prompts) answers through LangChain's HuggingFacePipeline, and the
   answer is printed with the sentence of the top source that backs it and the sources.
`--eval` measures, for the 60 held-out questions, recall@k of each question's source document for every retriever
and packaged embedding model, then the answers of stage.model and of stage.baseline (the plain SFT model): key
recall, "not in the background" when the background given lacks the key, Chinese Rouge-L, and degenerate answers.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field

from shared.config import cli
from shared.eval import retrieval
from shared.training import stage
from shared.config.errors import UserError, run_main
from shared.inference.generate import (QuoteFromSources, answer_processors, first_character_probability,
                                       token_bytes)
from transformers.generation.logits_process import LogitsProcessorList
from shared.eval.metrics import rouge_l
from shared.config.runs import final_of


def retrieval_section(recipe, index) -> str:
    """recall@1/3/5 of every retriever with every installed packaged embedding model (plus the recipe's own)."""
    from langchain_community.vectorstores import FAISS

    s = recipe.stage
    questions = retrieval.load_questions(s.questions)
    ks = (1, 3, 5)
    rows, notes, lexical = [], [], None
    label = s.embedding if s.embedding and "FALLBACK" not in index.identity else s.embedding_fallback
    models = [(label, index.store, index.identity)]
    for name in s.compare:
        if name == models[0][0]:
            continue
        try:
            emb, ident = retrieval.packaged_embeddings(name)
        except UserError as e:
            notes.append(f"- {name}: not measured ({e})")
            continue
        t = time.perf_counter()
        store = FAISS.from_documents(index.chunks, emb)
        notes.append(f"- {ident}: {len(index.chunks)} chunks embedded in {time.perf_counter() - t:.1f} s")
        models.append((name, store, ident))
    for name, store, ident in models:
        found = retrieval.retrievers(store, index.chunks, max(ks), s.weights)
        for kind in retrieval.RETRIEVERS:
            if kind == "lexical":  # the same for every embedding model: measured once
                lexical = lexical or retrieval.recall_at_k(found[kind], questions, ks)
                continue
            rows.append((kind, name, retrieval.recall_at_k(found[kind], questions, ks)))
            print(f"  {kind:8s} {name:8s} " + "  ".join(f"@{k} {v:.3f}" for k, v in rows[-1][2].items()), flush=True)
    rows.insert(0, ("lexical", "– (BM25, jieba)", lexical))
    default = (s.retriever, "– (BM25, jieba)" if s.retriever == "lexical" else models[0][0])
    table = retrieval.recall_table(rows, len(questions), default)
    return (f"{len(questions)} questions from `{s.questions}`; a hit: the question's source document is among the "
            f"documents of the first k retrieved chunks. Chunks: {len(index.chunks)} of <= {s.chunk_size} "
            f"characters (overlap {s.chunk_overlap}); combined = reciprocal-rank fusion, weights dense/lexical "
            f"{s.weights}.\n\nEmbedding models:\n- {index.identity}: the index"
            + (f", built in {index.seconds:.1f} s\n" if index.rebuilt else " (reused)\n") + "\n".join(notes)
            + f"\n\n{table}")


# one character six times in a row ("1000000..."): a runaway answer (U+FFFD, bytes that don't form a character,
# stands for many different tokens, so it is not counted as one repeated character)
DEGENERATE = re.compile("([^\ufffd])\\1{5,}")


def score_answers(recipe, index, model_ref: str, mode: str) -> dict:
    """Answer every held-out question with the model through the demo's own path; score what it generated."""
    s = recipe.stage
    retriever = retrieval.context_retriever(index.store, index.chunks, s)
    answerer = load_answerer(recipe, model_ref, mode)
    rows = []
    for q in retrieval.load_questions(s.questions):
        text, docs = answerer(q["question"], retriever, s)
        in_context = any(retrieval.contains(d.page_content, q["key"]) for d in docs)
        rows.append({"id": q.get("id"), "question": q["question"], "answer": text, "in_context": in_context,
                     "hit": retrieval.contains(text, q["key"]), "no_answer": retrieval.says_no_answer(text),
                     "rouge_l": rouge_l(q.get("answer") or q["key"], text), "degenerate": bool(DEGENERATE.search(text))})
    return {"model": model_ref, "mode": mode, "rows": rows}


def share(rows: list[dict], test, where=lambda r: True) -> str:
    chosen = [r for r in rows if where(r)]
    hits = sum(1 for r in chosen if test(r))
    return f"{hits / len(chosen):.3f} ({hits}/{len(chosen)})" if chosen else "–"


def answers_section(recipe, results: list[dict]) -> str:
    s = recipe.stage
    if not results:
        return "(no model to score)"
    lines = ["| model | answers | key recall | key recall, key in the background | “not in the background” when "
             "the background lacks the key | “not in the background” wrongly | Rouge-L (Chinese, chars) | degenerate |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        rows = res["rows"]
        mark = " **(the demo)**" if (res["model"], res["mode"]) == (s.model, s.answer) else ""
        lines.append(f"| `{res['model']}`{mark} | {res['mode']} | **{share(rows, lambda r: r['hit'])}** | "
                     f"{share(rows, lambda r: r['hit'], lambda r: r['in_context'])} | "
                     f"{share(rows, lambda r: r['no_answer'], lambda r: not r['in_context'])} | "
                     f"{share(rows, lambda r: r['no_answer'], lambda r: r['in_context'])} | "
                     f"{sum(r['rouge_l'] for r in rows) / len(rows):.3f} | {sum(r['degenerate'] for r in rows)} |")
    demo = next((r for r in results if (r["model"], r["mode"]) == (s.model, s.answer)), results[-1])
    sample = "\n".join(f"| {r['question']} | {r['answer'][:80].replace('|', '/')} | {'yes' if r['hit'] else 'no'} |"
                       for r in demo["rows"][:12])
    return (f"Each of the {len(demo['rows'])} questions of `{s.questions}` answered through the demo's own path "
            f"(retriever {s.retriever}, {retrieval.context_words(s)}, cut to the model's context, the recipe's "
            f"generation preset), "
            f"by each model with each answer mode: `quote` (the answer is a span of the background, or the "
            f"refusal when less than {s.min_coverage:.0%} of the question's content characters are in the background"
            + (f" or the model gives the refusal's first character >= {s.refusal_threshold}"
               if s.refusal_threshold < 1 else "") + ") and `free` (any text). "
            f"Key recall: the answer holds the question's `key` (exact substring after width normalisation); “not in "
            f"the background”: the answer says “{retrieval.NO_ANSWER}”; Rouge-L: character-level F against the "
            f"reference answer, mean over questions; degenerate: one character repeated 6 or more times.\n\n"
            + "\n".join(lines) + f"\n\nThe demo's first answers (`{demo['model']}`, {demo['mode']}):\n\n"
            f"| question | answer | key |\n|---|---|---|\n{sample}")


@dataclass
class Answerer:
    """The answering model as LangChain's HuggingFacePipeline, with the recipe's generation preset. stage.answer:
    `quote` decodes extractively (shared.inference.generate.QuoteFromSources: a span of the retrieved chunks, or the refusal
    sentence), `free` lets the model write anything (the preset's answer_no_repeat_ngram_size stops loops)."""
    llm: object
    budget: int | None  # prompt tokens that leave room for max_new_tokens
    folder: object
    preset: dict
    mode: str
    threshold: float
    min_coverage: float
    table: list = field(default_factory=list)  # token id -> bytes (for quoting)

    def generate_kwargs(self, question: str, prompt: str, docs) -> dict:
        if self.mode == "free":
            return answer_processors(self.preset)
        tok, model = self.llm.pipeline.tokenizer, self.llm.pipeline.model
        self.table = self.table or token_bytes(tok)
        refusal = retrieval.NO_ANSWER + "。"
        # the background hardly restates the question, or the reader would rather refuse (threshold 1: never asked;
        # the recipe's reader can't tell: README, RAG)
        refuse = (retrieval.coverage(question, docs) < self.min_coverage
                  or (self.threshold < 1
                      and first_character_probability(model, tok, prompt, refusal, self.table) >= self.threshold))
        quote = QuoteFromSources(tok, [d.page_content for d in docs], refusal, refuse, self.table)
        return {"logits_processor": LogitsProcessorList([quote])}

    def __call__(self, question: str, retriever, s) -> tuple[str, list]:
        return retrieval.answer(question, retriever, self.llm, s.template, s.instruction,
                                retrieval.context_size(s), self.budget,
                                generate_kwargs=lambda prompt, docs: self.generate_kwargs(question, prompt, docs))


def load_answerer(recipe, model_ref: str | None = None, mode: str | None = None) -> Answerer:
    from langchain_huggingface import HuggingFacePipeline
    from transformers import pipeline

    from shared.inference.generate import generation_config, load, prompt_budget

    s = recipe.stage
    folder = final_of(model_ref or s.model, "stage.model (the answering model)")
    model, tok, _ = load(folder)
    preset = {k: v for k, v in recipe.generation.items() if k != "prompts"}
    model.generation_config = generation_config(preset, tok)
    pipe = pipeline("text-generation", model=model, tokenizer=tok, return_full_text=False)
    return Answerer(HuggingFacePipeline(pipeline=pipe), prompt_budget(model.config, model.generation_config.max_new_tokens),
                    folder, preset, mode or s.answer, s.refusal_threshold, s.min_coverage)


def questions_given(question: str | None) -> list[str] | None:
    """The questions to answer without asking: --question (make rag QUESTION=...), else the lines piped into stdin;
    None: ask at the terminal. Read before the index and the model load, so that no question fails at once."""
    if question is not None:
        if not question.strip():
            raise UserError('the question is empty: make rag QUESTION="..." (or --question "..."); leave QUESTION '
                            'out to ask at a terminal')
        return [question]
    if sys.stdin is not None and sys.stdin.isatty():
        return None
    lines = [line.strip() for line in (sys.stdin.read() if sys.stdin else "").splitlines() if line.strip()]
    if not lines:
        raise UserError('no question: stdin is not a terminal and gave none; make rag QUESTION="..." (or --question '
                        '"..."), or pipe the questions in, one a line')
    return lines


def main(argv):
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--question", default=os.environ.get("SLM_QUESTION") or None,
                     help="answer this one question and exit (make rag QUESTION=... hands it over as $SLM_QUESTION)")
    own.add_argument("--eval", action="store_true", help="measure retrieval and answers, write them into the log")
    mine, rest = own.parse_known_args(argv)
    recipe, opts = cli.parse(rest, "recipes/phi2/rag.yaml", __doc__.splitlines()[0], stage=retrieval.RagSettings)
    s = retrieval.check_settings(recipe)

    if mine.eval:
        def sections(index):
            print(f"measuring retrieval on {s.questions} ...", flush=True)
            found = retrieval_section(recipe, index)
            models = [m for m in (s.baseline, s.model) if m]
            results = []
            for ref in models:
                for mode in retrieval.ANSWER_MODES:
                    print(f"answering {s.questions} with {ref} ({mode}) ...", flush=True)
                    results.append(score_answers(recipe, index, ref, mode))
            return [("Retrieval recall@k", found), ("Answers", answers_section(recipe, results))]

        retrieval.index_stage(recipe, opts.publish_log, sections)
        return
    questions = questions_given(mine.question)
    index = retrieval.index_stage(recipe)
    retriever = retrieval.context_retriever(index.store, index.chunks, s)
    answerer = load_answerer(recipe)
    print(f"answering model: {answerer.folder}", flush=True)

    def ask(question: str) -> None:
        text, docs = answerer(question, retriever, s)
        backing = None if retrieval.says_no_answer(text) else retrieval.backing_sentence(text, docs)
        print(f"\n{text}\n" + (f"\n[{backing[0]}] says: {backing[1]}\n" if backing else "") + "\nsources:\n"
              + "\n".join(retrieval.source_lines(docs)) + "\n", flush=True)

    if mine.question is not None:
        ask(mine.question)
        return
    if questions is not None:  # piped in
        for question in questions:
            try:
                ask(question)
            except UserError as e:  # e.g. a question too long for the model: say so, answer the others
                print(f"error: {e}", flush=True)
        return
    print("ask about the knowledge base (an empty line or Ctrl-D ends)", flush=True)
    while True:
        try:
            question = input("问题> ").strip()
        except EOFError:
            break
        if not question:
            break
        try:
            ask(question)
        except UserError as e:  # e.g. a question too long for the model: say so, keep the session
            print(f"error: {e}", flush=True)


if __name__ == "__main__":
    run_main(main)
