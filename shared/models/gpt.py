"""nanoGPT's GPT as an ordinary Hugging Face causal LM: GPTConfig + GPTForCausalLM, registered with the Auto classes.

The layout is nanoGPT's: token embeddings (wte) plus learned position embeddings (wpe), dropout, `n_layer` pre-norm
blocks (LayerNorm -> causal self-attention with one fused qkv projection -> LayerNorm -> 4x MLP with exact GELU), a
final LayerNorm (ln_f) and an LM head tied to wte. `bias` switches the biases of every Linear and LayerNorm (nanoGPT's
GPT-2 reproduction uses bias=False; transformers' GPT-2 has no such switch, which is why this file exists).
Initialisation is nanoGPT's too: N(0, 0.02) everywhere, zero biases, and the two residual projections of each block
(attn.c_proj, mlp.c_proj) at 0.02/sqrt(2 * n_layer).

What makes it a transformers model rather than a copy of nanoGPT:
- attention runs through `scaled_dot_product_attention` (flash kernels on GPU when there is no padding) and honours
  the `Cache` that `generate()` passes: each layer appends its keys/values with `cache.update(k, v, layer_idx)`, so a
  new token costs one position of work, not the whole prefix;
- `attention_mask` (left padding in batched generation, right padding in SFT/DPO batches) and `position_ids` work;
  positions default to the cache length onwards, or to the count of real tokens when a padding mask is given;
- the base model (`model.transformer`) returns `.last_hidden_state` and the head is `get_output_embeddings()`, the
  layout TRL's fused LM-head loss relies on; the loss is transformers' causal-LM loss (labels shifted inside), which
  takes the Trainer's `num_items_in_batch`;
- `AutoConfig` / `AutoModelForCausalLM` know "slm_gpt" once this module is imported, so a saved run folder loads
  with `AutoModelForCausalLM.from_pretrained(folder)` and no `trust_remote_code`.

Parameter counts follow nanoGPT: `num_parameters_nanogpt()` leaves out the position embeddings (the tied head is
counted once, as the token embedding). nanoGPT's GPT-2 config (12 layers, 12 heads, 768 wide, vocab 50304,
block 1024, no bias) gives 123,587,328 = 123.59M that way, 124,373,760 in all.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedConfig,
                          PreTrainedModel)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


class ValidatedConfig:
    """Our configs check their own architecture (`validate_architecture`) when constructed: a plain ValueError that
    names the field, before anything is built (the Hub's strict validators would only run at save time)."""

    positive_fields: tuple[str, ...] = ()  # a class attribute (not a config field): what must be at least 1

    def __post_init__(self, **kwargs):
        self.validate_architecture()
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), got {self.dropout}")
        for name in self.positive_fields:
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be positive, got {getattr(self, name)}")


@strict
class GPTConfig(ValidatedConfig, PreTrainedConfig):
    """nanoGPT's GPTConfig as a transformers config; the generic names (hidden_size, ...) map onto nanoGPT's."""

    model_type = "slm_gpt"
    attribute_map = {
        "max_position_embeddings": "block_size",
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
    }

    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float | int = 0.0
    bias: bool = False
    initializer_range: float = 0.02
    layer_norm_epsilon: float = 1e-5
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    positive_fields = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")

    def validate_architecture(self):
        super().validate_architecture()
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # scaled init, see _init_weights
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache: Cache | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if cache is not None:  # append this step's keys/values, attend over the whole prefix
            k, v = cache.update(k, v, self.layer_idx)
        # No mask from the model means no padding: plain causal attention (flash-eligible) when queries and keys are
        # the same positions; a single new token after a cached prefix may see every key.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=attn_mask is None and T > 1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact (erf) GELU, as nanoGPT; GPT-2 uses the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(GradientCheckpointingLayer):
    """Pre-norm residual block. The hidden states go in positionally, so gradient checkpointing can recompute it."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, cache=cache)
        return x + self.mlp(self.ln_2(x))


class GPTPreTrainedModel(PreTrainedModel):
    config_class = GPTConfig
    config: GPTConfig
    base_model_prefix = "transformer"
    _input_embed_layer = "wte"  # what transformers' get/set_input_embeddings look for
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module):
        """nanoGPT's init. Runs through transformers' init helpers, so weights loaded by from_pretrained are kept."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            # Residual projections get 1/sqrt(2 * n_layer) of it: two residual additions per block (GPT-2 paper).
            # The flag sits on the Linear itself: transformers skips parents without parameters of their own.
            if getattr(module, "residual_projection", False):
                std = std / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    def train(self, mode: bool = True):
        """nn.Module.train, with nothing to do when every module already is in that mode: the Trainer calls
        model.train() before every step, and setting each module's flag again costs ~0.2 ms (0.4% of a
        shakespeare-char CPU step)."""
        if isinstance(mode, bool) and all(m.training == mode for m in self.modules()):
            return self
        return super().train(mode)

    def num_parameters_nanogpt(self, non_embedding: bool = True) -> int:
        """nanoGPT's `get_num_params`: unique parameters (the tied head counts once), minus wpe by default."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared (tied) tensor once
        if non_embedding:
            base = getattr(self, self.base_model_prefix, self)
            n -= base.wpe.weight.numel()
        return n


class GPTModel(GPTPreTrainedModel):
    """The transformer without its head: embeddings -> blocks -> ln_f, returning `.last_hidden_state` (+ the cache)."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, past_key_values=None, **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("GPTModel: pass exactly one of input_ids or inputs_embeds")
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]

        cache = cache if cache is not None else past_key_values  # the pre-5.x name of the same argument
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0

        # Learned positions end at block_size. Checked without a device sync in training (no cache); generate()
        # passes position_ids with a cache, and there one small sync per step buys a readable error.
        too_long = past + T > self.config.block_size if position_ids is None else (
            cache is not None and int(position_ids.max()) >= self.config.block_size)
        if too_long:
            raise ValueError(f"GPTModel: positions beyond block_size ({self.config.block_size}) requested; "
                             f"the learned position embeddings end there")
        if position_ids is None:
            if attention_mask is not None:  # count real tokens only, so left padding does not shift positions
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=x.device).unsqueeze(0)
        x = self.drop(x + self.wpe(position_ids))

        mask = _attention_mask(attention_mask, T, past, x.device)
        for block in self.h:
            x = block(x, attn_mask=mask, cache=cache)
        x = self.ln_f(x)
        return BaseModelOutputWithPast(last_hidden_state=x, cache=cache if use_cache else None)


def _attention_mask(attention_mask: torch.Tensor | None, q_len: int, past: int, device) -> torch.Tensor | None:
    """Boolean (B, 1, T, past+T) mask, True = may attend; None when SDPA's own causal flag is already exact.

    Query i sits at cache position past+i and sees keys 0..past+i that are not padding. Each query also always sees
    itself: a padding query (left padding) would otherwise see nothing and turn into NaN, which later layers would
    spread through their values (0 * NaN). Real tokens never attend to padding either way.
    """
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding in this batch: keep the fast path (flash on GPU)
    if attention_mask is None and (past == 0 or q_len == 1):
        return None
    kv_len = past + q_len
    q_pos = torch.arange(past, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        if attention_mask.shape[-1] != kv_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {kv_len} "
                             f"({past} cached + {q_len} new)")
        mask = (mask & attention_mask.bool()[:, None, None, :]) | (k_pos == q_pos)
    return mask


class TiedHeadGenerationMixin(GenerationMixin):  # the name ends in GenerationMixin: transformers checks that
    """What our causal LMs share around their base model (`getattr(self, base_model_prefix)`, whose `wte` is the
    token embedding): a tied `lm_head`, the embedding accessors transformers and TRL use, and logits + the loss."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" not in cls.__dict__:  # the model class lists its PreTrainedModel first, whose nn.Module forward
            cls.forward = TiedHeadGenerationMixin.forward  # (a placeholder) would win in the method order otherwise

    def attach(self, base: nn.Module) -> None:
        """In __init__: the base model under `base_model_prefix`, the head over its width, tied by post_init."""
        setattr(self, self.base_model_prefix, base)
        self.lm_head = nn.Linear(base.wte.embedding_dim, base.wte.num_embeddings, bias=False)
        self.post_init()  # ties lm_head to wte when config.tie_word_embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, shift_labels=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0,
                past_key_values=None, **kwargs) -> CausalLMOutputWithPast:
        """`labels` are the input ids (-100 = ignored); the shift by one happens in the loss. `shift_labels` are
        already-shifted targets, one per position (nanoGPT's y for a block_size + 1 window); they win over `labels`.
        `logits_to_keep=k` computes logits for the last k positions only (generate uses 1 during the prefill).
        `past_key_values` is transformers' older name of `cache`."""
        out = getattr(self, self.base_model_prefix)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            cache=cache if cache is not None else past_key_values, use_cache=use_cache)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h = h[:, logits_to_keep]
        logits = self.lm_head(h)
        loss = None
        if labels is not None or shift_labels is not None:
            shift_labels = shift_labels.contiguous() if shift_labels is not None else None  # the loss .view()s it
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, shift_labels=shift_labels,
                                      **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


class GPTForCausalLM(GPTPreTrainedModel, TiedHeadGenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.attach(GPTModel(config))


def register(config_class, model_class) -> None:
    """Make a model type's checkpoints loadable through the Auto classes in this process (no trust_remote_code).
    exist_ok: a second import (or a reload) re-registers the same names instead of raising."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)


register(GPTConfig, GPTForCausalLM)  # importing this module is what makes "slm_gpt" checkpoints loadable
