"""The report's figures: a registry of `FigureSpec`s, each drawn for one run or overlaid for several.

One run: one axes, one line per task (per-task figures) or one line (scalars). Several runs: per-task figures get one
panel per task with one line per run that has the task, so runs are compared task by task; scalars one line per run.
matplotlib is imported inside the functions (the report package stays light to import) and used without pyplot:
each figure is its own `Figure` on an Agg canvas, so no global state carries from one figure to the next.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Callable, Optional

from mftcoder.report.runs import Run
from mftcoder.report.series import (Series, extra_step_keys, has_data, scalar_series, smooth, task_series,
                                    valid_metric_keys)

RAW_ALPHA = 0.25  # the unsmoothed curve behind the smoothed one
DPI = 110
RUN_STYLES = ("-", "--", ":", "-.")  # compared runs differ in dash too: identical curves stay visible
FEW_POINTS = 12  # up to this many points a curve is drawn as is, with markers (smoothing would hide them)


@dataclass(frozen=True)
class FigureSpec:
    key: str  # PNG file stem, unique
    title: str
    ylabel: str
    description: str  # what the figure shows, for the report
    curve: Callable[[Run, Optional[str]], Series]  # (run, task or None) -> (steps, values)
    per_task: bool = False
    smoothed: bool = False  # smoothed line over the raw one drawn faint
    markers: bool = False  # few points (validation): mark them


FIGURES: list[FigureSpec] = [
    FigureSpec("train_loss", "Training loss per task", "loss",
               "Each task's mean token loss in the steps whose batch held it (smoothed; raw curve faint).",
               lambda r, t: task_series(r.steps, "task_loss", t), per_task=True, smoothed=True),
    FigureSpec("valid_loss", "Validation loss per task", "loss",
               "Each task's loss on its validation split at each evaluation (step 0: before training).",
               lambda r, t: task_series(r.valid, "task_loss", t), per_task=True, markers=True),
    FigureSpec("task_weight", "Task weight per step", "weight",
               "The effective weight of each task in each step's loss (CoBa: as it steers; 0 when the task was "
               "not in the batch; smoothed, raw faint).",
               lambda r, t: task_series(r.steps, "task_weight", t), per_task=True, smoothed=True),
    FigureSpec("loss", "Training loss (all tasks)", "loss", "The loss each optimizer step minimised (smoothed).",
               lambda r, t: scalar_series(r.steps, "loss"), smoothed=True),
    FigureSpec("lr", "Learning rate", "lr", "The learning rate of each step (warmup and schedule).",
               lambda r, t: scalar_series(r.steps, "lr")),
    FigureSpec("grad_norm", "Gradient norm", "grad norm", "The gradient norm before clipping (smoothed).",
               lambda r, t: scalar_series(r.steps, "grad_norm"), smoothed=True),
    FigureSpec("tokens_per_s", "Throughput", "tokens/s", "Tokens per second of each step (smoothed).",
               lambda r, t: scalar_series(r.steps, "tokens_per_s"), smoothed=True),
]


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def figure_specs(runs: list[Run]) -> list[FigureSpec]:
    """The fixed figures, then one per extra validation metric and per extra training scalar the runs recorded."""
    specs = list(FIGURES)
    metrics = []
    for run in runs:
        metrics += [k for k in valid_metric_keys(run.valid) if k not in metrics]
    for key in metrics:
        name = key[len("task_"):]
        specs.append(FigureSpec(f"valid_{_safe(name)}", f"Validation {name} per task", name,
                                f"Each task's validation {name} at each evaluation.",
                                lambda r, t, key=key: task_series(r.valid, key, t), per_task=True, markers=True))
    extras = []
    for run in runs:
        extras += [k for k in extra_step_keys(run.steps) if k not in extras]
    for key in extras:
        specs.append(FigureSpec(f"step_{_safe(key)}", key, key, f"The training records' {key} (smoothed).",
                                lambda r, t, key=key: scalar_series(r.steps, key), smoothed=True))
    return specs


def _draw(ax, series: Series, color: str, label: str, spec: FigureSpec, ls: str = "-") -> bool:
    """One curve; NaN points are gaps, marked by a dotted red line. False when there is nothing finite to draw."""
    xs, ys = series
    for x, y in zip(xs, ys):
        if math.isnan(y):
            ax.axvline(x, color="red", alpha=0.4, lw=0.8, ls=":", label="_nonfinite")
    if not has_data(series):
        return False
    marker = "o" if spec.markers or len(xs) <= FEW_POINTS else None
    if spec.smoothed and len(xs) > FEW_POINTS:
        ax.plot(xs, ys, color=color, alpha=RAW_ALPHA, lw=0.8, label="_raw")
        ax.plot(xs, smooth(ys), color=color, lw=1.6, ls=ls, label=label)
    else:
        ax.plot(xs, ys, color=color, lw=1.6, ls=ls, marker=marker, ms=3.5, label=label)
    return True


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def _style(ax, spec: FigureSpec, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(spec.ylabel)
    ax.grid(alpha=0.3)


def _single(fig, spec: FigureSpec, run: Run) -> None:
    ax = fig.add_subplot()
    _style(ax, spec, f"{spec.title}: {run.name}")
    if not spec.per_task:
        if not _draw(ax, spec.curve(run, None), "C0", spec.ylabel, spec):
            _no_data(ax)
        return
    empty = [t for i, t in enumerate(run.tasks) if not _draw(ax, spec.curve(run, t), f"C{i % 10}", t, spec)]
    if len(empty) == len(run.tasks):
        _no_data(ax)
    elif empty:
        ax.text(0.99, 0.02, "no data: " + ", ".join(empty), transform=ax.transAxes, ha="right", va="bottom",
                color="gray", fontsize=8)
    if len(empty) < len(run.tasks):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _all_tasks(runs: list[Run]) -> list[str]:
    tasks: list[str] = []
    for run in runs:
        tasks += [t for t in run.tasks if t not in tasks]
    return tasks


def _compare(fig, spec: FigureSpec, runs: list[Run]) -> None:
    colors = {run.name: f"C{i % 10}" for i, run in enumerate(runs)}
    styles = {run.name: RUN_STYLES[i % len(RUN_STYLES)] for i, run in enumerate(runs)}
    panels = _all_tasks(runs) if spec.per_task else [None]
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    for i, task in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _style(ax, spec, task if task is not None else spec.title)
        drawn = [_draw(ax, spec.curve(run, task), colors[run.name], run.name, spec, styles[run.name])
                 for run in runs if task is None or task in run.tasks]
        if not any(drawn):
            _no_data(ax)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[run.name], ls=styles[run.name], lw=2, label=run.name) for run in runs]
    # below the panels: above them it would collide with the suptitle
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(runs), 4), frameon=False, fontsize=9)
    if spec.per_task:
        fig.suptitle(spec.title, fontsize=11)


def _widen(ax) -> None:
    """Give a step axis at least two steps of width, so a one-point curve gets whole-step ticks."""
    lo, hi = ax.get_xlim()
    if hi - lo < 2:
        mid = (lo + hi) / 2
        ax.set_xlim(mid - 1, mid + 1)


def build_figure(spec: FigureSpec, runs: list[Run]):
    """A matplotlib Figure (not saved): inspectable, e.g. its Line2D artists and legend entries."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    compare = len(runs) > 1
    panels = len(_all_tasks(runs)) if compare and spec.per_task else 1
    height = 3.0 * math.ceil(panels / 2) + 1.0 if panels > 1 else 4.0
    fig = Figure(figsize=(10, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    (_compare if compare else lambda f, s, r: _single(f, s, r[0]))(fig, spec, runs)
    for ax in fig.axes:
        _widen(ax)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
