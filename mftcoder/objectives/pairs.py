"""What every objective on preference pairs shares: the pair layout of a batch, a pair as the loss unit, the step
weighting of per-pair losses, and the per-pair metrics.

A batch holds pairs as consecutive samples (chosen at even sample ids, rejected at odd ones; see
`mftcoder.data.collator.collate_pairs`). The loss unit is a pair: `count` gives each task's pairs, so every
`weighted_loss_mode` is taken over the step's pairs (case1 = case2: the mean pair loss; case3 = case4: the weighted
mean of the per-task means), and the logged `task_loss` is each task's mean pair loss.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from mftcoder.data.collator import IGNORE_INDEX, collate_pairs
from mftcoder.loss.weighting import COUNT_DTYPE, StepCounts, micro_batch_loss
from mftcoder.objectives.base import EvalSums, MicroOutput, Objective, StepContext


class PairLosses(NamedTuple):
    loss: Tensor     # [P] per-pair loss, differentiable
    metrics: Tensor  # [P, M] detached float64 CPU: the objective's `step_metrics` per pair


def sample_sums(token_values: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
    """Per-sample sums over the trained positions of `token_values` [B, T], and the trained-token counts ([S] each)."""
    trained = batch["labels"] != IGNORE_INDEX
    sid = batch["sample_ids"][trained]
    S = batch["sample_task_ids"].numel()
    values = token_values[trained]
    sums = torch.zeros(S, dtype=values.dtype, device=values.device).index_add(0, sid, values)
    counts = torch.zeros(S, dtype=values.dtype, device=values.device).index_add(0, sid, torch.ones_like(values))
    return sums, counts


def chosen_rejected(per_sample: Tensor) -> tuple[Tensor, Tensor]:
    return per_sample[0::2], per_sample[1::2]


def reward_metrics(chosen_reward: Tensor, rejected_reward: Tensor, chosen: Tensor, rejected: Tensor) -> Tensor:
    """[P, 4]: reward accuracy (chosen's reward above rejected's), margin, and the two given per-pair values."""
    columns = [(chosen_reward > rejected_reward), chosen_reward - rejected_reward, chosen, rejected]
    return torch.stack([c.detach().double() for c in columns], dim=1).cpu()


class PairObjective(Objective):
    """A pair is the loss unit; subclasses say how a model scores a batch (`forward`) and what a pair's loss is."""

    samples_per_item = 2
    batch_keys = ("input_ids", "labels", "position_ids", "sample_ids", "sample_task_ids", "pair_task_ids",
                  "cache_rows")
    step_metrics = ("reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp")
    shift = True  # False: each sample is scored as a whole sequence (no next-token targets)

    def __init__(self, cfg, num_tasks: int, chunked: bool, sharded: bool = False):
        super().__init__(cfg, num_tasks, chunked, sharded)
        self.mode = cfg.weighted_loss_mode

    def collate(self, rows, task_ids, pad_id: int, pad_to_multiple_of: Optional[int]) -> dict:
        return collate_pairs(rows, task_ids, pad_id, pad_to_multiple_of, packed=self.cfg.padding_mode == "pack",
                             shift=self.shift)

    def count(self, batch: dict) -> StepCounts:
        pairs = torch.zeros(self.num_tasks, dtype=COUNT_DTYPE).index_add_(
            0, batch["pair_task_ids"].cpu(), torch.ones(batch["pair_task_ids"].numel(), dtype=COUNT_DTYPE))
        return StepCounts(pairs, pairs.clone(), pairs.sum(), pairs.sum())

    @abstractmethod
    def pair_losses(self, fwd: Any) -> PairLosses:
        """Per-pair losses and metrics from `forward`'s output."""

    def train_loss(self, fwd: Any, batch: dict, ctx: StepContext) -> MicroOutput:
        losses = self.pair_losses(fwd)
        P = losses.loss.numel()
        # each pair as a one-unit sample, so the step weighting of SFT applies to pairs unchanged
        layout = {"labels": torch.zeros(P, 1, dtype=torch.long, device=losses.loss.device),
                  "sample_ids": torch.arange(P, device=losses.loss.device).view(P, 1),
                  "sample_task_ids": batch["pair_task_ids"]}
        share = micro_batch_loss(losses.loss.view(P, 1), layout, ctx.counts, self.mode, ctx.weights)
        return MicroOutput(loss=share.loss, objective_loss=share.loss.detach().double().cpu(),
                           task_loss_sum=share.task_loss_sum.double().cpu(),
                           tokens=int((batch["sample_ids"] >= 0).sum()), metric_sums=losses.metrics.sum(0))

    def eval_sums(self, fwd: Any, batch: dict) -> EvalSums:
        """Per task: summed pair loss, pairs, and summed metrics: validation reports per-task means."""
        losses = self.pair_losses(fwd)
        task = batch["pair_task_ids"].cpu()
        K, M = self.num_tasks, len(self.step_metrics)
        loss_sum = torch.zeros(K, dtype=torch.float64).index_add_(0, task, losses.loss.detach().double().cpu())
        count = torch.zeros(K, dtype=torch.float64).index_add_(0, task, torch.ones(task.numel(), dtype=torch.float64))
        metric_sums = torch.zeros(M, K, dtype=torch.float64).index_add_(1, task, losses.metrics.T.contiguous())
        return EvalSums(loss_sum, count, metric_sums)
