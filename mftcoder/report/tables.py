"""The report's tables as plain data (a header and rows of cells); html.py renders them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from mftcoder.report.runs import Run
from mftcoder.report.series import task_series


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    best: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to highlight
    note: str = ""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _batch(cfg: dict) -> str:
    micro, accum = cfg.get("per_device_train_batch_size"), cfg.get("gradient_accumulation_steps")
    return f"{micro} per device x {accum} accumulation" if micro is not None else "-"


def _steps(run: Run) -> str:
    done = run.steps[-1]["step"] if run.steps else 0
    cfg = run.config or {}
    limit = cfg.get("max_train_steps")
    epochs = cfg.get("num_train_epochs")
    planned = f"max_train_steps {limit}" if limit else (f"{epochs} epoch(s)" if epochs is not None else "-")
    return f"{done} done ({planned})"


# (label, value from the run): the config values that decide what a multi-task run did
CONFIG_ROWS: list[tuple[str, Callable[[Run], object]]] = [
    ("base model", lambda r: (r.config or {}).get("pretrained_model_path")),
    ("peft_type", lambda r: (r.config or {}).get("peft_type") or "none (full fine-tuning)"),
    ("weighted_loss_mode", lambda r: (r.config or {}).get("weighted_loss_mode")),
    ("task_sampling", lambda r: (r.config or {}).get("task_sampling")),
    ("seq_length", lambda r: (r.config or {}).get("seq_length")),
    ("steps", _steps),
    ("batch", lambda r: _batch(r.config or {})),
    ("learning_rate", lambda r: (r.config or {}).get("learning_rate")),
]

# (column, data_stats.json key) of the data table
DATA_COLUMNS = [("lines", "lines"), ("train", "train_samples"), ("valid", "valid_samples"), ("test", "test_samples"),
                ("tokens", "tokens"), ("loss tokens", "loss_tokens"), ("truncated", "truncated"),
                ("dropped", "dropped"), ("rejected", "rejected")]


def config_table(run: Run) -> Table:
    if run.config is None:
        return Table("Config", ["key", "value"], [], note="config not recorded")
    rows = [[label, _fmt(get(run))] for label, get in CONFIG_ROWS]
    return Table("Config", ["key", "value"], rows, note=f"from {run.config_source}")


def data_table(run: Run) -> Table:
    tasks = (run.stats or {}).get("tasks") or {}
    rows = [[name] + [_fmt(stat.get(key)) for _, key in DATA_COLUMNS] for name, stat in tasks.items()]
    return Table("Data per task", ["task"] + [c for c, _ in DATA_COLUMNS], rows,
                 note="" if tasks else "no data_stats.json")


def _first_last(run: Run, task: str) -> Optional[tuple[tuple[int, float], tuple[int, float]]]:
    xs, ys = task_series(run.valid, "task_loss", task)
    points = [(x, y) for x, y in zip(xs, ys)]
    return (points[0], points[-1]) if points else None


def final_valid(run: Run, task: str) -> Optional[float]:
    pair = _first_last(run, task)
    return pair[1][1] if pair else None


def valid_table(run: Run) -> Table:
    header = ["task", "first valid loss (step)", "last valid loss (step)", "change"]
    if not run.valid:
        return Table("Validation loss per task", header, [], note="no validation records")
    rows = []
    for task in run.tasks:
        pair = _first_last(run, task)
        if pair is None:
            rows.append([task, "-", "-", "no data"])
            continue
        (s0, v0), (s1, v1) = pair
        change = (v1 - v0) / v0 * 100 if v0 and math.isfinite(v0) and math.isfinite(v1) else None
        rows.append([task, f"{_fmt(v0)} ({s0})", f"{_fmt(v1)} ({s1})", "-" if change is None else f"{change:+.1f}%"])
    return Table("Validation loss per task", header, rows)


def compare_table(runs: list[Run]) -> Table:
    """Final validation loss per task (runs x tasks); the lowest of each task column is highlighted."""
    tasks = []
    for run in runs:
        tasks += [t for t in run.tasks if t not in tasks]
    values = [[final_valid(run, t) if t in run.tasks else None for t in tasks] for run in runs]
    best = set()
    for col in range(len(tasks)):
        finite = [(v, row) for row, vals in enumerate(values)
                  if (v := vals[col]) is not None and math.isfinite(v)]
        if finite:
            low = min(v for v, _ in finite)
            best |= {(row, col + 1) for v, row in finite if v == low}
    rows = [[run.name] + [_fmt(v) if t in run.tasks else "not in run" for v, t in zip(vals, tasks)]
            for run, vals in zip(runs, values)]
    return Table("Final validation loss per task", ["run"] + tasks, rows, best=best,
                 note='lowest per task in bold; "not in run": the run did not train that task; '
                      "-: the run has the task but never validated it")
