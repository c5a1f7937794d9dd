"""Multi-language code benchmarks end to end: HumanEval-X, MultiPL-E and MBPP files in their published formats (small
self-written sets in tests/data/code_eval), assembled and built per language as their harnesses do. Canonical
solutions score 1.0 and wrong ones 0.0 in every language; compile errors are a status of their own; prompts are
pinned; a missing toolchain is an error up front, never 0 %."""
import json
import os
import subprocess
import sys

import pytest

from mftcoder.eval.humaneval import main
from mftcoder.eval.languages import LANGUAGES, missing_requirements
from mftcoder.eval.native_sandbox import bwrap_path
from mftcoder.eval.problems import load_problems
from mftcoder.eval.prompts import get_format

DATA = os.path.join(os.path.dirname(__file__), "data", "code_eval")
HX = ["python", "cpp", "java", "js", "go", "rust"]
MULTIPLE = ["py", "cpp", "java", "js", "go_test.go", "rs"]
MULTIPLE_LANG = {"py": "python", "cpp": "cpp", "java": "java", "js": "js", "go_test.go": "go", "rs": "rust"}


def _runnable(lang: str, harness: str) -> bool:
    return not missing_requirements(LANGUAGES[lang], harness) and (lang == "python" or bwrap_path() is not None)


def _concat(paths, out) -> str:
    with open(out, "w", encoding="utf-8") as f:
        for path in paths:
            with open(path, encoding="utf-8") as src:
                f.write(src.read())
    return str(out)


def _qualified(codes, kind, out) -> str:
    """MultiPL-E samples of several languages in one file: task_ids written as <language>/<name>."""
    with open(out, "w", encoding="utf-8") as f:
        for code in codes:
            with open(os.path.join(DATA, "multiple", f"{code}_{kind}.jsonl"), encoding="utf-8") as src:
                for line in src:
                    row = json.loads(line)
                    row["task_id"] = f"{MULTIPLE_LANG[code]}/{row['task_id']}"
                    f.write(json.dumps(row) + "\n")
    return str(out)


def _score(tmp_path, name, problems, *extra) -> dict:
    out = tmp_path / f"{name}.json"
    code = main(["--problems", *problems, "--k", "1", "--out", str(out), "--no_progress", "--workers", "2",
                 "--skip_missing_toolchains", *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_humaneval_x_canonical_pass_and_wrong_fail_in_every_language(tmp_path):
    langs = [lang for lang in HX if _runnable(lang, "humaneval-x")]
    files = [os.path.join(DATA, "humanevalx", f"{lang}.jsonl") for lang in langs]
    good = _score(tmp_path, "canonical", files, "--canonical")
    wrong = _score(tmp_path, "wrong", files, "--samples", _concat(
        [os.path.join(DATA, "humanevalx", f"{lang}_wrong.jsonl") for lang in langs], tmp_path / "wrong.jsonl"))
    assert set(good["per_language"]) == set(langs) and good["skipped_languages"] == {}
    assert len(langs) == 6 or os.getuid() != 0, "CI installs every toolchain (as root)"
    for lang in langs:
        n = len(load_problems(os.path.join(DATA, "humanevalx", f"{lang}.jsonl")))
        assert good["per_language"][lang]["pass@1"] == 1.0, good["per_language"][lang]
        assert good["per_language"][lang]["n_problems"] == n >= 6
        bad = wrong["per_language"][lang]
        assert bad["pass@1"] == 0.0
        # exactly one wrong sample per compiled language does not compile, and it is reported as such
        assert bad["counts"].get("compile error", 0) == (1 if lang in ("cpp", "java", "go", "rust") else 0), bad
    assert good["formats"] == ["humaneval-x"] and good["pass@1"] == 1.0 and wrong["pass@1"] == 0.0
    errors = {t: e["results"][0]["error"] for t, e in wrong["per_problem"].items() if e["status"] == "compile error"}
    assert any("error" in message for message in errors.values())  # the compiler's own message is kept
    js = [e for t, e in wrong["per_problem"].items() if t.startswith("JavaScript/")]
    assert all(e["results"][0]["error"].startswith("wrote to stderr: Assertion failed") for e in js)


def test_multipl_e_samples_score_per_language(tmp_path):
    codes = [c for c in MULTIPLE if _runnable(MULTIPLE_LANG[c], "multipl-e")]
    files = [os.path.join(DATA, "multiple", f"{c}.jsonl") for c in codes]
    good = _score(tmp_path, "good", files, "--samples", _qualified(codes, "canonical", tmp_path / "good.jsonl"))
    bad = _score(tmp_path, "bad", files, "--samples", _qualified(codes, "wrong", tmp_path / "bad.jsonl"))
    assert sorted(good["per_language"]) == sorted(MULTIPLE_LANG[c] for c in codes)
    assert all(row["pass@1"] == 1.0 and row["n_problems"] >= 5 for row in good["per_language"].values())
    assert all(row["pass@1"] == 0.0 for row in bad["per_language"].values())
    assert "cpp/HumanEval_0_add_numbers" in good["per_problem"]  # the same name in every language
    # one language's samples with MultiPL-E's bare names are matched; across languages a bare name is ambiguous
    one = _score(tmp_path, "one", files[:1], "--samples", os.path.join(DATA, "multiple", f"{codes[0]}_canonical.jsonl"))
    assert one["pass@1"] == 1.0
    with pytest.raises(ValueError, match="names a problem of several languages; write one of"):
        from mftcoder.eval.humaneval import read_samples

        read_samples(os.path.join(DATA, "multiple", "cpp_canonical.jsonl"), [p for f in files for p in load_problems(f)])
    with pytest.raises(ValueError, match="MultiPL-E ships none"):
        from mftcoder.eval.humaneval import reference_completions

        reference_completions(load_problems(files[0]))


def test_mbpp_split_three_shot_prompt_and_scores(tmp_path):
    path = os.path.join(DATA, "mbpp", "mbpp.jsonl")
    problems = load_problems(path)
    assert [p.task_id for p in problems] == [f"Mbpp/{n}" for n in range(11, 18)]  # the test split, 11-510
    assert [p.task_id for p in load_problems(path, mbpp_split="validation")] == ["Mbpp/511", "Mbpp/512"]
    assert len(load_problems(path, mbpp_split="all")) == 19
    first = problems[0]
    examples = {p.extra["number"]: p for p in load_problems(path, mbpp_split="prompt")}
    expected = "".join(
        f"You are an expert Python programmer, and here is your task: {examples[n].extra['text']} Your code should "
        "pass these tests:\n\n" + "\n".join(examples[n].extra["test_list"]) + "\n[BEGIN]\n"
        + examples[n].canonical_solution.strip("\n") + "\n[DONE]\n" for n in (2, 3, 4))
    expected += (f"You are an expert Python programmer, and here is your task: {first.extra['text']} Your code "
                 "should pass these tests:\n\n" + "\n".join(first.extra["test_list"]) + "\n[BEGIN]\n")
    assert first.prompt == expected and get_format("completion").render_problem(first) == expected
    good = _score(tmp_path, "good", [path], "--canonical")
    bad = _score(tmp_path, "bad", [path], "--samples", os.path.join(DATA, "mbpp", "mbpp_wrong.jsonl"))
    assert (good["pass@1"], bad["pass@1"], good["n_problems"]) == (1.0, 0.0, 7)
    assert good["mbpp"] == {"split": "test", "prompt_shots": 3}
    setup = next(p for p in problems if p.extra["test_setup_code"])
    assert setup.program("def f():\n    pass\n").startswith(setup.extra["test_setup_code"] + "\n")


def test_prompt_formats_speak_each_language():
    cpp = load_problems(os.path.join(DATA, "humanevalx", "cpp.jsonl"))[0]
    assert get_format("mftcoder").render_problem(cpp) == f"<s>human\n// language: C++\n{cpp.prompt}\n<s>bot\n"
    assert get_format("codefuse-legacy").render_problem(cpp) == (
        f"<|role_start|>human<|role_end|>// language: C++\n{cpp.prompt}<|role_start|>bot<|role_end|>")
    chatml = get_format("chatml").render_problem(cpp)
    assert chatml.startswith("<|im_start|>user\nComplete the following C++ function. Answer with the complete "
                             "function, including the signature, in one ```cpp code block.\n\n```cpp\n")
    assert get_format("completion").render_problem(cpp) == cpp.prompt
    go = load_problems(os.path.join(DATA, "humanevalx", "go.jsonl"))[0]
    assert get_format("mftcoder").render_problem(go).startswith("<s>human\n// language: Go\n")
    py = load_problems(os.path.join(DATA, "humanevalx", "python.jsonl"))[0]
    assert get_format("mftcoder").render_problem(py).startswith("<s>human\n# language: Python\n")
    mbpp = load_problems(os.path.join(DATA, "mbpp", "mbpp.jsonl"))[0]
    shown = get_format("chatml").render_problem(mbpp)
    assert mbpp.extra["text"] in shown and mbpp.extra["test_list"][0] in shown and "[BEGIN]" not in shown


def test_program_assembly_follows_the_published_harnesses():
    go = {p.task_id: p for p in load_problems(os.path.join(DATA, "humanevalx", "go.jsonl"))}["Go/1"]
    program = go.program("    return strconv.Itoa(len(strings.Fields(text)))\n}\n")
    assert program.startswith(go.extra["test_setup"] + "\nimport (\n")
    assert '"strconv"' in program and '"strings"' in program and '"sort"' not in program  # only what is used
    assert go.extra["import"] not in program  # the prompt's own import block is replaced
    rust = load_problems(os.path.join(DATA, "humanevalx", "rust.jsonl"))[0]
    signature = rust.prompt.rstrip("\n").rsplit("\n", 1)[-1]
    assert rust.program("    a + b\n}\n").count(signature) == 1  # the declaration's signature line is not repeated
    cpp = load_problems(os.path.join(DATA, "humanevalx", "cpp.jsonl"))[0]
    assert "#include<vector>\n" not in cpp.program("")[:cpp.program("").index(cpp.prompt)] or \
        "#include<vector>" not in cpp.prompt  # a header the prompt has is not added again
    assert cpp.program("").count("#include<algorithm>") + cpp.prompt.count("#include<algorithm>") >= 1


def test_format_and_language_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "what?"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not a known problem format"):
        load_problems(str(bad))
    bad.write_text('{"task_id": "Cobol/0", "prompt": "x", "declaration": "", "test": "t"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: task_id 'Cobol/0': unknown language 'Cobol'"):
        load_problems(str(bad))
    bad.write_text('{"name": "a", "language": "cpp", "prompt": "x", "tests": "t", "stop_tokens": "}"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: stop_tokens must be a list"):
        load_problems(str(bad))
    dup = _concat([os.path.join(DATA, "humanevalx", "js.jsonl")], tmp_path / "js_copy.jsonl")
    with pytest.raises(ValueError, match="also in"):
        from mftcoder.eval.humaneval import load_problem_files

        load_problem_files([os.path.join(DATA, "humanevalx", "js.jsonl"), dup], None)


def test_missing_toolchain_is_an_error_up_front_or_skipped_by_name(tmp_path):
    """With no compiler on PATH the run stops before anything executes, naming the binary and its package; with
    --skip_missing_toolchains the Python problems are scored and the others named, not counted as 0 %."""
    env = {"PATH": "/nonexistent", "HOME": os.environ.get("HOME", "/root"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mftcoder", "eval", "humaneval", "--canonical", "--k", "1", "--no_progress",
           "--out", str(tmp_path / "r.json"), "--problems", os.path.join(DATA, "humanevalx", "cpp.jsonl"),
           os.path.join(DATA, "humanevalx", "js.jsonl")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "r.json").exists()
    assert "cannot run these languages here: C++ needs `g++` (apt-get install g++ libssl-dev libboost-dev)" in done.stderr
    assert "JavaScript needs `node` (apt-get install nodejs)" in done.stderr
    cmd[cmd.index("--problems") + 1] = os.path.join(DATA, "humanevalx", "python.jsonl")
    done = subprocess.run(cmd + ["--skip_missing_toolchains"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert list(results["per_language"]) == ["python"] and results["pass@1"] == 1.0
    assert results["skipped_languages"]["js"].startswith("JavaScript needs `node`")
    assert "warning: skipped: JavaScript needs `node`" in done.stderr


@pytest.mark.skipif(not _runnable("cpp", "humaneval-x"), reason="g++ or bwrap missing")
def test_generate_on_a_cpp_file_records_raw_answers_and_statuses(tiny_chat_model_dir, tmp_path):
    path = os.path.join(DATA, "humanevalx", "cpp.jsonl")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        assert main(["--model", tiny_chat_model_dir, "--problems", path, "--limit", "2", "--n", "1", "--temperature",
                     "0", "--k", "1", "--max_new_tokens", "12", "--prompt_format", "mftcoder", "--out", str(out),
                     "--no_progress", "--threads", "1"]) == 0
        runs.append((json.loads(out.read_text()), (tmp_path / f"{name}.samples.jsonl").read_text()))
    (first, samples), (second, samples_again) = runs
    lines = [json.loads(line) for line in samples.splitlines()]
    again = [json.loads(line) for line in samples_again.splitlines()]
    for line in lines + again:
        line.pop("duration_s")
    assert lines == again  # greedy generation and scoring are reproducible, compiler messages included
    assert [line["task_id"] for line in lines] == ["CPP/0", "CPP/1"]
    assert all(line["status"] in ("failed", "compile error") for line in lines)  # a tiny random model
    assert first["prompt_format"]["example"].startswith("<s>human\n// language: C++\n")
    assert first["per_language"]["cpp"]["n_problems"] == 2 and first["pass@1"] == 0.0


def test_humaneval_x_rust_declarations_get_their_crates(tmp_path):
    """HumanEval-X's Rust declarations import rand, regex and md5: built once from the packaged crate sources and
    passed to rustc, so a solution that uses all three passes (and the sandbox sees them even under /tmp)."""
    from mftcoder.eval.rust_crates import crate_args

    if not _runnable("rust", "humaneval-x") or crate_args()[1]:
        pytest.skip(f"rust or its crates missing: {crate_args()[1]}")
    path = os.path.join(DATA, "humanevalx", "rust_crates.jsonl")
    problem = load_problems(path)[0]
    assert "use rand::Rng;" in problem.extra["declaration"] and "md5::compute" in problem.canonical_solution
    good = _score(tmp_path, "good", [path], "--canonical")
    assert good["pass@1"] == 1.0, good["per_problem"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"task_id": problem.task_id, "completion": "    md5::nonexistent()\n}\n"}) + "\n")
    bad = _score(tmp_path, "bad", [path], "--samples", str(broken))
    assert bad["per_problem"][problem.task_id]["status"] == "compile error"
    assert "nonexistent" in bad["per_problem"][problem.task_id]["results"][0]["error"]
