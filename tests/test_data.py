"""Data loading: local formats, line-numbered errors, offline fallback, templates, deterministic split, packing."""
import json
from pathlib import Path

import pytest
from datasets import Dataset

from shared import data as D
from shared.errors import UserError
from shared.recipe import DataArgs
from shared.tokenizer import train_bpe


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
