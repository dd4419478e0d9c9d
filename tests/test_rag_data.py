"""The reading-comprehension stage (train_phi2/rag_data.py, recipes/phi2/rag-sft.yaml) and the demo's decoding: the
training prompts are byte for byte the ones `make rag` sends, no evaluation question reaches training, the answers
quote the background (or say it doesn't hold the answer), the loss covers the answer and EOS only, and the demo's
answers can't run away into one repeated character, even from a random model."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import REPO, run, sft_first_batch, small_kb, split_at_loss, tiny_model

from shared.eval import retrieval
from shared.inference.generate import NoRepeatInAnswer

DOC_IDS = {"enc-001", "enc-002", "enc-005", "news-002", "news-003"}
LEAKED = "1999年长虹桥大修期间，老渡头临时恢复的渡船多久开一班？"  # a data/qa/rag.jsonl (evaluation) question


def test_quote_starts_at_the_questions_words_and_ends_with_the_keys_clause():
    text = "苇川市是河港城市。年降水量约1480毫米，六月为梅雨期。全市最高点为北坡区的茶顶山，海拔486米。"
    assert retrieval.quote(text, "1480毫米", "苇川一年的降水量大约是多少？") == "降水量约1480毫米。"
    assert retrieval.quote(text, "茶顶山", "苇川全市的最高点在哪里？") == "最高点为北坡区的茶顶山。"
    assert retrieval.quote(text, "486米", "茶顶山有多高？") == "茶顶山，海拔486米。"  # from the clause before
    assert retrieval.quote(text, "486米", "它有多高？") == "海拔486米。"  # no shared words: the key's clause
    assert retrieval.quote(text, "１４８０毫米", "降水量？") == "降水量约1480毫米。"  # full-width key
    assert retrieval.quote(text, "9600平方公里", "流域面积？") is None


def test_cloze_questions_ask_in_the_texts_words_for_what_the_key_is():
    from train_phi2.rag_data import cloze

    text = "镜湖平均水深2.3米，最深处约6.8米。新渡区于2006年9月28日正式挂牌。茶溪在北坡汇入青漪河。"
    assert cloze(text, "约6.8米", "镜湖") == "镜湖平均水深2.3米，最深处多少米？"  # the number asked, the unit kept
    assert cloze(text, "2006年9月28日", "新渡区") == "新渡区于哪一天正式挂牌？"  # the subject named: not repeated
    assert cloze(text, "北坡", "茶溪") == "茶溪在什么汇入青漪河？"
    assert cloze("顺河堤的提升工程经过两年施工。", "两年", "顺河堤") == "顺河堤的提升工程经过多少年施工？"
    assert cloze("其中古籍约9.6万册。", "约9.6万册", "苇川图书馆") == "苇川图书馆，其中古籍多少册？"
    assert cloze("坡上工坊开放，2016年。", "2016年", "坡上工坊") == "坡上工坊开放，哪一年？"  # a bare key: + the clause before
    assert cloze(text, "柳岸区", "镜湖") is None  # the text does not state it


def test_backing_sentence_names_the_source_that_best_matches_the_answer():
    from langchain_core.documents import Document

    docs = [Document("苇川市是河港城市。青漪河穿城而过。"), Document("年降水量约1480毫米，六月为梅雨期。渡口很多。")]
    assert retrieval.backing_sentence("降水量约1480毫米。", docs) == (2, "年降水量约1480毫米，六月为梅雨期。")
    assert retrieval.backing_sentence("xyz", docs) is None


def test_no_repeat_in_answer_ignores_the_prompt_and_stops_a_runaway_token():
    prompt = torch.tensor([[5, 5, 5, 5, 5, 7]])  # the prompt repeats token 5: that must not stop the answer using it
    processor, ids, picked = NoRepeatInAnswer(4), prompt, []
    for _ in range(8):
        scores = torch.zeros(1, 10)
        scores[0, 5], scores[0, 6] = 2.0, 1.0  # a model that always prefers 5, then 6
        token = int(processor(ids, scores).argmax())
        picked.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert picked[:4] == [5, 5, 5, 5] and picked[4] == 6  # a fifth 5 would repeat the 4-gram 5 5 5 5
    assert max(len(run_) for run_ in "".join(map(str, picked)).split("6")) <= 4


def test_quoting_decodes_only_spans_of_the_chunks_or_the_refusal_decided_before_decoding(tmp_path):
    from shared.inference.generate import QuoteFromSources, token_bytes
    from shared.data.tokenizer import train_bpe

    chunks = ["桥东区面积58平方公里，人口约46万。", "长虹桥1958年通车。"]
    tok = train_bpe(iter([chunks + [retrieval.INSTRUCTION]]), vocab_size=400, min_frequency=1, folder=tmp_path / "t")
    table, refusal = token_bytes(tok), retrieval.NO_ANSWER + "。"
    prompt = torch.tensor([tok("问题：面积？").input_ids])
    refusal_ids = tok(refusal, add_special_tokens=False).input_ids

    def decode(refuse: bool, scores_for) -> str:
        quote, ids = QuoteFromSources(tok, chunks, refusal, refuse, table), prompt
        for step in range(40):
            token = int(quote(ids, scores_for(step)).argmax())
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if token == tok.eos_token_id:
                break
        return tok.decode(ids[0, prompt.shape[1]:], skip_special_tokens=True)

    for seed in range(20):  # a random "model": whatever it prefers, the answer is a quote, or the refusal when told
        rng = torch.Generator().manual_seed(seed)
        text = decode(False, lambda step: torch.randn(1, len(tok), generator=rng))
        assert text and text.rstrip("。") in "".join(chunks) and text != refusal, text
        assert decode(True, lambda step: torch.randn(1, len(tok), generator=rng)) == refusal

    def wants_refusal(step):  # a model set on the refusal: still a quote unless the refusal was decided on
        scores = torch.zeros(1, len(tok))
        scores[0, refusal_ids[min(step, len(refusal_ids) - 1)]] = 30.0
        return scores
    assert decode(False, wants_refusal).rstrip("。") in "".join(chunks)
    assert decode(True, wants_refusal) == refusal


def test_the_refusal_is_taken_on_the_probability_of_its_whole_first_character(tmp_path):
    """A byte-level BPE may spell 资 in several tokens, and the first of them begins many other characters: the
    decision multiplies the probabilities of all the tokens that spell the character."""
    from types import SimpleNamespace

    from shared.data.tokenizer import train_bpe
    from shared.inference.generate import first_character_probability

    tok = train_bpe(iter([["桥东区面积。"]]), vocab_size=270, min_frequency=1, folder=tmp_path / "t")
    spelled = tok("资", add_special_tokens=False).input_ids
    assert len(spelled) == 3  # no merge: 资's three UTF-8 bytes
    logp = torch.log_softmax(torch.randn(len(tok), generator=torch.Generator().manual_seed(0)), -1)
    seen = []

    class Model(torch.nn.Module):  # the same next-token distribution everywhere
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            seen.append(ids[0].tolist())
            return SimpleNamespace(logits=logp.expand(1, ids.shape[1], -1))

    prompt = "问题：面积？"
    p = first_character_probability(Model(), tok, prompt, retrieval.NO_ANSWER + "。")
    assert p == pytest.approx(float(torch.exp(logp[spelled].sum())), rel=1e-5)
    assert seen == [tok(prompt, add_special_tokens=False).input_ids + spelled[:2]]  # one forward pass


def test_a_quote_stops_at_the_end_of_its_sentence(tmp_path):
    """Once the quote reaches 。！？ only EOS may follow: an answer is one sentence, never the next one too, even
    when the model wants to read on."""
    from shared.inference.generate import QuoteFromSources, token_bytes
    from shared.data.tokenizer import train_bpe

    chunks = ["长虹桥1958年通车。桥两侧立有铸铁灯柱，每隔二十米一盏！后来改成了路灯。"]
    tok = train_bpe(iter([chunks + [retrieval.INSTRUCTION]]), vocab_size=300, min_frequency=1, folder=tmp_path / "t")
    table = token_bytes(tok)
    for start in ("长虹桥", "桥两侧"):
        quote = QuoteFromSources(tok, chunks, retrieval.NO_ANSWER + "。", False, table)
        ids = torch.tensor([tok("问题：？", add_special_tokens=False).input_ids + tok(start, add_special_tokens=False).input_ids])
        quote.start = ids.shape[1] - len(tok(start, add_special_tokens=False).input_ids)
        for _ in range(60):  # a model that never wants to stop: EOS gets the lowest score
            scores = torch.zeros(1, len(tok))
            scores[0, tok.eos_token_id] = -1e4
            token = int(quote(ids, scores).argmax())
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if token == tok.eos_token_id:
                break
        text = tok.decode(ids[0, quote.start:], skip_special_tokens=True)
        assert text == {"长虹桥": "长虹桥1958年通车。", "桥两侧": "桥两侧立有铸铁灯柱，每隔二十米一盏！"}[start], text
        assert int(ids[0, -1]) == tok.eos_token_id


def test_an_answer_cut_inside_a_character_ends_in_an_ellipsis():
    """max_new_tokens can stop byte-level BPE inside a character: the answer drops the broken byte (U+FFFD) and
    says it was cut, instead of printing a replacement character."""
    from langchain_core.documents import Document

    class LLM:
        def invoke(self, prompt, **kw):
            return "桥两侧人行道上立有铸铁灯\ufffd"

    class Retriever:
        def invoke(self, question):
            return [Document(page_content="桥两侧人行道上立有铸铁灯柱。", metadata={"doc_id": "d"})]

    text, docs = retrieval.answer("灯？", Retriever(), LLM(), "{instruction}", k=1)
    assert text == "桥两侧人行道上立有铸铁灯…" and len(docs) == 1


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """rag_data.py on a 5-document knowledge base with a tiny model's tokenizer; qa.jsonl's train split smuggles
    in one evaluation question, which must be dropped."""
    root = tmp_path_factory.mktemp("ragdata")
    kb = small_kb(root / "kb", DOC_IDS)
    qa = [json.loads(line) for line in (REPO / "data/qa/qa.jsonl").read_text(encoding="utf-8").splitlines()]
    qa = [r for r in qa if set(r["source"]) <= DOC_IDS]
    qa.append({**qa[0], "id": "qa-leak", "Question": LEAKED, "split": "train"})
    facts = [line for line in (REPO / "data/world/facts.jsonl").read_text(encoding="utf-8").splitlines()
             if set(json.loads(line)["docs"]) & DOC_IDS]
    (root / "qa.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in qa), encoding="utf-8")
    (root / "facts.jsonl").write_text("\n".join(facts) + "\n", encoding="utf-8")
    texts = [line for f in kb.iterdir() for line in f.read_text(encoding="utf-8").splitlines()]
    model = tiny_model(root, texts + [retrieval.INSTRUCTION], positions=512)
    demo = [f"stage.docs={kb}", "stage.embedding_fallback=use", f"run.output_root={root}/runs"]
    env = {"SLM_KEY_DIR": str(root / "keys")}
    run(["train_phi2/rag_data.py", "recipes/phi2/rag-data.yaml", f"run.output_root={root}/runs",
         f"stage.tokenizer_from={model}", f"stage.qa={root}/qa.jsonl", f"stage.facts={root}/facts.jsonl",
         f"stage.demo_overrides=[{', '.join(demo)}]"], env=env)
    final = root / "runs/phi2/rag-data/final"
    rows = [json.loads(line) for line in (final / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"root": root, "model": model, "demo": demo, "env": env, "rows": rows, "qa": qa,
            "log": (final / "stage_log.md").read_text(encoding="utf-8")}


def background(prompt: str) -> str:
    return prompt.split("背景资料：\n", 1)[1].rsplit("\n问题：", 1)[0]


@pytest.mark.slow
def test_no_evaluation_question_reaches_training(stage_run):
    held_out = {q["question"] for q in retrieval.load_questions(REPO / "data/qa/rag.jsonl")}
    held_out |= {r["Question"] for r in stage_run["qa"] if r["split"] == "eval"}
    asked = {r["prompt"].rsplit("\n问题：", 1)[1].split("\n", 1)[0] for r in stage_run["rows"]}
    assert LEAKED in held_out and not asked & held_out
    assert "1 generated questions equal to one of them were dropped" in stage_run["log"]
    assert {r["source"] for r in stage_run["rows"]} == {"qa", "facts", "cloze"}
    assert all(f"| {src} | " in stage_run["log"] for src in ("qa", "facts", "cloze"))  # examples per source, in the log


@pytest.mark.slow
def test_answers_quote_the_background_or_say_it_lacks_the_answer(stage_run):
    kinds = {r["context"] for r in stage_run["rows"]}
    assert kinds == {"answered", "inserted", "unanswerable"}, kinds
    for r in stage_run["rows"]:
        context = background(r["prompt"])
        if r["context"] == "unanswerable":
            assert r["completion"] == retrieval.NO_ANSWER + "。" and not retrieval.contains(context, r["key"])
        else:
            assert retrieval.contains(r["completion"], r["key"]), r
            assert r["completion"].rstrip("。") in context, r  # quoted: the background's own words


@pytest.mark.slow
def test_training_prompts_are_the_prompts_the_demo_sends(stage_run, monkeypatch):
    """The demo's own code path (rag.py's Answerer over the recipe's retriever), a spy on what reaches the model."""
    from langchain_core.callbacks import BaseCallbackHandler

    from shared.config.recipe import load_recipe
    from train_phi2 import rag

    class Spy(BaseCallbackHandler):
        seen: list = []

        def on_llm_start(self, serialized, prompts, **kwargs):
            self.seen.extend(prompts)

    monkeypatch.setenv("SLM_KEY_DIR", stage_run["env"]["SLM_KEY_DIR"])  # the key the stage signed its index with
    demo = load_recipe(REPO / "recipes/phi2/rag.yaml", [*stage_run["demo"], f"stage.model={stage_run['model']}",
                                                         "generation.max_new_tokens=2"], stage=retrieval.RagSettings)
    index = retrieval.index_stage(demo)
    assert not index.rebuilt  # the index the data stage built and signed is the demo's
    s = demo.stage
    retriever = retrieval.context_retriever(index.store, index.chunks, s)
    answerer = rag.load_answerer(demo)
    answerer.llm.callbacks = [spy := Spy()]
    answered = [r for r in stage_run["rows"] if r["context"] == "answered"][:6]
    assert answered
    for r in answered:
        answerer(r["question"], retriever, s)
        assert spy.seen[-1] == r["prompt"]


@pytest.mark.slow
def test_the_demo_refuses_a_question_its_background_hardly_mentions(stage_run, monkeypatch):
    """stage.min_coverage: the refusal is decided before the model speaks; without it the same question gets a quote."""
    from shared.config.recipe import load_recipe
    from train_phi2 import rag

    monkeypatch.setenv("SLM_KEY_DIR", stage_run["env"]["SLM_KEY_DIR"])
    demo = load_recipe(REPO / "recipes/phi2/rag.yaml", [*stage_run["demo"], f"stage.model={stage_run['model']}",
                                                         "stage.refusal_threshold=1"], stage=retrieval.RagSettings)
    s = demo.stage
    index = retrieval.index_stage(demo)
    retriever = retrieval.context_retriever(index.store, index.chunks, s)
    answerer = rag.load_answerer(demo)
    question = "火星探测器的着陆舱用了几顶降落伞？"  # nothing in the knowledge base is about Mars
    text, docs = answerer(question, retriever, s)
    assert retrieval.coverage(question, docs) < s.min_coverage == 0.55
    assert text == retrieval.NO_ANSWER + "。"
    answers = [(r["question"], *answerer(r["question"], retriever, s)) for r in stage_run["rows"][:20]]
    covered = [text for q, text, docs in answers if retrieval.coverage(q, docs) >= s.min_coverage]
    assert covered and not any(retrieval.says_no_answer(text) for text in covered)  # restated: never refused
    answerer.min_coverage = 0.0
    text, docs = answerer(question, retriever, s)
    assert not retrieval.says_no_answer(text) and text.rstrip("。…")[:4] in "".join(d.page_content for d in docs)


@pytest.mark.slow
def test_reading_comprehension_loss_covers_the_answer_and_eos_only(stage_run):
    from shared.config.recipe import load_recipe

    root = stage_run["root"]
    recipe = load_recipe(REPO / "recipes/phi2/rag-sft.yaml", [
        f"run.output_root={root}/runs", f"model.init_from={stage_run['model']}", f"tokenizer.name={stage_run['model']}",
        f"data.path={root}/runs/phi2/rag-data/final/train.jsonl", "training.max_steps=1",
        "training.eval_strategy=no", "training.save_strategy=no", "training.per_device_train_batch_size=4"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stage_run["model"])
    by_prompt = {r["prompt"]: r["completion"] for r in stage_run["rows"]}
    rows = sft_first_batch(recipe)
    assert len(rows) == 4
    for ids, labels in rows:
        prompt, answer = split_at_loss(tok, ids, labels)
        assert prompt in by_prompt and prompt.endswith("##回答:\n")  # the demo's prompt, its last line break kept
        assert answer == by_prompt[prompt]


@pytest.mark.slow
def test_the_demos_answers_never_run_away_even_from_a_random_model(stage_run):
    """A random model left alone repeats one token on and on; the demo's preset (answer_no_repeat_ngram_size, through
    the same answer_processors the demo's pipeline gets) stops it, and quoting (the demo's default) can only say
    what the chunks say."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.inference.generate import answer_processors
    from shared.config.recipe import load_recipe

    preset = load_recipe(REPO / "recipes/phi2/rag.yaml").generation
    tok = AutoTokenizer.from_pretrained(stage_run["model"])
    model = AutoModelForCausalLM.from_pretrained(stage_run["model"]).eval()
    prompt = torch.tensor([tok(stage_run["rows"][0]["prompt"]).input_ids])
    blank = [i for i in range(len(tok)) if not tok.decode([i]).strip()]  # make it write, not end or print spaces

    def longest_run(**extra) -> int:
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
                             suppress_tokens=blank, **extra)[0, prompt.shape[1]:].tolist()
        return max(len(list(g)) for _, g in itertools.groupby(out))

    assert longest_run() > 6  # the test can fail: without the setting this model runs away
    assert preset["answer_no_repeat_ngram_size"] == 4 and longest_run(**answer_processors(preset)) <= 4

    out = run(["train_phi2/rag.py", "recipes/phi2/rag.yaml", *stage_run["demo"], f"stage.model={stage_run['model']}",
               "--question", "苇川全市的最高点在哪里？"], env=stage_run["env"]).stdout
    quoted = out.split("answering model:", 1)[1].split("sources:", 1)[0].split("\n", 1)[1].strip()
    text = quoted.split("\n", 1)[0]
    assert text and not rag_degenerate(text) and "sources:\n[1] " in out
    assert text == retrieval.NO_ANSWER + "。" or "] says: " in quoted, out  # a quote: its sentence is shown


def rag_degenerate(text: str) -> bool:
    from train_phi2.rag import DEGENERATE

    return bool(DEGENERATE.search(text))
