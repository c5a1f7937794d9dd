"""Turn raw model output into the `completion` that is appended to a problem's prompt and executed.

Two kinds of output:
  * completion models continue the prompt: the function body, then usually more code that must go (a next
    `def`, a `print(...)`, a test block). `truncate_completion` cuts at the standard stop sequences, but only
    where the function has really ended, so a column-0 comment inside the body does not cut it short.
  * chat models answer in prose with code in fences, or with bare code, a whole function or only its body.
    `extract_from_chat` picks the code block that defines the entry point, keeps imports, functions, classes
    and constants, and drops example calls, prints, `if __name__ == "__main__":` blocks and trailing prose.
"""
from __future__ import annotations

import ast
import re
import textwrap

COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_PY_LANGS = {"", "python", "py", "python3", "py3"}
_CODE_START = re.compile(r"^(def |async def |class |import |from \S+ import |@|[A-Za-z_]\w*\s*(:[^=]+)?=[^=])")


def _is_code_line(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def completion_cut(text: str, entry_point: str | None = None, final: bool = True,
                   stops: tuple[str, ...] = COMPLETION_STOPS) -> int | None:
    """Index where a completion should be cut, or None.

    A stop counts only at the end of the function: a `\\n#` comment line is skipped when the next code line is
    indented (the body goes on). With `final=False` (while generating) such a comment with nothing after it
    yet does not stop, as the body may still continue. A `def <entry_point>(` before any code is the model
    restating the function, not a stop.
    """
    best = None
    for stop in stops:
        start = 0
        while True:
            i = text.find(stop, start)
            if i < 0 or (best is not None and i >= best):
                break
            start = i + 1
            if stop.startswith("\ndef ") and entry_point and not text[:i].strip():
                if text[i + 5:].lstrip().startswith(f"{entry_point}("):
                    continue
            if stop == "\n#":
                rest = [ln for ln in text[i + 1:].split("\n")[1:] if _is_code_line(ln)]
                if rest and rest[0][:1] in (" ", "\t"):
                    continue  # a column-0 comment inside the body
                if not rest and not final:
                    continue
            best = i
            break
    return best


def truncate_completion(text: str, entry_point: str | None = None, stops: tuple[str, ...] = COMPLETION_STOPS) -> str:
    cut = completion_cut(text, entry_point, final=True, stops=stops)
    return (text if cut is None else text[:cut]).rstrip() + "\n"


def _fenced_blocks(answer: str) -> list[str]:
    return [m.group(2) for m in _FENCE.finditer(answer) if m.group(1).lower() in _PY_LANGS]


def _longest_parsable_prefix(lines: list[str]) -> tuple[ast.Module, list[str]] | None:
    for end in range(len(lines), 0, -1):
        chunk = lines[:end]
        if not any(_is_code_line(ln) for ln in chunk):
            return None
        try:
            return ast.parse("\n".join(chunk)), chunk
        except (SyntaxError, ValueError):
            continue
    return None


def _defines(tree: ast.Module, name: str) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name for n in tree.body)


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _keep_definitions(tree: ast.Module, lines: list[str]) -> str:
    """Source of the top-level imports, functions, classes and plain assignments, in order (comments inside
    kept, as the original lines are copied)."""
    kept = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                             ast.Assign, ast.AnnAssign)) and not _is_main_guard(node):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n\n".join(kept)


def _code_lines(candidate: str) -> list[str]:
    """Lines from the first one that looks like code (skips a leading sentence such as 'Here is the code:');
    all lines if none does."""
    lines = candidate.expandtabs(4).split("\n")
    for i, line in enumerate(lines):
        if _CODE_START.match(line) or (line[:1] == " " and _is_code_line(line)):
            return lines[i:]
    return lines


def _as_body(lines: list[str], prompt: str) -> str | None:
    """`lines` as the continuation of the prompt's function body (indented if the model did not), trimmed to
    what parses together with the prompt, or None."""
    body = "\n".join(lines).strip("\n")
    if not body.strip():
        return None
    # Unindented code is a body only once indented (as is, it would land at module level after the stub).
    candidates = [body] if body[:1] in (" ", "\t") else [textwrap.indent(body, "    ")]
    for cand in candidates:
        cand_lines = cand.split("\n")
        for end in range(len(cand_lines), 0, -1):
            piece = "\n".join(cand_lines[:end])
            if not any(_is_code_line(ln) for ln in cand_lines[:end]):
                break
            try:  # compile, not just parse: a `return` outside a function must fail here
                compile(prompt + piece, "<answer>", "exec", dont_inherit=True)
                return piece.rstrip() + "\n"
            except (SyntaxError, ValueError):
                continue
    return None


def extract_from_chat(answer: str, prompt: str, entry_point: str) -> str:
    """The completion (text appended to `prompt`) recovered from a chat answer."""
    blocks = _fenced_blocks(answer)
    if blocks:
        with_entry = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        candidates = with_entry or blocks
    else:
        candidates = [answer]
    for candidate in candidates:
        lines = _code_lines(candidate)
        parsed = _longest_parsable_prefix(lines)
        if parsed is not None and _defines(parsed[0], entry_point):
            return "\n" + _keep_definitions(*parsed) + "\n"
    # No definition of the entry point: the answer may be the body alone (as completion-style models give).
    for candidate in candidates:
        body = _as_body(_code_lines(candidate), prompt)
        if body is not None:
            return body
    # Nothing usable: keep the code (or text) as written, so the failure reads as what it is (a SyntaxError, say)
    # rather than as a wrong result of the empty stub. Whatever parses was already taken above, so this never passes.
    leftover = candidates[0].strip("\n")
    return "\n" + leftover + "\n" if leftover.strip() else ""


def to_completion(raw: str, prompt: str, entry_point: str, kind: str) -> str:
    """Dispatch on the prompt format's kind: "completion" or "chat"."""
    if kind == "completion":
        return truncate_completion(raw, entry_point)
    if kind == "chat":
        return extract_from_chat(raw, prompt, entry_point)
    raise ValueError(f"unknown output kind {kind!r}; expected 'completion' or 'chat'")
