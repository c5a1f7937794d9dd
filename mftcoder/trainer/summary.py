"""What a finished (or refused) run tells the user: the summary table, read back from metrics.jsonl."""
from __future__ import annotations

import os
from typing import Optional

from mftcoder.config import TrainConfig
from mftcoder.trainer.metrics import read_metrics


def no_train_sample_message(empty: list[str], stats: dict, cfg: TrainConfig) -> str:
    lines = []
    for name in empty:
        st = stats.get("tasks", {}).get(name, {})
        lines.append(f"task {name!r} has no training sample: of its {st.get('lines', '?')} line(s), "
                     f"{st.get('valid_samples', '?')} went to valid and {st.get('test_samples', '?')} to test "
                     f"(data_split={cfg.data_split!r}), {st.get('dropped', '?')} were dropped as longer than "
                     f"seq_length={cfg.seq_length} (overlong_policy={cfg.overlong_policy!r}), "
                     f"{st.get('rejected', '?')} rejected, {st.get('blank', '?')} blank")
    return ("\n".join(lines) + f"\n(details in {os.path.join(cfg.output_dir, 'data_stats.json')}); add data to the "
            "task, give train a larger share of data_split, raise seq_length or use overlong_policy='truncate', "
            "or remove the task from data_paths")


def last_valid(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    valid = [r for r in read_metrics(path) if r.get("split") == "valid"]
    return valid[-1]["task_loss"] if valid else None


def mean_task_weights(path: str, names: list[str]) -> Optional[dict]:
    """Each task's share of the loss averaged over the run's steps (0 in steps where the task was absent)."""
    if not os.path.exists(path):
        return None
    steps = [r["task_weight"] for r in read_metrics(path) if "task_weight" in r]
    return {n: sum(w[n] for w in steps) / len(steps) for n in names} if steps else None


def summary_table(summary: dict, names: list[str]) -> str:
    first, last, weights = summary.get("first_valid") or {}, summary.get("last_valid") or {}, summary.get("task_weight") or {}
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    width = max([len(n) for n in names] + [4])
    lines = [f"finished after {summary['steps']} steps ({summary['stop_reason']}); model in {summary['output_dir']}",
             f"{'task'.ljust(width)}  first_valid  last_valid   change  mean_weight"]
    for n in names:
        f, l_ = first.get(n), last.get(n)
        change = "-" if f is None or l_ is None else f"{(l_ - f) / f * 100:+.1f}%"
        lines.append(f"{n.ljust(width)}  {fmt(f):>11}  {fmt(l_):>10}  {change:>7}  {fmt(weights.get(n)):>11}")
    return "\n".join(lines)
