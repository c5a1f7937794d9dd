"""Multi-task loss over the GLOBAL batch of one optimizer step.

Modes (MFTCoder's names). With l the per-token CE over trained tokens, n_s the trained tokens of sample s,
mean_s = sum_{t in s} l / n_s, N_k / S_k the trained tokens / samples of task k in the whole step, w_k task weights,
P the tasks present in the step (N_k > 0):
    case1  token mean               sum l / sum_k N_k
    case2  sample mean              sum_s mean_s / sum_k S_k
    case3  task-balanced tokens     sum_{k in P} w_k L_k / sum_{k in P} w_k,  L_k = (sum of l over task k) / N_k
    case4  task-balanced samples    as case3 with L_k = (sum of mean_s over task k's samples) / S_k
    coba   case3 with the weights given by CoBa
MFTCoder applied these to each micro-batch on each rank and let DDP / gradient accumulation average the results, so a
micro-batch holding one task gave L_k whatever its weight (the weights cancelled). Here every mean is taken over the
whole step: the trainer first counts tokens and samples per task for all its accumulation micro-batches
(`count_micro_batch`, `sum_counts`), all-reduces one tensor (`StepCounts.to_tensor`) across processes, and then each
micro-batch contributes `micro_batch_loss(...).loss`, its exact share: the shares of all micro-batches of all
processes add up to the step loss above. Samples with no trained token are ignored; a step with no trained token
(or whose present tasks all weigh 0) has loss 0, still connected to the graph.

Trainer recipe: backward(micro.loss * grad_accum * world_size) (undoes the averaging by accelerate / DDP); step loss
= all_reduce(sum of micro.loss); per-task train loss = all_reduce(sum of task_loss_sum) / task_tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mftcoder.data.collator import IGNORE_INDEX

WEIGHTED_LOSS_MODES = ("case1", "case2", "case3", "case4", "coba")
COUNT_DTYPE = torch.float64  # exact integer counts up to 2**53, and one dtype for a single all_reduce


@dataclass
class StepCounts:
    """Trained tokens / samples per task (float64 [K]) and their totals (0-d float64) for one micro-batch or a step."""

    task_tokens: Tensor
    task_samples: Tensor
    total_tokens: Tensor
    total_samples: Tensor

    @property
    def num_tasks(self) -> int:
        return int(self.task_tokens.numel())

    def to_tensor(self) -> Tensor:
        """One flat float64 tensor [2K + 2] so a single all_reduce(SUM) sums every count across processes."""
        return torch.cat(
            [self.task_tokens, self.task_samples, self.total_tokens.reshape(1), self.total_samples.reshape(1)]
        )

    @classmethod
    def from_tensor(cls, flat: Tensor) -> "StepCounts":
        n = flat.numel()
        if flat.dim() != 1 or n < 4 or n % 2:
            raise ValueError(f"expected a flat tensor of 2K + 2 counts, got shape {tuple(flat.shape)}")
        k = (n - 2) // 2
        flat = flat.to(COUNT_DTYPE)
        return cls(flat[:k].clone(), flat[k : 2 * k].clone(), flat[2 * k].clone(), flat[2 * k + 1].clone())

    def to(self, device: torch.device | str) -> "StepCounts":
        return StepCounts.from_tensor(self.to_tensor().to(device))


@dataclass
class MicroLoss:
    """`loss`: this micro-batch's differentiable share of the step loss. `task_loss_sum` [K]: detached sum of token
    losses per task. `task_sample_mean_sum` [K]: detached sum over samples of each sample's token mean (float64)."""

    loss: Tensor
    task_loss_sum: Tensor
    task_sample_mean_sum: Tensor


def _sample_layout(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """(sample_ids [B, T], sample_task_ids [S]); a batch without sample ids is read as one sample per row."""
    labels = batch["labels"]
    if "sample_ids" in batch and "sample_task_ids" in batch:
        sample_ids, sample_task_ids = batch["sample_ids"], batch["sample_task_ids"]
    elif "task_ids" in batch:
        B, T = labels.shape
        sample_ids = torch.arange(B, device=labels.device).unsqueeze(1).expand(B, T)
        sample_task_ids = batch["task_ids"].reshape(-1)
    else:
        raise KeyError("batch needs sample_ids + sample_task_ids (or task_ids, one sample per row)")
    if sample_ids.shape != labels.shape:
        raise ValueError(f"sample_ids {tuple(sample_ids.shape)} must match labels {tuple(labels.shape)}")
    return sample_ids.to(labels.device), sample_task_ids.to(labels.device).long()


def _trained_tokens(batch: dict[str, Any], num_tasks: int, check: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mask [B, T] of trained tokens, their sample ids, the task of each sample, number of samples S), checked
    unless `check` is False (the caller checked the same batch on the CPU already: on a GPU each check waits for it)."""
    labels = batch["labels"]
    sample_ids, sample_task_ids = _sample_layout(batch)
    mask = labels != IGNORE_INDEX
    sid = sample_ids[mask].long()
    S = sample_task_ids.numel()
    if not check:
        return mask, sid, sample_task_ids, S
    if sid.numel() and (int(sid.min()) < 0 or int(sid.max()) >= S):
        raise ValueError(
            f"trained tokens must belong to a sample 0..{S - 1}; got sample ids {int(sid.min())}..{int(sid.max())}"
        )
    if S and (int(sample_task_ids.min()) < 0 or int(sample_task_ids.max()) >= num_tasks):
        raise ValueError(f"task ids must be in 0..{num_tasks - 1}, got {sample_task_ids.tolist()}")
    return mask, sid, sample_task_ids, S


def count_micro_batch(batch: dict[str, Any], num_tasks: int) -> StepCounts:
    """Local counts of one micro-batch: trained tokens per task, samples (with >= 1 trained token) per task."""
    mask, sid, sample_task_ids, S = _trained_tokens(batch, num_tasks)
    dev = mask.device
    per_sample = torch.zeros(S, dtype=COUNT_DTYPE, device=dev).index_add_(
        0, sid, torch.ones(sid.numel(), dtype=COUNT_DTYPE, device=dev)
    )
    task_tokens = torch.zeros(num_tasks, dtype=COUNT_DTYPE, device=dev).index_add_(0, sample_task_ids, per_sample)
    task_samples = torch.zeros(num_tasks, dtype=COUNT_DTYPE, device=dev).index_add_(
        0, sample_task_ids, (per_sample > 0).to(COUNT_DTYPE)
    )
    return StepCounts(task_tokens, task_samples, task_tokens.sum(), task_samples.sum())


def sum_counts(counts: Sequence[StepCounts]) -> StepCounts:
    """Element-wise sum of micro-batch counts (the trainer then all-reduces `to_tensor()` across processes)."""
    if len(counts) == 0:
        raise ValueError("sum_counts needs at least one StepCounts")
    flat = torch.stack([c.to_tensor().to(counts[0].task_tokens.device) for c in counts]).sum(0)
    return StepCounts.from_tensor(flat)


def micro_batch_loss(
    token_loss: Tensor,
    batch: dict[str, Any],
    step_counts: StepCounts,
    mode: str,
    task_weights: Tensor | Sequence[float] | None = None,
    checked: bool = False,
) -> MicroLoss:
    """This micro-batch's share of the step loss (see the module docstring); `task_weights` [K] for case3/case4/coba
    (None = all ones), ignored by case1/case2. The loss keeps the dtype of `token_loss` (0 where labels == -100).
    `checked`: the batch's ids were checked and counted into `step_counts` on the CPU (the trainer's count), so the
    checks that would each wait for a GPU are skipped."""
    if mode not in WEIGHTED_LOSS_MODES:
        raise ValueError(f"unknown weighted_loss_mode {mode!r}; valid: {', '.join(WEIGHTED_LOSS_MODES)}")
    K = step_counts.num_tasks
    if token_loss.shape != batch["labels"].shape:
        raise ValueError(f"token_loss {tuple(token_loss.shape)} must match labels {tuple(batch['labels'].shape)}")
    mask, sid, sample_task_ids, S = _trained_tokens(batch, K, check=not checked)
    dev, dtype = token_loss.device, token_loss.dtype
    counts = step_counts.to(dev)

    tl = token_loss[mask]  # empty when nothing is trained: its sum is 0 and still carries a grad_fn
    sample_sum = torch.zeros(S, dtype=dtype, device=dev).index_add(0, sid, tl)
    sample_cnt = torch.zeros(S, dtype=COUNT_DTYPE, device=dev).index_add_(
        0, sid, torch.ones(sid.numel(), dtype=COUNT_DTYPE, device=dev)
    )
    sample_mean = sample_sum / sample_cnt.clamp(min=1).to(dtype)  # 0 for samples without trained tokens
    task_sum = torch.zeros(K, dtype=dtype, device=dev).index_add(0, sample_task_ids, sample_sum)
    task_sample_mean = torch.zeros(K, dtype=dtype, device=dev).index_add(0, sample_task_ids, sample_mean)

    local = count_micro_batch(batch, K) if not checked else None
    if local is not None and bool(((local.task_tokens.to(dev) > 0) & (counts.task_tokens <= 0)).any()):
        raise ValueError(
            "step_counts do not include this micro-batch (a task trained here has no token in the step counts); "
            "count every micro-batch of the step before computing losses"
        )

    if mode == "case1":
        coef = _safe_inverse(counts.total_tokens).expand(K)
        loss = (task_sum.to(COUNT_DTYPE) * coef).sum()
    elif mode == "case2":
        coef = _safe_inverse(counts.total_samples).expand(K)
        loss = (task_sample_mean.to(COUNT_DTYPE) * coef).sum()
    else:
        w = _check_weights(task_weights, K, dev)
        present = counts.task_tokens > 0
        weight_sum = (w * present).sum()
        if mode in ("case3", "coba"):
            per_task, denom = task_sum, counts.task_tokens
        else:  # case4
            per_task, denom = task_sample_mean, counts.task_samples
        coef = torch.where(present, w * _safe_inverse(denom) * _safe_inverse(weight_sum), torch.zeros_like(w))
        loss = (per_task.to(COUNT_DTYPE) * coef).sum()
    return MicroLoss(loss.to(dtype), task_sum.detach().to(COUNT_DTYPE), task_sample_mean.detach().to(COUNT_DTYPE))


def token_coefficients(
    batch: dict[str, Any],
    step_counts: StepCounts,
    mode: str,
    task_weights: Tensor | Sequence[float] | None = None,
    checked: bool = False,
) -> Tensor:
    """c [B, T] (float64, 0 where labels == -100) with sum_t c_t * l_t == micro_batch_loss(l, ...).loss for any
    per-token losses l: every mode is linear in them. Known before the forward, so a fused lm_head + cross entropy
    can form the loss's gradient while the logits exist (mftcoder/loss/fused_linear_ce.py)."""
    if mode not in WEIGHTED_LOSS_MODES:
        raise ValueError(f"unknown weighted_loss_mode {mode!r}; valid: {', '.join(WEIGHTED_LOSS_MODES)}")
    K = step_counts.num_tasks
    mask, sid, sample_task_ids, S = _trained_tokens(batch, K, check=not checked)
    dev = mask.device
    counts = step_counts.to(dev)
    sample_cnt = torch.zeros(S, dtype=COUNT_DTYPE, device=dev).index_add_(
        0, sid, torch.ones(sid.numel(), dtype=COUNT_DTYPE, device=dev)
    )
    token_task = sample_task_ids[sid]
    if mode == "case1":
        per_token = _safe_inverse(counts.total_tokens).expand(sid.numel())
    elif mode == "case2":
        per_token = _safe_inverse(counts.total_samples) / sample_cnt[sid]
    else:
        w = _check_weights(task_weights, K, dev)
        present = counts.task_tokens > 0
        weight_sum = (w * present).sum()
        denom = counts.task_tokens if mode in ("case3", "coba") else counts.task_samples
        coef = torch.where(present, w * _safe_inverse(denom) * _safe_inverse(weight_sum), torch.zeros_like(w))
        per_token = coef[token_task] if mode in ("case3", "coba") else coef[token_task] / sample_cnt[sid]
    out = torch.zeros(mask.shape, dtype=COUNT_DTYPE, device=dev)
    out[mask] = per_token
    return out


def task_means(task_sums: Tensor, task_counts: Tensor) -> tuple[Tensor, Tensor]:
    """(per-task mean [K], present [K] bool): e.g. per-task train loss = task_loss_sum / task_tokens of the step.
    Absent tasks get NaN, so a logger cannot mistake them for a loss of 0."""
    present = task_counts > 0
    means = task_sums.to(COUNT_DTYPE) / task_counts.to(COUNT_DTYPE).clamp(min=1)
    return torch.where(present, means, torch.full_like(means, float("nan"))), present


def _safe_inverse(x: Tensor) -> Tensor:
    """1/x, and 0 where x == 0 (an empty step or all-zero weights give loss 0, not NaN)."""
    x = x.to(COUNT_DTYPE)
    return torch.where(x > 0, 1.0 / x.clamp(min=torch.finfo(COUNT_DTYPE).tiny), torch.zeros_like(x))


def _check_weights(task_weights: Tensor | Sequence[float] | None, K: int, device: torch.device) -> Tensor:
    if task_weights is None:
        return torch.ones(K, dtype=COUNT_DTYPE, device=device)
    if not isinstance(task_weights, Tensor):  # a list of Python floats: keep float64, not torch's default float32
        task_weights = torch.tensor(task_weights, dtype=COUNT_DTYPE)
    w = task_weights.detach().to(device=device, dtype=COUNT_DTYPE).reshape(-1)
    if w.numel() != K:
        raise ValueError(f"task_weights has {w.numel()} entries for {K} tasks")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"task_weights must be finite and >= 0, got {w.tolist()}")
    return w


def effective_weights(weights: torch.Tensor, counts: StepCounts, mode: str) -> list[float]:
    """The share of each task in the step loss's normaliser (what case3/case4/coba actually apply)."""
    if mode in ("case1", "case2"):
        denom = counts.task_tokens if mode == "case1" else counts.task_samples
        total = float(denom.sum()) or 1.0
        return [float(v) / total for v in denom]
    present = (counts.task_tokens > 0).double()
    w = weights.double().cpu() * present
    total = float(w.sum()) or 1.0
    return [float(v) / total for v in w]
