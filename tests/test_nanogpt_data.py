"""nanoGPT data stage: per-source column layouts -> the chat format, deterministic split, the script end to end."""
import json

import numpy as np
import pytest
from conftest import run
from datasets import Dataset

from shared.data import bins
from shared.data.sources import split_train_eval
from shared.config.errors import UserError
from shared.config.recipe import load_recipe
from train_nanogpt.create_first_training_data import (DataStageArgs, chat_text, load_sources, main, parse_source,
                                                      record_turns, to_chat)

RECIPE = "recipes/nanogpt/data.yaml"


def test_chat_format_exactly():
    assert chat_text([("user", "Hi?"), ("assistant", "Hello.")]) == "<user>Hi?<end>\n<assistant>Hello.<end>"


def test_prompt_response_layout_joins_prompt_columns_and_skips_empty_ones():
    src = parse_source({"path": "x.jsonl", "prompt": ["instruction", "input"], "response": "output"}, "t")
    record = {"instruction": "Translate to French.", "input": "Good morning", "output": " Bonjour \n"}
    assert chat_text(record_turns(record, src)) == \
        "<user>Translate to French.\n\nGood morning<end>\n<assistant>Bonjour<end>"
    assert record_turns({**record, "input": ""}, src) == [("user", "Translate to French."), ("assistant", "Bonjour")]
    assert record_turns({**record, "input": None}, src)[0] == ("user", "Translate to French.")
    assert record_turns({**record, "output": "  "}, src) == []  # unanswered: dropped


def test_turns_layout_keeps_order_and_maps_roles():
    messages = {"path": "x", "turns": "messages"}
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}]
    assert chat_text(record_turns({"messages": chat}, parse_source(messages, "t"))) == \
        "<user>a<end>\n<assistant>b<end>\n<user>c<end>\n<assistant>d<end>"  # trailing unanswered turn dropped
    sharegpt = parse_source({"hub": "x/y", "turns": "conversations", "role": "from", "content": "value",
                             "roles": {"human": "user", "gpt": "assistant"}}, "t")
    convo = [{"from": "system", "value": "be nice"}, {"from": "gpt", "value": "hello!"},
             {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
             {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]
    assert record_turns({"conversations": convo}, sharegpt) == [
        ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]  # unmapped role, leading answer out


def test_transcript_layout_splits_at_speaker_markers():
    baize = parse_source({"hub": "x/y", "transcript": "input",
                          "speakers": {"[|Human|]": "user", "[|AI|]": "assistant"}}, "t")
    text = "The conversation between human and AI assistant.\n[|Human|] Hi there\n[|AI|] Hello! How can I help?\n" \
           "[|Human|] Tell me a joke.\n[|AI|] Why did the cat sit on the laptop?\n[|Human|] "
    assert chat_text(record_turns({"input": text}, baize)) == (
        "<user>Hi there<end>\n<assistant>Hello! How can I help?<end>\n"
        "<user>Tell me a joke.<end>\n<assistant>Why did the cat sit on the laptop?<end>")


def test_to_chat_drops_unanswered_records_and_names_missing_columns():
    src = parse_source({"path": "x", "prompt": "q", "response": "a", "name": "tiny"}, "t")
    ds = Dataset.from_list([{"q": "one", "a": "1"}, {"q": "two", "a": ""}, {"q": "", "a": "3"}])
    out = to_chat(ds, src, "t")
    assert out["text"] == ["<user>one<end>\n<assistant>1<end>"] and out["source"] == ["tiny"]
    with pytest.raises(UserError, match=r"t \(tiny\): no column 'a'; the data has q, answer"):
        to_chat(Dataset.from_list([{"q": "x", "answer": "y"}]), src, "t")


@pytest.mark.parametrize("raw, message", [
    ({"hub": "x/y", "prompt": "q", "respone": "a"}, "unknown key 'respone' .did you mean 'response'"),
    ({"hub": "x/y", "prompt": "q"}, "'prompt' needs 'response'"),
    ({"hub": "x/y", "prompt": "q", "response": "a", "turns": "m"}, "exactly one layout.*prompt, turns"),
    ({"hub": "x/y", "turns": "m", "roles": {"human": "human"}}, "roles must map to user or assistant"),
    ({"prompt": "q", "response": "a"}, "needs 'hub'"),
    ({"hub": "x/y", "turns": "m", "fallback": {"hub": "z/w", "turns": "m"}}, "fallback of x/y is a local 'path'"),
])
def test_source_mistakes_are_one_line_errors(raw, message):
    with pytest.raises(UserError, match=message):
        parse_source(raw, "recipes/nanogpt/data.yaml:30: stage.sources[0]")


def test_bundled_sources_exercise_both_layouts_and_split_deterministically(capsys):
    recipe = load_recipe(RECIPE, stage=DataStageArgs)
    texts, report = load_sources(recipe)
    assert len(report) == 7 and all(r["fallback"] for r in report)  # offline: every Hub source replaced, said so
    assert "FALLBACK" in capsys.readouterr().out
    used = [r for r in report if r["kept"]]
    assert [r["source"] for r in used] == ["data/english/alpaca.jsonl", "data/english/conversations.jsonl"]
    assert [r["kept"] for r in used] == [160, 150] and len(texts) == 310  # each bundled file once
    multi = [t for t in texts["text"] if t.count("<user>") > 1]
    assert len(multi) == 150 and all(t.startswith("<user>") and t.endswith("<end>") for t in texts["text"])
    train, val = split_train_eval(texts, 0.1, recipe.stage.seed)
    again, _ = split_train_eval(load_sources(recipe)[0], 0.1, recipe.stage.seed)
    assert train["text"] == again["text"] and len(val) == 31
    other, _ = split_train_eval(texts, 0.1, recipe.stage.seed + 1)
    assert other["text"] != train["text"]


def test_end_to_end_bins_decode_to_the_chat_texts(tmp_path):
    from transformers import AutoTokenizer

    run(["train_nanogpt/create_first_training_data.py", f"run.output_root={tmp_path}"], timeout=300)
    final = tmp_path / "nanogpt" / "data" / "final"
    assert {"train.bin", "val.bin", "meta.json", "tokenizer.json", "stage_log.md", "stage.json"} <= \
        {p.name for p in final.iterdir()}
    meta = json.loads((final / "meta.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(final))  # later stages load the tokenizer from here
    assert meta["vocab_size"] == len(tok) and meta["dtype"] == "uint16"

    markers = {m: tok(m, add_special_tokens=False)["input_ids"] for m in ("<user>", "<assistant>", "<end>")}
    assert all(len(ids) == 1 for ids in markers.values())  # the chat markers are single, never-split tokens

    recipe = load_recipe(RECIPE, stage=DataStageArgs)
    train, val = split_train_eval(load_sources(recipe)[0], recipe.data.validation_fraction, recipe.stage.seed)
    for name, texts in (("train", train), ("val", val)):
        ids = bins.read_bin(final / f"{name}.bin")
        assert tok.decode(ids.tolist()) == "".join(t + tok.eos_token for t in texts["text"])
        assert meta["splits"][name]["documents"] == len(texts) and meta["splits"][name]["tokens"] == len(ids)
        assert int(np.sum(ids == markers["<user>"][0])) == sum(t.count("<user>") for t in texts["text"])

    log = (final / "stage_log.md").read_text()
    for line in ("| OpenOrca | data/english/alpaca.jsonl (OFFLINE FALLBACK) | 160 | 160 |",
                 "| Vicuna (ShareGPT) | data/english/conversations.jsonl (OFFLINE FALLBACK) | 150 | 0 |",
                 f"| train.bin | {len(train)} | {meta['splits']['train']['tokens']:,} |"):
        assert line in log


def test_a_wrong_source_key_names_the_source_and_the_key(tmp_path):
    with pytest.raises(UserError, match=r"^override 'stage.sources=\[\{hub: a/b, promt: q, response: a\}\]': "
                                        r"stage.sources\[0\]: unknown key 'promt' \(did you mean 'prompt'\?\)$"):
        main([f"run.output_root={tmp_path}", "stage.sources=[{hub: a/b, promt: q, response: a}]"])
    assert not (tmp_path / "nanogpt").exists()


# ------------------------------------------------------------------------------------------------------------------
# plain text + a char-level vocabulary: nanoGPT's shakespeare_char through the same stage

CHAR_RECIPE = "recipes/nanogpt/data-shakespeare-char.yaml"
PLAY = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n") * 20


def test_char_tokenizer_vocabulary_is_exactly_the_corpus_characters():
    from shared.data.tokenizer import char_tokenizer

    tok = char_tokenizer([PLAY[:300], PLAY[300:]])
    chars = sorted(set(PLAY))
    assert tok.get_vocab() == {c: i for i, c in enumerate(chars)}  # nanoGPT's stoi: sorted characters, ids 0..n-1
    assert len(tok) == len(chars) and tok.eos_token is None and tok.unk_token is None and tok.pad_token is None
    ids = tok(PLAY, add_special_tokens=False)["input_ids"]
    assert ids == [chars.index(c) for c in PLAY] and tok.decode(ids) == PLAY  # exact round trip, spaces and newlines
    with pytest.raises(Exception, match="UNK"):  # no [UNK]: an unseen character can't be encoded
        tok("ñ", add_special_tokens=False)
    marked = char_tokenizer([PLAY], ["<user>"])
    assert marked.convert_tokens_to_ids("<user>") == len(chars)
    assert marked("<user>All:", add_special_tokens=False)["input_ids"][0] == len(chars)


def test_a_text_file_read_whole_gives_nanoGPTs_shakespeare_char_bins(tmp_path):
    from transformers import AutoTokenizer

    (tmp_path / "input.txt").write_text(PLAY, encoding="utf-8")
    main([CHAR_RECIPE, f"data.path={tmp_path / 'input.txt'}", f"run.output_root={tmp_path}"])
    final = tmp_path / "nanogpt" / "shakespeare-char-data" / "final"
    meta = json.loads((final / "meta.json").read_text())
    chars = sorted(set(PLAY))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(PLAY)  # nanoGPT's prepare.py: data[:int(n * 0.9)] trains, data[int(n * 0.9):] validates
    for name, part in (("train", PLAY[:int(n * 0.9)]), ("val", PLAY[int(n * 0.9):])):
        ids = bins.read_bin(final / f"{name}.bin")
        assert ids.dtype == np.uint16 and ids.tolist() == [stoi[c] for c in part]  # nothing between documents
    assert meta["vocab_size"] == len(chars) and meta["separator"] == [] and meta["char_level"]
    tok = AutoTokenizer.from_pretrained(str(final))  # the pretrain recipe loads it from here
    assert len(tok) == len(chars) and tok.decode(bins.read_bin(final / "val.bin").tolist()) == PLAY[int(n * 0.9):]
    log = (final / "stage_log.md").read_text()
    assert "**between documents**: nothing" in log and f"input.txt | 1 | 1 |" in log and "FALLBACK" not in log


def test_no_file_given_stands_in_with_the_bundled_english_text_loudly(capsys):
    recipe = load_recipe(CHAR_RECIPE, stage=DataStageArgs)
    texts, report = load_sources(recipe)
    assert "DATA FALLBACK: using data/english/alpaca.jsonl instead of your text file (DATA=)" in capsys.readouterr().out
    assert report[0]["fallback"] and "no file given" in report[0]["reason"] and len(texts) == 160
    assert texts[0]["text"].startswith("Why is the sky blue on a clear day?\n\nSunlight")  # instruction + output
    assert not any(texts["whole"])


def test_text_layout_paragraphs_columns_and_the_split(tmp_path):
    from train_nanogpt.create_first_training_data import split

    (tmp_path / "p.txt").write_text("one para\nstill one\n\n\ntwo\n\nthree  \n", encoding="utf-8")
    recipe = load_recipe(CHAR_RECIPE, [f"data.path={tmp_path / 'p.txt'}", "stage.sources=[{path: x, text: paragraphs}]"],
                         stage=DataStageArgs)
    texts, _ = load_sources(recipe)
    assert texts["text"] == ["one para\nstill one", "two", "three"] and not any(texts["whole"])
    train, val = split(texts, 0.34, 1)
    assert sorted([*train["text"], *val["text"]]) == sorted(texts["text"]) and len(val) == 1  # shuffled documents
    src = parse_source({"path": "x.jsonl", "text": ["title", "body"]}, "t")
    out = to_chat(Dataset.from_list([{"title": "A", "body": "b c "}, {"title": "", "body": "d"},
                                     {"title": None, "body": " "}]), src, "t")
    assert out["text"] == ["A\n\nb c", "d"]  # columns joined by a blank line, empty records dropped
    mixed = Dataset.from_dict({"text": ["abcdefghij", "doc1", "doc2", "doc3"], "source": ["s"] * 4,
                               "whole": [True, False, False, False]})
    train, val = split(mixed, 0.3, 1)
    assert "abcdefg" in train["text"] and "hij" in val["text"] and len(train) == 3 and len(val) == 2


@pytest.mark.parametrize("overrides, message", [
    (["stage.sources=[{path: data/english/alpaca.jsonl, text: whole}]"],
     r"'text: whole' reads a .txt file; data/english/alpaca.jsonl is not one: name its text column"),
    (["tokenizer.name=gpt2"], r"stage.char_level builds the tokenizer from the texts; remove tokenizer.name \(gpt2\)"),
    (["stage.sources=[{path: a.txt, text: whole}, {path: b.txt, text: whole}]", "data.path=c.txt"],
     r"data.path \(DATA=\) replaces the file of a one-source recipe; this one has 2 sources"),
    (["stage.sources=[{path: a.txt, text: whole, turns: m}]"], r"exactly one layout: .*\(got turns, text\)"),
])
def test_text_layout_mistakes_are_one_line_errors(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message) as e:
        main([CHAR_RECIPE, f"run.output_root={tmp_path}", *overrides])
    assert "\n" not in str(e.value)
