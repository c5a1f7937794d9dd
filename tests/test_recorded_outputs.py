"""Post-processing pinned on real model outputs: raw answers of SmolLM2-135M-Instruct (greedy, chat and completion
prompts) recorded from `mftcoder eval humaneval` on the sets in tests/data/code_eval, with the completion
`completion_for` makes of each and the sandbox status of the assembled program. Real outputs carry what
hand-written ones miss (prose around fences, a `main` after the function, code that does not compile)."""
import json
import os

import pytest

from mftcoder.eval.completions import completion_for
from mftcoder.eval.languages import LANGUAGES, missing_requirements
from mftcoder.eval.native_sandbox import bwrap_path, run_jobs
from mftcoder.eval.problems import load_problems

DATA = os.path.join(os.path.dirname(__file__), "data", "code_eval")
RECORDED = os.path.join(DATA, "recorded", "smollm2_outputs.jsonl")


def _records() -> list[dict]:
    with open(RECORDED, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _problem(record: dict):
    problems = {p.task_id: p for p in load_problems(os.path.join(DATA, record["source"]), mbpp_split="all")}
    return problems[record["task_id"]]


def _missing(problem) -> list[str]:
    needs = missing_requirements(LANGUAGES[problem.language], problem.harness)
    if problem.language != "python" and bwrap_path() is None:
        needs.append("`bwrap` (apt-get install bubblewrap)")
    return needs


RECORDS = _records()


def test_the_recording_covers_every_language_both_kinds_and_every_status():
    problems = [_problem(r) for r in RECORDS]
    assert {p.language for p in problems} == set(LANGUAGES)
    assert {r["kind"] for r in RECORDS} == {"chat", "completion"}
    assert {p.harness for p in problems} == {"humaneval-x", "multipl-e", "mbpp"}
    assert {"passed", "failed", "compile error"} <= {r["expected_status"] for r in RECORDS}


@pytest.mark.parametrize("record", RECORDS, ids=[f"{r['kind']}-{r['task_id']}" for r in RECORDS])
def test_completion_of_a_recorded_output_is_pinned(record):
    assert completion_for(_problem(record), record["raw"], record["kind"]) == record["expected_completion"]


def test_recorded_completions_run_to_their_recorded_status():
    """Every program once, two at a time; languages this machine cannot build are skipped by name."""
    runnable, skipped = [], set()
    for record in RECORDS:
        problem = _problem(record)
        needs = _missing(problem)
        if needs:
            skipped.add(f"{LANGUAGES[problem.language].display}: {', '.join(needs)}")
        else:
            runnable.append((record, problem))
    assert runnable, "python always runs"
    results = run_jobs([p.job(r["expected_completion"]) for r, p in runnable], workers=2)
    wrong = [(r["task_id"], r["kind"], r["expected_status"], res.status, res.error)
             for (r, _), res in zip(runnable, results) if res.status != r["expected_status"]]
    assert not wrong, wrong
    if skipped:
        pytest.skip("missing toolchains: " + "; ".join(sorted(skipped)))
