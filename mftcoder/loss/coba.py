"""CoBa: convergence balancing of task weights from per-task validation-loss slopes (MFTCoder v0.5, fixed).

Signal: at optimizer steps t >= 1 with t % I == 0 the trainer measures the per-task validation loss and calls
`record(t, loss, present)`; it is divided by V0 (the per-task loss of a full validation pass before training, from
`set_initial`; a task missing there takes its first recorded loss as V0).

At each record with t >= W (warmup) new weights are computed, with K tasks, window = the last H records by position,
x = their real step numbers, slope(x, y) = least-squares slope of y on x over the records where the task is present
(0 with fewer than 2 such records):
    alpha[k]  = slope of task k over the window; alpha_max = slope of the worst (max over present tasks) curve
    A[k, .], A_max[.] : histories of alpha and alpha_max, one entry per weight update (A keeps the last H)
    RCS = softmax_k( K * alpha[k] / (sum_j |alpha[j]| + eps) )              slower / rising tasks get more
    ACS = softmax_k( -N * alpha[k] / (sum_{s in last N of A[k]} |A[k, s]| + eps) )  N = min(len(A), H)
    DF  = clamp( M * softmax_s(-tau * M * A_max[s] / (sum |A_max| + eps))[last], 0, 1 ),  M = len(A_max)
    w   = softmax_k( K * (DF * RCS + (1 - DF) * ACS) ); then, if some w < m = 1/(10K): w = (1 - K m) w + m
The weights sum to 1 (also the uniform 1/K used before warmup). case3 / coba divide by the sum of the weights of the
tasks present in the step anyway, so only their ratios matter.

Fixed against the original: DF clamped to [0, 1]; slope histories sliced by position (W > H works); histories made
on the first update whatever W and I; presence kept as a mask next to each (step, loss) pair; x = the real step of
each record (I > 1 works); eps in every normaliser (all-zero slopes give uniform weights, not NaN); the whole state
goes into `state_dict`, so a resumed run computes the same weights. Weights are computed between optimizer steps, so
all accumulation micro-batches of a step use the same ones.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

EPS = 1e-12
DTYPE = torch.float64


def least_squares_slope(x: Sequence[float], y: Sequence[float], present: Sequence[bool]) -> float:
    """Slope of the ordinary least-squares line through the (x, y) pairs that are present; 0 with < 2 of them."""
    pts = [(float(a), float(b)) for a, b, p in zip(x, y, present) if p]
    if len(pts) < 2:
        return 0.0
    mx = sum(a for a, _ in pts) / len(pts)
    my = sum(b for _, b in pts) / len(pts)
    sxx = sum((a - mx) ** 2 for a, _ in pts)
    if sxx <= 0.0:
        return 0.0
    return sum((a - mx) * (b - my) for a, b in pts) / sxx


class CoBa:
    def __init__(self, num_tasks: int, warmup_steps: int, history_length: int, tau: float, update_interval: int):
        # The user-facing bounds of the coba_* keys live in TrainConfig only; these two are what the algorithm
        # itself cannot run without (the same bounds as the config's, which is checked first).
        if int(num_tasks) < 1:
            raise ValueError(f"CoBa needs at least one task, got num_tasks={num_tasks}")
        if int(history_length) < 2:
            raise ValueError(f"coba_history_length must be >= 2 (a slope needs two points), got {history_length}")
        if int(update_interval) < 1:
            raise ValueError(f"coba_update_interval must be >= 1, got {update_interval}")
        self.num_tasks = int(num_tasks)
        self.warmup_steps = int(warmup_steps)
        self.history_length = int(history_length)
        self.tau = float(tau)
        self.update_interval = int(update_interval)
        K = self.num_tasks
        self.v0: list[float] = [0.0] * K
        self.v0_set: list[bool] = [False] * K
        # The last H records: step, normalised loss per task, presence per task.
        self.steps: list[int] = []
        self.values: list[list[float]] = []
        self.present: list[list[bool]] = []
        self.slopes: list[list[float]] = []  # A: the last H alpha vectors
        self.worst_slopes: list[float] = []  # A_max: all of them (DF uses the whole history)
        self.current: list[float] | None = None  # latest weights, None until the first update after warmup

    # ---- signal -------------------------------------------------------------------------------------------------
    def set_initial(self, valid_loss: Tensor, present: Tensor) -> None:
        """V0: per-task validation loss from a full pass before training (tasks not present stay unset)."""
        loss, mask = self._check_signal(valid_loss, present)
        for k in range(self.num_tasks):
            if mask[k]:
                self.v0[k] = loss[k]
                self.v0_set[k] = True

    def should_update(self, step: int) -> bool:
        return step >= 1 and step % self.update_interval == 0

    def record(self, step: int, valid_loss: Tensor, present: Tensor) -> None:
        """Append the per-task validation loss measured after optimizer step `step`; from warmup on, update weights."""
        step = int(step)
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"CoBa records must have increasing steps: got step {step} after {self.steps[-1]}")
        loss, mask = self._check_signal(valid_loss, present)
        row = []
        for k in range(self.num_tasks):
            if mask[k] and not self.v0_set[k]:
                self.v0[k], self.v0_set[k] = loss[k], True
            row.append(loss[k] / max(self.v0[k], EPS) if mask[k] else 0.0)
        self.steps.append(step)
        self.values.append(row)
        self.present.append(list(mask))
        H = self.history_length
        del self.steps[:-H], self.values[:-H], self.present[:-H]
        if step >= self.warmup_steps:
            self.current = self._update()

    def _check_signal(self, valid_loss: Tensor, present: Tensor) -> tuple[list[float], list[bool]]:
        loss = torch.as_tensor(valid_loss).detach().to("cpu", DTYPE).reshape(-1)
        mask = torch.as_tensor(present).detach().to("cpu").bool().reshape(-1)
        if loss.numel() != self.num_tasks or mask.numel() != self.num_tasks:
            raise ValueError(
                f"CoBa expects {self.num_tasks} task losses and flags, got {loss.numel()} and {mask.numel()}"
            )
        if not bool(torch.isfinite(loss[mask]).all()) or bool((loss[mask] < 0).any()):
            raise ValueError(f"CoBa got a non-finite or negative validation loss: {loss.tolist()}")
        return loss.tolist(), mask.tolist()

    # ---- weights ------------------------------------------------------------------------------------------------
    def weights(self, step: int) -> Tensor:
        """Task weights [K] (float64, sum 1) for the loss of optimizer step `step`: uniform before warmup and until
        the first update, then the weights of the latest update."""
        K = self.num_tasks
        if step < self.warmup_steps or self.current is None:
            return torch.full((K,), 1.0 / K, dtype=DTYPE)
        return torch.tensor(self.current, dtype=DTYPE)

    def _update(self) -> list[float]:
        K = self.num_tasks
        x = self.steps
        alpha = [least_squares_slope(x, [r[k] for r in self.values], [p[k] for p in self.present]) for k in range(K)]
        worst, worst_present = [], []
        for r, p in zip(self.values, self.present):
            vals = [v for v, q in zip(r, p) if q]
            worst.append(max(vals) if vals else 0.0)
            worst_present.append(bool(vals))
        alpha_max = least_squares_slope(x, worst, worst_present)
        self.slopes.append(alpha)
        del self.slopes[: -self.history_length]
        self.worst_slopes.append(alpha_max)

        a = torch.tensor(alpha, dtype=DTYPE)
        rcs = torch.softmax(K * a / (a.abs().sum() + EPS), dim=0)

        hist = torch.tensor(self.slopes, dtype=DTYPE)  # [N, K], last row = alpha
        n = hist.shape[0]
        acs = torch.softmax(-n * a / (hist.abs().sum(0) + EPS), dim=0)

        am = torch.tensor(self.worst_slopes, dtype=DTYPE)
        m = am.numel()
        df = (m * torch.softmax(-self.tau * m * am / (am.abs().sum() + EPS), dim=0)[-1]).clamp(0.0, 1.0)

        w = torch.softmax(K * (df * rcs + (1.0 - df) * acs), dim=0)
        floor = 1.0 / (10 * K)
        if bool((w < floor).any()):
            w = (1.0 - K * floor) * w + floor
        return w.tolist()

    # ---- checkpointing ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serialisable; floats round-trip exactly)."""
        return {
            "config": {
                "num_tasks": self.num_tasks, "warmup_steps": self.warmup_steps, "history_length": self.history_length,
                "tau": self.tau, "update_interval": self.update_interval,
            },
            "v0": list(self.v0), "v0_set": list(self.v0_set),
            "steps": list(self.steps),
            "values": [list(r) for r in self.values],
            "present": [list(p) for p in self.present],
            "slopes": [list(s) for s in self.slopes], "worst_slopes": list(self.worst_slopes),
            "current": None if self.current is None else list(self.current),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"]["num_tasks"] != self.num_tasks:
            raise ValueError(
                f"CoBa state is for {state['config']['num_tasks']} tasks, this run has {self.num_tasks}"
            )
        # The hyper-parameters are this run's (they may be changed on resume); the history is the checkpoint's.
        self.v0 = [float(v) for v in state["v0"]]
        self.v0_set = [bool(v) for v in state["v0_set"]]
        self.steps = [int(s) for s in state["steps"]][-self.history_length :]
        self.values = [[float(v) for v in r] for r in state["values"]][-self.history_length :]
        self.present = [[bool(v) for v in p] for p in state["present"]][-self.history_length :]
        self.slopes = [[float(v) for v in s] for s in state["slopes"]][-self.history_length :]
        self.worst_slopes = [float(v) for v in state["worst_slopes"]]
        self.current = None if state["current"] is None else [float(v) for v in state["current"]]
