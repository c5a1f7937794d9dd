"""Score model answers to the held-out problems of ``examples/make_examples.py --heldout N``.

Each problem (one JSON line in ``DIR/heldout/<task>.jsonl``) carries the prompt turns, a ``mode`` and a
``test``. ``program_for`` turns an answer into a Python program that exits non-zero unless the answer is
correct; ``score`` runs those programs in MFTCoder's execution sandbox (``mftcoder/eval/sandbox.py``);
``pass_rates`` sums them up per task.

- ``raw`` (code_completion, HumanEval style): ``prefix`` + the answer cut where the function ends, then ``test``
  and ``check(<entry_point>)``;
- ``fenced`` (text_to_code, fenced code_completion): the first fenced block of the answer (else all of it), then
  ``test`` and ``check(<entry_point>)``;
- ``tests`` (unit_tests): the reference function (``test``), the answer's test code, then a runner that calls
  every top-level ``test*`` function (expanding ``pytest.mark.parametrize``). It fails when there is no test
  function, when one raises, or when the tests never call the function under test.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from mftcoder.eval.sandbox import SandboxLimits, run_programs

TIMEOUT_S = 10.0
_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)

# Runs the model's tests against the reference: counts calls of the function so that `assert True` fails.
_TESTS_RUNNER = '''

{entry} = _counting_{entry}


def _parameter_sets(func):
    """keyword sets for a test function: one empty set, or the product of its parametrize marks."""
    sets = [{{}}]
    for mark in getattr(func, "pytestmark", []):
        if getattr(mark, "name", None) != "parametrize":
            continue
        names = mark.args[0] if mark.args else mark.kwargs["argnames"]
        rows = mark.args[1] if len(mark.args) > 1 else mark.kwargs["argvalues"]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        values = []
        for row in rows:
            if hasattr(row, "marks") and hasattr(row, "values"):  # pytest.param(...)
                values.append(tuple(row.values))
            else:
                values.append(tuple(row) if len(names) > 1 else (row,))
        sets = [{{**s, **dict(zip(names, v))}} for s in sets for v in values]
    return sets


def _run_tests():
    tests = [f for n, f in list(globals().items()) if n.startswith("test") and isinstance(f, type(_run_tests))]
    if not tests:
        raise AssertionError("the answer has no test functions")
    for func in tests:
        for kwargs in _parameter_sets(func):
            func(**kwargs)
    if not _calls:
        raise AssertionError("the tests never call {entry}")


_run_tests()
'''

_TESTS_HEAD = '''import sys
import types

try:
    import pytest
except ImportError:  # a stand-in with pytest.raises, for a sandbox without pytest
    class _Raises:
        def __init__(self, exc, match=None):
            self.exc = exc

        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                raise AssertionError(f"DID NOT RAISE {{self.exc}}")
            return issubclass(exc_type, self.exc)

    pytest = types.ModuleType("pytest")
    pytest.raises = _Raises
    sys.modules["pytest"] = pytest

{source}

_calls = 0
_reference_{entry} = {entry}


def _counting_{entry}(*args, **kwargs):
    global _calls
    _calls += 1
    return _reference_{entry}(*args, **kwargs)


{module_lines}
'''


def first_block(answer: str) -> str:
    """The first fenced block of a chat answer (an unclosed fence runs to the end), else the whole answer."""
    m = _FENCE_RE.search(answer)
    return m.group(1) if m else answer


def cut_function(answer: str) -> str:
    """A raw completion up to the first line that is neither blank nor indented: where the function ends."""
    kept = []
    for line in answer.split("\n"):
        if line.strip() and not line[:1].isspace():
            break
        kept.append(line)
    return "\n".join(kept)


def _check_call(problem: dict, code: str) -> str:
    return f"{code}\n\n\n{problem['test']}\n\n\ncheck({problem['entry_point']})\n"


def _tests_program(problem: dict, answer: str) -> str:
    entry, module = problem["entry_point"], problem.get("module")
    module_lines = ""
    if module:  # the prompt said which file the function lives in: the tests may import it from there
        module_lines = (f"sys.modules[{module!r}] = types.ModuleType({module!r})\n"
                        f"sys.modules[{module!r}].{entry} = _counting_{entry}\n")
    head = _TESTS_HEAD.format(source=problem["test"], entry=entry, module_lines=module_lines)
    return head + "\n" + first_block(answer) + "\n" + _TESTS_RUNNER.format(entry=entry)


PROGRAMS = {
    "raw": lambda p, a: _check_call(p, p["prefix"] + "\n" + cut_function(a)),
    "fenced": lambda p, a: _check_call(p, first_block(a)),
    "tests": _tests_program,
}


def program_for(problem: dict, answer: str) -> str:
    """A runnable Python program that ends without an exception only if `answer` solves `problem`."""
    mode = problem.get("mode")
    if mode not in PROGRAMS:
        raise ValueError(f"problem {problem.get('task_id')}: mode must be one of {', '.join(PROGRAMS)}, got {mode!r}")
    return PROGRAMS[mode](problem, answer)


def score(problems: list[dict], answers: list[str], workers: int = 2, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Run every answer against its problem in the sandbox: [{task_id, task, status, passed, error}]."""
    if len(problems) != len(answers):
        raise ValueError(f"score: {len(problems)} problems but {len(answers)} answers")
    programs = [program_for(p, a) for p, a in zip(problems, answers)]
    results = run_programs(programs, SandboxLimits(timeout_s=timeout_s), workers=workers)
    return [{"task_id": p["task_id"], "task": p["task"], "status": r.status, "passed": r.passed, "error": r.error}
            for p, r in zip(problems, results)]


def pass_rates(results: list[dict]) -> dict[str, float]:
    """{task: fraction of its problems passed}, tasks in order of first appearance."""
    totals: dict[str, list[int]] = {}
    for r in results:
        counts = totals.setdefault(r["task"], [0, 0])
        counts[0] += bool(r["passed"])
        counts[1] += 1
    return {task: passed / count for task, (passed, count) in totals.items()}


def load_problems(folder: str | Path) -> list[dict]:
    """Every problem under `folder`/heldout/*.jsonl (the --out folder of make_examples.py --heldout)."""
    paths = sorted(Path(folder, "heldout").glob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"no held-out problems under {Path(folder, 'heldout')} "
                                "(write them with: python examples/make_examples.py --heldout 12 --out DIR)")
    return [json.loads(line) for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line]
