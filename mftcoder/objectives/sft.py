"""Supervised fine-tuning: token cross entropy on the trained (answer) tokens, weighted over the global batch by
`weighted_loss_mode` (case1-4, coba; see mftcoder.loss.weighting), plus the MoE router load-balancing loss."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from mftcoder.config import ConfigError
from mftcoder.data.collator import IGNORE_INDEX, collate
from mftcoder.loss.cross_entropy import ForwardLosses, model_forward_losses, unwrap_causal_lm
from mftcoder.loss.router import resolve_router_loss
from mftcoder.loss.weighting import StepCounts, count_micro_batch, micro_batch_loss, token_coefficients
from mftcoder.objectives.base import EvalSums, MicroOutput, Objective, StepContext

log = logging.getLogger("mftcoder")


class SFTObjective(Objective):
    """The loss unit is a trained token: `StepCounts.task_tokens` counts labels != -100 per task."""

    name = "sft"
    batch_keys = ("input_ids", "labels", "position_ids", "sample_ids", "sample_task_ids", "task_ids")

    def __init__(self, cfg, num_tasks: int, chunked: bool, sharded: bool = False):
        super().__init__(cfg, num_tasks, chunked, sharded)
        self.mode = cfg.weighted_loss_mode
        self.chunk_size = cfg.ce_chunk_size
        self.router = None
        self.step_ctx: Optional[StepContext] = None  # set by begin_step (the fused cross entropy's coefficients)

    def attach_model(self, model) -> None:
        try:  # MoE models: the router load-balancing loss joins the step loss
            self.router = resolve_router_loss(unwrap_causal_lm(model), self.cfg.router_aux_loss_coef)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.router is not None:
            self.aux_metric = "router_aux_loss"  # `loss` stays the task loss (comparable with validation)
            log.info("MoE router load-balancing loss: coefficient %g (%d experts, top %d; padding excluded)",
                     self.router.coef, self.router.num_experts, self.router.top_k)

    def collate(self, rows, task_ids, pad_id: int, pad_to_multiple_of: Optional[int]) -> dict:
        return collate(rows, task_ids, pad_id, pad_to_multiple_of=pad_to_multiple_of)

    def count(self, batch: dict) -> StepCounts:
        return count_micro_batch(batch, self.num_tasks)

    def begin_step(self, ctx: StepContext) -> None:
        self.step_ctx = ctx

    def forward(self, model, batch: dict, training: bool) -> ForwardLosses:
        weights = None
        if training and self.chunked and self.cfg.fused_ce and self.step_ctx is not None:
            # the loss's coefficient of every token, so the fused lm_head + CE forms the gradient in the forward
            weights = token_coefficients(batch, self.step_ctx.counts, self.mode, self.step_ctx.weights, checked=True)
        return model_forward_losses(model, batch, chunked=self.chunked, chunk_size=self.chunk_size,
                                    output_router_logits=training and self.router is not None, token_weights=weights)

    def train_loss(self, fwd: ForwardLosses, batch: dict, ctx: StepContext) -> MicroOutput:
        # checked: the loop counted (and so checked) this micro-batch on the CPU before the step
        share = micro_batch_loss(fwd.token_loss, batch, ctx.counts, self.mode, ctx.weights, checked=True)
        loss, aux_loss = share.loss, None
        if fwd.weighted_loss is not None:  # the fused path: the same value, its gradient computed in the forward
            loss = fwd.weighted_loss.to(share.loss.dtype)
        if self.router is not None:  # the mean over the step's micro-batches of each one's router loss
            aux = self.router(fwd.router_logits, batch["sample_ids"] >= 0)
            loss = loss + self.router.coef * aux / ctx.micro_batches_per_step
            aux_loss = aux.detach().double()
        # left on the device: the loop sums the step's micro-batches there and reads them once per step
        return MicroOutput(loss=loss, objective_loss=share.loss.detach().double(),
                           task_loss_sum=share.task_loss_sum.double(), aux_loss=aux_loss,
                           tokens=(batch["sample_ids"] >= 0).sum())

    def eval_sums(self, fwd: ForwardLosses, batch: dict) -> EvalSums:
        """Per-task summed token loss and trained-token count: validation reports the per-task token mean."""
        trained = batch["labels"] != IGNORE_INDEX
        row_loss = (fwd.token_loss.float() * trained).sum(1).double().cpu()
        row_tokens = trained.sum(1).double().cpu()
        task = batch["task_ids"].cpu()
        K = self.num_tasks
        return EvalSums(torch.zeros(K, dtype=torch.float64).index_add_(0, task, row_loss),
                        torch.zeros(K, dtype=torch.float64).index_add_(0, task, row_tokens))

    def describe(self) -> str:
        return f"sft ({self.mode}{', router aux loss' if self.router is not None else ''})"
