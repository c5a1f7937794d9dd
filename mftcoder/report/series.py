"""Curves from a run's records: (steps, values) arrays where a non-finite value is NaN (a gap in the plot) and a
missing value (a task absent from a step's batch: null) is left out (no gap: the task just was not measured)."""
from __future__ import annotations

import math
from typing import Optional

Series = tuple[list[float], list[float]]

# keys of a training step record that are not plotted as extra scalars (they have their own figures or are counters)
KNOWN_STEP_KEYS = frozenset({"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "split"})


def as_number(value) -> Optional[float]:
    """A finite float, NaN for a non-finite number, None for anything else (null, missing, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else math.nan


def scalar_series(records: list[dict], key: str) -> Series:
    xs, ys = [], []
    for rec in records:
        y = as_number(rec.get(key))
        if y is not None:
            xs.append(rec["step"])
            ys.append(y)
    return xs, ys


def task_series(records: list[dict], key: str, task: str) -> Series:
    """One task's values of a per-task dict field (task_loss, task_weight, task_<metric>)."""
    xs, ys = [], []
    for rec in records:
        y = as_number((rec.get(key) or {}).get(task))
        if y is not None:
            xs.append(rec["step"])
            ys.append(y)
    return xs, ys


def has_data(series: Series) -> bool:
    return any(not math.isnan(y) for y in series[1])


def smooth(ys: list[float], span: Optional[int] = None) -> list[float]:
    """Exponential moving average over the finite values; a non-finite point stays NaN (its gap shows) and does not
    poison the average. The span grows with the length: ~1/15 of the points, at least 1 (no smoothing)."""
    span = span or max(1, len(ys) // 15)
    alpha = 2.0 / (span + 1)
    out, avg = [], None
    for y in ys:
        if math.isnan(y):
            out.append(math.nan)
            continue
        avg = y if avg is None else alpha * y + (1 - alpha) * avg
        out.append(avg)
    return out


def extra_step_keys(records: list[dict]) -> list[str]:
    """Numeric keys beyond the standard ones (an aux loss, DPO metrics), in first-seen order."""
    keys: list[str] = []
    for rec in records:
        for key, value in rec.items():
            if key not in KNOWN_STEP_KEYS and key not in keys and as_number(value) is not None:
                keys.append(key)
    return keys


def valid_metric_keys(records: list[dict]) -> list[str]:
    """Per-task dict fields of the validation records besides task_loss (task_perplexity, task_accuracy, ...)."""
    keys: list[str] = []
    for rec in records:
        for key, value in rec.items():
            if key.startswith("task_") and key != "task_loss" and isinstance(value, dict) and key not in keys:
                keys.append(key)
    return keys
