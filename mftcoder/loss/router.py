"""The load-balancing loss of Mixture-of-Experts routers (Mixtral, Qwen2/3-MoE, OLMoE, ...), padding excluded.

Every MoE family in transformers ships its own `load_balancing_loss_func` (the Switch Transformer loss) and adds
`router_aux_loss_coef x` it to its `loss` when asked for router logits. We compute the token losses ourselves, and the
model's own aux loss would count padding (our packed rows must keep `attention_mask=None` so that transformers
isolates the packed samples), so this calls the family's function on the router logits with a mask of real tokens.

In the step loss it is the mean over the step's micro-batches (all processes) of each micro-batch's aux loss, as in
every MoE trainer; unlike the task losses it depends on the micro-batch size, since it is a product of batch means.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Callable, Optional

from torch import Tensor, nn


@dataclass(frozen=True)
class RouterLoss:
    """The Switch load-balancing loss of one model family and the coefficient it enters the step loss with."""

    loss_fn: Callable
    num_experts: int
    top_k: int
    coef: float

    def __call__(self, router_logits: tuple[Tensor, ...], real_tokens: Tensor) -> Tensor:
        """`router_logits`: one [batch * seq, experts] tensor per MoE layer; `real_tokens`: [batch, seq] bool, False
        on padding. Samples packed into one row are separate tokens here, so packing does not change the value."""
        return self.loss_fn(tuple(router_logits), self.num_experts, self.top_k, real_tokens.to(router_logits[0].dtype))


def model_router_loss(lm: nn.Module) -> Optional[RouterLoss]:
    """The router loss of this Hugging Face causal LM at its configured coefficient, None for a dense model."""
    loss_fn = getattr(sys.modules.get(type(lm).__module__), "load_balancing_loss_func", None)
    coef = getattr(lm, "router_aux_loss_coef", None)
    num_experts = getattr(lm, "num_experts", None)
    top_k = getattr(lm, "num_experts_per_tok", None)
    if loss_fn is None or coef is None or not num_experts or not top_k:
        return None
    return RouterLoss(loss_fn, int(num_experts), int(top_k), float(coef))


def resolve_router_loss(lm: nn.Module, coef: Optional[float]) -> Optional[RouterLoss]:
    """The train_config's `router_aux_loss_coef` applied: null keeps the model's own value, 0 turns the loss off."""
    router = model_router_loss(lm)
    if router is None:
        if coef:
            raise ValueError(f"router_aux_loss_coef={coef} but {type(lm).__name__} has no MoE router loss; "
                             "leave router_aux_loss_coef null for dense models")
        return None
    if coef is not None:
        router = replace(router, coef=float(coef))
    return router if router.coef > 0 else None
