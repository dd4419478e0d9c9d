"""Generation shared by every model: run folder -> model + tokenizer -> the model's decoding preset -> text.

The preset is the recipe's `generation` section, saved with the run (final/recipe.yaml, and as the model's own
generation_config.json); command-line `key=value` pairs override it (`temperature=0.7 max_new_tokens=80`), checked
against GenerationConfig like the recipe's own keys; `--prompt` (or the SLM_PROMPT environment variable, which is how
`make generate PROMPT=...` hands text over without a shell re-parsing it) replaces the preset's prompts. Tokens
stream to the terminal as they are produced (except under beam search, which has no single stream).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TextStreamer

from . import REPO_ROOT
from .errors import UserError
from .models import context_length
from .recipe import PRESET_ONLY, check_generation_keys, parse_override, resolve_path


def find_run(model: str, run: str | None = None, root: str | Path = "runs") -> Path:
    """runs/<model>/<run>/final, or the newest final model of that model when `run` is None."""
    base = resolve_path(root) / model
    if run:
        path = Path(run) if Path(run).is_absolute() else base / run
        for candidate in (path / "final", path):
            if (candidate / "config.json").is_file():
                return candidate
        raise UserError(f"run not found: {path} has no final model (train it first: make train-{model})")
    finals = sorted(base.glob("*/final/config.json"), key=lambda p: p.stat().st_mtime)
    if not finals:
        raise UserError(f"no trained {model} model under {base.relative_to(REPO_ROOT) if base.is_relative_to(REPO_ROOT) else base}; "
                        f"train one first: make train-{model}")
    return finals[-1].parent


def damaged_file(path: Path) -> str | None:
    """The first file of a final/ folder that can't be read whole, with what is wrong with it."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        file = path / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                return f"{file} is damaged (not valid JSON: {str(e).splitlines()[0][:80]})"
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        try:
            with open(file, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            end = 8 + n + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError):
            return f"{file} is damaged (unreadable header, {size:,} bytes)"
        if size < end:
            return f"{file} is damaged (truncated: {size:,} of {end:,} bytes)"
    return None


def load(path: Path):
    """Model (on GPU when there is one), tokenizer and the resolved recipe saved with the run."""
    recipe = {}
    if (path / "recipe.yaml").is_file():
        recipe = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8")) or {}
    trust_remote_code = bool((recipe.get("model") or {}).get("trust_remote_code"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:
        problem = damaged_file(path)
        if problem is None:
            raise
        raise UserError(f"{problem}: rerun the stage that wrote it (it rebuilds final/ from its last complete "
                        f"checkpoint), or delete {path.parent} and train again") from e
    return model.to(device).eval(), tok, recipe


def generation_config(preset: dict, tokenizer, where: str = "generation preset") -> GenerationConfig:
    """The preset (prompts aside) as a GenerationConfig with the tokenizer's special ids; bad values: one line."""
    check_generation_keys(preset, where)
    kwargs = {k: v for k, v in preset.items() if k not in PRESET_ONLY}
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    if tokenizer.bos_token_id is not None:
        kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
    try:
        config = GenerationConfig(**kwargs)
        config.validate()  # flags that don't apply (length_penalty without beams) only warn
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    return config


def generate(model, tokenizer, prompt: str, preset: dict, stream: bool = False) -> str:
    """Complete `prompt` with the preset; returns the prompt plus its continuation, as text."""
    config = generation_config(preset, tokenizer)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]])
    limit = context_length(model.config)
    if limit is not None:
        if ids.shape[1] >= limit:
            raise UserError(f"prompt is {ids.shape[1]} tokens, the model's context is {limit}; shorten the prompt")
        room = limit - ids.shape[1]
        if config.max_length is not None and "max_new_tokens" not in preset:
            config.max_length = min(config.max_length, limit)
        if (config.max_new_tokens or 0) > room:
            config.max_new_tokens = room
        if config.min_new_tokens and config.min_new_tokens > room:
            config.min_new_tokens = room
    ids = ids.to(model.device)
    streamer = None
    if stream and (config.num_beams or 1) == 1:
        print(prompt, end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=streamer)
    text = prompt + tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    if stream and streamer is None:
        print(text, flush=True)
    elif stream:
        print(flush=True)
    return text


def samples_markdown(model, tokenizer, preset: dict, seed: int = 0) -> str:
    """Generate every preset prompt (seeded) and format them for train_log.md."""
    torch.manual_seed(seed)
    blocks = []
    for prompt in preset.get("prompts", []):
        text = generate(model, tokenizer, prompt, preset)
        blocks.append(f"**{prompt}**\n\n```text\n{text.strip()}\n```")
    return "\n\n".join(blocks) or "(the preset has no prompts)"


def run_parser(description: str, model_name: str | None, models: str) -> argparse.ArgumentParser:
    """The arguments every command that opens a trained run shares (generate, chat, the web UI)."""
    parser = argparse.ArgumentParser(description=description)
    if model_name is None:
        parser.add_argument("model", help=models)
    parser.add_argument("--run", default=os.environ.get("SLM_RUN") or None,
                        help="run name under runs/<model>/ or a folder (default: newest)")
    parser.add_argument("--root", default="runs", help="runs folder (default: runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="generation key=value (e.g. temperature=0.7)")
    return parser


def preset_overrides(args, where: str) -> dict:
    """The command line's generation key=value pairs, checked against GenerationConfig before anything loads."""
    overrides = dict(parse_override(text) for text in args.overrides)
    overrides = {key.removeprefix("generation."): value for key, value in overrides.items()}
    check_generation_keys(overrides, where)
    return overrides


def open_run(args, model_name: str | None, overrides: dict):
    """(final folder, model, tokenizer, preset = the run's recipe preset + the command line's overrides)."""
    path = find_run(model_name or args.model, args.run, args.root)
    model, tok, recipe = load(path)
    torch.manual_seed(args.seed)
    return path, model, tok, {**(recipe.get("generation") or {}), **overrides}


def main(argv: list[str], model_name: str | None = None) -> None:
    parser = run_parser("Generate with a trained slm model and its decoding preset.", model_name,
                        "phi3 | mixtral | phi2 | nanogpt | minigl")
    parser.add_argument("--prompt", action="append",
                        help="prompt (repeatable; default: $SLM_PROMPT, else the preset's prompts)")
    args = parser.parse_args(argv)
    path, model, tok, preset = open_run(args, model_name, preset_overrides(args, "generate"))
    prompts = args.prompt or ([os.environ["SLM_PROMPT"]] if os.environ.get("SLM_PROMPT") else None) \
        or preset.get("prompts") or [""]
    print(f"model: {path}  |  preset: " + ", ".join(f"{k}={v}" for k, v in preset.items() if k != "prompts"), flush=True)
    for prompt in prompts:
        print("-" * 60, flush=True)
        generate(model, tok, prompt, preset, stream=True)
