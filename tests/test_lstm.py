"""shared/models/lstm.py: the LSTM baseline as a transformers model (loss, causality, reload, generation that carries the
LSTM state, left padding, training). Tiny configs on CPU."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from shared.models.lstm import LSTMConfig, LSTMForCausalLM, LSTMModel

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two fighting for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(vocab_size=61, n_embd=24, n_layer=2, block_size=32)


def tiny(seed: int = 0, scale: float | None = None, **overrides) -> LSTMForCausalLM:
    """A tiny LSTM in eval mode; `scale` redraws every weight from N(0, scale) so greedy outputs vary with context."""
    torch.manual_seed(seed)
    model = LSTMForCausalLM(LSTMConfig(**{**TINY, **overrides})).eval()
    if scale is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, scale)
    return model


def greedy_by_hand(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        logits = model(ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_config_and_parameter_count():
    config = LSTMConfig(**TINY)
    assert (config.hidden_size, config.num_hidden_layers, config.max_position_embeddings) == (24, 2, 32)
    assert config.layer_types == ["linear_attention", "linear_attention"]  # how generate's cache sees the layers
    assert isinstance(AutoConfig.for_model("slm_lstm", **TINY), LSTMConfig)
    model = tiny()
    assert model.lm_head.weight is model.model.wte.weight
    V, E, L = 61, 24, 2
    assert model.num_parameters() == V * E + L * 4 * (2 * E * E + 2 * E)  # tied head counted once


@pytest.mark.parametrize("bad", [dict(dropout=1.0), dict(dropout=-0.5), dict(n_layer=0)])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        LSTMConfig(**{**TINY, **bad})


def test_loss_is_shifted_cross_entropy_and_causal():
    model = tiny(scale=0.3)
    ids = torch.randint(0, 61, (3, 14))
    labels = ids.clone()
    labels[1, :5] = -100
    out = model(ids, labels=labels)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, 61), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)
    window = torch.randint(0, 61, (2, 13))
    shifted = model(window[:, :-1], shift_labels=window[:, 1:])
    torch.testing.assert_close(shifted.loss, F.cross_entropy(shifted.logits.reshape(-1, 61), window[:, 1:].reshape(-1)))
    changed = ids.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 61
    other = model(changed).logits
    torch.testing.assert_close(other[:, :8], out.logits[:, :8])
    assert not torch.allclose(other[:, 8:], out.logits[:, 8:])


def test_right_padding_leaves_real_positions_alone():
    model = tiny(scale=0.3)
    ids = torch.randint(0, 61, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    batch = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(batch[1, :6], model(ids[1:, :6]).logits[0])


def test_save_reload_through_auto_classes(tmp_path):
    model = tiny(scale=0.3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "slm_lstm"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LSTMForCausalLM and isinstance(loaded.model, LSTMModel)
    assert loaded.lm_head.weight is loaded.model.wte.weight
    ids = torch.randint(0, 61, (2, 12))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_state_carried_step_by_step_matches_the_full_sequence():
    model = tiny(scale=0.3)
    ids = torch.randint(0, 61, (2, 9))
    full = model(ids).logits
    cache = DynamicCache(config=model.config)
    steps = [model(ids[:, :4], cache=cache, use_cache=True).logits]
    for t in range(4, 9):
        steps.append(model(ids[:, t:t + 1], cache=cache, use_cache=True).logits)
    assert cache.get_recurrent_state(0).shape == (2, 2, 24)  # (batch, h|c, n_embd) per layer
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


def test_greedy_generate_carries_the_state():
    model = tiny(scale=0.3)
    prompt = torch.randint(0, 61, (1, 6))
    seen = []
    hook = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False)
    hook.remove()
    assert seen == [6] + [1] * 11  # the prompt once, then one token per step on the carried (h, c)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached) and torch.equal(cached, greedy_by_hand(model, prompt, 12))
    assert len(set(cached[0, 6:].tolist())) > 2


def test_beam_search_with_state_matches_without():
    """Beam search reorders the cache along the batch: the (h, c) slots must be batch-first for that to be right."""
    model = tiny(scale=0.3)
    prompt = torch.randint(0, 61, (2, 5))
    beams = dict(max_new_tokens=6, num_beams=3, do_sample=False)
    assert torch.equal(model.generate(prompt, **beams), model.generate(prompt, use_cache=False, **beams))


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_generates_like_each_prompt_alone(use_cache):
    model = tiny(scale=0.3)
    prompts = [torch.randint(1, 61, (n,)) for n in (6, 2, 4)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                           use_cache=use_cache)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=6, do_sample=False)
        assert torch.equal(batch[i, width:], alone[0, len(p):]), i


def test_adamw_steps_lower_the_loss():
    model = tiny().train()
    ids = (torch.arange(24)[None] + torch.tensor([[0], [10], [20], [30]])) % 61  # counting: learnable in a few steps
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert model.lm_head.weight is model.model.wte.weight


def test_activation_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 61, (2, 16))
    grads, calls = [], []
    for checkpointing in (False, True):
        model = tiny().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        runs = []
        model.model.lstm.register_forward_pre_hook(lambda *_: runs.append(1))
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.lstm.weight_hh_l0.grad)
        calls.append(len(runs))
    assert calls == [1, 2]  # with checkpointing the stack runs again during backward
    torch.testing.assert_close(grads[0], grads[1])


def test_dropout_is_active_only_in_training():
    model = tiny(dropout=0.3)
    ids = torch.randint(0, 61, (2, 8))
    torch.testing.assert_close(model(ids).logits, model(ids).logits)  # eval: deterministic
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)


@pytest.mark.slow
def test_trl_sft_one_step(tmp_path):
    """TRL's fused LM head calls model.model(...) and reads .last_hidden_state: the LSTM keeps that layout."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from shared.data.tokenizer import train_bpe

    text = "the quick brown fox jumps over the lazy dog. question: what jumps? answer: the fox."
    tok = train_bpe(iter([[text] * 50]), 300, 1, tmp_path / "tok")
    model = tiny(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).train()
    data = Dataset.from_dict({"prompt": ["question: what jumps?"] * 8, "completion": [" answer: the fox."] * 8})
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, bf16=False,
                     use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, max_length=32)
    result = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok).train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
