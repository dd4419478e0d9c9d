"""MoETrainer: the HF Trainer with the router's load-balancing loss logged apart from the LM loss (`aux_loss`,
`lm_loss` beside `loss`), optionally taken layer by layer (`router_aux_loss_per_layer: true`; why, in
shared.models.moe), and an evaluation loss that is the LM loss alone, comparable with dense models."""
from __future__ import annotations

import torch
from transformers import Trainer

from shared.models.moe import per_layer_balance_loss


class MoETrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The model adds coef * aux_loss to every micro-batch's loss. With loss kwargs (num_items_in_batch) the
        # Trainer would not divide by gradient_accumulation_steps, so the router loss would weigh GA times more
        # than configured. Per-micro-batch mean losses, divided by GA by the Trainer, keep both terms in proportion.
        self.model_accepts_loss_kwargs = False
        self._moe_sums = torch.zeros(2, dtype=torch.float64)  # aux, lm
        self._moe_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        aux = getattr(outputs, "aux_loss", None)
        if aux is not None and not model.training:
            # evaluation: the language-model loss alone, so eval loss and perplexity compare with dense models
            # (the model adds coef * aux whenever output_router_logits is on, in eval mode too)
            loss = loss - self.accelerator.unwrap_model(model).config.router_aux_loss_coef * aux.detach()
        elif aux is not None:
            config = self.accelerator.unwrap_model(model).config
            coef = config.router_aux_loss_coef
            if getattr(config, "router_aux_loss_per_layer", False):
                per_layer = per_layer_balance_loss(outputs.router_logits, config.num_local_experts,
                                                   config.num_experts_per_tok, inputs.get("attention_mask"))
                loss = loss + coef * (per_layer - aux)  # the model added coef * the pooled loss: swap it
                aux = per_layer
            aux = aux.detach().float().cpu()
            self._moe_sums += torch.stack([aux, loss.detach().float().cpu() - coef * aux]).double()
            self._moe_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self._moe_count:
            aux, lm = (self._moe_sums / self._moe_count).tolist()
            logs["aux_loss"], logs["lm_loss"] = round(aux, 5), round(lm, 4)
            self._moe_sums.zero_()
            self._moe_count = 0
        super().log(logs, start_time)
