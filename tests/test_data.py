"""Data loading: local formats, line-numbered errors, offline fallback, templates, deterministic split, packing."""
import json
from pathlib import Path

import pytest
from datasets import Dataset

from shared.data import sources as D
from shared.config.errors import UserError
from shared.config.recipe import DataArgs
from shared.data.tokenizer import train_bpe

REPO = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_txt_json_and_folder(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "一"}, {"text": "二"}])
    (tmp_path / "b.txt").write_text("第一段\n还是第一段\n\n第二段\n", encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps([{"text": "三"}]), encoding="utf-8")
    assert list(D.load_local(tmp_path / "a.jsonl")["text"]) == ["一", "二"]
    assert list(D.load_local(tmp_path / "b.txt")["text"]) == ["第一段\n还是第一段", "第二段"]
    assert sorted(D.load_local(tmp_path)["text"]) == sorted(["一", "二", "第一段\n还是第一段", "第二段", "三"])


def test_parquet_and_csv_through_datasets(tmp_path):
    Dataset.from_list([{"text": "甲"}, {"text": "乙"}]).to_parquet(str(tmp_path / "a.parquet"))
    (tmp_path / "b.csv").write_text("text\n丙\n", encoding="utf-8")
    assert list(D.load_local(tmp_path / "a.parquet")["text"]) == ["甲", "乙"]
    assert sorted(D.load_local(tmp_path)["text"]) == ["丙", "乙", "甲"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:3: malformed JSON"):
        D.load_local(p)


def test_non_utf8_names_line(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin\.jsonl:2: not valid UTF-8"):
        D.load_local(p)


def test_non_object_line_and_empty_file(tmp_path):
    p = tmp_path / "list.jsonl"
    p.write_text('[1, 2]\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"list\.jsonl:1: expected a JSON object"):
        D.load_local(p)
    e = tmp_path / "empty.jsonl"
    e.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty dataset"):
        D.load_local(e)
    with pytest.raises(UserError, match="data not found"):
        D.load_local(tmp_path / "missing.jsonl")


def test_hub_dataset_falls_back_to_bundled_data_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    D.hub_reachable.cache_clear()
    fb = write_jsonl(tmp_path / "fb.jsonl", [{"title": "t", "content": "c"}])
    ds, prov = D.load_source(DataArgs(dataset="someone/poems", fallback=str(fb)))
    assert prov.fallback and "hub:someone/poems" in prov.reason and len(ds) == 1
    assert "OFFLINE FALLBACK" in prov.describe() and len(prov.fingerprint) == 64
    with pytest.raises(UserError, match="no data.fallback"):
        D.load_source(DataArgs(dataset="someone/poems"))


def test_template_columns_and_errors(tmp_path):
    ds = Dataset.from_list([{"q": "问", "a": "答"}, {"q": "", "a": ""}])
    out = D.to_texts(ds, DataArgs(template="{question}[SEP]{answer}", columns={"question": "q", "answer": "a"}))
    assert list(out["text"]) == ["问[SEP]答"]  # the empty record is dropped
    with pytest.raises(UserError, match=r"missing column 'content'.*columns are q, a"):
        D.to_texts(ds, DataArgs(template="{content}"))
    with pytest.raises(UserError, match="every record renders to an empty text"):
        D.to_texts(Dataset.from_list([{"text": " "}]), DataArgs())
    with pytest.raises(UserError, match="over data.max_chars=5"):
        D.to_texts(Dataset.from_list([{"text": "很长很长的一行文字"}]), DataArgs(max_chars=5))


def test_split_is_deterministic_and_disjoint():
    ds = Dataset.from_list([{"text": str(i)} for i in range(50)])
    a_train, a_eval = D.split_train_eval(ds, 0.1, seed=1)
    b_train, b_eval = D.split_train_eval(ds, 0.1, seed=1)
    assert list(a_eval["text"]) == list(b_eval["text"]) and len(a_eval) == 5
    assert not set(a_train["text"]) & set(a_eval["text"])
    assert list(D.split_train_eval(ds, 0.1, seed=2)[1]["text"]) != list(a_eval["text"])


def test_pack_joins_documents_with_eos_into_full_blocks(tmp_path):
    texts = Dataset.from_list([{"text": t} for t in ["春天来了，花开了。", "夜晚的城市，灯亮了。", "远方的山"] * 4])
    tok = train_bpe(D.corpus_iterator(texts), 300, 1, tmp_path / "tok")
    blocks = D.pack(texts, tok, block_size=8)
    stream = [t for ids in (tok(list(texts["text"]), add_special_tokens=False)["input_ids"]) for t in ids + [tok.eos_token_id]]
    assert all(len(b) == 8 for b in blocks["input_ids"])
    assert [t for b in blocks["input_ids"] for t in b] == stream[: len(stream) // 8 * 8]
    assert tok.eos_token_id in blocks["input_ids"][0] + blocks["input_ids"][1]
    with pytest.raises(UserError, match="fewer than data.block_size"):
        D.pack(texts.select([0]), tok, block_size=4096)


MEMORY_PROBE = """
import json, resource, sys
from shared.data import sources as D
from shared.config.recipe import DataArgs

def vmdata():  # private memory the process has mapped (what RLIMIT_DATA limits); file mappings don't count
    return next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmData:"))

base = vmdata()
resource.setrlimit(resource.RLIMIT_DATA, (base + (int(sys.argv[2]) << 20),) * 2)
rows = D.render(D.load_local(sys.argv[1]), DataArgs(path=sys.argv[1]), {"text": "{title}\\n{body}"}, sys.argv[1])
train, held_out = D.split_train_eval(rows, 0.05, 42)
held_out = D.sample_for_eval(held_out, ["text"], 50_000, 42)
print(json.dumps({"train": len(train), "eval": len(held_out), "chars": sum(len(t) for t in held_out["text"])}))
"""


@pytest.mark.slow
def test_a_corpus_larger_than_the_memory_budget_is_read_without_holding_it(tmp_path):
    """~250 MB of JSONL through load -> render -> split -> eval sample in a process allowed 220 MB of private
    memory beyond its imports: Arrow files, memory-mapped. A Python list of the records would not fit."""
    import os
    import random
    import subprocess
    import sys

    rng = random.Random(0)
    chars = "苇川青漪河长虹桥渡口码头旧港区桥东柳岸北坡新渡的了是在有和人年月日一二三四五六七八九十"
    big = tmp_path / "big.jsonl"
    with open(big, "w", encoding="utf-8") as f:
        for i in range(125_000):
            f.write(json.dumps({"title": f"第{i}篇", "body": "".join(rng.choices(chars, k=700))}, ensure_ascii=False)
                    + "\n")
    assert big.stat().st_size > 240 << 20
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "ARROW_DEFAULT_MEMORY_POOL": "system"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(big), "220"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["train"] == 118_750 and 0 < out["eval"] < 6_250 and 50_000 <= out["chars"] < 52_000
    eager = "from datasets import Dataset; Dataset.from_list(list(D.read_jsonl(sys.argv[1])))"
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE.split("rows = ")[0] + eager, str(big), "220"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0 and "MemoryError" in proc.stderr  # the budget is real: the old way can't fit


def test_eval_sample_is_seeded_spread_over_the_split_and_bounded():
    rows = Dataset.from_list([{"text": "字" * 10, "n": i} for i in range(1000)])
    picked = D.sample_for_eval(rows, ["text"], 1_000, seed=3)
    assert len(picked) == 100 and list(picked["n"]) == sorted(picked["n"])  # ~1,000 characters, in split order
    assert picked["n"] == D.sample_for_eval(rows, ["text"], 1_000, seed=3)["n"]  # seeded
    assert min(picked["n"]) < 100 and max(picked["n"]) > 900  # spread over the whole split, not its head
    assert D.sample_for_eval(rows, ["text"], 20_000, seed=3) is rows  # small enough: all of it


def test_the_final_evaluation_is_cut_to_eval_max_tokens_and_the_log_says_so(tmp_path):
    from shared.training import train
    from shared.config.recipe import load_recipe

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": f"第{i}首：" + "春风吹过长河，" * 6} for i in range(400)])
    common = [f"data.path={corpus}", "data.template='{text}'", "data.block_size=16", "tokenizer.vocab_size=400", "validation_fraction=0.25",
              f"run.output_root={tmp_path}/runs", "data.eval_subset=2"]
    whole = train.load_data(load_recipe(REPO / "recipes/phi3/pretrain.yaml", common + ["data.eval_max_tokens=null"]))
    cut = train.load_data(load_recipe(REPO / "recipes/phi3/pretrain.yaml", common + ["data.eval_max_tokens=64"]))
    assert len(whole.eval) > 40 and len(cut.eval) == 64 // 16 and len(cut.eval_during) == 2
    assert len(cut.train) == len(whole.train)  # training data untouched
    note = cut.facts()["data split"]
    assert "cut to 64 tokens (4 blocks of 16 tokens; data.eval_max_tokens=64), a seeded random choice" in note
    assert "data.eval_max_tokens" not in whole.facts()["data split"]
