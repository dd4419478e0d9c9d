"""The multi-stage foundation: strict keys everywhere, trainer kinds, damaged runs, prompts passed verbatim, and
final/ folders that plain transformers uses with the recipe's own decoding preset."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import REPO, TINY_PHI3, run

from shared.config.errors import UserError
from shared.config.recipe import load_recipe
from test_recipe import BASE, write  # the same small recipe and writer


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# strict keys


def test_generation_typo_is_rejected_in_yaml_and_in_overrides(tmp_path):
    with pytest.raises(UserError, match=r"r\.yaml:11: unknown key 'generation\.temprature' \(did you mean 'temperature'\?\)"):
        load_recipe(write(tmp_path, BASE.replace("  temperature: 0.8", "  temperature: 0.8\n  temprature: 0.7")))
    for override in ("generation.temprature=0.7", "temprature=0.7"):
        with pytest.raises(UserError, match=r"unknown key '(generation\.)?temprature' \(did you mean 'temperature'\?\)"):
            load_recipe(write(tmp_path, BASE), [override])


def test_make_generate_rejects_a_generation_typo_before_loading_anything(tmp_path):
    proc = subprocess.run(["make", "-s", "generate", "MODEL=phi3", "ARGS=temprature=0.7"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert "unknown generation key 'temprature' (did you mean 'temperature'?)" in error_line(proc)


def test_duplicate_keys_name_both_lines(tmp_path):
    text = BASE.replace("  learning_rate: 1.0e-3", "  learning_rate: 1.0e-3\n  seed: 1\n  learning_rate: 5.0e-4")
    with pytest.raises(UserError, match=r"r\.yaml:10: duplicate key 'training\.learning_rate' \(first at line 8\)"):
        load_recipe(write(tmp_path, text))
    with pytest.raises(UserError, match=r"duplicate key 'data'"):
        load_recipe(write(tmp_path, BASE + "data:\n  block_size: 64\n"))


def test_output_dir_is_rejected_naming_the_run_keys(tmp_path):
    with pytest.raises(UserError, match=r"training\.output_dir is not used.*run\.output_root and run\.name"):
        load_recipe(write(tmp_path, BASE), ["output_dir=/some/where"])


def test_trainer_kind_decides_which_training_keys_exist(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'training\.beta' for trainer lm \(TrainingArguments\)"):
        load_recipe(write(tmp_path, BASE.replace("  learning_rate: 1.0e-3", "  learning_rate: 1.0e-3\n  beta: 0.1")))
    dpo = BASE.replace("  learning_rate: 1.0e-3", "  learning_rate: 1.0e-3\n  beta: 0.1\n  precompute_ref_log_probs: true")
    r = load_recipe(write(tmp_path, "trainer: dpo\n" + dpo))
    assert r.trainer == "dpo" and r.training["beta"] == 0.1
    r = load_recipe(write(tmp_path, BASE), ["trainer=sft", "completion_only_loss=true"])
    assert r.trainer == "sft" and r.training["completion_only_loss"] is True
    with pytest.raises(UserError, match="trainer must be one of lm, sft, dpo, got 'ppo'"):
        load_recipe(write(tmp_path, BASE), ["trainer=ppo"])


def test_stage_section_is_checked_against_the_scripts_dataclass(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Clean:
        min_chars: int = 10

    text = BASE + "stage:\n  min_char: 5\n"
    with pytest.raises(UserError, match=r"r\.yaml:12: unknown key 'stage\.min_char' \(did you mean 'min_chars'\?\)"):
        load_recipe(write(tmp_path, text), stage=Clean)
    assert load_recipe(write(tmp_path, BASE), ["stage.min_chars=3"], stage=Clean).stage == Clean(min_chars=3)


def test_block_size_over_the_position_table_stops_before_anything_is_built(tmp_path):
    proc = run(["train_phi3/train.py", "data.block_size=512", f"run.output_root={tmp_path}"], check=False)
    line = error_line(proc)
    assert "data.block_size=512 is larger than the model's position table (256 positions" in line
    assert not (tmp_path / "phi3").exists() and "tokenizing" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------------------------------------------------------
# a tiny trained run: preset saved with the model, damaged files, prompts passed verbatim


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run(["train_phi3/train.py", *TINY_PHI3, "training.max_steps=4", "training.eval_strategy=no",
         "run.name=tiny", f"run.output_root={root}"])
    return root, root / "phi3" / "tiny" / "final"


@pytest.mark.slow
def test_plain_transformers_uses_the_recipes_preset_and_context(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.inference.generate import generate

    _, final = tiny_run
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    g = model.generation_config
    assert (g.do_sample, g.temperature, g.top_k, g.top_p, g.repetition_penalty) == (True, 0.8, 50, 0.9, 1.2)
    assert g.max_new_tokens == 12 and g.eos_token_id == tok.eos_token_id
    assert tok.model_max_length == 64  # the real context, not 1e30
    ids = tok("春天来了，", return_tensors="pt").input_ids
    torch.manual_seed(3)
    plain = tok.decode(model.generate(ids, attention_mask=torch.ones_like(ids))[0], skip_special_tokens=True)
    preset = json.loads((final / "generation_config.json").read_text())
    torch.manual_seed(3)
    ours = generate(model, tok, "春天来了，", {k: v for k, v in preset.items() if k != "transformers_version"})
    assert plain == ours


@pytest.mark.slow
def test_prompt_with_quotes_backticks_and_dollars_reaches_the_model_unchanged(tiny_run):
    root, _ = tiny_run
    prompt = '他说"你好"，`echo hi` $(whoami) $HOME \'q\' \\n'
    proc = subprocess.run(["make", "-s", "generate", "MODEL=phi3", f"PROMPT={prompt}",
                           f"ARGS=--root {root} max_new_tokens=3"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert prompt in proc.stdout, proc.stdout[-1000:]


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", [("model.safetensors", "truncate"), ("tokenizer.json", "truncate"),
                                          ("config.json", "garble")])
def test_damaged_final_folder_is_named_in_one_line(tiny_run, tmp_path, name, damage):
    import shutil

    root, final = tiny_run
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    target = copy / "phi3" / "tiny" / "final" / name
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"{not json")
    proc = run(["train_phi3/generate.py", "--root", str(copy), "max_new_tokens=2"], check=False)
    line = error_line(proc)
    assert f"{target} is damaged" in line and "rerun the stage" in line


# ---------------------------------------------------------------------------------------------------------------
# trainer kinds: one tiny random model, one step of each, through train()


KIND_RECIPE = """trainer: {kind}
model:
  name: kinds
  config: train_phi3/phi3_config.json
  overrides: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
              num_key_value_heads: 2, max_position_embeddings: 64, original_max_position_embeddings: 64}}
tokenizer: {{vocab_size: 300}}
data:
  path: {data}
  templates: {templates}
  validation_fraction: 0.25
  block_size: 32
training:
  max_steps: 2
  per_device_train_batch_size: 4
  per_device_eval_batch_size: 4
  learning_rate: 1.0e-3
  eval_strategy: "no"
  save_strategy: "no"
  logging_steps: 1
run: {{name: {kind}, output_root: {root}}}
"""
TEMPLATES = {
    "lm": '{text: "{q} {a}"}',
    "sft": '{prompt: "Q: {q}\\nA: ", completion: "{a}"}',
    "dpo": '{prompt: "Q: {q}\\nA: ", chosen: "{a}", rejected: "{bad}"}',
}


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    rows = [{"q": f"what is {i} plus {i}", "a": f"it is {2 * i}", "bad": f"no idea {i}"} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lm", "sft", "dpo"])
def test_each_trainer_kind_trains_a_tiny_model_through_train(kind, qa_file, tmp_path):
    from shared.models import registry as models
    from shared.training import train

    recipe = load_recipe(write(tmp_path, KIND_RECIPE.format(kind=kind, data=qa_file, templates=TEMPLATES[kind],
                                                            root=tmp_path / "runs")))
    args = train.training_arguments(recipe)
    assert type(args).__name__ == {"lm": "TrainingArguments", "sft": "SFTConfig", "dpo": "DPOConfig"}[kind]
    assert not args.bf16  # TRL's bf16 default must not reach a CPU
    config = models.model_config(recipe)
    data = train.load_data(recipe)
    model = models.build_model(recipe, config, data.tokenizer)
    trainer = train.train(recipe, model, data, args=args, title=f"{kind} test")
    final = recipe.run_dir / "final"
    assert (final / "model.safetensors").is_file() and (final / "stage.json").is_file()
    log = (final / "train_log.md").read_text(encoding="utf-8")
    assert f"**trainer**: {kind}" in log and "## Final evaluation" in log
    assert ("eval_perplexity" in log) == (kind != "dpo")  # perplexity only where the loss is a token loss
    if kind == "dpo":
        assert "rewards/margins" in log and "rewards/accuracies" in log
    if kind == "sft":  # completion-only loss: the labels of the prompt tokens are masked, the answer's are not
        batch = next(iter(trainer.get_train_dataloader()))
        tok = data.tokenizer
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            text = tok.decode(ids[labels != -100])
            assert text.startswith("it is") and text.endswith(tok.eos_token), text
            assert "Q:" not in text
