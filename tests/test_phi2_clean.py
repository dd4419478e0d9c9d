"""Phi-2 data cleaning (train_phi2/clean.py): each rule on a dirty fixture, the filters, the counts table, the
parallel stream, and the stage end to end. Fixtures: tests/fixtures/phi2_clean/ (text written for these tests)."""
import io
import json
import random
from pathlib import Path

import pytest
from conftest import REPO, run

from shared.config.errors import UserError
from shared.config.recipe import load_recipe
from train_phi2 import clean

FIXTURES = REPO / "tests" / "fixtures" / "phi2_clean"
DIRTY = FIXTURES / "dirty.jsonl"
RAW = {r["id"]: r["text"] for r in map(json.loads, DIRTY.read_text(encoding="utf-8").splitlines())}

# what each rule's fixture record becomes (exact)
CLEANED = {
    "clean": RAW["clean"],
    "invisible": "渡口街是苇川最老的街，全长六百米左右。\n两边还是清末的砖木老房子。",
    "whitespace": "苇川的夏天很热，七八月汛情多发。\n\n镜湖在城东，我用 Python 写过一个小程序。",
    "width": "苇川大学建于1923年，校训是“知水而行”。你去过吗？\n南宋淳熙年间（约1180年），青漪河边形成了集市……后来才有了城。\n"
             "程序里写print(\"你好\")就能打印，网址是example.com，这一行不用改。",
    "repeats": "太好了！终于放晴了。我们去湖边吧，好不好？\n他想了想……没有说话……",
    "full_stop": "第一章 涨水\n我回到苇川那天，青漪河正在涨水。\n爷爷说：“比你奶奶那口锅还老一点。”\n“你怎么知道是我？”\n"
                 "苇川这个名字，来自南宋的“苇川渡”。\n这条街叫渡口街，你去过吗？\n船下水，人先吃饱。——柯满江，电焊工\n"
                 "地址：渡口街12号院3\nIt is a city by the river",
}
RULE_NAMES = [name for name, _, _ in clean.RULES]
KEPT = ["clean", "invisible", "whitespace", "width", "repeats", "full_stop", "long", "different"]
EXPECTED_COUNTS = {"invisible": 2, "whitespace": 3, "width": 1, "repeats": 1, "full_stop": 1,  # records changed
                   "empty": 1, "too_short": 1, "exact_dup": 1, "near_dup": 1}  # records dropped


def settings_and_inputs(*overrides: str):
    recipe = load_recipe(REPO / "recipes/phi2/clean.yaml", [f"stage.inputs=[{DIRTY}]", *overrides],
                         stage=clean.CleanArgs)
    return clean.check_args(recipe)


def run_stream(*overrides: str, workers: int = 1, chunk_size: int = 256):
    inputs, settings, _ = settings_and_inputs(*overrides)
    out = io.StringIO()
    tally = clean.clean_stream(clean.read_records(inputs, 0), out, settings, workers, chunk_size, progress=False)
    return [json.loads(line) for line in out.getvalue().splitlines()], tally, out.getvalue()


@pytest.fixture(scope="module")
def stream():
    return run_stream()


@pytest.mark.parametrize("rule", ["invisible", "whitespace", "width", "repeats", "full_stop"])
def test_each_rule_acts_on_its_record_and_only_that_rule(rule):
    text, changed = clean.clean_text(RAW[rule])
    assert text == CLEANED[rule]
    assert changed == [rule]


def test_rules_one_by_one():
    assert clean.drop_invisible("a\u200bb\r\nc\u2028d\x00") == "ab\nc\nd"
    assert clean.normalise_whitespace("第一章  涨水\n苇川 是 河港 ，在南方") == "第一章 涨水\n苇川是河港，在南方"
    assert clean.normalise_width("ＡＢ１２，你好!") == "AB12，你好！"
    assert clean.normalise_width("苇川(Weichuan) 3.5 a,b") == "苇川(Weichuan) 3.5 a,b"  # not Chinese context
    assert clean.collapse_repeats("好！！！。。。。。，，……——————") == "好！。，……——"
    assert clean.add_full_stops("他说：「好」\n他走了……\n真的？\n“走吧”\n") == "他说：「好。」\n他走了……\n真的？\n“走吧。”\n"


def test_a_clean_record_comes_through_byte_for_byte(stream):
    assert clean.clean_text(RAW["clean"]) == (RAW["clean"], [])
    _, _, written = stream
    line = json.dumps({"text": RAW["clean"], "source": "tests/fixtures/phi2_clean/dirty.jsonl"}, ensure_ascii=False)
    assert written.splitlines()[0] == line


def test_cleaning_twice_changes_nothing():
    for text in RAW.values():
        once, _ = clean.clean_text(text)
        assert clean.clean_text(once) == (once, [])


def test_stream_keeps_cleaned_records_in_order_and_drops_the_rest(stream):
    records, _, _ = stream
    expected = [CLEANED.get(k, RAW[k]) for k in KEPT]
    assert [r["text"] for r in records] == expected
    assert {r["source"] for r in records} == {"tests/fixtures/phi2_clean/dirty.jsonl"}
    texts = [r["text"] for r in records]
    assert RAW["long"] in texts and RAW["near_dup"] not in texts and RAW["different"] in texts  # near-dup: first kept
    assert "好的。" not in texts  # too short


def test_near_duplicates_few_characters_apart_one_kept_different_texts_both(tmp_path):
    inputs, settings, _ = settings_and_inputs()
    a, a2, b = RAW["long"], RAW["near_dup"], RAW["different"]

    def kept(*texts):
        out = io.StringIO()
        clean.clean_stream([("t", t) for t in texts], out, settings, progress=False)
        return [json.loads(line)["text"] for line in out.getvalue().splitlines()]

    assert kept(a, a2) == [a]
    assert kept(a2, a) == [a2]
    assert kept(a, b) == [a, b]
    assert kept(a, a) == [a]  # exact
    assert (settings.bands, settings.rows) == (9, 13)  # datasketch's choice for Jaccard 0.8, 128 permutations


def test_exact_duplicates_are_found_after_normalisation_and_short_records_dropped(stream):
    _, tally, _ = stream
    assert clean.clean_text(RAW["exact_dup"])[0] == RAW["clean"]
    assert tally.counts["exact_dup"] == 1 and tally.counts["too_short"] == 1 and tally.counts["empty"] == 1
    records, tally, _ = run_stream("stage.min_chars=2")
    assert "好的。" in [r["text"] for r in records] and tally.counts["too_short"] == 0


def test_counts_table(stream):
    _, tally, _ = stream
    assert {k: tally.counts[k] for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert (tally.total(0), tally.total(1)) == (12, 8)
    table = clean.rules_table(tally)
    assert "| (input) | records read | | 12 in |" in table
    assert "| (output) | records written to clean.jsonl | | 8 out |" in table
    for name, n in EXPECTED_COUNTS.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert row.endswith(f"| {n} | |" if name in RULE_NAMES else f"| | {n} |"), row


def test_parallel_result_equals_single_process(stream):
    _, tally1, written1 = stream
    _, tally2, written2 = run_stream(workers=2, chunk_size=2)
    assert written2 == written1
    assert tally2.counts == tally1.counts and tally2.sources == tally1.sources


def test_workers_read_a_bounded_number_of_chunks_ahead():
    inputs, settings, _ = settings_and_inputs()
    rng = random.Random(0)
    texts = ["".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(30)) for _ in range(300)]
    pulled, ahead = [0], []

    class Out(io.StringIO):
        def write(self, s):
            ahead.append(pulled[0] - len(self.getvalue().splitlines()))
            return super().write(s)

    def records():
        for t in texts:
            pulled[0] += 1
            yield "t", t

    out = Out()
    tally = clean.clean_stream(records(), out, settings, workers=2, chunk_size=4, progress=False)
    assert tally.total(1) == 300
    assert max(ahead) <= (4 * 2 + 3) * 4, max(ahead)  # never the whole input


def test_inputs_fields_and_txt_paragraphs():
    fields = clean.Input(FIXTURES / "fields.jsonl", ["title", "content", "sections"])
    assert [t for _, t in clean.read_records([fields], 0)] == [
        "苇川为什么叫苇川？\n城名来自南宋的苇川渡，渡口边的河滩上长满了芦苇。",
        "镜湖\n地理\n镜湖在苇川城东，青漪河从西边流进湖里\n物产\n湖里出产白鱼和莲藕。"]
    story = clean.Input(FIXTURES / "story.txt", ["text"])
    assert [t for _, t in clean.read_records([story], 0)] == [
        "第一章 涨水", "我回到苇川那天，青漪河正在涨水", "“你怎么知道是我？”", "“嗯。”他说。"]
    assert [t for _, t in clean.read_records([story], 20)] == [
        "第一章 涨水\n我回到苇川那天，青漪河正在涨水", "“你怎么知道是我？”\n“嗯。”他说。"]
    folder = clean.Input(FIXTURES, ["text"])
    with pytest.raises(UserError, match=r"fields.jsonl: none of the first 2 records has the field 'text'; "
                                        r"the first one has id, title, content"):
        list(clean.read_records([folder], 0))  # the folder's files in order: dirty.jsonl, fields.jsonl, ...
    typo = clean.Input(FIXTURES / "fields.jsonl", ["title", "contnet"])
    with pytest.raises(UserError, match="the field 'contnet' \\(did you mean 'content'\\?\\)"):
        list(clean.read_records([typo], 0))


def test_an_empty_input_says_so_and_a_bom_is_accepted_in_jsonl_as_in_txt(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"the input is empty \(no record read from .*empty\.jsonl\)"):
        clean.main([f"run.output_root={tmp_path}", f"stage.inputs=[{empty}]", "stage.workers=1"])
    text = "苇川的春天来得早，柳树先绿了。"
    (tmp_path / "bom.jsonl").write_text("\ufeff" + json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "bom.txt").write_text("\ufeff" + text + "\n", encoding="utf-8")
    for name in ("bom.jsonl", "bom.txt"):
        assert [t for _, t in clean.read_records([clean.Input(tmp_path / name, ["text"])], 0)] == [text]
    clean.main([f"run.output_root={tmp_path}", f"stage.inputs=[{tmp_path / 'bom.jsonl'}]", "stage.workers=1"])
    out = (tmp_path / "phi2/clean/final/clean.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["text"] for line in out] == [text]


def test_bad_settings_and_bad_lines_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="stage.near_dup_threshold must be in \\(0, 1\\), got 1.5"):
        settings_and_inputs("stage.near_dup_threshold=1.5")
    with pytest.raises(UserError, match="not found"):
        settings_and_inputs(f"stage.inputs=[{tmp_path / 'missing.jsonl'}]")
    with pytest.raises(UserError, match="unknown key 'stage.min_char'"):
        settings_and_inputs("stage.min_char=3")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "苇川是一座河港城市。"}\n{"text": 苇川\n', encoding="utf-8")
    _, settings, _ = settings_and_inputs()
    with pytest.raises(UserError, match="bad.jsonl:2: malformed JSON"):  # raised in the reading thread of the pool
        clean.clean_stream(clean.read_records([clean.Input(bad, ["text"])], 0), io.StringIO(), settings, workers=2,
                           progress=False)


def test_bundled_sets_are_left_nearly_alone_and_cleaning_is_idempotent():
    recipe = load_recipe(REPO / "recipes/phi2/clean.yaml", stage=clean.CleanArgs)
    inputs, _, _ = clean.check_args(recipe)
    n = changed = 0
    for _, text in clean.read_records(inputs, recipe.stage.txt_record_chars):
        once, rules = clean.clean_text(text)
        assert clean.clean_text(once) == (once, [])
        n, changed = n + 1, changed + bool(rules)
    assert n > 500 and changed < n // 10  # hand-written sets: a few headlines' spaces, a few full stops


def test_stage_end_to_end(tmp_path: Path):
    proc = run(["train_phi2/clean.py", f"run.output_root={tmp_path}", f"stage.inputs=[{DIRTY}]", "stage.workers=2"],
               timeout=300)
    final = tmp_path / "phi2" / "clean" / "final"
    records = [json.loads(line) for line in (final / "clean.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == [CLEANED.get(k, RAW[k]) for k in KEPT]
    assert json.loads((final / "stage.json").read_text())["stage"] == "Phi-2 data cleaning"
    log = (final / "stage_log.md").read_text(encoding="utf-8")
    for needle in ("## Rules: records changed or dropped", "| full_stop |", "| near_dup |", "| 12 in |", "| 8 out |",
                   "Jaccard threshold 0.8", "9 bands x 13 rows", "## Sources", "## Resolved recipe"):
        assert needle in log, needle
    assert "| (output) | records written to clean.jsonl | | 8 out |" in proc.stdout
