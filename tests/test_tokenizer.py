"""Tokenizer fallback: trained offline on the corpus, exact round trip, cached by corpus fingerprint."""
import pytest
from datasets import Dataset

from shared.data import sources as D
from shared.config.errors import UserError
from shared.config.recipe import TokenizerArgs
from shared.data.tokenizer import load_tokenizer

TEXTS = Dataset.from_list([{"text": t} for t in [
    "春天来了，\n柳枝在风里说话。", "夜晚的城市，灯一盏一盏亮起来。", "Mixed English and 中文 123!", "雨后的天空，很蓝。"] * 5])


def test_fallback_trains_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    D.hub_reachable.cache_clear()
    tok, prov = load_tokenizer(TokenizerArgs(name="hfl/chinese-roberta-wwm-ext", vocab_size=400), TEXTS, "fp1", tmp_path)
    assert prov.fallback and "unreachable" in prov.reason
    for text in list(TEXTS["text"])[:4] + ["没见过的字：鳕鱼🐟"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text  # byte-level: nothing is lost, not even newlines or emoji
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert len(tok) <= 400


def test_fallback_is_cached_per_corpus_fingerprint(tmp_path):
    spec = TokenizerArgs(vocab_size=400)
    load_tokenizer(spec, TEXTS, "fpA", tmp_path)
    folders = list((tmp_path / "tokenizers").iterdir())
    assert len(folders) == 1
    mtime = (folders[0] / "tokenizer.json").stat().st_mtime_ns
    load_tokenizer(spec, TEXTS, "fpA", tmp_path)  # same corpus: reused, not retrained
    assert (folders[0] / "tokenizer.json").stat().st_mtime_ns == mtime
    load_tokenizer(spec, TEXTS, "fpB", tmp_path)  # another corpus: another tokenizer
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2


def test_fallback_none_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    D.hub_reachable.cache_clear()
    with pytest.raises(UserError, match="tokenizer.fallback is 'none'"):
        load_tokenizer(TokenizerArgs(name="org/tok", fallback="none"), TEXTS, "fp", tmp_path)


def test_local_tokenizer_folder_loads(tmp_path):
    tok, _ = load_tokenizer(TokenizerArgs(vocab_size=400), TEXTS, "fp", tmp_path)
    tok.save_pretrained(str(tmp_path / "saved"))
    again, prov = load_tokenizer(TokenizerArgs(name=str(tmp_path / "saved")), None, "", tmp_path)
    assert not prov.fallback and again("春天")["input_ids"] == tok("春天")["input_ids"]


def test_fallback_is_one_token_per_chinese_character(tmp_path):
    tok, _ = load_tokenizer(TokenizerArgs(vocab_size=2000), TEXTS, "fp-cjk", tmp_path)
    for text in ["春天来了", "夜晚的城市灯"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert [tok.decode([i]) for i in ids] == list(text)  # no merges across characters, no byte fragments
    assert len(tok("Mixed English", add_special_tokens=False)["input_ids"]) < len("Mixed English")  # merged pieces
