"""The warnings a report shows in its box: what in a run's files is missing, cut or not finite."""
from __future__ import annotations

import math

from mftcoder.report.runs import CONFIG_FILE, METRICS_FILE, STATS_FILE, Run
from mftcoder.report.series import as_number


def _steps_text(steps: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(s) for s in steps[:limit])
    return shown + (f" (and {len(steps) - limit} more)" if len(steps) > limit else "")


def nonfinite_steps(records: list[dict]) -> list[int]:
    """Steps whose loss or a task loss is NaN or infinite."""
    bad = []
    for rec in records:
        values = [rec.get("loss"), *(rec.get("task_loss") or {}).values()]
        if any((v := as_number(x)) is not None and math.isnan(v) for x in values):
            bad.append(rec["step"])
    return bad


def tasks_without_data(run: Run) -> list[str]:
    """Tasks no training step measured (every task_loss null): no training sample reached a batch."""
    return [t for t in run.tasks
            if not any(as_number((r.get("task_loss") or {}).get(t)) is not None for r in run.steps)]


def run_warnings(run: Run) -> list[str]:
    """Each problem as one line, in the order a reader would look for it."""
    out = []
    if not run.metrics_found:
        out.append(f"no {METRICS_FILE}: the run wrote no step")
    elif not run.steps and not run.valid:
        out.append(f"{METRICS_FILE} is empty: no training step or validation was recorded")
    if run.cut_line is not None:
        out.append(f"the last line of {METRICS_FILE} (line {run.cut_line}) is cut (the run was killed while "
                   "writing it); it is left out")
    if run.bad_lines:
        out.append(f"unreadable lines of {METRICS_FILE} left out: {_steps_text(run.bad_lines)}")
    if (train_bad := nonfinite_steps(run.steps)):
        out.append(f"non-finite loss at step(s) {_steps_text(train_bad)} (shown as gaps)")
    if (valid_bad := nonfinite_steps(run.valid)):
        out.append(f"non-finite validation loss at step(s) {_steps_text(valid_bad)} (shown as gaps)")
    if run.steps:
        for task in tasks_without_data(run):
            out.append(f"task {task!r}: no data (no training step measured it: no training sample, or all its "
                       "losses are null)")
    if run.steps and not run.valid:
        out.append("no validation records: the run never evaluated (evaluation needs a valid share in data_split)")
    if run.stats is None:
        out.append(f"no {STATS_FILE}: the data table is empty")
    if run.config is None:
        out.append(f"config not recorded (no {CONFIG_FILE} in the run dir or its checkpoints)")
    return out
