"""Phi-2 tokenizer stage: both kinds round-trip what Chinese SFT data contains, added tokens are counted, the saved
folder reloads with AutoTokenizer, and the n-gram text generator behind `make bench-tokenizer` is exact and seeded."""
import collections
import functools
import json
from dataclasses import replace

import pytest
from transformers import AutoTokenizer

from conftest import REPO, run
from bench.tokenizer import parse_size
from shared.config.errors import UserError
from shared.config.recipe import load_recipe
from bench.textgen import NgramModel, bundled_chinese_texts
from shared.data.tokenizer import PROBES, SFT_MARKERS, TokenizerTraining, marker_tokens, train_from_texts

SOURCE = list(bundled_chinese_texts())
EXTRA = ["Mixed English and 中文 123!\tTabs\tand  double  spaces.",
         "##提问:\n苇川在哪里？\n##回答:\n在青漪河边。"] * 20
SMALL = TokenizerTraining(vocab_size=2000, min_frequency=2, heldout_every=10, heldout_chars=20_000)
MORE = ["第一行\n\t缩进的第二行  两个空格", "全角：，。！？；（）【】《》“”‘’…—～ 半角: ,.!?;()",
        "emoji 😀🐟👍🏻 表情", "混合 Chinese 和 English：GPT-2 有 124M 参数。", "   leading and trailing spaces   ",
        "\n\n\t\t", "Jazz {quirky} ~ZX|^`@$&*_+=<>\\/\"'#%"]  # all of ASCII is always known, whatever the corpus


@functools.cache
def train(kind: str):
    return train_from_texts(iter(SOURCE + EXTRA), replace(SMALL, kind=kind))


@pytest.fixture(params=["bpe", "char"])
def trained(request):
    return train(request.param)


def test_round_trips_whitespace_punctuation_emoji_and_mixed_text(trained):
    tok, report = trained
    assert all(ok for *_, ok in report["round_trip"]), report["round_trip"]
    for text in [*PROBES.values(), *MORE]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text, (report["kind"], text, tok.convert_ids_to_tokens(ids))


def test_unseen_characters_bytes_for_bpe_unk_for_char(trained):
    tok, report = trained
    text = "国旗🇨🇳和齉"  # neither in the corpus nor among the probes
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if report["kind"] == "bpe":
        assert tok.decode(ids) == text
    else:
        assert tok.decode(ids) == "国旗[UNK][UNK]和[UNK]"
        assert 0 < report["unk_rate"] < 0.05  # held-out text has a few characters rarer than min_frequency


def test_added_tokens_are_counted_by_len_not_vocab_size(trained):
    tok, report = trained
    assert len(tok) == tok.vocab_size + len(report["added"]) == report["len"]
    if report["kind"] == "char":  # NFKC turns full-width punctuation into ASCII: those come back as added tokens
        assert {"，", "！", "？", "😀"} <= set(report["added"]) and len(tok) > tok.vocab_size
        assert tok.convert_ids_to_tokens(tok("，", add_special_tokens=False)["input_ids"]) == ["，"]
    else:  # byte level: nothing is ever missing
        assert report["added"] == [] and len(tok) == tok.vocab_size
    assert max(tok.get_vocab().values()) == len(tok) - 1  # ids are dense: an embedding of len(tok) rows fits


def test_reloads_with_autotokenizer_to_identical_ids(trained, tmp_path):
    tok, _ = trained
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [*PROBES.values(), *MORE, SOURCE[0][:500]]:
        assert again(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    for text in [*PROBES.values(), *MORE]:
        assert again.decode(again(text, add_special_tokens=False)["input_ids"]) == text
    assert (again.bos_token, again.eos_token, again.pad_token, again.unk_token, again.sep_token) == \
           ("[BOS]", "[EOS]", "[PAD]", "[UNK]", "[SEP]")
    assert again.model_max_length == 512 and len(again) == len(tok)


def test_special_tokens_are_single_ids_never_split(trained):
    tok, _ = trained
    ids = {t: tok.convert_tokens_to_ids(t) for t in SMALL.special_tokens}
    assert list(ids.values()) == list(range(len(SMALL.special_tokens)))  # [PAD] = 0, as the original
    text = "[BOS]苇川[SEP]在哪里[EOS][PAD]"
    got = tok(text, add_special_tokens=False)["input_ids"]
    assert [i for i in got if i in ids.values()] == [ids["[BOS]"], ids["[SEP]"], ids["[EOS]"], ids["[PAD]"]]
    assert tok.decode(got) == text and tok.decode(got, skip_special_tokens=True) == "苇川在哪里"
    assert tok("你好", add_special_tokens=False)["input_ids"] == tok("你好")["input_ids"]  # no BOS/EOS added


def test_sft_markers_are_plain_text_that_tokenises_the_same_in_context(trained):
    tok, _ = trained
    for marker in SFT_MARKERS:
        tokens, same_in_context = marker_tokens(tok, marker)
        assert same_in_context and "".join(tokens) and marker not in tok.all_special_tokens
        assert tok.decode(tok(marker, add_special_tokens=False)["input_ids"]) == marker


def test_char_kind_is_one_token_per_character():
    tok, report = train("char")
    text = "苇川在青漪河边。"
    assert tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"]) == list(text)
    assert report["tokens_per_char"] == pytest.approx(1.0, abs=0.02)


def test_bpe_pieces_bound_chinese_tokens_and_merge_pairs():
    tok, report = train("bpe")
    pieces = [tok.decode([i]) for i in range(tok.vocab_size)]
    cjk = [t for t in pieces if t and all("\u4e00" <= c <= "\u9fff" for c in t)]
    assert max(map(len, cjk)) == 2  # max_cjk_chars=2: two-character words are learned, never longer
    assert report["tokens_per_char"] < 1.0


def test_uncut_bpe_is_the_original_setting():
    tok, _ = train_from_texts(iter(SOURCE[:150]), replace(SMALL, kind="bpe", max_cjk_chars=0, vocab_size=3000))
    pieces = [tok.decode([i]) for i in range(tok.vocab_size)]
    longest = max(len(t) for t in pieces if t and all("\u4e00" <= c <= "\u9fff" for c in t))
    assert longest >= 3  # merges run across whole clauses (what costs > 32 GB on 100M characters)


def test_stage_end_to_end(tmp_path):
    corpus = tmp_path / "clean.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "source": "bundled"}, ensure_ascii=False) + "\n"
                              for t in SOURCE[:120] + EXTRA), encoding="utf-8")
    run(["train_phi2/tokenizer.py", f"run.output_root={tmp_path / 'runs'}", f"stage.input={corpus}",
         "stage.vocab_size=600", "stage.min_frequency=2", "stage.kind=char"], timeout=300)
    final = tmp_path / "runs" / "phi2" / "tokenizer" / "final"
    files = {p.name for p in final.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "stage.json", "stage_log.md"} <= files
    log = (final / "stage_log.md").read_text(encoding="utf-8")
    assert "**len(tokenizer)**" in log and "**vocab_size**" in log and "| full-width punctuation |" in log
    assert "**NO**" not in log and "peak RSS" in log
    tok = AutoTokenizer.from_pretrained(str(final))
    assert tok.vocab_size == 600 < len(tok) and f"**len(tokenizer)**: {len(tok):,}" in log  # added tokens counted
    assert tok.decode(tok(PROBES["full-width punctuation"])["input_ids"]) == PROBES["full-width punctuation"]


def test_the_log_records_the_input_relative_to_the_repository(tmp_path):
    run(["train_phi2/tokenizer.py", f"run.output_root={tmp_path}", "stage.input=tests/fixtures/phi2_clean/dirty.jsonl",
         "stage.vocab_size=600", "stage.min_frequency=1"], timeout=300)
    log = (tmp_path / "phi2" / "tokenizer" / "final" / "stage_log.md").read_text(encoding="utf-8")
    assert "- **input**: tests/fixtures/phi2_clean/dirty.jsonl (" in log and str(REPO) not in log


def test_a_tokenizer_later_runs_were_built_from_is_not_replaced_by_another_recipe(tmp_path):
    """make phi2-tokenizer ARGS="stage.vocab_size=..." used to replace runs/phi2/tokenizer/final under the pretrained
    and SFT models built from it."""
    from shared.training import stage

    root = tmp_path / "runs"
    common = ["train_phi2/tokenizer.py", f"run.output_root={root}", "stage.input=tests/fixtures/phi2_clean/dirty.jsonl",
              "stage.min_frequency=1"]
    run([*common, "stage.vocab_size=600"], timeout=300)
    final = root / "phi2" / "tokenizer" / "final"
    before = (final / "tokenizer.json").read_bytes()
    pretrain = root / "phi2" / "pretrain" / "final"  # what a pretraining run records of its inputs
    pretrain.mkdir(parents=True)
    (pretrain / "recipe.yaml").write_text(f"model: {{name: phi2}}\ntokenizer: {{name: {root}/phi2/tokenizer}}\n")

    proc = run([*common, "stage.vocab_size=700"], check=False, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "tokenizer/final was built with another recipe (stage.vocab_size: 600 -> 700)" in line
    assert f"runs were built from it ({root}/phi2/pretrain)" in line and "REPLACE=yes" in line
    assert (final / "tokenizer.json").read_bytes() == before and not (final.parent / ".final-tmp").exists()

    same = load_recipe("recipes/phi2/tokenizer.yaml", common[1:] + ["stage.vocab_size=600", "run.resume=never"],
                       stage=TokenizerTraining)
    stage.check_replace(same)  # the same recipe (resume aside) replaces it freely
    run([*common, "stage.vocab_size=700", "run.replace=true"], timeout=300)
    assert AutoTokenizer.from_pretrained(str(final)).vocab_size == 700


def test_stage_settings_are_checked():
    with pytest.raises(UserError, match="did you mean 'vocab_size'"):
        load_recipe("recipes/phi2/tokenizer.yaml", ["stage.vocab_sise=10"], stage=TokenizerTraining)
    with pytest.raises(UserError, match="stage.kind"):
        load_recipe("recipes/phi2/tokenizer.yaml", ["stage.kind=word"], stage=TokenizerTraining)
    recipe = load_recipe("recipes/phi2/tokenizer.yaml", [], stage=TokenizerTraining)
    assert (recipe.stage.vocab_size, recipe.stage.min_frequency, recipe.stage.kind) == (40960, 100, "bpe")
    assert str(recipe.run_dir).endswith("runs/phi2/tokenizer")


def test_generator_is_exact_seeded_and_close_to_the_source():
    model = NgramModel.from_texts(SOURCE, order=4)
    docs = list(model.generate(300_001, seed=7, doc_chars=300, chains=2048))
    text = "".join(docs)
    assert len(text) == 300_001 and len(docs) == 1001 and len(docs[-1]) == 1
    assert text == "".join(model.generate(300_001, seed=7, doc_chars=300, chains=2048))
    assert text != "".join(model.generate(300_001, seed=8, doc_chars=300, chains=2048))
    ours, theirs = collections.Counter(text), collections.Counter("\n\n".join(SOURCE))
    n, m = sum(ours.values()), sum(theirs.values())
    assert 0.5 * sum(abs(ours[c] / n - theirs[c] / m) for c in ours | theirs) < 0.05  # total variation distance
    clauses = [c for c in text.replace("，", "。").split("。") if len(c) >= 8][:2000]
    source = "\n".join(SOURCE)
    assert sum(c not in source for c in clauses) > 0.8 * len(clauses)  # new sentences, not the source repeated


def test_sizes():
    assert [parse_size(s) for s in ("100M", "1B", "1g", "2.5k", "12345")] == [10**8, 10**9, 10**9, 2500, 12345]
    with pytest.raises(UserError):
        parse_size("lots")
