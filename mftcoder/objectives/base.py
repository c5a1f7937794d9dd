"""What a training objective is to the loop: the interface every objective (SFT today; pretraining, DPO, reward models
next) implements, and the small records it exchanges with the loop. See docs/objectives.md.

The loop owns the optimizer step, the global-batch bookkeeping (counting every micro-batch of the step on every
process first, then all-reducing the counts), mixed precision, validation sharding and metrics. The objective owns what
a batch holds and how a model and a micro-batch turn into this micro-batch's exact share of the step loss, plus the
per-task sums the loop logs and validation reports.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from torch import Tensor, nn

from mftcoder.loss.weighting import StepCounts


@dataclass
class StepContext:
    """What the loop knows about the whole optimizer step when a micro-batch's loss is computed."""

    counts: StepCounts           # every task's loss units and samples over the step (all micro-batches, all processes)
    weights: Tensor              # [K] float64 task weights (loss_weight, or CoBa's), on the model's device
    micro_batches_per_step: int  # gradient_accumulation_steps x processes


@dataclass
class MicroOutput:
    """One micro-batch's result. `loss` is differentiable; the loop calls backward(loss x micro_batches_per_step) (the
    backends average over accumulation steps and processes, which that undoes). The shares of all micro-batches of
    all processes add up to the step loss. The other fields are detached values, on the CPU or the model's device
    (the loop sums them on the device and reads them once per step: no wait for a GPU per micro-batch)."""

    loss: Tensor                   # the share to back-propagate, auxiliary losses included
    objective_loss: Tensor         # 0-d float64: the objective's share alone (logged as the step's `loss`)
    task_loss_sum: Tensor          # [K] float64: summed per-unit losses of each task (divided by counts.task_tokens)
    aux_loss: Optional[Tensor] = None  # 0-d float64: this micro-batch's auxiliary loss (e.g. the MoE router's)
    tokens: int | Tensor = 0       # real (non-padding) tokens, for throughput (an int or a 0-d tensor)
    metric_sums: Optional[Tensor] = None  # [M] float64: sums over this micro-batch's units of `step_metrics`


@dataclass
class EvalSums:
    """Validation of one batch: per-task summed loss and the number of units it sums over ([K] float64 CPU).
    The loop adds them over batches and processes and reports loss_sum / count per task."""

    loss_sum: Tensor
    count: Tensor
    metric_sums: Optional[Tensor] = None  # [M, K] float64: per-task sums of `step_metrics` over the same units


class Objective(ABC):
    """Built once per run by `setup`, before the data is batched (so `collate` shapes the batches); `attach_model`
    then runs once the model is loaded, before the backend wraps it."""

    name: ClassVar[str]
    # the keys of a batch from `collate` that the objective reads (documentation and a check)
    batch_keys: ClassVar[tuple[str, ...]]
    # the metrics record key of `MicroOutput.aux_loss` (mean over the step's micro-batches), None when there is none
    aux_metric: Optional[str] = None
    # consecutive cached samples that form one item (2: a preference pair, chosen then rejected; see TrainBatches)
    samples_per_item: ClassVar[int] = 1
    # how cached samples become rows: "items" (a sample or a pair a row, or bin-packed) or "blocks" (documents
    # concatenated and cut into seq_length blocks: continued pretraining); see mftcoder/trainer/batches.py
    row_layout: ClassVar[str] = "items"
    # validation also reports each task's perplexity, exp(mean token loss)
    reports_perplexity: ClassVar[bool] = False
    # the model class to train: "causal_lm" (AutoModelForCausalLM) or "sequence_classification" (a scalar head)
    model_head: ClassVar[str] = "causal_lm"
    # per-unit means logged with each step (`MicroOutput.metric_sums` / the step's units) and, per task, with
    # validation (as `task_<name>`)
    step_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg, num_tasks: int, chunked: bool, sharded: bool = False):
        """`chunked`: whether the cross entropy may use the chunked lm_head projection on this backend; `sharded`:
        whether the backend shards parameters (ZeRO-3, FSDP2)."""
        self.cfg, self.num_tasks, self.chunked, self.sharded = cfg, num_tasks, chunked, sharded

    def attach_model(self, model: nn.Module) -> None:
        """See the loaded (unwrapped) model: e.g. find its MoE router loss, or keep a frozen reference copy."""

    # --- per-sample values computed once before training (e.g. DPO's reference log-probs) --------------------------
    def precompute_key(self) -> Optional[dict]:
        """None, or what the precomputed values depend on (besides the tokenised data): the loop then calls
        `precompute` on every item before the first step, keeps the values in the cache under this key and in every
        checkpoint, and hands them to `use_precomputed`."""
        return None

    def precompute(self, model: nn.Module, batch: dict) -> Tensor:
        """[S] float64 values of the batch's samples (under no_grad and autocast), stored by batch["cache_rows"]."""
        raise NotImplementedError

    def use_precomputed(self, values: Tensor) -> None:
        """All samples' values ([rows of the cache] float64), before the first step."""

    @property
    def precompute_after_start(self) -> bool:
        """Whether `precompute` still gives the same values once training has moved the model (a resume that finds
        no saved values must know)."""
        return True

    def begin_step(self, ctx: StepContext) -> None:
        """The whole step's counts and weights, before the forward of its first micro-batch (an objective that forms
        its loss inside the forward, e.g. SFT's fused lm_head + cross entropy, needs them there)."""

    @abstractmethod
    def collate(self, rows: Sequence[Sequence[Any]], task_ids: Sequence[int], pad_id: int,
                pad_to_multiple_of: Optional[int]) -> dict:
        """A micro-batch (dict of CPU tensors) from units: each unit a list of tokenised samples of task task_ids[i]."""

    @abstractmethod
    def count(self, batch: dict) -> StepCounts:
        """This micro-batch's loss units and samples per task (the loop sums them over the step before any forward)."""

    @abstractmethod
    def forward(self, model: nn.Module, batch: dict, training: bool) -> Any:
        """Run the model (the loop wraps this in autocast). Returns whatever `train_loss` / `eval_sums` need, e.g.
        per-token losses; `training` says whether gradients flow and auxiliary outputs are wanted."""

    @abstractmethod
    def train_loss(self, fwd: Any, batch: dict, ctx: StepContext) -> MicroOutput:
        """This micro-batch's exact share of the step loss, from `forward`'s output and the whole step's counts."""

    @abstractmethod
    def eval_sums(self, fwd: Any, batch: dict) -> EvalSums:
        """Per-task loss sums and counts of a validation batch (forward ran with training=False, under no_grad)."""

    def describe(self) -> str:
        """One phrase for the start-of-run log line."""
        return self.name
