"""shared/models/gpt.py: nanoGPT's GPT as a transformers model (counts, loss, causality, reload, cached generation, padding,
training, TRL). Tiny configs on CPU; the document-sized model is only ever built on the meta device."""
from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from shared.models.gpt import GPTConfig, GPTForCausalLM, GPTModel

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two fighting for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(vocab_size=97, block_size=64, n_layer=2, n_head=2, n_embd=32)


def tiny(seed: int = 0, scale: float | None = None, **overrides) -> GPTForCausalLM:
    """A tiny GPT in eval mode. `scale` redraws every weight from N(0, scale): an untrained model at nanoGPT's init
    predicts nearly the same token everywhere, which would make generation comparisons pass vacuously."""
    torch.manual_seed(seed)
    model = GPTForCausalLM(GPTConfig(**{**TINY, **overrides})).eval()
    if scale is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, scale)
    return model


def greedy_by_hand(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The reference: re-run the whole prefix every step and append the argmax (no cache anywhere)."""
    for _ in range(n):
        logits = model(ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


# --- config and parameter counts -------------------------------------------------------------------------------------

def test_document_config_counts_like_nanogpt():
    config = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=False)
    with torch.device("meta"):
        model = GPTForCausalLM(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: counted once
    assert model.num_parameters_nanogpt() == 123_587_328  # nanoGPT's 123.59M (position embeddings excluded)
    assert model.num_parameters_nanogpt(non_embedding=False) == 123_587_328 + 1024 * 768 == 124_373_760
    # The bias switch really adds GPT-2's biases: 123.69M without positions, as GPT-2 at vocab 50304.
    with torch.device("meta"):
        with_bias = GPTForCausalLM(GPTConfig(bias=True))
    assert with_bias.num_parameters_nanogpt() == 123_689_472


def test_config_generic_names_and_auto_registration():
    config = GPTConfig(**TINY)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.max_position_embeddings) == (32, 2, 2, 64)
    assert config.tie_word_embeddings and config.bias is False and config.dropout == 0.0
    assert isinstance(AutoConfig.for_model("slm_gpt", **TINY), GPTConfig)
    assert GPTForCausalLM.base_model_prefix == "transformer"


@pytest.mark.parametrize("bad", [dict(dropout=1.0), dict(dropout=-0.1), dict(n_embd=30, n_head=4)])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        GPTConfig(**{**TINY, **bad})


def test_nanogpt_initialisation():
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=True))
    block = model.transformer.h[1]
    assert math.isclose(block.attn.c_attn.weight.std().item(), 0.02, rel_tol=0.05)
    assert math.isclose(model.transformer.wte.weight.std().item(), 0.02, rel_tol=0.05)
    residual_std = 0.02 / math.sqrt(2 * 4)
    assert math.isclose(block.attn.c_proj.weight.std().item(), residual_std, rel_tol=0.05)
    assert math.isclose(block.mlp.c_proj.weight.std().item(), residual_std, rel_tol=0.05)
    assert torch.count_nonzero(block.mlp.c_fc.bias) == 0 and torch.all(block.ln_1.weight == 1)
    assert block.ln_1.bias is not None and tiny().transformer.h[0].ln_1.bias is None  # the bias switch


# --- forward: loss, causality, padding --------------------------------------------------------------------------------

def test_loss_is_shifted_cross_entropy():
    model = tiny()
    ids = torch.randint(0, 97, (3, 12))
    labels = ids.clone()
    labels[0, :4] = -100  # an SFT-style masked prompt
    out = model(ids, labels=labels)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)
    # The Trainer's loss kwargs: with num_items_in_batch the loss is the sum over tokens divided by that count.
    summed = F.cross_entropy(out.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(model(ids, labels=labels, num_items_in_batch=torch.tensor(50)).loss, summed / 50)
    # shared/data/bins.py windows: input w[:-1] with targets w[1:] as shift_labels, so every position is trained.
    window = torch.randint(0, 97, (2, 13))
    out = model(window[:, :-1], labels=window[:, :-1], shift_labels=window[:, 1:])
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.reshape(-1, 97), window[:, 1:].reshape(-1)))
    assert "shift_labels" in inspect.signature(model.forward).parameters  # kept by remove_unused_columns


def test_causal():
    model = tiny(scale=0.3)
    ids = torch.randint(0, 97, (2, 16))
    t = 7
    changed = ids.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 1) % 97
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1])
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def test_right_padding_and_position_ids():
    """TRL's SFT/DPO batches are right-padded: real positions must see exactly what they would see alone."""
    model = tiny(scale=0.3)
    ids = torch.randint(0, 97, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    batch = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(batch[0], model(ids[:1]).logits[0])
    torch.testing.assert_close(batch[1, :6], model(ids[1:, :6]).logits[0])
    assert torch.isfinite(batch).all()
    # Explicit position ids equal the default ones; shifted ones change the result (wpe is really used).
    positions = torch.arange(10).unsqueeze(0)
    torch.testing.assert_close(model(ids, position_ids=positions).logits, model(ids).logits)
    assert not torch.allclose(model(ids, position_ids=positions + 3).logits, model(ids).logits)


def test_too_long_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):  # generating past the learned positions
        tiny().generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=10, do_sample=False)


# --- save / reload ----------------------------------------------------------------------------------------------------

def test_save_reload_through_auto_classes(tmp_path):
    model = tiny(scale=0.3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "slm_gpt"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is GPTForCausalLM and isinstance(loaded.transformer, GPTModel)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied after the reload
    ids = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)  # loaded, not re-initialised


# --- generation -------------------------------------------------------------------------------------------------------

def test_greedy_generate_uses_the_cache_and_matches_the_reference():
    model = tiny(scale=0.3)
    prompt = torch.randint(0, 97, (1, 6))
    seen = []
    hook = model.transformer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False)
    hook.remove()
    assert seen == [6] + [1] * 11  # prompt once, then one token per step: O(1) new work per token
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    reference = greedy_by_hand(model, prompt, 12)
    assert torch.equal(cached, uncached) and torch.equal(cached, reference)
    assert len(set(cached[0, 6:].tolist())) > 2  # a meaningful comparison, not one repeated token


def test_cache_steps_match_full_forward():
    model = tiny(scale=0.3)
    ids = torch.randint(0, 97, (2, 9))
    full = model(ids).logits
    out = model(ids[:, :5], use_cache=True)
    steps = [out.logits]
    cache = out.cache
    for t in range(5, 9):
        out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
        cache = out.cache
        steps.append(out.logits)
    assert cache.get_seq_length() == 9
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


def test_beam_search_with_cache_matches_without():
    model = tiny(scale=0.3)
    prompt = torch.randint(0, 97, (2, 5))
    beams = dict(max_new_tokens=6, num_beams=3, do_sample=False)
    assert torch.equal(model.generate(prompt, **beams), model.generate(prompt, use_cache=False, **beams))


def test_left_padded_batch_generates_like_each_prompt_alone():
    model = tiny(scale=0.3)
    prompts = [torch.randint(1, 97, (n,)) for n in (7, 3, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=8, do_sample=False)
        assert torch.equal(batch[i, width:], alone[0, len(p):]), i


# --- training ---------------------------------------------------------------------------------------------------------

def test_adamw_steps_lower_the_loss():
    model = tiny().train()
    ids = torch.randint(0, 97, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert model.lm_head.weight is model.transformer.wte.weight  # the optimizer kept one tied tensor


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 97, (2, 16))
    grads, calls = [], []
    for checkpointing in (False, True):
        model = tiny().train()
        if checkpointing:
            model.activation_checkpointing_enable()  # transformers 5's name; gradient_checkpointing_enable is an alias
        runs = []
        model.transformer.h[0].attn.register_forward_pre_hook(lambda *_: runs.append(1))
        model(ids, labels=ids).loss.backward()
        grads.append(model.transformer.h[0].attn.c_attn.weight.grad)
        calls.append(len(runs))
    assert calls == [1, 2]  # with checkpointing each block runs again during backward
    torch.testing.assert_close(grads[0], grads[1])


def test_hf_trainer_runs(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    rows = torch.randint(0, 97, (16, 24)).tolist()
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
                             report_to="none", save_strategy="no", logging_steps=1, learning_rate=1e-3)
    trainer = Trainer(model=tiny().train(), args=args, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)


@pytest.mark.slow
def test_trl_sft_one_step_on_prompt_completion_data(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from shared.data.tokenizer import train_bpe

    text = "the quick brown fox jumps over the lazy dog. question: what jumps? answer: the fox."
    tok = train_bpe(iter([[text] * 50]), 300, 1, tmp_path / "tok")
    model = tiny(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).train()
    data = Dataset.from_dict({"prompt": ["question: what jumps?"] * 8, "completion": [" answer: the fox."] * 8})
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, bf16=False,
                     use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, max_length=32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)


@pytest.mark.slow
def test_trl_dpo_two_steps_learn_the_preference(tmp_path):
    """DPO runs the same fused-head path on right-padded chosen/rejected pairs; the reference is a frozen copy."""
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from shared.data.tokenizer import train_bpe

    text = "the quick brown fox jumps over the lazy dog. question: what jumps? answer: the fox."
    tok = train_bpe(iter([[text] * 50]), 300, 1, tmp_path / "tok")
    model = tiny(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).train()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    data = Dataset.from_dict({"prompt": ["question: what jumps?", "question: what is lazy?"] * 4,
                              "chosen": [" answer: the fox.", " the dog."] * 4,
                              "rejected": [" the dog.", " the fox jumps over"] * 4})
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, bf16=False,
                     use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, max_length=32,
                     learning_rate=1e-3)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    first, second = [h for h in trainer.state.log_history if "loss" in h]
    assert math.isclose(first["loss"], math.log(2), rel_tol=1e-3)  # policy == reference at step 1
    assert second["loss"] < first["loss"] and second["rewards/margins"] > 0


@pytest.mark.slow
def test_a_fresh_process_loads_a_checkpoint_after_importing_shared_gpt_twice(tmp_path):
    """What shared/models/registry.py relies on: importing the module registers the classes (a second import or a reload
    must not raise), and then AutoModelForCausalLM loads the folder with no trust_remote_code."""
    tiny(scale=0.3).save_pretrained(tmp_path)
    code = ("import importlib, sys, torch, shared.models.gpt; importlib.reload(shared.models.gpt); import shared.models.gpt;"
            "from transformers import AutoModelForCausalLM;"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r});"
            "assert type(m).__name__ == 'GPTForCausalLM' and m.lm_head.weight is m.transformer.wte.weight;"
            "print(m.num_parameters_nanogpt())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == tiny().num_parameters_nanogpt()
