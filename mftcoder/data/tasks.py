"""Task registry: turns `data_paths` into uniquely named tasks with their files and weights."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from mftcoder.config import ConfigError, TaskSpec, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    task_id: int
    name: str
    path: str
    files: tuple[str, ...]
    loss_weight: float
    sampling_weight: Optional[float]


def find_jsonl_files(path: str) -> list[str]:
    """A file as given, or every *.jsonl under a folder (recursively, sorted so the order never depends on the OS)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConfigError(f"data_paths: {path!r} does not exist (expected a folder of .jsonl files or a .jsonl file)")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".jsonl"))
    if not files:
        raise ConfigError(f"data_paths: folder {path!r} contains no .jsonl file (searched recursively)")
    return files


def _default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return base[: -len(".jsonl")] if base.endswith(".jsonl") else base


def unique_task_names(specs: Sequence[TaskSpec]) -> list[str]:
    """Explicit names win and must be unique; derived names that clash grow parent folders (a/train, b/train)."""
    explicit = [s.name for s in specs if s.name]
    dupes = sorted({n for n in explicit if explicit.count(n) > 1})
    if dupes:
        raise ConfigError(f"data_paths: task name(s) {dupes} given more than once; each task needs a unique name")
    names: list[Optional[str]] = [s.name for s in specs]
    parts = [os.path.normpath(os.path.abspath(s.path)).split(os.sep) for s in specs]
    depth = {i: 1 for i, s in enumerate(specs) if not s.name}
    while True:
        for i in depth:
            p = parts[i]
            tail = p[-depth[i]:]
            tail[-1] = _default_name(tail[-1])
            names[i] = "/".join(tail)
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i in depth if names[i] in clashes and depth[i] < len(parts[i])]
        if not clashes:
            return [str(n) for n in names]
        if not grow:
            raise ConfigError(f"data_paths: tasks {sorted(clashes)} cannot be told apart (the same path twice?); "
                              'give them explicit names: [{"name": "...", "path": "..."}]')
        for i in grow:
            depth[i] += 1


def _per_task_values(value, names: list[str], key: str) -> Optional[list[float]]:
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"{key}: unknown task(s) {unknown}; tasks are {names}")
        missing = [n for n in names if n not in value]
        if missing:
            raise ConfigError(f"{key}: no value for task(s) {missing}; give every task a value")
        values = [float(value[n]) for n in names]
    else:
        if len(value) != len(names):
            raise ConfigError(f"{key}: {len(value)} value(s) for {len(names)} task(s) {names}")
        values = [float(v) for v in value]
    if any(v <= 0 for v in values):
        raise ConfigError(f"{key}: every value must be > 0 (got {values})")
    return values


def resolve_tasks(cfg: TrainConfig) -> list[Task]:
    specs = cfg.data_paths
    names = unique_task_names(specs)
    files = [find_jsonl_files(s.path) for s in specs]
    loss_weights = _per_task_values(cfg.task_weights, names, "task_weights")
    inline = [s.weight for s in specs]
    if any(w is not None for w in inline):
        if loss_weights is not None:
            raise ConfigError("task weights given twice: in data_paths entries and in task_weights; keep one")
        loss_weights = [w if w is not None else 1.0 for w in inline]
    loss_weights = loss_weights or [1.0] * len(specs)
    sampling = _per_task_values(cfg.task_sampling_weights, names, "task_sampling_weights")
    return [
        Task(i, names[i], specs[i].path, tuple(files[i]), loss_weights[i], sampling[i] if sampling else None)
        for i in range(len(specs))
    ]


def split_of(raw_line: str, fractions: tuple[float, float, float]) -> str:
    """train / valid / test by a hash of the line's content: independent of world size, file order and seed."""
    digest = hashlib.sha1(raw_line.strip().encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "valid"
    return "test"
