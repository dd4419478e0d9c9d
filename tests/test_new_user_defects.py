"""Defects found trying the project as a new user would (issue 23): an experiment overwrote the committed reference
log, an override of the wrong type ended in a traceback, a vocabulary size the tokenizer can't honour was silently
changed."""
import json
import subprocess

import pytest
from transformers import AutoTokenizer

from conftest import REPO
from shared.config import cli
from shared.config import errors
from shared.config.errors import UserError
from shared.config.recipe import load_recipe
from bench.textgen import bundled_chinese_texts
from train_phi2.tokenizer import main as tokenizer_main

REFERENCE = REPO / "train_phi2" / "logs" / "tokenizer_log.md"


def tracked_changes() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def corpus(tmp_path, n=120):
    path = tmp_path / "clean.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                            for t in list(bundled_chinese_texts())[:n]), encoding="utf-8")
    return path


def run_script(main, argv, capsys) -> tuple[int, str, str]:
    """A script's `main` as its command line runs it (errors.run_main): exit code, stdout, stderr."""
    try:
        errors.run_main(main, argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


# 1. publishing


def test_an_overridden_run_leaves_every_tracked_file_unchanged(tmp_path, capsys):
    before, reference = tracked_changes(), REFERENCE.read_bytes()
    try:  # the command `make phi2-tokenizer RUN=badtok ARGS=...` runs, with the real reference log named
        code, out, err = run_script(tokenizer_main, [
            "recipes/phi2/tokenizer.yaml", "run.name=badtok", f"run.output_root={tmp_path / 'runs'}",
            f"stage.input={corpus(tmp_path)}", "stage.vocab_size=600", "stage.min_frequency=2",
            "--publish-log", "train_phi2/logs/tokenizer_log.md"], capsys)
        assert code == 0, err
        assert REFERENCE.read_bytes() == reference and tracked_changes() == before
        assert "reference log published" not in out
        final = tmp_path / "runs" / "phi2" / "badtok" / "final"
        assert "not publishing train_phi2/logs/tokenizer_log.md" in out and f"stays in {final}/" in out
        assert (final / "stage_log.md").is_file()
    finally:  # never leave the checkout changed, whatever happened
        REFERENCE.write_bytes(reference)


def test_only_a_run_without_overrides_publishes_unless_asked(capsys):
    recipe = "recipes/phi3/pretrain.yaml"
    _, opts = cli.parse([recipe, "--publish-log", "train_phi3/logs/train_log.md"], recipe, "t")
    assert opts.publish_log == "train_phi3/logs/train_log.md"  # the reference run: its recipe, nothing overridden
    _, opts = cli.parse([recipe, "run.name=try", "--publish-log", "train_phi3/logs/train_log.md"], recipe, "t")
    assert opts.publish_log is None
    assert "its log stays in runs/phi3/try/final/" in capsys.readouterr().out
    _, opts = cli.parse([recipe, "run.name=try", "--publish-log", "x_log.md", "--publish-anyway"], recipe, "t")
    assert opts.publish_log == "x_log.md"


def test_make_publish_yes_asks_for_it_and_other_values_are_refused():
    def dry(*variables):
        return subprocess.run(["make", "-n", "phi2-tokenizer", *variables], cwd=REPO, capture_output=True, text=True)

    assert "--publish-log train_phi2/logs/tokenizer_log.md --publish-anyway" in dry("RUN=x", "PUBLISH=yes").stdout
    assert "--publish-anyway" not in dry("RUN=x").stdout
    proc = dry("PUBLISH=1")
    assert proc.returncode != 0 and "PUBLISH must be auto, yes or no, got '1'" in proc.stderr


# 2. an override's type


def test_a_mapping_where_a_template_belongs_is_one_line(tmp_path, capsys):
    from shared.training.train import main as train_main

    code, _, err = run_script(lambda argv: train_main(argv, "recipes/phi2/sft.yaml", "Phi-2"),
                              ["recipes/phi2/sft.yaml", "data.templates.prompt={nope}"], capsys)
    assert code == errors.EXIT_USER_ERROR and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()]  # one line
    assert "data.templates.prompt must be str, got {'nope': None}" in err


@pytest.mark.parametrize("override, message", [
    ("tokenizer.special_tokens=[<user>, 3]", "tokenizer.special_tokens[1] must be str, got 3"),
    ("data.columns.text=[a, b]", "data.columns.text must be str, got ['a', 'b']"),
    ("data.templates={prompt: 1, completion: x}", "data.templates.prompt must be str, got 1"),
])
def test_entries_of_mappings_and_lists_are_typed_like_fields(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe("recipes/phi2/sft.yaml", [override])


def test_the_yaml_own_nested_values_are_checked_the_same_way(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: m}\ndata:\n  templates:\n    prompt: {nope: 1}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"r\.yaml:3: data\.templates\.prompt must be str, got \{'nope': 1\}"):
        load_recipe(recipe)


# 3. vocabulary sizes


def test_a_bpe_smaller_than_its_alphabet_is_refused_before_training(tmp_path, capsys):
    code, out, err = run_script(tokenizer_main, [
        "run.name=badtok", f"run.output_root={tmp_path / 'runs'}", f"stage.input={corpus(tmp_path)}",
        "stage.vocab_size=10"], capsys)
    assert code == errors.EXIT_USER_ERROR and "Traceback" not in err
    assert "stage.vocab_size=10" in err and "256 bytes + 5 special tokens = 261" in err
    assert not (tmp_path / "runs" / "phi2" / "badtok" / "final").exists()


def test_a_vocabulary_far_below_the_asked_size_is_a_warning_in_the_output_and_the_log(tmp_path, capsys):
    code, out, err = run_script(tokenizer_main, [
        f"run.output_root={tmp_path / 'runs'}", f"stage.input={corpus(tmp_path)}", "stage.vocab_size=5000",
        "stage.min_frequency=100"], capsys)
    assert code == 0, err
    final = tmp_path / "runs" / "phi2" / "tokenizer" / "final"
    produced = AutoTokenizer.from_pretrained(str(final)).vocab_size
    assert produced < 4500
    warning = f"the tokenizer has {produced:,} tokens"
    assert f"warning: {warning}" in out and "stage.min_frequency=100" in out
    assert warning in (final / "stage_log.md").read_text(encoding="utf-8")
