"""Losses: per-token cross entropy (chunked), per-task weighting over the global batch, CoBa task weights."""
from mftcoder.loss.coba import CoBa
from mftcoder.loss.cross_entropy import (
    model_token_losses,
    token_losses_from_hidden,
    token_losses_from_logits,
    unwrap_causal_lm,
)
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
    "MicroLoss",
    "StepCounts",
    "WEIGHTED_LOSS_MODES",
    "count_micro_batch",
    "micro_batch_loss",
    "model_token_losses",
    "sum_counts",
    "task_means",
    "token_losses_from_hidden",
    "token_losses_from_logits",
    "unwrap_causal_lm",
]
