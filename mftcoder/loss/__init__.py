"""Losses: per-token cross entropy (chunked), per-task weighting over the global batch, CoBa task weights, MoE router
load balancing."""
from mftcoder.loss.coba import CoBa
from mftcoder.loss.cross_entropy import (
    ForwardLosses,
    model_forward_losses,
    model_token_losses,
    token_losses_from_hidden,
    token_losses_from_logits,
    unwrap_causal_lm,
)
from mftcoder.loss.router import RouterLoss, model_router_loss, resolve_router_loss
from mftcoder.loss.weighting import (
    WEIGHTED_LOSS_MODES,
    MicroLoss,
    StepCounts,
    count_micro_batch,
    micro_batch_loss,
    sum_counts,
    task_means,
)

__all__ = [
    "CoBa",
    "ForwardLosses",
    "MicroLoss",
    "RouterLoss",
    "StepCounts",
    "WEIGHTED_LOSS_MODES",
    "count_micro_batch",
    "micro_batch_loss",
    "model_forward_losses",
    "model_router_loss",
    "model_token_losses",
    "resolve_router_loss",
    "sum_counts",
    "task_means",
    "token_losses_from_hidden",
    "token_losses_from_logits",
    "unwrap_causal_lm",
]
