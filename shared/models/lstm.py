"""An LSTM language model (MiniGLM's baseline) as an ordinary Hugging Face causal LM, registered with the Auto classes.

The model is small on purpose: token embedding -> dropout -> a stacked `nn.LSTM` (n_layer layers, n_embd wide,
dropout between layers) -> dropout -> an LM head tied to the embedding. `block_size` is only the context length the
data is cut to: an LSTM has no position embeddings and no hard limit.

It keeps the Hugging Face layout, so the Trainer, TRL (whose fused LM-head loss calls `model.model(...)` and reads
`.last_hidden_state`), `generate()` and `AutoModelForCausalLM.from_pretrained` work on it unchanged.

Generation carries the LSTM state instead of recomputing the prefix. transformers 5 treats recurrent models (Mamba)
as "linear attention" layers: the config's `layer_types` says so, `generate()` then builds a `DynamicCache` whose
per-layer slots hold a fixed-size recurrent state, never asks it for a sequence length, and after the prompt feeds one
token per step. Each layer's slot holds that layer's (h, c), stacked batch-first as (batch, 2, n_embd) so the cache's
own beam reordering and batch selection index the right dimension. `_is_stateful` tells generate that the state
cannot be rolled back (no assisted decoding).

Padding: right padding (training batches) needs nothing, since later pad tokens cannot change earlier outputs. Left
padding (batched generation) would push pad tokens through the recurrence before the prompt, so when the mask has
holes that matter the LSTM is stepped one position at a time and the state is simply held over masked positions:
each row then starts from the zero state at its first real token, exactly as if it were alone.
"""
from __future__ import annotations

import math

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import DynamicCache, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast

from shared.models.gpt import TiedHeadGenerationMixin, ValidatedConfig, register


@strict
class LSTMConfig(ValidatedConfig, PreTrainedConfig):
    model_type = "slm_lstm"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "max_position_embeddings": "block_size"}

    vocab_size: int = 50304
    n_embd: int = 512
    n_layer: int = 2
    dropout: float | int = 0.0
    block_size: int = 256  # the context length the data is cut to (training windows); not a limit of the model
    initializer_range: float = 0.1  # embedding std; see LSTMPreTrainedModel._init_weights
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    positive_fields = ("vocab_size", "n_embd", "n_layer", "block_size")

    @property
    def layer_types(self) -> list[str]:
        """How transformers' caches see each layer: a fixed-size recurrent state, like Mamba's."""
        return ["linear_attention"] * self.n_layer


class LSTMPreTrainedModel(PreTrainedModel):
    config_class = LSTMConfig
    config: LSTMConfig
    base_model_prefix = "model"
    _input_embed_layer = "wte"  # what transformers' get/set_input_embeddings look for
    _is_stateful = True
    supports_gradient_checkpointing = True  # TRL's SFT/DPO configs turn activation checkpointing on by default

    def _init_weights(self, module):
        """Embedding (and so the tied head) N(0, initializer_range = 0.1); the LSTM as PyTorch initialises it,
        U(-1/sqrt(H), 1/sqrt(H)). Not the transformers' 0.02: an LSTM's gates see W x + b, and with inputs that small
        they sit at their biases and learn slowly (measured: a tiny model on a counting task drops ~25% in 30 AdamW
        steps at 0.1, ~5% at 0.02 in the first 15). 0.1 is the scale of PyTorch's tied word_language_model example."""
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LSTM):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for p in module.parameters():
                init.uniform_(p, -bound, bound)


class LSTMModel(LSTMPreTrainedModel):
    """Embedding -> dropout -> stacked LSTM -> dropout, returning `.last_hidden_state` (+ the cache holding (h, c))."""

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop_in = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.n_embd, config.n_embd, num_layers=config.n_layer, batch_first=True,
                            dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.drop_out = nn.Dropout(config.dropout)
        self.gradient_checkpointing = False  # set by activation_checkpointing_enable()
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, cache=None, inputs_embeds=None, use_cache=None,
                past_key_values=None, **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LSTMModel: pass exactly one of input_ids or inputs_embeds")
        x = self.drop_in(self.wte(input_ids) if inputs_embeds is None else inputs_embeds)
        T = x.shape[1]

        cache = cache if cache is not None else past_key_values
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        state = self._read_state(cache)

        # The mask covers the cached prefix too; only the positions fed now matter here.
        mask = attention_mask[:, -T:] if attention_mask is not None else None
        plain = mask is None or bool(mask.all())
        # Right padding with no state kept: pads come last and cannot change the outputs before them.
        plain = plain or (cache is None and bool((mask[:, 1:] <= mask[:, :-1]).all()))
        if plain and cache is None and self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Activation checkpointing: keep only the input, recompute the whole stack during backward.
            y, state = self._gradient_checkpointing_func(lambda inp: self.lstm(inp)[0], x), None
        elif plain:
            y, state = self.lstm(x, state)
        else:
            y, state = self._masked_scan(x, mask, state)

        if cache is not None:
            self._write_state(cache, state)
        return BaseModelOutputWithPast(last_hidden_state=self.drop_out(y), cache=cache if use_cache else None)

    def _masked_scan(self, x, mask, state):
        """Step the LSTM position by position, holding each row's (h, c) where its mask is 0."""
        B, L, H = x.shape[0], self.config.n_layer, self.config.n_embd
        if state is None:
            state = (x.new_zeros(L, B, H), x.new_zeros(L, B, H))
        h, c = state
        outputs = []
        for t in range(x.shape[1]):
            y_t, (h_t, c_t) = self.lstm(x[:, t:t + 1], (h, c))
            keep = mask[:, t].bool().view(1, B, 1)
            h, c = torch.where(keep, h_t, h), torch.where(keep, c_t, c)
            outputs.append(y_t)
        return torch.cat(outputs, dim=1), (h, c)

    def _check_cache(self, cache):
        if len(cache.layers) != self.config.n_layer or not all(cache.is_linear):
            raise ValueError("LSTMModel: the cache must have one recurrent-state layer per LSTM layer; "
                             "build it with DynamicCache(config=model.config)")

    def _read_state(self, cache):
        """(h, c), each (n_layer, batch, n_embd), from the cache; None (the zero state) when nothing is stored yet."""
        if cache is None:
            return None
        self._check_cache(cache)
        per_layer = [cache.get_recurrent_state(i) for i in range(self.config.n_layer)]
        if any(s is None for s in per_layer):
            return None
        stacked = torch.stack(per_layer)  # (n_layer, batch, 2, n_embd)
        return stacked[:, :, 0].contiguous(), stacked[:, :, 1].contiguous()

    def _write_state(self, cache, state):
        self._check_cache(cache)
        h, c = state
        for i in range(self.config.n_layer):
            cache.update_recurrent_state(torch.stack([h[i], c[i]], dim=1), layer_idx=i)
            # transformers' linear-attention layer only flags a stored state when a conv state is written (Mamba
            # writes both); an LSTM has no conv state, so flag it here or `get_recurrent_state` keeps returning None.
            cache.layers[i].has_previous_state[0] = True


class LSTMForCausalLM(LSTMPreTrainedModel, TiedHeadGenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.wte.weight"}

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.attach(LSTMModel(config))


register(LSTMConfig, LSTMForCausalLM)  # importing this module is what makes "slm_lstm" checkpoints loadable
