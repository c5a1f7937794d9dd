"""From a model's raw output to the completion a problem's harness appends, for every format and language, and
the matching stop rule used while generating (so a completion model stops where the completion will be cut).

  * Python (HumanEval, HumanEval-X, MultiPL-E py): `postprocess.py` (after the problem's own stop tokens, if any);
  * MBPP: the code before `[DONE]` (3-shot completion prompt), or the function extracted from a chat answer;
  * C++, Java, JavaScript, Go, Rust: `code_extract.py`: the problem's stop tokens, then the end of the function by
    brace balance; from chat answers, the body of the function the prompt opened. MultiPL-E tests that start by
    closing the function get the body without its closing brace.
"""
from __future__ import annotations

from typing import Callable

from mftcoder.eval import code_extract
from mftcoder.eval.postprocess import completion_cut, extract_from_chat, to_completion
from mftcoder.infer.engine import first_stop

MBPP_END = ("[DONE]", "\n[BEGIN]", "\nYou are an expert Python programmer")


def _tests_close_function(problem) -> bool:
    return problem.harness == "multipl-e" and problem.test.lstrip().startswith("}")


def _body_only(completion: str, lang: str) -> str:
    """The completion without the `}` that closes the function (which the MultiPL-E tests supply)."""
    cut = code_extract.closes_prompt(completion, "{", lang)
    if cut is None:
        return completion
    head = completion[:cut].rstrip()
    return head[:-1].rstrip() + "\n" if head.endswith("}") else completion


def completion_for(problem, raw: str, kind: str) -> str:
    """The text appended to the problem's prompt (or, for MBPP, the whole solution)."""
    from mftcoder.eval.languages import LANGUAGES

    if problem.harness == "mbpp":
        if kind == "completion":
            return code_extract.cut_at_stops(raw, MBPP_END).strip("\n") + "\n"
        return extract_from_chat(raw, "", problem.entry_point).lstrip("\n")
    if problem.language == "python":
        text = code_extract.cut_at_stops(raw, problem.stop) if kind == "completion" and problem.stop else raw
        return to_completion(text, problem.prompt, problem.entry_point, kind)
    lang = LANGUAGES[problem.language]
    out = code_extract.completion_from_output(raw, problem.prompt, lang.key, kind, stops=problem.stop,
                                              aliases=lang.fences)
    if kind == "chat" and _tests_close_function(problem):
        out = _body_only(out, lang.key)
    return out


def stop_checker(problem, kind: str) -> Callable[[str], int | None] | None:
    """While generating for a completion prompt: where the text will be cut (None: keep going). Chat answers run
    to their end-of-turn token."""
    if kind != "completion":
        return None
    if problem.harness == "mbpp":
        return lambda text: first_stop(text, MBPP_END)
    if problem.language == "python":
        if problem.stop:
            return lambda text: first_stop(text, problem.stop)
        return lambda text: completion_cut(text, problem.entry_point, final=False)
    stops = problem.stop

    def brace_stop(text: str) -> int | None:
        hit = first_stop(text, stops) if stops else None
        closed = code_extract.closes_prompt(text if hit is None else text[:hit], problem.prompt, problem.language)
        return closed if closed is not None else hit

    return brace_stop
