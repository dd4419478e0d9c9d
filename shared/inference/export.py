"""Export a trained run as a folder that loads without slm: `AutoModelForCausalLM.from_pretrained(folder)` in a
process that has only torch + transformers, and the engines that read Hugging Face folders.

    make export MODEL=nanogpt [RUN=finetune] [OUT=exports/nanogpt]   # = python -m shared.inference.export nanogpt --run ...

What each kind of run becomes (default folder: runs/<model>/<run>/export/):
- our GPT (slm_gpt) -> transformers' GPT2LMHeadModel: the same network, written in GPT-2's layout. GPT-2 always has
  biases, so a bias-free GPT gets zero ones; its Conv1D layers store weights transposed relative to our Linear;
  `activation_function: gelu` (the exact GELU we use; GPT-2's default is the tanh approximation);
  `n_positions` = our block_size. The export checks that both give the same logits before it writes anything.
- our LSTM (slm_lstm) -> the same weights, with `auto_map` in config.json and its modelling code (lstm.py and the
  gpt.py it imports) beside them: `trust_remote_code=True` loads it in a bare transformers install.
- transformers' own architectures (Phi-2, Phi-3, Mixtral) are already portable: copied as they are.
- a LoRA run: its merged model (final/merged/, written by training).
Every export keeps the tokenizer with its chat template and the run's decoding preset (generation_config.json).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
import yaml

from shared.inference.chat import with_template
from shared.config import catalog
from shared.config.errors import UserError, run_main
from shared.config.runs import find_run

MODEL_CODE = Path(__file__).resolve().parent.parent / "models"  # lstm.py and gpt.py, copied beside an LSTM export


def gpt2_config(config):
    """Our GPTConfig as a GPT2Config of the same network."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                      n_layer=config.n_layer, n_head=config.n_head, n_inner=4 * config.n_embd,
                      activation_function="gelu", resid_pdrop=config.dropout, embd_pdrop=config.dropout,
                      attn_pdrop=config.dropout, layer_norm_epsilon=config.layer_norm_epsilon,
                      initializer_range=config.initializer_range, tie_word_embeddings=True,
                      bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                      pad_token_id=config.pad_token_id)


def gpt2_state_dict(model) -> dict[str, torch.Tensor]:
    """Our GPT's weights under GPT-2's names: Linear weights transposed for Conv1D, missing biases as zeros."""
    ours = model.state_dict()
    out = {}
    for name, param in ours.items():
        if not name.startswith("transformer."):
            continue  # lm_head is tied to wte, in GPT-2 too
        key = name.removeprefix("transformer.")
        linear = any(key.endswith(f"{part}.weight") for part in ("c_attn", "c_proj", "c_fc"))
        out["transformer." + key] = param.t().contiguous() if linear else param
    width = model.config.n_embd
    for i in range(model.config.n_layer):  # GPT-2 has every bias; nanoGPT's bias=False has none of them
        for part, size in (("ln_1", width), ("ln_2", width), ("attn.c_attn", 3 * width), ("attn.c_proj", width),
                           ("mlp.c_fc", 4 * width), ("mlp.c_proj", width)):
            out.setdefault(f"transformer.h.{i}.{part}.bias", torch.zeros(size))
    out.setdefault("transformer.ln_f.bias", torch.zeros(width))
    return out


def to_gpt2(model):
    """Our GPTForCausalLM as a GPT2LMHeadModel with the same logits (checked on a few random sequences)."""
    from transformers import GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(gpt2_config(model.config)).to(model.dtype)
    missing, unexpected = gpt2.load_state_dict(gpt2_state_dict(model), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GPT -> GPT-2: missing {missing[:4]}, unexpected {unexpected[:4]}")
    gpt2.tie_weights()
    gpt2.generation_config = model.generation_config
    gpt2.eval()
    ids = torch.randint(0, model.config.vocab_size, (2, min(16, model.config.block_size)),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model.eval()(ids).logits.float(), gpt2(ids).logits.float()
    worst = (a - b).abs().max().item()
    if worst > 1e-4 * max(1.0, a.abs().max().item()):
        raise RuntimeError(f"GPT -> GPT-2: logits differ by {worst:.2e}")
    return gpt2


def source_of(final: Path) -> Path:
    """The folder to export: a LoRA run's merged model when final/ holds adapters."""
    if (final / "adapter_config.json").is_file() and not (final / "config.json").is_file():
        if not (final / "merged" / "config.json").is_file():
            raise UserError(f"{final} holds LoRA adapters and no merged model (final/merged/): merge them with peft "
                            f"(AutoPeftModelForCausalLM.from_pretrained(final).merge_and_unload())")
        return final / "merged"
    return final


def export(final: Path, out: Path) -> str:
    """Write the portable folder `out` for the run folder `final`; returns what it became."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from shared.models import registry as models  # noqa: F401  (registers slm_gpt and slm_lstm)

    src = source_of(final)
    config = AutoConfig.from_pretrained(src)
    tmp = out.with_name(f".{out.name}-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if config.model_type == "slm_gpt":
        to_gpt2(AutoModelForCausalLM.from_pretrained(src)).save_pretrained(tmp)
        what = "GPT2LMHeadModel (transformers' GPT-2)"
    else:
        for file in [*src.glob("*.safetensors"), *src.glob("*.safetensors.index.json")]:
            shutil.copy2(file, tmp / file.name)
        for name in ("config.json", "generation_config.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        what = type(config).__name__.removesuffix("Config") + " (transformers' own)"
        if config.model_type == "slm_lstm":
            data = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
            data["auto_map"] = {"AutoConfig": "lstm.LSTMConfig", "AutoModelForCausalLM": "lstm.LSTMForCausalLM"}
            (tmp / "config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            for code in ("lstm.py", "gpt.py"):  # lstm.py imports its shared head from gpt.py
                # without slm's own registration line: the copy loads through auto_map, and loaded into a process
                # that has slm it must not take over the slm_gpt / slm_lstm names; gpt.py is imported from beside it
                text = re.sub(r"^register\(.*$", "# (registered by slm; this copy loads through config.json's "
                              "auto_map)", (MODEL_CODE / code).read_text(encoding="utf-8"), flags=re.M)
                text = text.replace("from shared.models.gpt import", "from .gpt import")
                (tmp / code).write_text(text, encoding="utf-8")
            what = "LSTMForCausalLM with its code (trust_remote_code=True)"
    recipe = yaml.safe_load((src / "recipe.yaml").read_text(encoding="utf-8")) if (src / "recipe.yaml").is_file() else {}
    with_template(AutoTokenizer.from_pretrained(src), (recipe or {}).get("generation") or {}).save_pretrained(tmp)
    if recipe:
        shutil.copy2(src / "recipe.yaml", tmp / "recipe.yaml")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return what


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Export a trained slm run as a folder that loads without slm.")
    parser.add_argument("model", help=f"{catalog.choices()} (or a folder under runs/)")
    parser.add_argument("--run", help="run name under runs/<model>/ (default: $SLM_RUN, else the newest)")
    parser.add_argument("--root", default="runs", help="runs folder (default: runs)")
    parser.add_argument("--out", help="output folder (default: runs/<model>/<run>/export)")
    args = parser.parse_args(argv)
    catalog.check(args.model, args.root)
    final = find_run(args.model, args.run or os.environ.get("SLM_RUN") or None, args.root)
    final = final.parent if final.name == "merged" else final
    out = Path(args.out) if args.out else final.parent / "export"
    what = export(final, out)
    print(f"exported {final} -> {out}: {what}\n  load it: AutoModelForCausalLM.from_pretrained({str(out)!r}"
          + (", trust_remote_code=True)" if "trust_remote_code" in what else ")"), flush=True)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
