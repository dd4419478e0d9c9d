"""Recipes: one YAML file per model and stage (`recipes/<model>/<stage>.yaml`) -> typed, validated config objects.

A recipe has these sections (all optional except `model`):

    model:      which model, its config file, config overrides, weights to start from
    tokenizer:  Hub tokenizer, or a fallback trained on the run's corpus
    data:       Hub dataset / local file / folder, bundled fallback, column mapping, template, block size
    training:   any `transformers.TrainingArguments` field
    generation: prompts + any `transformers.GenerationConfig` field (the model's decoding preset)
    run:        run name, output root, resume policy, precision
    stage:      settings of a stage that is not a trainer (cleaning, tokenizer, bins, RAG...), validated against
                the dataclass that stage's script declares
    trainer:    (a scalar) lm | sft | dpo: transformers.Trainer, trl.SFTTrainer or trl.DPOTrainer; `training` is
                then validated against TrainingArguments, trl.SFTConfig or trl.DPOConfig

A key written twice in one mapping is an error naming both lines (YAML would silently keep the last one).
`extends: <recipe.yaml>` at the top makes a variant: that recipe's sections, with this file's keys laid over them.
Overrides are `key=value` strings: `training.num_train_epochs=1`, or just `num_train_epochs=1` when the key name
is unique across sections. Values are parsed as YAML (`1`, `1e-4`, `true`, `[a, b]`, `null`). Unknown or mistyped
keys and wrong types are errors that name the file, the line and the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared import REPO_ROOT
from shared.config.errors import UserError
from shared.config.files import display_path

# key names whose values are secrets: token, hub_token, HF_TOKEN, WANDB_API_KEY, db_password, client_secret...
SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|access_key|credentials?)$", re.I)
SPECIAL_TOKEN_KEY = re.compile(r"^(pad|eos|bos|unk|sep|cls|mask)_token$", re.I)  # tokenizer fields, not secrets
REDACTED = "***redacted***"


def is_secret_key(key: object) -> bool:
    return bool(SECRET_KEY.search(str(key))) and not SPECIAL_TOKEN_KEY.match(str(key))


@dataclass
class ModelArgs:
    name: str  # folder under runs/ and the key `make generate MODEL=...` looks for
    config: str | None = None  # JSON model config (repo-relative path) or Hub id
    config_fallback: str | None = None  # bundled JSON used when `config` is a Hub id and the Hub can't be reached
    overrides: dict = field(default_factory=dict)  # config fields that replace the JSON's
    init_from: str | None = None  # weights to start from (run folder, local path or Hub id); None = random init
    trust_remote_code: bool = False  # never on unless a recipe asks for it
    lora: dict | None = None  # peft LoraConfig fields; None = full fine-tune
    attn_implementation: str | None = None  # sdpa | eager | flash_attention_2 (needs flash-attn and a GPU)
    experts_implementation: str | None = None  # MoE models: grouped_mm | batched_mm | eager (None: transformers')
    vocab_multiple: int = 1  # embedding rows rounded up to a multiple of this (64: the Phi-2 and nanoGPT configs)


@dataclass
class TokenizerArgs:
    name: str | None = None  # Hub id or local folder
    fallback: str = "bpe"  # "bpe": train a byte-level BPE on the run's corpus when `name` can't load; "none": fail
    vocab_size: int = 8000  # size of the fallback tokenizer
    min_frequency: int = 1  # 1: every character of a small corpus gets its token (vocab_size still caps merges)
    special_tokens: list[str] = field(default_factory=list)  # extra special tokens (e.g. <user>, <end>): never split


@dataclass
class DataArgs:
    dataset: str | None = None  # Hub dataset id
    subset: str | None = None  # Hub dataset config name
    split: str = "train"
    path: str | None = None  # local file (jsonl/json/txt/csv/parquet) or folder; wins over `dataset`
    bins: str | None = None  # a token-bin stage's output (train.bin/val.bin/meta.json): random windows instead
    fallback: str | None = None  # bundled local data used when the Hub dataset can't be loaded
    fallback_template: str | None = None  # the fallback's own layout, when it differs from the Hub dataset's
    columns: dict[str, str] = field(default_factory=dict)  # template field -> column of the source
    template: str = "{text}"  # how one record becomes one training text (trainer: lm)
    templates: dict[str, str] = field(default_factory=dict)  # sft {prompt, completion}, dpo {prompt, chosen, rejected}
    validation_fraction: float = 0.1
    block_size: int = 256  # tokens per training sequence
    add_bos: bool = False  # start every document with the tokenizer's BOS (every document always ends with EOS)
    strip: bool = True  # strip spaces and line breaks around each field's value (false: byte for byte, e.g. the
    #                     prompts an earlier stage wrote, whose answer marker ends in a line break)
    max_samples: int | None = None  # cap on records, for quick runs
    max_chars: int = 200_000  # a record longer than this is an error (catches a whole file on one line)
    eval_subset: int | None = 256  # evaluations during training use this many validation samples (seeded);
    #                                the final evaluation all of them (within eval_max_tokens). null: all of it
    eval_max_tokens: int | None = 50_000  # the validation split is cut to about this many tokens (a seeded choice
    #                                        spread over it), so evaluating a huge corpus takes minutes, not hours
    num_proc: int | None = None  # tokenising processes; null: one per core (at most 8) for >= 20k records


@dataclass
class RunArgs:
    name: str = "default"  # runs/<model>/<name>/
    output_root: str = "runs"
    resume: str = "auto"  # auto: newest complete checkpoint, or fresh | never | <checkpoint folder>
    precision: str = "auto"  # auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU | bf16 | fp16 | fp32
    replace: bool = False  # replace a final/ that other runs were built from with another recipe's (REPLACE=yes)


SECTION_TYPES = {"model": ModelArgs, "tokenizer": TokenizerArgs, "data": DataArgs, "run": RunArgs}
FREE_SECTIONS = ("training", "generation", "stage")  # checked against TrainingArguments/SFTConfig/DPOConfig,
#                                                      GenerationConfig, and the stage script's own dataclass
# generation keys that are ours, not GenerationConfig fields; answer_no_repeat_ngram_size: no n-gram of the generated
# tokens twice (GenerationConfig's no_repeat_ngram_size also bans the prompt's n-grams, so nothing can be quoted)
PRESET_ONLY = ("prompts", "chat_format", "answer_no_repeat_ngram_size")
ALL_SECTIONS = ("trainer",) + tuple(SECTION_TYPES) + FREE_SECTIONS
CHOICES = {
    ("tokenizer", "fallback"): ("bpe", "none"),
    ("run", "precision"): ("auto", "bf16", "fp16", "fp32"),
    ("model", "attn_implementation"): (None, "sdpa", "eager", "flash_attention_2"),
    ("model", "experts_implementation"): (None, "grouped_mm", "batched_mm", "eager"),
}


@dataclass
class Recipe:
    source: str
    model: ModelArgs
    tokenizer: TokenizerArgs
    data: DataArgs
    run: RunArgs
    training: dict
    generation: dict
    stage: Any = None  # an instance of the stage script's dataclass (a plain dict when no class was given)
    trainer: str = "lm"
    lines: dict = field(default_factory=dict, repr=False)  # "section.key" -> "file:line" it was written at

    def where(self, key: str) -> str:
        return self.lines.get(key) or self.source

    @property
    def run_dir(self) -> Path:
        root = Path(self.run.output_root)
        root = root if root.is_absolute() else REPO_ROOT / root
        return root / self.model.name / self.run.name

    def to_dict(self, redact: bool = True) -> dict:
        out: dict[str, Any] = {"trainer": self.trainer}
        out.update({name: dataclasses.asdict(getattr(self, name)) for name in SECTION_TYPES})
        out.update(training=dict(self.training), generation=dict(self.generation))
        if self.stage is not None:
            out["stage"] = dataclasses.asdict(self.stage) if dataclasses.is_dataclass(self.stage) else dict(self.stage)
        return redact_secrets(out) if redact else out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False)


def redact_secrets(obj: Any) -> Any:
    """Replace values of secret-looking keys (token, api_key, password...) so they never reach disk or logs."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "", False) else redact_secrets(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_secrets(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------------------
# type checking of values against dataclass annotations


TRAINERS = {"lm": ("transformers", "Trainer", "TrainingArguments"), "sft": ("trl", "SFTTrainer", "SFTConfig"),
            "dpo": ("trl", "DPOTrainer", "DPOConfig")}


def trainer_classes(kind: str) -> tuple[type, type]:
    """A trainer kind's (trainer class, config class): the config class validates the recipe's `training` section
    and receives it. Imported on demand (trl is slow to import)."""
    import importlib

    module, trainer, config = TRAINERS[kind]
    module = importlib.import_module(module)
    return getattr(module, trainer), getattr(module, config)


def training_config_class(kind: str) -> type:
    return trainer_classes(kind)[1]


def dataclass_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def generation_fields() -> set[str]:
    from transformers import GenerationConfig

    return set(GenerationConfig().to_dict()) | {*PRESET_ONLY, "max_new_tokens", "min_new_tokens"}


def check_generation_keys(keys, where: str) -> None:
    """A key GenerationConfig doesn't know (`temprature`) is an error with a did-you-mean, wherever it comes from."""
    known = generation_fields()
    for key in keys:
        if key not in known:
            raise UserError(f"{where}: unknown generation key '{key}'{_suggest(str(key), sorted(known))}")


def _accepts(tp: Any, value: Any) -> bool:
    if tp is Any or value is None and _is_optional(tp):
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(t, value) for t in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, str) and value in {m.value for m in tp}
    if origin is list and len(typing.get_args(tp)) == 1:  # list[str]: every item too
        return isinstance(value, (list, tuple)) and all(_accepts(typing.get_args(tp)[0], v) for v in value)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict and len(typing.get_args(tp)) == 2:  # dict[str, str]: every entry too
        return isinstance(value, dict) and all(_accepts(typing.get_args(tp)[1], v) for v in value.values())
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # exotic annotation: let the consumer validate


def _wrong_entry(tp: Any, value: Any) -> tuple[str, Any, Any] | None:
    """The entry of a list[X] / dict[str, X] value that isn't an X, as (`.key` or `[i]`, X, the entry), so the
    error names it (`data.templates.prompt must be str`) rather than the whole mapping."""
    if _is_optional(tp):  # dict[str, str] | None
        tp = next(t for t in typing.get_args(tp) if t is not type(None))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return next(((f".{k}", args[1], v) for k, v in value.items() if not _accepts(args[1], v)), None)
    if origin is list and len(args) == 1 and isinstance(value, (list, tuple)):
        return next(((f"[{i}]", args[0], v) for i, v in enumerate(value) if not _accepts(args[0], v)), None)
    return None


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any) -> Any:
    """Fix YAML 1.1's harmless surprises before checking: `1e-4` is a string, `no` is False."""
    if isinstance(value, bool) and not _accepts(tp, value) and _accepts(tp, "no"):
        return "yes" if value else "no"  # eval_strategy: no
    if isinstance(value, str) and value.lower() in YAML_BOOLS and not _accepts(tp, value) and _accepts(tp, True):
        return YAML_BOOLS[value.lower()]
    if isinstance(value, str) and not _accepts(tp, value):
        try:
            as_float = float(value)
        except ValueError:
            return value
        if _accepts(tp, as_float):
            return as_float
    return value


# ----------------------------------------------------------------------------------------------------------------
# loading


def _line_map(node: yaml.Node, shown: str, prefix: str = "", out: dict | None = None) -> dict:
    """"section.key" -> line number; a key written twice in one mapping is an error naming both lines."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UserError(f"{shown}:{line}: duplicate key '{key}' (first at line {seen[key]}); "
                                f"YAML would silently keep the last value: delete one of them")
            seen[key] = line
            out.setdefault(key, line)
            if isinstance(value_node, yaml.MappingNode):  # nested mappings are checked for duplicates too
                _line_map(value_node, shown, key + ".", out)
    return out


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    close = close or [o for o in options if o in word.split("_")]  # top_k -> k: a key that is a part of the word
    return f" (did you mean '{close[0]}'?)" if close else ""


YAML_BOOLS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not key=value (e.g. training.num_train_epochs=1)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"override '{text}' has an empty key")
    if raw.strip().lower() in ("yes", "no", "on", "off"):
        return key, raw.strip()  # a word here (eval_strategy=no); _coerce makes it a bool where a bool is wanted
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _resolve_key(key: str, known: dict[str, set[str]], where: str) -> tuple[str, str]:
    """`training.lr` -> (section, field); a bare field name must be unique across the sections."""
    if key == "trainer":
        return "trainer", ""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in known:
            raise UserError(f"{where}: unknown section '{section}' in '{key}'{_suggest(section, list(known))}; "
                            f"sections are {', '.join(ALL_SECTIONS)}")
        if name in known[section]:
            return section, name
        raise UserError(f"{where}: unknown key '{key}'{_suggest(name, sorted(known[section]))}")
    owners = [s for s, names in known.items() if not isinstance(names, _Anything) and key in names]
    if len(owners) == 1:
        return owners[0], key
    if len(owners) > 1:
        raise UserError(f"{where}: key '{key}' is ambiguous; write one of {', '.join(f'{s}.{key}' for s in owners)}")
    every = sorted({n for names in known.values() if not isinstance(names, _Anything) for n in names})
    raise UserError(f"{where}: unknown key '{key}'{_suggest(key, every)}")


def _read_yaml(path: Path, shown: str) -> tuple[dict, dict]:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{shown}{line}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{shown}: a recipe is a mapping of sections ({', '.join(ALL_SECTIONS)})")
    return raw, (_line_map(node, shown) if node is not None else {})


def _read_recipe(path: Path, seen: tuple = (), via: str | None = None) -> tuple[dict, dict]:
    """(sections, "section.key" -> "file:line"); `extends: <recipe>` at the top reads that recipe first and lays
    this file's keys over it, key by key within each section (a variant names only what it changes)."""
    shown = display_path(path)
    if not path.is_file():
        raise UserError(f"{via}: extends {shown}: recipe not found" if via else f"recipe not found: {shown}")
    raw, numbers = _read_yaml(path, shown)
    lines = {key: f"{shown}:{n}" for key, n in numbers.items()}
    if "extends" not in raw:
        return raw, lines
    base, here = raw.pop("extends"), lines.pop("extends")
    if not isinstance(base, str):
        raise UserError(f"{here}: extends must name one recipe file, got {base!r}")
    if resolve_path(base).resolve() in (*seen, path.resolve()):
        raise UserError(f"{here}: extends {base}, which extends this file again (a circle)")
    merged, merged_lines = _read_recipe(resolve_path(base), (*seen, path.resolve()), here)
    for section, body in raw.items():
        both = isinstance(body, dict) and isinstance(merged.get(section), dict)
        merged[section] = {**merged[section], **body} if both else body
    return merged, {**merged_lines, **lines}


def load_recipe(path: str | Path, overrides: list[str] | None = None, stage: type | None = None) -> Recipe:
    """Read a recipe YAML, apply `key=value` overrides, check every key and type; raise UserError otherwise.

    `stage`: the dataclass a non-training stage's script declares for the recipe's `stage:` section.
    """
    path = Path(path)
    shown = display_path(path)
    raw, lines = _read_recipe(path)

    def where(key: str) -> str:
        return lines.get(key, shown)

    overrides = [parse_override(o) + (o,) for o in overrides or []]
    kind = next((v for k, v, _ in reversed(overrides) if k == "trainer"), raw.get("trainer", "lm"))
    if kind not in TRAINERS:
        raise UserError(f"{where('trainer')}: trainer must be one of {', '.join(TRAINERS)}, got {kind!r}")
    training_cls = training_config_class(kind)
    training_fields = dataclass_fields(training_cls)
    stage_fields = dataclass_fields(stage) if stage is not None else None
    known: dict[str, set[str]] = {s: {f.name for f in dataclasses.fields(t)} for s, t in SECTION_TYPES.items()}
    known["training"] = set(training_fields)
    known["generation"] = generation_fields()
    known["stage"] = set(stage_fields) if stage_fields is not None else _Anything()  # checked by its script

    sections: dict[str, dict] = {}
    for section, body in raw.items():
        if section == "trainer":
            continue
        if section not in known:
            raise UserError(f"{where(section)}: unknown section '{section}'{_suggest(str(section), list(known))}; "
                            f"sections are {', '.join(ALL_SECTIONS)}")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise UserError(f"{where(section)}: section '{section}' must be a mapping of key: value")
        for key in body:
            if key not in known[section]:
                raise UserError(f"{where(f'{section}.{key}')}: unknown key '{section}.{key}'"
                                + (f" for trainer {kind} ({training_cls.__name__})"
                                   if section == "training" and key in _other_trainers_fields(kind) else "")
                                + _suggest(str(key), sorted(known[section])))
        sections[section] = dict(body)

    for key, value, text_override in overrides:
        sub = None
        if key.count(".") == 2 and key.split(".")[0] in SECTION_TYPES:  # model.overrides.hidden_size=64
            key, sub = key.rsplit(".", 1)
        section, name = _resolve_key(key, known, f"override '{text_override}'")
        if section == "trainer":
            continue
        if sub is not None:
            current = sections.setdefault(section, {}).get(name) or {}
            if not isinstance(current, dict) or not _accepts(typing.get_type_hints(SECTION_TYPES[section])[name], {}):
                raise UserError(f"override '{text_override}': {section}.{name} is not a mapping")
            value = {**current, sub: value}
        sections.setdefault(section, {})[name] = value
        lines[f"{section}.{name}"] = f"override '{text_override}'"  # errors name the override, not the file

    if "model" not in sections or "name" not in sections["model"]:
        raise UserError(f"{shown}: the recipe needs model.name")

    def typed(section: str, body: dict, hints: dict) -> dict:
        for key, value in list(body.items()):
            value = body[key] = _coerce(hints[key], value)
            if not _accepts(hints[key], value):
                sub, tp, got = _wrong_entry(hints[key], value) or ("", hints[key], value)
                hint = " (a value in {} or [] is read as YAML: quote it to mean text)" \
                    if isinstance(got, (dict, list)) and _accepts(tp, "") else ""
                raise UserError(f"{where(f'{section}.{key}')}: {section}.{key}{sub} must be {_type_name(tp)}, "
                                f"got {got!r}{hint}")
            choices = CHOICES.get((section, key))
            if choices and value not in choices:
                raise UserError(f"{where(f'{section}.{key}')}: {section}.{key} must be one of "
                                f"{', '.join('null' if c is None else c for c in choices)}, got {value!r}"
                                + _suggest(str(value), [c for c in choices if c]))
        return body

    built = {section: cls(**typed(section, sections.get(section, {}), typing.get_type_hints(cls)))
             for section, cls in SECTION_TYPES.items()}
    training = typed("training", sections.get("training", {}), training_fields)
    if "output_dir" in training:
        raise UserError(f"{where('training.output_dir')}: training.output_dir is not used: a run is written to "
                        f"<run.output_root>/<model.name>/<run.name>/; set run.output_root and run.name (RUN=) instead")
    stage_body = sections.get("stage")
    if stage is not None:
        stage_body = stage(**typed("stage", stage_body or {}, stage_fields))
    recipe = Recipe(source=shown, training=training, generation=sections.get("generation", {}), stage=stage_body,
                    trainer=kind, lines=lines, **built)
    check_values(recipe)
    return recipe


class _Anything(set):
    """The keys of a `stage:` section read without its script's dataclass (e.g. by `make generate`)."""

    def __contains__(self, item: object) -> bool:
        return True


def _other_trainers_fields(kind: str) -> set[str]:
    """Fields another trainer kind has (a DPO key in an LM recipe): named as such in the error."""
    return {name for other in TRAINERS if other != kind for name in dataclass_fields(training_config_class(other))}


def check_values(recipe: Recipe) -> None:
    """Values that type-check but can't be right."""
    t, d = recipe.training, recipe.data

    def bad(key: str, msg: str) -> UserError:
        return UserError(f"{recipe.where(key)}: {key} {msg}")

    if t.get("learning_rate", 1) <= 0:
        raise bad("training.learning_rate", f"must be > 0, got {t['learning_rate']}")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if key in t and t[key] < 1:
            raise bad(f"training.{key}", f"must be >= 1, got {t[key]}")
    if "num_train_epochs" in t and t["num_train_epochs"] <= 0 and t.get("max_steps", -1) <= 0:
        raise bad("training.num_train_epochs", f"must be > 0 (or set max_steps), got {t['num_train_epochs']}")
    if not 0 <= t.get("weight_decay", 0) < 1:
        raise bad("training.weight_decay", f"must be in [0, 1), got {t['weight_decay']}")
    if not 0 <= d.validation_fraction < 1:
        raise bad("data.validation_fraction", f"must be in [0, 1), got {d.validation_fraction}")
    if d.block_size < 2:
        raise bad("data.block_size", f"must be >= 2, got {d.block_size}")
    if recipe.tokenizer.vocab_size < 300:
        raise bad("tokenizer.vocab_size", f"must be >= 300 (256 bytes + specials), got {recipe.tokenizer.vocab_size}")
    if recipe.generation:
        from transformers import GenerationConfig

        prompts = recipe.generation.get("prompts", [])
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise bad("generation.prompts", "must be a list of strings")
        g = recipe.generation
        for key, ok, rule in (("temperature", lambda v: v > 0, "> 0"), ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
                              ("top_k", lambda v: v >= 0, ">= 0"), ("num_beams", lambda v: v >= 1, ">= 1"),
                              ("repetition_penalty", lambda v: v > 0, "> 0"), ("max_new_tokens", lambda v: v >= 1, ">= 1"),
                              ("max_length", lambda v: v >= 1, ">= 1"),
                              ("answer_no_repeat_ngram_size", lambda v: v >= 0 and v == int(v), "an integer >= 0")):
            if key in g and not (isinstance(g[key], (int, float)) and not isinstance(g[key], bool) and ok(g[key])):
                raise bad(f"generation.{key}", f"must be a number {rule}, got {g[key]!r}")
        try:
            GenerationConfig(**{k: v for k, v in g.items() if k not in PRESET_ONLY}).validate()
        except (ValueError, TypeError) as e:
            raise UserError(f"{recipe.where('generation')}: generation: {' '.join(str(e).split())}") from None
    if not re.fullmatch(r"[A-Za-z0-9._-]+", recipe.run.name):
        raise bad("run.name", f"must be letters, digits, '.', '_' or '-', got {recipe.run.name!r}")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", recipe.model.name):
        raise bad("model.name", f"must be letters, digits, '.', '_' or '-', got {recipe.model.name!r}")


def resolve_path(path: str | Path) -> Path:
    """Recipe paths are relative to the repository root, so scripts work from any working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p
