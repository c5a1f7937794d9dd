"""make_examples.py --heldout: a training split without some library functions, and problems for those functions
scored by executing answers (examples/mft_vs_sft/heldout.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from example_helpers import EXAMPLES, load_script

SIZES = {"code_completion": 40, "text_to_code": 20, "unit_tests": 10, "code_explain": 5}
HELDOUT = 6
EXECUTABLE = ("code_completion", "text_to_code", "unit_tests")


@pytest.fixture(scope="module")
def gen():
    return load_script(EXAMPLES / "make_examples.py", "make_examples_for_heldout_test")


@pytest.fixture(scope="module")
def heldout():
    return load_script(EXAMPLES / "mft_vs_sft" / "heldout.py", "heldout_under_test")


@pytest.fixture(scope="module")
def split(gen):
    return gen.generate_heldout(SIZES, HELDOUT)


def _held_fns(gen, problems):
    names = {p["task_id"].split("/", 1)[1] for p in problems["code_completion"]}
    return [f for f in gen.LIBRARY if f.name in names]


def _all_problems(problems):
    return [p for task in EXECUTABLE for p in problems[task]]


def test_sizes_record_shapes_and_problem_counts(split):
    train, problems = split
    assert {rel: len(rows) for rel, rows in train.items()} == {f"{t}/train.jsonl": n for t, n in SIZES.items()}
    assert all(set(r) == {"id", "chat_rounds"} for t in EXECUTABLE for r in train[f"{t}/train.jsonl"])
    assert all(set(r) == {"messages"} for r in train["code_explain/train.jsonl"])
    assert sorted(problems) == sorted(EXECUTABLE)
    for task in EXECUTABLE:
        assert len(problems[task]) == HELDOUT
        assert len({p["task_id"] for p in problems[task]}) == HELDOUT
    json.dumps(problems)  # serialisable as they are


def test_generation_is_deterministic(gen, split):
    assert json.dumps(gen.generate_heldout(SIZES, HELDOUT)) == json.dumps(split)


def test_heldout_functions_are_spread_over_categories(gen, split):
    held = _held_fns(gen, split[1])
    assert len(held) == HELDOUT
    assert len({f.category for f in held}) == len({f.category for f in gen.LIBRARY})  # 6 over 5 categories


def test_no_heldout_function_appears_in_training_text(gen, split):
    train, problems = split
    decoded = "\n".join(t["content"] for rows in train.values() for r in rows
                        for t in r.get("chat_rounds", r.get("messages", [])))
    for fn_ in _held_fns(gen, problems):
        for name in fn_.names:
            assert not re.search(rf"\bdef {name}\(", decoded), f"held-out {name} is defined in the training data"
        for pnames in fn_.param_names:  # every rendering of every body (multi-line ones are distinctive)
            for body_index in range(len(fn_.bodies)):
                body = "\n".join(gen.Variant(fn_, fn_.name, pnames, True, "none", body_index).body_lines())
                if body.count("\n") >= 1:
                    assert body not in decoded, f"a body of held-out {fn_.name} is in the training data"
    # the check has teeth: the same search finds the functions that were trained on
    trained = next(f for f in gen.LIBRARY if f not in _held_fns(gen, problems)
                   and re.search(rf"\bdef {f.names[0]}\(", decoded))
    assert trained is not None


def test_problem_fields_follow_the_training_rendering(split):
    problems = split[1]
    for task in EXECUTABLE:
        for i, p in enumerate(problems[task]):
            roles = [t["role"] for t in p["messages"]]
            assert roles in (["human"], ["system", "human"]), p["task_id"]
            assert p["task_id"] == f"{task}/{p['task_id'].split('/')[1]}" and p["task"] == task
            want_mode = {"code_completion": "raw" if i % 2 == 0 else "fenced", "text_to_code": "fenced",
                         "unit_tests": "tests"}[task]
            assert p["mode"] == want_mode
            if p["mode"] == "raw":
                assert p["messages"][-1]["content"] == p["prefix"] and "```" not in p["reference"]
                assert f"def {p['entry_point']}(" in p["prefix"]
            else:
                assert p["prefix"] == "" and "```python\n" in p["reference"]
            if p["mode"] == "tests":
                assert p["test"].startswith(("import", "def")) and f"def {p['entry_point']}(" in p["test"]
            else:
                assert p["test"].startswith("def check(candidate):") and "assert repr(candidate(" in p["test"]


def test_documented_value_errors_are_checked(gen, split):
    problems = split[1]
    with_raises = [f for f in _held_fns(gen, problems) if f.raises]
    assert with_raises, "pick a split whose held-out functions include one with a documented ValueError"
    p = next(p for p in problems["text_to_code"] if p["task_id"].endswith("/" + with_raises[0].name))
    assert "except ValueError:" in p["test"]


def test_reference_answers_pass_and_wrong_answers_fail(heldout, split):
    problems = _all_problems(split[1])
    wrong = {"raw": "    return None\n",
             "fenced": "```python\ndef {e}(*args):\n    return None\n```",
             "tests": "```python\ndef test_{e}():\n    assert {e}(*[]) == 'never'\n```"}
    answers = [p["reference"] for p in problems] + [wrong[p["mode"]].format(e=p["entry_point"]) for p in problems]
    results = heldout.score(problems + problems, answers, workers=2)
    good, bad = results[:len(problems)], results[len(problems):]
    assert [r["task_id"] for r in good if not r["passed"]] == [], [r["error"] for r in good if not r["passed"]]
    assert [r["task_id"] for r in bad if r["passed"]] == []
    assert heldout.pass_rates(good) == {t: 1.0 for t in EXECUTABLE}
    assert heldout.pass_rates(bad) == {t: 0.0 for t in EXECUTABLE}
    assert set(good[0]) >= {"task_id", "task", "status", "passed"} and good[0]["status"] == "passed"


def test_test_answers_need_real_tests_that_call_the_function(heldout, split):
    p = split[1]["unit_tests"][0]
    e = p["entry_point"]
    answers = ["I can't write tests for this.",  # no test functions
               "```python\ndef test_nothing():\n    assert True\n```",  # never calls the function
               "```python\ndef test_it():\n    assert " + e + " is not None\n```",  # still never calls it
               "```python\nimport pytest\n\n\ndef test_raises():\n    with pytest.raises(ZeroDivisionError):\n"
               "        1 / 0\n```"]
    results = heldout.score([p] * len(answers), answers)
    assert [r["passed"] for r in results] == [False] * len(answers)


def test_parametrized_and_pytest_param_tests_run_every_row(heldout, split):
    p = next(p for p in split[1]["unit_tests"] if p["module"] is None)
    e = p["entry_point"]
    ok = (f"```python\nimport pytest\n\n\n@pytest.mark.parametrize('x', [1, pytest.param(2)])\ndef test_rows(x):\n"
          f"    assert x in (1, 2)\n    assert callable({e})\n\n\ndef test_calls():\n    try:\n        {e}()\n"
          f"    except TypeError:\n        pass\n```")
    failing_row = ok.replace("[1, pytest.param(2)]", "[1, pytest.param(3)]")
    assert [r["passed"] for r in heldout.score([p, p], [ok, failing_row])] == [True, False]


def test_raw_answers_are_cut_where_the_function_ends(heldout, split):
    problems = [p for p in split[1]["code_completion"] if p["mode"] == "raw"]
    tails = ["\n\nThis works because it loops once.\n", "\n\ndef helper():\n    return 1\n\nprint(undefined_name)\n",
             "\n```\n\nExplanation: done."]
    answers = [p["reference"] + tails[i % len(tails)] for i, p in enumerate(problems)]
    assert all(r["passed"] for r in heldout.score(problems, answers))
    assert heldout.cut_function("    x = 1\n\n    return x\nprose\n    more") == "    x = 1\n\n    return x"


def test_fenced_answers_use_the_first_block(heldout, split):
    p = split[1]["text_to_code"][0]
    block = heldout.first_block(p["reference"])
    answer = "Here it is:\n\n```python\n" + block + "\n```\n\nAnd a broken one:\n\n```python\ndef (:\n```"
    unclosed = "```py\n" + block  # a truncated answer: the fence never closes
    program = heldout.program_for(p, answer)
    assert "def (:" not in program and program.endswith(f"check({p['entry_point']})\n")
    assert [r["passed"] for r in heldout.score([p, p], [answer, unclosed])] == [True, True]
    with pytest.raises(ValueError, match="mode must be one of raw, fenced, tests"):
        heldout.program_for({**p, "mode": "chat"}, "x")


def test_cli_writes_train_and_problem_files(tmp_path, heldout):
    script = EXAMPLES / "make_examples.py"
    run = subprocess.run([sys.executable, str(script), "--heldout", "6", "--sizes", "40,20,10,5", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    counts = {p.relative_to(tmp_path).as_posix(): len(p.read_text().splitlines()) for p in tmp_path.rglob("*.jsonl")}
    assert counts == {**{f"{t}/train.jsonl": n for t, n in SIZES.items()},
                      **{f"heldout/{t}.jsonl": 6 for t in EXECUTABLE}}
    assert len(heldout.load_problems(tmp_path)) == 18
    assert "6  library functions held out (of 94)" in run.stdout


@pytest.mark.parametrize("argv, message", [
    (["--heldout", "6"], "--heldout needs --out DIR"),
    (["--heldout", "6", "--sizes", "1,2,3", "--out", "OUT"], "--sizes wants 4 integers"),
    (["--heldout", "0", "--out", "OUT"], "--heldout must be between 1 and 47"),
    (["--sizes", "1,2,3,4"], "--sizes only applies with --heldout"),
])
def test_cli_rejects_bad_options(tmp_path, argv, message):
    argv = [str(tmp_path) if a == "OUT" else a for a in argv]
    run = subprocess.run([sys.executable, str(EXAMPLES / "make_examples.py"), *argv], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0 and message in run.stderr
    assert not list(tmp_path.rglob("*.jsonl"))


def test_doctests_with_backslashes_are_escaped_in_the_docstring(gen):
    fn_ = next(f for f in gen.LIBRARY if f.name == "normalize_spaces")
    case = (("a\n\tb",), "a b")
    v = gen.Variant(fn_, fn_.name, fn_.param_names[0], True, "doctest", 0, doctest_cases=(case,))
    assert '>>> normalize_spaces("a\\\\n\\\\tb")' in v.source()
    gen.check_variant_source(v, v.source(), fn_.cases, "test")  # the doctest runs and passes
