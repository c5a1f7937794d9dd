"""Post-processing of model output, on answers shaped like what chat and completion models really produce
(several are verbatim SmolLM2-135M-Instruct answers to HumanEval prompts)."""
import pytest

from mftcoder.eval.postprocess import completion_cut, extract_from_chat, to_completion, truncate_completion
from mftcoder.eval.problems import load_problems
from mftcoder.eval.sandbox import SandboxLimits, run_programs

PROMPT = 'from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n    """ Detect a negative balance. """\n'
CORRECT_BODY = "    balance = 0\n    for op in operations:\n        balance += op\n        if balance < 0:\n            return True\n    return False\n"
CORRECT_FUNC = "def below_zero(operations: List[int]) -> bool:\n" + CORRECT_BODY


def _compiles(completion: str, prompt: str = PROMPT) -> bool:
    compile(prompt + completion, "<t>", "exec")
    return True


# ------------------------------------------------------------------------------------------- chat answers
def test_fenced_code_with_trailing_prose():  # SmolLM2's typical answer shape
    answer = (
        "```python\n" + CORRECT_FUNC + "```\n\n"
        "This function uses a loop to keep a running balance. If the balance ever falls below zero, "
        "it returns `True`; otherwise `False`."
    )
    out = extract_from_chat(answer, PROMPT, "below_zero")
    assert out == "\n" + CORRECT_FUNC.rstrip("\n") + "\n"
    assert _compiles(out)


def test_picks_the_block_defining_the_entry_point_and_drops_usage_examples():
    answer = (
        "Here is the solution:\n\n```python\nimport itertools\n\n" + CORRECT_FUNC +
        "\n\nprint(below_zero([1, 2, -4]))\nassert below_zero([]) is True\n"
        "if __name__ == '__main__':\n    print(below_zero([1]))\n```\n\n"
        "Example usage:\n```python\nprint(below_zero([1, 2, -4, 5]))  # True\n```\n"
        "```bash\nrm -rf /\n```"
    )
    out = extract_from_chat(answer, PROMPT, "below_zero")
    assert "import itertools" in out and "def below_zero" in out
    assert "print(" not in out and "assert" not in out and "__main__" not in out and "rm -rf" not in out


def test_helpers_and_constants_are_kept_with_comments():
    answer = (
        "```python\nLIMIT = 0  # threshold\n\n\ndef _step(b, op):\n    # add one operation\n    return b + op\n\n\n"
        "def below_zero(operations):\n    b = 0\n    for op in operations:\n        b = _step(b, op)\n"
        "        if b < LIMIT:\n            return True\n    return False\n```"
    )
    out = extract_from_chat(answer, PROMPT, "below_zero")
    assert "LIMIT = 0  # threshold" in out and "# add one operation" in out and "def _step" in out


def test_bare_code_without_fences_and_a_leading_sentence():
    answer = "Sure! Here is the function:\n\n" + CORRECT_FUNC + "\nThe function returns True as soon as the balance drops."
    out = extract_from_chat(answer, PROMPT, "below_zero")
    assert out.strip() == CORRECT_FUNC.strip()


def test_unterminated_fence_from_a_length_cutoff():
    answer = "```python\n" + CORRECT_FUNC + "\n\n# Test\nprint(below_zero([1, -"  # max_new_tokens hit mid-line
    out = extract_from_chat(answer, PROMPT, "below_zero")
    assert out.strip() == CORRECT_FUNC.strip()


@pytest.mark.parametrize("fence", ["```py", "```Python", "``` python3", "```"])
def test_language_tags(fence):
    out = extract_from_chat(f"{fence}\n{CORRECT_FUNC}```", PROMPT, "below_zero")
    assert "def below_zero" in out


def test_body_only_answers_continue_the_prompt():
    # CodeFuse-style models asked with the mftcoder format often answer with the body alone.
    assert extract_from_chat(CORRECT_BODY, PROMPT, "below_zero") == CORRECT_BODY
    unindented = "return any(sum(operations[:i + 1]) < 0 for i in range(len(operations)))"
    out = extract_from_chat(unindented + "\n\nThis checks every prefix.", PROMPT, "below_zero")
    assert out == "    " + unindented + "\n" and _compiles(out)


def test_unusable_answers_are_kept_so_the_failure_is_explained():
    prose = "I am sorry, I cannot help with that."
    assert extract_from_chat(prose, PROMPT, "below_zero") == "\n" + prose + "\n"
    broken = "```python\ndef below_zero(operations):\n    if len(operations) > 0:\n    return True\n```\nDone."
    out = extract_from_chat(broken, PROMPT, "below_zero")  # bad indentation (a real SmolLM2 answer shape)
    assert out == "\ndef below_zero(operations):\n    if len(operations) > 0:\n    return True\n"
    (res,) = run_programs([load_problems()[3].program(out)], SandboxLimits(timeout_s=10))
    assert res.status == "failed" and res.error.startswith("IndentationError")
    assert extract_from_chat("", PROMPT, "below_zero") == ""


def test_wrong_but_parsable_answer_is_kept_as_is():  # verbatim SmolLM2 answer to HumanEval/7
    prompt = 'from typing import List\n\n\ndef filter_by_substring(strings: List[str], substring: str) -> List[str]:\n    """ Filter """\n'
    answer = (
        "```python\ndef filter_by_substring(strings: List[str], substring: str) -> List[str]:\n"
        "    return list(strings) == [substring]\n```\n\nThis function uses the `filter()` function with a lambda."
    )
    out = extract_from_chat(answer, prompt, "filter_by_substring")
    assert out == "\ndef filter_by_substring(strings: List[str], substring: str) -> List[str]:\n    return list(strings) == [substring]\n"


# ------------------------------------------------------------------------------------------- completions
def test_completion_cut_at_next_top_level_definition():
    text = CORRECT_BODY + "\n\ndef check(candidate):\n    assert candidate([]) is False\n"
    assert truncate_completion(text, "below_zero") == CORRECT_BODY


@pytest.mark.parametrize("tail", ["\n\nif __name__ == '__main__':\n    main()", "\nprint(below_zero([1]))",
                                  "\n\nclass Test:\n    pass", "\n# Tests\nassert below_zero([-1])"])
def test_completion_stops(tail):
    assert truncate_completion(CORRECT_BODY + tail, "below_zero") == CORRECT_BODY


def test_column_zero_comment_inside_the_body_does_not_cut_it():
    body = "    balance = 0\n# running sum over all operations\n    for op in operations:\n        balance += op\n" \
           "        if balance < 0:\n            return True\n    return False\n"
    text = body + "\n\nprint(below_zero([1, -2]))\n"
    assert truncate_completion(text, "below_zero") == body
    # while generating, a comment with nothing after it yet is not a stop: the body may go on
    assert completion_cut("    balance = 0\n# running sum", "below_zero", final=False) is None
    assert completion_cut("    balance = 0\n# running sum", "below_zero", final=True) == len("    balance = 0")


def test_restated_function_is_not_mistaken_for_a_stop():
    text = "\ndef below_zero(operations: List[int]) -> bool:\n" + CORRECT_BODY + "\n\ndef helper():\n    pass\n"
    out = truncate_completion(text, "below_zero")
    assert out.strip() == CORRECT_FUNC.strip() and _compiles(out)


def test_to_completion_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown output kind"):
        to_completion("x", PROMPT, "below_zero", "essay")


# ------------------------------------------------------------------------------------------- end to end
def test_processed_answers_pass_the_real_humaneval_tests():
    problem = next(p for p in load_problems() if p.task_id == "HumanEval/3")
    assert problem.entry_point == "below_zero"
    answers = [
        ("chat", "```python\n" + CORRECT_FUNC + "```\nThis keeps a running balance."),
        ("chat", CORRECT_BODY),
        ("completion", CORRECT_BODY + "\n\ndef main():\n    print(below_zero([1, 2]))\n"),
        ("completion", "    return False\n\n\nprint(below_zero([]))\n"),  # wrong: must fail
    ]
    programs = [problem.program(to_completion(raw, problem.prompt, problem.entry_point, kind)) for kind, raw in answers]
    results = run_programs(programs, SandboxLimits(timeout_s=10), workers=2)
    assert [r.status for r in results] == ["passed", "passed", "passed", "failed"], results
