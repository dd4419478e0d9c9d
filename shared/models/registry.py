"""Models: config (JSON file or Hub id) + overrides -> a transformers model, random or from `model.init_from`;
parameter counts; training FLOPs per token (nanoGPT's estimate: what bench/compare.py and bench/gpu_check.py
report). Also the home of slm's own architectures: importing this module registers them with the Auto classes, so
in any process that did `import shared.models.registry` their checkpoints load with
`AutoModelForCausalLM.from_pretrained(folder)` and generate with `.generate()`, no `trust_remote_code` needed.

    config = models.model_config(recipe)                  # checked before any data is read or model built
    model = models.build_model(recipe, config, tokenizer)  # vocabulary and special ids follow the tokenizer
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from shared.models import gpt  # noqa: F401  (registers slm_gpt and slm_lstm with the Auto classes)
from shared.models import lstm
from shared.config.errors import UserError
from shared.data.hub import load_or_fallback
from shared.config.recipe import Recipe, resolve_path
from shared.config.runs import final_of


def model_config(recipe: Recipe, **fixed):
    """The recipe's JSON config (or Hub config, else its bundled `config_fallback`) + `model.overrides` + `fixed`,
    checked: heads divide the width, dropouts in [0, 1), data.block_size fits the position table."""
    start = starting_point(recipe)
    if isinstance(start, Path):  # fine-tuning one of our runs: its own config
        config = AutoConfig.from_pretrained(str(start), trust_remote_code=recipe.model.trust_remote_code)
        where = str(start / "config.json")
    else:  # from scratch, or a Hub model whose config the recipe names (with a bundled fallback)
        ref = recipe.model.config
        if ref is None:
            raise UserError(f"{recipe.where('model.config')}: model.config is required to build a model")
        if resolve_path(ref).is_file():
            config = config_from_json(ref)
        else:
            config, _ = load_or_fallback(
                "model config", ref, lambda: AutoConfig.from_pretrained(ref, trust_remote_code=recipe.model.trust_remote_code),
                fallback=recipe.model.config_fallback,
                load_fallback=(lambda: config_from_json(recipe.model.config_fallback)) if recipe.model.config_fallback else None,
                fallback_key="model.config_fallback")
        where = ref
    for key, value in {**recipe.model.overrides, **fixed}.items():
        if not hasattr(config, key):
            raise UserError(f"{recipe.where('model.overrides')}: model.overrides.{key} is not a field of "
                            f"{type(config).__name__}")
        setattr(config, key, value)
    check_config(config, where)
    limit = context_length(config)
    if limit is not None and recipe.data.block_size > limit:
        raise UserError(f"{recipe.where('data.block_size')}: data.block_size={recipe.data.block_size} is larger than "
                        f"the model's position table ({limit} positions in {where}); lower data.block_size or raise "
                        f"the config's context length")
    return config


def starting_point(recipe: Recipe) -> Path | str | None:
    """`model.init_from`: a local run/folder (its final/ model), a Hub id, or None (random init)."""
    ref = recipe.model.init_from
    if not ref:
        return None
    if resolve_path(ref).exists() or ref.startswith(("runs/", "./", "../", "/", "~")):
        return final_of(ref, "model.init_from")
    return ref


def context_length(config) -> int | None:
    """How many positions the model has (max_position_embeddings, n_positions, block_size...)."""
    for key in ("max_position_embeddings", "n_positions", "block_size", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def config_from_json(ref: str):
    try:
        data = json.loads(resolve_path(ref).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{ref}:{e.lineno}: malformed JSON ({e.msg})") from None
    except OSError:
        raise UserError(f"model config not found: {ref}") from None
    if "model_type" not in data:
        raise UserError(f"{ref}: the config needs a model_type (e.g. \"phi3\")")
    data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" keys document the file
    try:
        return AutoConfig.for_model(**data)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{ref}: {' '.join(str(e).split())[:200]}") from None


def check_config(config, where: str) -> None:
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if hidden and heads and hidden % heads:
        raise UserError(f"{where}: num_attention_heads={heads} does not divide hidden_size={hidden}")
    kv = getattr(config, "num_key_value_heads", None)
    if heads and kv and heads % kv:
        raise UserError(f"{where}: num_key_value_heads={kv} does not divide num_attention_heads={heads}")
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)) and not 0 <= value < 1:
            raise UserError(f"{where}: {key} must be in [0, 1), got {value} (1.0 would zero every activation)")
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value <= 0:
            raise UserError(f"{where}: {key} must be > 0, got {value}")


def fit_tokenizer(config, tokenizer, multiple: int = 1) -> None:
    """The embedding table follows the tokenizer: len(tokenizer) rows (added tokens included; not vocab_size, which
    leaves them out), rounded up to `multiple` (64 keeps GPU matrix shapes efficient), and its special ids."""
    config.vocab_size = -(-len(tokenizer) // multiple) * multiple
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def build_model(recipe: Recipe, config, tokenizer=None) -> PreTrainedModel:
    """Random init from `config` (vocabulary fitted to `tokenizer`), or the weights of `model.init_from`.

    Create the TrainingArguments first (`train.training_arguments(recipe)`) and keep them: with a DeepSpeed ZeRO-3
    config they make `from_pretrained` / `from_config` build the model already sharded across the GPUs (zero.Init),
    which is what lets a 46.7B model load at all.
    """
    torch.manual_seed(recipe.training.get("seed", 42))
    remote = recipe.model.trust_remote_code
    kwargs = {"attn_implementation": attention(recipe)} if recipe.model.attn_implementation else {}
    if recipe.model.experts_implementation:
        kwargs["experts_implementation"] = recipe.model.experts_implementation
    source = starting_point(recipe)
    if source is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(source), config=config, trust_remote_code=remote, **kwargs)
        except (OSError, ValueError) as e:
            raise UserError(f"model.init_from: cannot load '{recipe.model.init_from}' ({str(e).splitlines()[0]})") from None
        if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            raise UserError(f"model.init_from: {source} has {model.get_input_embeddings().weight.shape[0]} token "
                            f"embeddings but the tokenizer has {len(tokenizer)} tokens: use the tokenizer it was "
                            f"trained with (tokenizer.name: {recipe.model.init_from})")
        return apply_lora(recipe, model)
    if tokenizer is not None:
        fit_tokenizer(config, tokenizer, recipe.model.vocab_multiple)
    return apply_lora(recipe, AutoModelForCausalLM.from_config(config, trust_remote_code=remote, **kwargs))


def attention(recipe: Recipe) -> str:
    """The recipe's attention kernel; flash_attention_2 only where it can run, else one line saying why."""
    choice = recipe.model.attn_implementation
    if choice == "flash_attention_2":
        import importlib.util

        missing = [why for why, ok in (("a CUDA GPU", torch.cuda.is_available()),
                                       ("the flash-attn package", importlib.util.find_spec("flash_attn") is not None))
                   if not ok]
        if missing:
            raise UserError(f"{recipe.where('model.attn_implementation')}: model.attn_implementation="
                            f"flash_attention_2 needs {' and '.join(missing)}; use sdpa (PyTorch's fused attention)")
    return choice


def apply_lora(recipe: Recipe, model: PreTrainedModel) -> PreTrainedModel:
    """Wrap the model with peft LoRA adapters when the recipe has `model.lora` (fewer GPUs, same Trainer path)."""
    if not recipe.model.lora:
        return model
    from peft import LoraConfig, get_peft_model

    try:
        config = LoraConfig(task_type="CAUSAL_LM", **recipe.model.lora)
    except TypeError as e:
        raise UserError(f"{recipe.where('model.lora')}: model.lora: {e}") from None
    if recipe.training.get("activation_checkpointing"):
        model.enable_input_require_grads()
    return get_peft_model(model, config)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"total": total, "trainable": trainable, "embeddings": embeddings}


def describe_parameters(model: torch.nn.Module) -> str:
    n = count_parameters(model)
    text = f"{n['total']:,} ({n['total'] / 1e6:.2f}M); without embedding tables {(n['total'] - n['embeddings']) / 1e6:.2f}M"
    if n["trainable"] != n["total"]:
        text += f"; trainable {n['trainable']:,} ({100 * n['trainable'] / n['total']:.2f}%)"
    return text


def flops_per_token(config, matmul_params: int, context: int) -> float:
    """Training FLOPs per token as nanoGPT's estimate_mfu counts them (PaLM appendix B): 6 N for the matmuls through
    the N parameters a token uses, forward + backward, plus 12 L d T for attention's scores and weighted sum over a
    context of T (none in a model without attention heads, the LSTM)."""
    if not (getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)):
        return 6 * matmul_params
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    width = getattr(config, "hidden_size", None) or config.n_embd
    return 6 * matmul_params + 12 * layers * width * context
