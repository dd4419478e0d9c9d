"""Recipes: parsing, overrides, and one-line errors that name the file, line and key."""
from pathlib import Path

import pytest
import yaml

from shared.config.errors import UserError
from shared.config.recipe import REDACTED, load_recipe, parse_override, redact_secrets

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    return p


BASE = """model:
  name: demo
  config: train_phi3/phi3_config.json
data:
  fallback: data/poems/poems.jsonl
training:
  num_train_epochs: 3
  learning_rate: 1.0e-3
generation:
  temperature: 0.8
"""


def test_every_bundled_recipe_loads():
    recipes = sorted((REPO / "recipes").rglob("*.yaml"))
    assert recipes, "no recipes found"
    for path in recipes:
        if path.parent.name in ("accelerate",):
            continue
        recipe = load_recipe(path)
        assert recipe.model.name


def test_phi3_recipe_mirrors_the_document():
    r = load_recipe(REPO / "recipes/phi3/pretrain.yaml")
    assert r.data.dataset == "Iess/chinese_modern_poetry" and r.data.fallback
    assert r.tokenizer.name == "hfl/chinese-roberta-wwm-ext"
    assert r.training["num_train_epochs"] == 3 and r.training["save_strategy"] == "steps"
    assert r.generation["prompts"] == ["春天来了，", "夜晚的城市，", "远方的山，", "雨后的天空，"]
    for key in ("temperature", "top_k", "top_p", "repetition_penalty", "min_new_tokens", "max_new_tokens"):
        assert key in r.generation


def test_overrides_dotted_and_bare_keys_with_yaml_values(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["training.num_train_epochs=1", "learning_rate=5e-4",
                                            "block_size=64", "run.name=x1", "generation.top_k=5",
                                            "model.overrides={hidden_size: 32}"])
    assert r.training["num_train_epochs"] == 1
    assert r.training["learning_rate"] == pytest.approx(5e-4)
    assert r.data.block_size == 64 and r.run.name == "x1" and r.generation["top_k"] == 5
    assert r.model.overrides == {"hidden_size": 32}
    assert r.run_dir.parts[-2:] == ("demo", "x1")


def test_dotted_override_sets_one_entry_of_a_mapping(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["model.overrides.hidden_size=64", "model.overrides.num_hidden_layers=2",
                                            "model.lora.r=4", "data.columns.title=name"])
    assert r.model.overrides == {"hidden_size": 64, "num_hidden_layers": 2}
    assert r.model.lora == {"r": 4} and r.data.columns == {"title": "name"}
    with pytest.raises(UserError, match="run.name is not a mapping"):
        load_recipe(write(tmp_path, BASE), ["run.name.x=1"])


def test_scientific_notation_string_is_read_as_float(tmp_path):
    r = load_recipe(write(tmp_path, BASE.replace("1.0e-3", "1e-3")))  # YAML 1.1 reads 1e-3 as a string
    assert r.training["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize("text, overrides, expected", [
    (BASE.replace("num_train_epochs", "num_train_epoch"), [], r"r\.yaml:7: unknown key 'training\.num_train_epoch' \(did you mean 'num_train_epochs'\?\)"),
    (BASE + "trainng:\n  seed: 1\n", [], r"r\.yaml:11: unknown section 'trainng' \(did you mean 'training'\?\)"),
    (BASE.replace("learning_rate: 1.0e-3", "learning_rate: fast"), [], r"r\.yaml:8: training\.learning_rate must be float, got 'fast'"),
    (BASE.replace("  fallback:", "  fallbak:"), [], r"r\.yaml:5: unknown key 'data\.fallbak'"),
    (BASE, ["epochs=2"], r"override 'epochs=2': unknown key 'epochs'"),
    (BASE, ["training.lr=2"], r"unknown key 'training\.lr'"),
    (BASE, ["block_size=big"], r"data\.block_size must be int, got 'big'"),
    (BASE, ["learning_rate=-1"], r"training\.learning_rate must be > 0, got -1"),
    (BASE, ["validation_fraction=1.5"], r"data\.validation_fraction must be in \[0, 1\)"),
    (BASE, ["run.precision=fp8"], r"run\.precision must be one of auto, bf16, fp16, fp32"),
    (BASE, ["num_train_epochs"], r"is not key=value"),
    (BASE, ["generation.temperature=0"], r"generation\.temperature must be a number > 0, got 0"),
    (BASE, ["generation.top_p=1.5"], r"generation\.top_p must be a number in \(0, 1\]"),
    (BASE, ["generation.prompts=春天"], r"generation\.prompts must be a list of strings"),
    (BASE.replace("  num_train_epochs: 3", "  num_train_epochs: [3"), [], r"r\.yaml:\d+: invalid YAML"),
    ("model:\n  config: x.json\n", [], r"needs model\.name"),
])
def test_recipe_errors_are_one_line_and_name_the_place(tmp_path, text, overrides, expected):
    with pytest.raises(UserError, match=expected) as info:
        load_recipe(write(tmp_path, text), overrides)
    assert "\n" not in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_saved_recipe_redacts_secrets(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["training.hub_token=hf_abcdefghijklmnop", "stage.api_key=sk-123456"])
    saved = yaml.safe_load(r.to_yaml())
    assert saved["training"]["hub_token"] == REDACTED and saved["stage"]["api_key"] == REDACTED
    assert "hf_abcdefghijklmnop" not in r.to_yaml() and "sk-123456" not in r.to_yaml()
    assert saved["generation"]["temperature"] == 0.8  # ordinary keys untouched


def test_redaction_keeps_tokenizer_fields():
    d = redact_secrets({"pad_token": "<pad>", "max_new_tokens": 5, "tokenizer": {"name": "x"}, "HF_TOKEN": "abc"})
    assert d == {"pad_token": "<pad>", "max_new_tokens": 5, "tokenizer": {"name": "x"}, "HF_TOKEN": REDACTED}


def test_parse_override_values():
    assert parse_override("a=1") == ("a", 1)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=春天来了，") == ("a", "春天来了，")


def test_yaml_yes_no_words_fit_the_field(tmp_path):
    r = load_recipe(write(tmp_path, BASE.replace("training:\n", "training:\n  save_strategy: no\n")), ["eval_strategy=no", "gradient_checkpointing=yes"])
    assert r.training["eval_strategy"] == "no" and r.training["save_strategy"] == "no"
    assert r.training["gradient_checkpointing"] is True


def test_a_variant_extends_a_recipe_key_by_key_and_errors_name_the_file_that_wrote_the_key(tmp_path):
    base = write(tmp_path, BASE)
    variant = tmp_path / "gpu.yaml"
    variant.write_text(f"extends: {base}\nmodel:\n  name: demo-gpu\ntraining:\n  num_train_epochs: 9\n",
                       encoding="utf-8")
    recipe = load_recipe(variant)
    assert recipe.model.name == "demo-gpu" and recipe.model.config == "train_phi3/phi3_config.json"
    assert recipe.training == {"num_train_epochs": 9, "learning_rate": 1.0e-3}  # merged within the section
    assert recipe.where("training.num_train_epochs").endswith("gpu.yaml:5")
    assert recipe.where("training.learning_rate").endswith("r.yaml:8")  # the base file's own line
    assert "extends" not in recipe.to_yaml()  # the saved recipe is the resolved one
    variant.write_text(f"extends: {base}\ntraining:\n  num_train_epoch: 9\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"gpu.yaml:3: unknown key 'training.num_train_epoch' .*did you mean"):
        load_recipe(variant)
    base.write_text(f"extends: {variant}\n" + BASE, encoding="utf-8")
    variant.write_text(f"extends: {base}\n", encoding="utf-8")
    with pytest.raises(UserError, match="a circle"):
        load_recipe(variant)
    variant.write_text("extends: nowhere.yaml\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"gpu.yaml:1: extends nowhere.yaml: recipe not found"):
        load_recipe(variant)
