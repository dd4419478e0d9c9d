"""RAG retrieval (shared/eval/retrieval.py, train_phi2/rag.py): chunking at Chinese sentence ends, the signed index that is
reused, rebuilt on change and never loaded when tampered with, dense / BM25 / combined retrieval on the bundled
苇川 documents, and the answer() plumbing through HuggingFacePipeline with a tiny random GPT-2."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document

from shared.eval import retrieval
from shared.config.errors import UserError
from conftest import PY, REPO, run, small_kb, tiny_model

EMBEDDING = "use"  # the fastest packaged model to build an index with (the recipe's default is measured by rag-eval)
DOC_IDS = {"enc-001", "enc-005", "enc-040", "news-002", "news-003"}  # a small knowledge base from the bundled one


@pytest.fixture(autouse=True)
def signing_key_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_KEY_DIR", str(tmp_path / "keys"))  # never the user's real key
    return tmp_path / "keys"


@pytest.fixture
def kb(tmp_path) -> Path:
    return small_kb(tmp_path / "kb", DOC_IDS)


@pytest.fixture(scope="module")
def embedding():
    return retrieval.packaged_embeddings(EMBEDDING)


def test_chunks_end_at_chinese_sentence_punctuation():
    text = ("苇川市是中国南方的一座河港城市。青漪河自西向东穿城而过，在城东汇入镜湖！你去过镜湖吗？"
            "全市下辖五个区；市域面积1286平方公里，2020年普查人口约186万。") * 4
    doc = Document(text, metadata={"doc_id": "d1", "title": "苇川市", "source": "x.jsonl"})
    chunks = retrieval.split_documents([doc], chunk_size=40, chunk_overlap=10)
    assert len(chunks) > 4
    for i, c in enumerate(chunks):
        assert len(c.page_content) <= 40
        assert c.page_content[-1] in "。！？；，", c.page_content
        assert c.metadata == {"doc_id": "d1", "title": "苇川市", "source": "x.jsonl", "chunk": i, "chunk_id": f"d1#{i}"}
    assert "".join(c.page_content for c in chunks).count("镜湖") >= 4  # nothing lost (overlap may repeat)
    with pytest.raises(UserError, match="chunk_overlap"):
        retrieval.split_documents([doc], chunk_size=20, chunk_overlap=20)


def test_documents_from_a_folder_of_txt_md_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("河灯是林见秋的第一部小说。", encoding="utf-8")
    (tmp_path / "b.md").write_text("# 云脚茶\n\n北坡茶园出产云脚茶。", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "x1", "title": "渡口", "body": "老渡头在旧港区。"},
                                                 ensure_ascii=False) + "\n", encoding="utf-8")
    docs = retrieval.load_documents(retrieval.document_files(str(tmp_path)))
    assert [(d.metadata["doc_id"].split("/")[-1], d.metadata["title"]) for d in docs] == \
        [("a.txt", "a"), ("b.md", "云脚茶"), ("x1", "渡口")]
    assert docs[2].page_content == "渡口\n\n老渡头在旧港区。"
    (tmp_path / "d.jsonl").write_text('{"id": "x2", "subject": "no text"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="record 1 has no text"):
        retrieval.load_documents(retrieval.document_files(str(tmp_path)))
    with pytest.raises(UserError, match="not found"):
        retrieval.document_files([str(tmp_path / "missing")])


def build(folder: Path, kb: Path, embedding) -> retrieval.Index:
    model, identity = embedding
    index = retrieval.open_index(folder, str(kb), model, identity, chunk_size=120, chunk_overlap=20)
    if index.rebuilt:
        retrieval.save_index(index.store, folder, index.manifest)
    return index


class Boom:
    """A pickle payload: unpickling it would write a file (what a hostile index.pkl could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


def test_index_is_reused_rebuilt_on_change_and_never_loaded_when_tampered(tmp_path, kb, embedding, signing_key_dir):
    folder = tmp_path / "final"
    first = build(folder, kb, embedding)
    assert first.rebuilt and first.reason == "no index built yet"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["index_files"]) == {"index.faiss", "index.pkl"}
    assert manifest["embedding"].startswith(f"{EMBEDDING}: ") and manifest["splitter"]["chunk_size"] == 120
    assert len(manifest["documents"]) == 2 and manifest["chunks"] == len(first.chunks)

    again = build(folder, kb, embedding)  # nothing changed: loaded, not rebuilt
    assert not again.rebuilt
    question = "1998年青漪河的那次大洪峰是在哪天通过苇川市区的？"
    assert again.store.similarity_search(question, k=1)[0].page_content == \
        first.store.similarity_search(question, k=1)[0].page_content

    news = kb / "news.jsonl"  # a document changes: rebuilt, and says which
    news.write_text(news.read_text(encoding="utf-8").replace("11.46米", "11.47米"), encoding="utf-8")
    changed = build(folder, kb, embedding)
    assert changed.rebuilt and "documents changed" in changed.reason and "news.jsonl" in changed.reason
    assert not build(folder, kb, embedding).rebuilt

    # a hostile pickle with the manifest's hash updated to match: the manifest's signature no longer verifies
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Boom(marker))
    (folder / "index" / "index.pkl").write_bytes(payload)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["index_files"]["index.pkl"] = retrieval.hashlib.sha256(payload).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    tampered = build(folder, kb, embedding)
    assert tampered.rebuilt and "not signed" in tampered.reason
    assert not marker.exists()

    # the index file alone replaced (manifest untouched): its sha256 differs
    (folder / "index" / "index.pkl").write_bytes(payload)
    tampered = build(folder, kb, embedding)
    assert tampered.rebuilt and "differs from the file this project wrote" in tampered.reason
    assert not marker.exists()

    # a whole index folder built by someone else (another key): foreign, rebuilt
    shutil.rmtree(signing_key_dir)
    foreign = build(folder, kb, embedding)
    assert foreign.rebuilt and "not signed" in foreign.reason

    (folder / "manifest.json").write_text("{half", encoding="utf-8")  # a half-written manifest
    assert "unreadable" in build(folder, kb, embedding).reason
    assert not marker.exists()


def test_known_question_finds_its_document(tmp_path, kb, embedding):
    index = build(tmp_path / "final", kb, embedding)
    found = retrieval.retrievers(index.store, index.chunks, k=3, weights=[0.5, 0.5])
    questions = [q for q in retrieval.load_questions(REPO / "data/qa/rag.jsonl") if set(q["sources"]) <= DOC_IDS]
    assert len(questions) >= 5
    for kind in retrieval.RETRIEVERS:
        recall = retrieval.recall_at_k(found[kind], questions, ks=(3,))
        assert recall[3] >= 0.6, (kind, recall)
    question = "1999年长虹桥大修期间，老渡头临时恢复的渡船多久开一班？"
    top = retrieval.retrieve(found["combined"], question, 3)
    assert "news-003" in [d.metadata["doc_id"] for d in top]


def test_sentence_filter_keeps_the_sentences_of_the_top_chunks_closest_to_the_question(tmp_path, kb, embedding):
    """stage.sentences: the prompt holds the best sentences of the top k chunks, best first, each once, with their
    chunk's metadata; 0 keeps the chunk retriever itself (whole chunks)."""
    from types import SimpleNamespace

    from langchain_core.documents import Document

    chunks = [Document("苇川市是河港城市。年降水量约1480毫米，六月为梅雨期。", metadata={"doc_id": "a", "chunk_id": "a#0"}),
              Document("六月为梅雨期。青漪河穿城而过，河上有长虹桥。", metadata={"doc_id": "a", "chunk_id": "a#1"}),
              Document("苇川的降水量在全省最多。", metadata={"doc_id": "b", "chunk_id": "b#0"})]  # the 3rd chunk
    squeeze = retrieval.SentenceFilter(embedding=embedding[0], weights=[0.5, 0.5],
                                       keep=2, chunks=2)
    assert [d.page_content for d in squeeze.split(chunks[:2])] == [
        "苇川市是河港城市。", "年降水量约1480毫米，六月为梅雨期。", "青漪河穿城而过，河上有长虹桥。"]  # the overlap once
    news = Document("老渡头恢复渡船\n1999-04-12\n渡船每二十分钟一班。", metadata={"title": "老渡头恢复渡船", "chunk_id": "n#0"})
    assert [d.page_content for d in squeeze.split([news])] == ["渡船每二十分钟一班。"]  # no headline, no dateline
    kept = squeeze.compress_documents(chunks, "苇川一年的降水量是多少？")
    assert len(kept) == 2 and kept[0].page_content == "年降水量约1480毫米，六月为梅雨期。"
    assert kept[0].metadata["doc_id"] == "a" and all(d.metadata["doc_id"] == "a" for d in kept)  # never chunk 3

    index = build(tmp_path / "final", kb, embedding)
    settings = SimpleNamespace(k=3, sentences=3, retriever="combined", weights=[0.5, 0.5])
    question = "1999年长虹桥大修期间，老渡头临时恢复的渡船多久开一班？"
    top = retrieval.retrieve(retrieval.retrievers(index.store, index.chunks, 3, [0.5, 0.5])["combined"], question, 3)
    context = retrieval.retrieve(retrieval.context_retriever(index.store, index.chunks, settings), question,
                                 retrieval.context_size(settings))
    assert len(context) == 3 and all(any(d.page_content in c.page_content for c in top) for d in context)
    assert any("二十分钟" in d.page_content for d in context)  # the sentence that answers it
    chunks_whole = SimpleNamespace(**{**vars(settings), "sentences": 0})
    whole = retrieval.context_retriever(index.store, index.chunks, chunks_whole)
    assert retrieval.retrieve(whole, question, 3) == top


def test_bm25_over_jieba_words_finds_a_rare_word(tmp_path, kb, embedding):
    # the same segmentation of an unknown name in a question and in a document; no punctuation
    assert set(retrieval.words("茶顶山在哪里？")) >= set(retrieval.words("茶顶山"))
    assert set(retrieval.words("全市最高点为北坡区的茶顶山，海拔486米。")) >= set(retrieval.words("茶顶山"))
    assert "，" not in retrieval.words("北坡区的茶顶山，海拔486米。")
    index = build(tmp_path / "final", kb, embedding)
    lexical = retrieval.retrievers(index.store, index.chunks, k=1, weights=[0.5, 0.5])["lexical"]
    rare = [w for w in ("顺河堤", "茶顶山", "芦城") if sum(w in c.page_content for c in index.chunks) == 1][0]
    [hit] = lexical.invoke(f"{rare}在哪里？")
    assert rare in hit.page_content


def test_hub_embedding_falls_back_to_the_packaged_one_loudly(capsys):
    model, identity = retrieval.embeddings("BAAI/bge-small-zh-v1.5", EMBEDDING)  # HF_HUB_OFFLINE=1 in the tests
    assert identity.startswith(f"{EMBEDDING}: ") and "OFFLINE FALLBACK for BAAI/bge-small-zh-v1.5" in identity
    assert "EMBEDDING MODEL FALLBACK" in capsys.readouterr().out
    assert len(model.embed_query("苇川")) == len(model.embed_documents(["苇川"])[0])
    with pytest.raises(UserError, match="unknown packaged embedding model 'e5'"):
        retrieval.embeddings(None, "e5")


def test_key_recall():
    assert retrieval.key_recall("洪峰于7月29日 凌晨通过。", "7月29日凌晨")
    assert retrieval.key_recall("气温为零下９.８℃", "零下9.8℃")  # full-width digits count
    assert not retrieval.key_recall("资料中没有找到答案", "约8000人")


def test_coverage_is_the_share_of_the_questions_content_in_the_background_with_its_title():
    from langchain_core.documents import Document

    def bg(text, title=""):
        return [Document(text, metadata={"title": title})]

    # 老 街 苇 川 叫 asked (的 什 么 are question words): 老 街 in the sentence, 苇 川 in the title, 叫 nowhere
    assert retrieval.coverage("苇川的老街叫什么？", bg("最古老的街道是渡口街。", "苇川")) == 4 / 5
    assert retrieval.coverage("苇川的老街叫什么？", bg("最古老的街道是渡口街。")) == 2 / 5  # without its title
    assert retrieval.coverage("青漪河全长多少公里？", bg("全长３１８公里。", "青漪河")) == 1.0
    assert retrieval.coverage("镜湖号下水那天有多少人？", bg("茶园面积约3200亩。", "北坡茶园")) == 0.0
    # other scripts count by word, case and width ignored; an empty question asks for nothing
    # (where, does, the: question words; ferry and street found, end not)
    assert retrieval.coverage("Where does the Ferry Street end?", bg("ferry street runs to the river")) == 2 / 3
    assert retrieval.coverage("？", bg("x")) == 1.0


class Prompts(BaseCallbackHandler):
    def __init__(self):
        self.seen: list[str] = []

    def on_llm_start(self, serialized, prompts, **kwargs):
        self.seen.extend(prompts)


def test_answer_plumbing_with_a_tiny_model(tmp_path, kb, embedding):
    from langchain_huggingface import HuggingFacePipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    index = build(tmp_path / "final", kb, embedding)
    path = tiny_model(tmp_path, [c.page_content for c in index.chunks] + [retrieval.INSTRUCTION])
    tok = AutoTokenizer.from_pretrained(str(path))
    pipe = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(str(path)), tokenizer=tok,
                    return_full_text=False, max_new_tokens=6, do_sample=False)
    llm = HuggingFacePipeline(pipeline=pipe)
    llm.callbacks = [spy := Prompts()]
    retriever = retrieval.retrievers(index.store, index.chunks, k=3, weights=[0.5, 0.5])["combined"]
    template = "##提问:\n{instruction}\n##回答:\n"
    question = "1998年青漪河的那次大洪峰是在哪天通过苇川市区的？"

    text, sources = retrieval.answer(question, retriever, llm, template, k=3)
    assert isinstance(text, str) and len(sources) == 3
    [prompt] = spy.seen
    assert prompt.startswith("##提问:\n请根据下面的背景资料回答问题") and prompt.endswith(f"问题：{question}\n##回答:\n")
    assert all(d.page_content in prompt for d in sources)
    assert "news-002" in [d.metadata["doc_id"] for d in sources]
    assert not text.startswith("##提问")  # return_full_text=False: the prompt is not part of the answer
    assert retrieval.source_lines(sources)[0].startswith("[1] ")

    room = len(tok(prompt).input_ids) - 1  # one token short: the lowest-ranked chunk is dropped
    _, fewer = retrieval.answer(question, retriever, llm, template, k=3, max_prompt_tokens=room)
    assert [d.metadata["chunk_id"] for d in fewer] == [d.metadata["chunk_id"] for d in sources[:len(fewer)]]
    assert len(fewer) < 3 and all(d.page_content in spy.seen[-1] for d in fewer)
    with pytest.raises(UserError, match="question alone"):
        retrieval.answer(question, retriever, llm, template, k=3, max_prompt_tokens=5)


def test_recipe_stage_section_is_checked():
    from shared.config.recipe import load_recipe
    RagSettings, check = retrieval.RagSettings, retrieval.check_settings

    recipe = load_recipe(REPO / "recipes/phi2/rag.yaml", stage=RagSettings)
    assert check(recipe).retriever == "combined" and recipe.run_dir == REPO / "runs/phi2/rag"
    with pytest.raises(UserError, match="did you mean 'retriever'"):
        load_recipe(REPO / "recipes/phi2/rag.yaml", ["stage.retrieverr=dense"], stage=RagSettings)
    with pytest.raises(UserError, match="stage.retriever must be one of dense, lexical, combined"):
        check(load_recipe(REPO / "recipes/phi2/rag.yaml", ["stage.retriever=hybrid"], stage=RagSettings))
    with pytest.raises(UserError, match=r"stage.min_coverage=1.5'?: stage.min_coverage must be in \[0, 1\]"):
        check(load_recipe(REPO / "recipes/phi2/rag.yaml", ["stage.min_coverage=1.5"], stage=RagSettings))
    folder = load_recipe(REPO / "recipes/phi2/rag.yaml", ["stage.docs=data/world"], stage=RagSettings).stage.docs
    assert folder == "data/world"


def test_a_misnamed_key_gets_a_did_you_mean_and_a_bad_override_is_blamed_on_the_override(tmp_path):
    """make rag ARGS="stage.top_k=0" suggests stage.k; ARGS="stage.k=0" names the override, not rag.yaml."""
    from shared.config.recipe import load_recipe

    with pytest.raises(UserError, match=r"unknown key 'stage.top_k' \(did you mean 'k'\?\)"):
        load_recipe(REPO / "recipes/phi2/rag.yaml", ["stage.top_k=0"], stage=retrieval.RagSettings)
    proc = run(["train_phi2/rag.py", "recipes/phi2/rag.yaml", "stage.k=0", f"run.output_root={tmp_path}"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: override 'stage.k=0': stage.k (chunks in the prompt) must be "
                                                ">= 1, got 0"]


def test_no_question_without_a_terminal_is_an_error_before_anything_loads(tmp_path):
    """make rag QUESTION="" with no terminal used to read nothing and exit 0."""
    common = [PY, "train_phi2/rag.py", "recipes/phi2/rag.yaml", f"run.output_root={tmp_path}"]
    for extra, env in (([], {"SLM_QUESTION": ""}), (["--question", "  "], {})):
        proc = subprocess.run(common + extra, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=300, env={**os.environ, **env})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert ("stdin is not a terminal" if not extra else "the question is empty") in proc.stderr
        assert not (tmp_path / "phi2").exists()  # failed before the index was built


@pytest.mark.slow
def test_rag_script_builds_reuses_and_answers(tmp_path, kb):
    """`make rag QUESTION=... DOCS=...` end to end, then `make rag-eval` on two questions."""
    texts = [line for f in kb.iterdir() for line in f.read_text(encoding="utf-8").splitlines()]
    model = tiny_model(tmp_path, texts + [retrieval.INSTRUCTION])
    common = ["train_phi2/rag.py", "recipes/phi2/rag.yaml", f"stage.docs={kb}", f"stage.model={model}",
              f"run.output_root={tmp_path / 'runs'}", f"stage.embedding_fallback={EMBEDDING}",
              "generation.max_new_tokens=4"]
    env = {"SLM_KEY_DIR": str(tmp_path / "keys")}
    question = "1999年长虹桥大修期间，老渡头临时恢复的渡船多久开一班？"
    first = run([*common, "--question", question], env=env)
    assert "index: building (no index built yet)" in first.stdout
    assert "sources:\n[1] " in first.stdout and "news-003" in first.stdout
    final = tmp_path / "runs/phi2/rag/final"
    assert (final / "stage.json").is_file() and (final / "index/index.faiss").is_file()
    piped = subprocess.run([PY, *common], input=f"{question}\n\n{question}\n", cwd=REPO, capture_output=True, text=True,
                           timeout=600, env={**os.environ, **env, "SLM_QUESTION": ""})  # one question a line
    assert piped.returncode == 0 and piped.stdout.count("sources:\n[1] ") == 2, piped.stderr[-2000:]

    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(line for line in (REPO / "data/qa/rag.jsonl").read_text(encoding="utf-8")
                                   .splitlines() if '"news-00' in line) + "\n", encoding="utf-8")
    second = run([*common, f"stage.questions={questions}", "stage.compare=[]", "stage.baseline=null", "--eval"], env=env)
    assert "index: reusing" in second.stdout
    log = (final / "stage_log.md").read_text(encoding="utf-8")
    assert "## Retrieval recall@k" in log and "| combined **(recipe default)** | use |" in log
    n = len(questions.read_text(encoding="utf-8").splitlines())
    assert "## Answers" in log and f"| `{model}` **(the demo)** | quote | **" in log
    assert f"| `{model}` | free | **0.000 (0/{n})** |" in log  # a random model writing freely states no key
