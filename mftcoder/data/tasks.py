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


DATA_SUFFIXES = (".jsonl.gz", ".jsonl")  # longest first: the name of a task file drops it
DOCUMENT_SUFFIXES = DATA_SUFFIXES + (".txt",)  # continued pretraining also reads plain text, one document a file


def find_jsonl_files(path: str, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[str]:
    """A file as given, or every file with one of `suffixes` under a folder: recursively, through symlinked folders
    (each real folder once, so a link loop ends), sorted so the order never depends on the OS."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConfigError(f"data_paths: {path!r} does not exist (expected a folder of .jsonl files or a .jsonl file)")
    files, others, walked = [], [], {}

    def unreadable(err: OSError):
        raise ConfigError(f"data_paths: cannot read {err.filename!r} in task folder {path!r}: {err.strerror}")

    for root, dirs, names in os.walk(path, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:  # a link back up (a loop) or a second way into a folder already read
            log.warning(f"{root}: the same folder as {walked[real]}; its files are read once")
            dirs[:] = []
            continue
        walked[real] = root
        dirs.sort()
        for n in sorted(names):
            (files if n.endswith(suffixes) else others).append(os.path.join(root, n))
    if not files:
        raise ConfigError(_no_data_files_message(path, others, suffixes))
    broken = [f for f in files if not os.path.exists(f)]
    if broken:
        raise ConfigError(f"data_paths: {broken[0]!r} is a symlink to nothing ({os.readlink(broken[0])!r}); "
                          "fix or remove the link")
    return _once_each(files)


def _once_each(files: list[str]) -> list[str]:
    """Two links to one file inside a task: read it once (it is one file), and say so."""
    first: dict[str, str] = {}
    for f in files:
        real = os.path.realpath(f)
        if real in first:
            log.warning(f"{f}: the same file as {first[real]}; it is read once")
        else:
            first[real] = f
    return list(first.values())


def _no_data_files_message(path: str, others: list[str], suffixes: tuple[str, ...]) -> str:
    kinds = " or ".join(s for s in suffixes if s != ".jsonl.gz")
    msg = f"data_paths: folder {path!r} contains no {kinds} file (searched recursively"
    if not others:
        return msg + "; it holds no file at all)"
    shown = [os.path.relpath(f, path) for f in others[:5]]
    more = f" and {len(others) - 5} more" if len(others) > 5 else ""
    msg += (f"; found {len(others)} file(s): {', '.join(shown)}{more}; expected *.jsonl or *.jsonl.gz files with one "
            "JSON object per line)")
    if any(f.endswith(".json") for f in others):
        msg += ("; a .json file is not read: if it holds a JSON array of samples, write one per line, "
                "e.g. jq -c '.[]' data.json > data.jsonl")
    return msg


def check_no_shared_files(names: list[str], files: list[list[str]]) -> None:
    """A file reached by two tasks (the same folder twice, a folder and a link to it, a folder and a file in it)
    would train twice under two names: refuse, naming both tasks and the file."""
    owner: dict[str, tuple[str, str]] = {}
    for name, task_files in zip(names, files):
        for f in task_files:
            real = os.path.realpath(f)
            if real in owner and owner[real][0] != name:
                other, other_path = owner[real]
                raise ConfigError(f"data_paths: tasks {other!r} and {name!r} both hold the file {real!r} (as "
                                  f"{other_path!r} and {f!r}); its samples would train twice: give each file to one "
                                  "task (a task's weight sets how much it counts)")
            owner.setdefault(real, (name, f))


def _default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for suffix in DOCUMENT_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


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
    suffixes = DOCUMENT_SUFFIXES if cfg.objective == "pretrain" else DATA_SUFFIXES
    files = [find_jsonl_files(s.path, suffixes) for s in specs]
    check_no_shared_files(names, files)
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
