"""One training output_dir read into a `Run`: its step and validation records, data_stats.json and resolved config.

A run dir is what `mftcoder train` leaves in output_dir: metrics.jsonl (one JSON object a line), data_stats.json and
train_config.json (older runs: only in their checkpoint-N folders). Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

METRICS_FILE = "metrics.jsonl"
STATS_FILE = "data_stats.json"
CONFIG_FILE = "train_config.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
EXPECTED = f"a training output_dir holding {METRICS_FILE} and {STATS_FILE} (what `mftcoder train` writes)"


class ReportError(ValueError):
    """Bad input to `mftcoder report`: names the folder or option and what is expected."""


@dataclass
class Run:
    name: str
    path: str
    steps: list[dict] = field(default_factory=list)  # training step records, in file order
    valid: list[dict] = field(default_factory=list)  # records with "split": "valid"
    stats: Optional[dict] = None  # data_stats.json
    config: Optional[dict] = None  # the resolved train config
    config_source: Optional[str] = None  # the file it was read from
    metrics_found: bool = True
    cut_line: Optional[int] = None  # line number of an unreadable last line (a kill mid-write)
    bad_lines: list[int] = field(default_factory=list)  # unreadable lines before the last one (skipped)

    @property
    def tasks(self) -> list[str]:
        """Task names in the data's order, then any only the metrics know."""
        names = list((self.stats or {}).get("tasks", {}))
        for rec in self.steps + self.valid:
            for name in rec.get("task_loss") or {}:
                if name not in names:
                    names.append(name)
        return names


def read_metrics_lines(path: str) -> tuple[list[dict], Optional[int], list[int]]:
    """(records, line number of a cut last line or None, numbers of other unreadable lines).

    Python's json reads NaN/Infinity, which is how a diverged step is written."""
    records, bad = [], []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    for k, (number, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad.append(number)
    cut = bad.pop() if bad and numbered and bad[-1] == numbered[-1][0] else None
    return records, cut, bad


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def find_config(path: str) -> tuple[Optional[dict], Optional[str]]:
    """train_config.json of the run, else of its newest checkpoint, else (None, None)."""
    candidates = [os.path.join(path, CONFIG_FILE)]
    checkpoints = sorted(((int(m.group(1)), n) for n in os.listdir(path) if (m := CHECKPOINT_RE.match(n))),
                         reverse=True)
    candidates += [os.path.join(path, n, CONFIG_FILE) for _, n in checkpoints]
    for candidate in candidates:
        config = _read_json(candidate)
        if config is not None:
            return config, candidate
    return None, None


def load_run(path: str, name: Optional[str] = None) -> Run:
    """Read one run dir; a missing folder or one that is not a run dir is a ReportError naming it."""
    if not os.path.isdir(path):
        raise ReportError(f"{path}: no such folder; expected {EXPECTED}")
    metrics_path, stats_path = os.path.join(path, METRICS_FILE), os.path.join(path, STATS_FILE)
    if not os.path.isfile(metrics_path) and not os.path.isfile(stats_path):
        raise ReportError(f"{path}: not a run dir (no {METRICS_FILE}, no {STATS_FILE}); expected {EXPECTED}")
    run = Run(name=name or os.path.basename(os.path.normpath(os.path.abspath(path))), path=path)
    if os.path.isfile(metrics_path):
        records, run.cut_line, run.bad_lines = read_metrics_lines(metrics_path)
        run.valid = [r for r in records if r.get("split") == "valid"]
        run.steps = [r for r in records if r.get("split") is None and "step" in r]
    else:
        run.metrics_found = False
    run.stats = _read_json(stats_path)
    run.config, run.config_source = find_config(path)
    return run
