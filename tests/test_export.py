"""Portable checkpoints: our GPT as transformers' GPT2LMHeadModel (equal logits, with and without biases), the LSTM
with its own code (trust_remote_code), a LoRA run's merged model; and (slow) the exported folders loaded and
generating in a fresh venv that holds only torch + transformers and what they require, not slm."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TINY_PHI3, FakeTrainer, run
from shared.models.gpt import GPTConfig, GPTForCausalLM


def random_gpt(bias: bool, seed: int = 0, vocab: int = 300) -> GPTForCausalLM:
    """A small GPT whose every parameter is random, biases and LayerNorms included (the init zeroes biases and
    sets LayerNorm weights to one, which would hide a wrong mapping), weights large enough for activations of order
    one, where the exact and the tanh GELU differ."""
    torch.manual_seed(seed)
    model = GPTForCausalLM(GPTConfig(vocab_size=vocab, block_size=48, n_layer=2, n_head=2, n_embd=32, bias=bias,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.2)
            else:
                p.normal_(0.0, 0.2)
    return model.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_our_gpt_exports_to_gpt2_with_the_same_logits(bias):
    from shared.inference.export import to_gpt2

    ours = random_gpt(bias)
    gpt2 = to_gpt2(ours)
    assert type(gpt2).__name__ == "GPT2LMHeadModel"
    assert gpt2.config.n_positions == 48 and gpt2.config.activation_function == "gelu"
    ids = torch.randint(0, 300, (3, 48), generator=torch.Generator().manual_seed(1))  # every position
    with torch.no_grad():
        a, b = ours(ids).logits, gpt2(ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    zero = [n for n, p in gpt2.named_parameters() if n.endswith("bias") and not p.any()]
    assert bool(zero) == (not bias)  # a bias-free GPT: GPT-2's biases are zeros; a biased one keeps its own
    with torch.no_grad():
        ours.transformer.h[0].mlp.gelu.approximate = "tanh"  # GPT-2's default GELU instead of the exact one
        assert not torch.allclose(ours(ids).logits, b, atol=1e-4)  # the comparison can tell them apart


def save_run(final: Path, model, texts: list[str], generation: dict) -> Path:
    """A run's final/ as training writes it: weights + the preset, tokenizer, recipe.yaml."""
    from shared.inference.generate import generation_config
    from shared.data.tokenizer import train_bpe

    tok = train_bpe(iter([texts * 4]), model.config.vocab_size, 1, final.parent / ".tok")
    assert len(tok) <= model.config.vocab_size
    model.generation_config = generation_config(generation, tok)
    model.save_pretrained(final)
    tok.save_pretrained(final)
    (final / "recipe.yaml").write_text(yaml.safe_dump({"generation": generation}), encoding="utf-8")
    return final


def lstm(seed: int = 0):
    from shared.models.lstm import LSTMConfig, LSTMForCausalLM

    torch.manual_seed(seed)
    return LSTMForCausalLM(LSTMConfig(vocab_size=300, n_embd=32, n_layer=2, block_size=64, bos_token_id=0,
                                      eos_token_id=0, pad_token_id=1)).eval()


TEXTS = ["Question: 苇川在哪里？\nAnswer:\n苇川在河的东岸。", "Question: 老街叫什么？\nAnswer:\n老街叫望河街。"]
PRESET = {"do_sample": True, "temperature": 0.8, "top_k": 50, "max_new_tokens": 12,
          "chat_format": {"user": "Question: {text}\nAnswer:\n", "end": "<|endoftext|>"}}


def test_the_lstm_exports_with_its_code_and_loads_with_trust_remote_code(tmp_path):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from shared.inference.export import export

    final = save_run(tmp_path / "runs/minigl/lstm/final", lstm(), TEXTS, PRESET)
    assert "LSTMForCausalLM" in export(final, tmp_path / "out")
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "lstm.LSTMForCausalLM"
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"lstm.py", "gpt.py", "model.safetensors", "chat_template.jinja", "generation_config.json"} <= files
    # in this process slm's registration wins over auto_map: load the folder's own copy of the code explicitly
    # (the fresh-venv test below loads it through AutoModelForCausalLM, trust_remote_code=True)
    cls = get_class_from_dynamic_module("lstm.LSTMForCausalLM", str(tmp_path / "out"))
    assert cls.__module__.startswith("transformers_modules") and cls is not type(lstm())
    loaded = cls.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, lstm()(ids).logits)


def test_a_lora_run_gets_a_merged_model_that_serves_like_the_others(tmp_path):
    """save_final on a peft LoRA model (B initialised non-zero, so the adapters change the output): final/ keeps
    the adapters, final/merged/ is the full model with the same logits, and find_run / export / serve use it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM

    from shared.inference import serve
    from shared.inference.export import export
    from shared.config.runs import find_run
    from shared.config.recipe import load_recipe
    from shared.training.train import save_final

    torch.manual_seed(0)
    base = Phi3ForCausalLM(Phi3Config(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                      pad_token_id=1, eos_token_id=0, bos_token_id=0))
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False))
    recipe = load_recipe(REPO / "recipes/phi3/pretrain.yaml", [f"run.output_root={tmp_path}", "run.name=lora",
                                                                "model.lora.r=4"])
    final = save_final(FakeTrainer(lora), tokenizer(tmp_path), recipe)
    assert (final / "adapter_config.json").is_file() and (final / "merged" / "config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(final / "merged").eval()
    assert type(merged).__name__ == "Phi3ForCausalLM" and not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, lora.eval()(ids).logits, atol=1e-5, rtol=1e-5)
        with lora.disable_adapter():
            assert not torch.allclose(merged(ids).logits, lora(ids).logits)  # the adapters do change the output
    assert find_run("phi3", "lora", tmp_path) == final / "merged"
    assert serve.open_served("phi3", "lora", str(tmp_path)).name == "phi3/lora"
    assert "Phi3" in export(final, tmp_path / "out")


@pytest.mark.slow
def test_a_lora_training_run_writes_its_merged_model_and_generates_from_it(tmp_path):
    run(["train_phi3/train.py", *TINY_PHI3, f"run.output_root={tmp_path}", "run.name=lora", "training.max_steps=2",
         "model.lora={r: 4, target_modules: [qkv_proj, o_proj]}"])
    final = tmp_path / "phi3" / "lora" / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").is_file()
    assert (final / "merged" / "model.safetensors").is_file() and (final / "merged" / "recipe.yaml").is_file()
    proc = run(["train_phi3/generate.py", "--root", str(tmp_path), "--run", "lora", "--prompt", "春天",
                "max_new_tokens=4"])
    assert "lora/final/merged" in proc.stdout and "春天" in proc.stdout


def tokenizer(folder: Path):
    from shared.data.tokenizer import train_bpe

    return train_bpe(iter([TEXTS * 4]), 300, 1, folder / ".tok")


# ----------------------------------------------------------------------------------------------------------------
# a fresh venv: torch + transformers and their requirements, nothing else


def requirement_closure(names: list[str]) -> list[importlib.metadata.Distribution]:
    """These distributions and, recursively, what they require (markers evaluated here, no extras)."""
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional requirement this machine doesn't need (its marker said so)
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def bare_venv(folder: Path) -> Path:
    """`python -m venv` (no system site-packages, no pip) whose site-packages links the installed files of torch,
    transformers and their requirements only: no slm, trl, peft, accelerate... Offline and quick."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python*/site-packages"))
    for dist in requirement_closure(["torch", "transformers"]):
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    return folder / "bin" / "python"


FRESH = """
import importlib.util, json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
assert not [m for m in ("shared", "trl", "peft", "accelerate") if importlib.util.find_spec(m)], "not a bare venv"
out = {}
for name, folder, prompt in json.loads(sys.argv[1]):
    remote = name == "lstm"  # its config names its own code (auto_map): both loaders are told to trust it
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False)[0, ids.shape[1]:]  # the preset
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    out[name] = {"class": type(model).__name__, "text": prompt + tok.decode(new, skip_special_tokens=True),
                 "chat": chat}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_exports_load_and_generate_in_a_fresh_venv_like_make_generate(tmp_path):
    """`make export` of a GPT run and an LSTM run; a venv with only torch + transformers loads both and generates
    greedily exactly what `make generate` (shared.inference.generate.generate, do_sample=false) writes with slm."""
    from shared.config.runs import find_run
    from shared.inference.generate import generate, load

    root = tmp_path / "runs"
    save_run(root / "nanogpt/gpt/final", random_gpt(bias=False, vocab=320), TEXTS, PRESET)
    save_run(root / "minigl/lstm/final", lstm(), TEXTS, PRESET)
    for model, name in (("nanogpt", "gpt"), ("minigl", "lstm")):
        run_make = subprocess.run(["make", "--no-print-directory", "export", f"MODEL={model}", f"RUN={name}",
                                   f"VENV={Path(sys.executable).parent.parent}", f"ARGS=--root {root}"],
                                  cwd=REPO, capture_output=True, text=True, timeout=300)
        assert run_make.returncode == 0, run_make.stdout[-2000:] + run_make.stderr[-2000:]
        assert (root / model / name / "export" / "config.json").is_file()
    python = bare_venv(tmp_path / "venv")
    prompt = "Question: 苇川在哪里？\nAnswer:\n"
    cases = [["gpt", str(root / "nanogpt/gpt/export"), prompt], ["lstm", str(root / "minigl/lstm/export"), prompt]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.run([str(python), "-I", "-c", FRESH, json.dumps(cases)], cwd=tmp_path, capture_output=True,
                          stdin=subprocess.DEVNULL,
                          text=True, timeout=300, env={**env, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.splitlines()[-1])
    assert fresh["gpt"]["class"] == "GPT2LMHeadModel" and fresh["lstm"]["class"] == "LSTMForCausalLM"
    for (name, _, _), (model, run_name) in zip(cases, (("nanogpt", "gpt"), ("minigl", "lstm"))):
        ours, tok, recipe = load(find_run(model, run_name, root))
        expected = generate(ours, tok, prompt, {**recipe["generation"], "do_sample": False})  # make generate's
        assert fresh[name]["text"] == expected and len(expected) > len(prompt), name
        assert fresh[name]["chat"] == "Question: hi\nAnswer:\n"
