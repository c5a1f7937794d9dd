"""Turn raw model output into the `completion` appended to a brace-language prompt (C++, Java, JavaScript, Go,
Rust), and dispatch Python to `mftcoder.eval.postprocess`.

Every rule here rests on one tiny lexer per language that blanks string/char literals and comments, so a `{` in
`"{"`, `'}'`, `// }`, a JS template literal or a Rust raw string never counts as a brace:
  * completion models continue the prompt, which ends inside the function (and, for Java, inside
    `class Solution {` too). The completion is cut right after the `}` that closes every brace the prompt left
    open; whatever the model writes after the function (a `main`, usage examples) goes. `closes_prompt` gives
    the same cut point while generating, so the generator can stop early.
  * chat models answer with prose and fenced code that restates the whole function (or gives a body only).
    The code after the definition's `{` up to where the prompt's open depth closes is the completion.
"""
from __future__ import annotations

import functools
import re
from typing import Callable

from mftcoder.eval.postprocess import extract_from_chat, truncate_completion
from mftcoder.infer.engine import first_stop

BRACE_LANGS = ("cpp", "java", "js", "go", "rust")
FENCE_ALIASES = {
    "python": ("python", "py", "python3", "py3"),
    "cpp": ("cpp", "c++", "cc", "cxx", "c"),
    "java": ("java",),
    "js": ("javascript", "js", "node", "jsx"),
    "go": ("go", "golang"),
    "rust": ("rust", "rs"),
}
_BLANK = " "


# ------------------------------------------------------------------------------------------------- the lexer
# A scanner is called at an index where its trigger character stands. It returns the index after the literal or
# comment it recognises (blanking it in `out`), or None when nothing starts there.
Scanner = Callable[[str, int, dict, list], "int | None"]


def _blank(out: list, start: int, end: int) -> int:
    for k in range(start, min(end, len(out))):
        if out[k] != "\n":
            out[k] = _BLANK
    return min(end, len(out))


def _quoted_end(text: str, i: int, quote: str, multiline: bool = False) -> int:
    """Index after the closing `quote` of a literal opened at i (backslash escapes). An unclosed literal runs to
    the line's end (C-like strings cannot span lines; this keeps a stray quote in prose local), or to the
    text's end where literals may span lines (Rust)."""
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == quote:
            return j + 1
        elif text[j] == "\n" and not multiline:
            return j
        else:
            j += 1
    return len(text)


def _line_comment(text, i, table, out):
    if not text.startswith("//", i):
        return None
    end = text.find("\n", i)
    return _blank(out, i, len(text) if end < 0 else end)


def _block_comment(text, i, table, out):
    if not text.startswith("/*", i):
        return None
    end = text.find("*/", i + 2)
    return _blank(out, i, len(text) if end < 0 else end + 2)


def _nested_block_comment(text, i, table, out):  # Rust's /* /* */ */ nest
    if not text.startswith("/*", i):
        return None
    depth, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif text.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                break
        else:
            j += 1
    return _blank(out, i, j)


def _double_quoted(text, i, table, out):
    return _blank(out, i, _quoted_end(text, i, '"'))


def _js_single_quoted(text, i, table, out):
    return _blank(out, i, _quoted_end(text, i, "'"))


def _char_literal(text, i, table, out):
    """C++/Java chars and Go runes are short ('a', '\\n', '\\u00e9'): a longer span is a stray quote (the
    apostrophe of "Here's" in prose), skipped alone."""
    end = _quoted_end(text, i, "'")
    if end - i > 12 or text[end - 1:end] != "'":
        return i + 1
    return _blank(out, i, end)


def _rust_string(text, i, table, out):
    return _blank(out, i, _quoted_end(text, i, '"', multiline=True))


def _go_raw(text, i, table, out):
    end = text.find("`", i + 1)
    return _blank(out, i, len(text) if end < 0 else end + 1)


def _js_template(text, i, table, out):
    """`...${expr}...`: the text parts are blanked, the expressions lexed as code (so nested literals work)."""
    j, part = i + 1, i
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == "`":
            return _blank(out, part, j + 1)
        elif text.startswith("${", j):
            _blank(out, part, j + 2)
            j = part = _lex(text, table, out, j + 2, nested=True)
            if text[j - 1] == "}":
                _blank(out, j - 1, j)  # the `}` that ends the expression
        else:
            j += 1
    return _blank(out, part, len(text))


_IDENT = re.compile(r"[A-Za-z0-9_]")
_RUST_RAW = re.compile(r'b?r(#*)"')


def _rust_raw(text, i, table, out):
    """r"..", r#".."#, br".." (no escapes inside); a plain identifier such as `bar` or `r` is left alone."""
    if i > 0 and _IDENT.match(text[i - 1]):
        return None
    m = _RUST_RAW.match(text, i)
    if not m:
        return None
    end = text.find('"' + m.group(1), m.end())
    return _blank(out, i, len(text) if end < 0 else end + 1 + len(m.group(1)))


def _rust_quote(text, i, table, out):
    """'a' and '\\n' and '\\u{1F600}' are chars; 'a alone (as in <'a>, &'a str, 'outer: loop) is a lifetime."""
    if text[i + 1:i + 2] == "\\":
        return _blank(out, i, _quoted_end(text, i, "'"))
    if text[i + 2:i + 3] == "'":
        return _blank(out, i, i + 3)
    return _blank(out, i, i + 1)


_C_COMMENTS = {"/": (_line_comment, _block_comment)}
LEXERS: dict[str, dict[str, tuple[Scanner, ...]]] = {
    "cpp": {**_C_COMMENTS, '"': (_double_quoted,), "'": (_char_literal,)},
    "java": {**_C_COMMENTS, '"': (_double_quoted,), "'": (_char_literal,)},
    "js": {**_C_COMMENTS, '"': (_double_quoted,), "'": (_js_single_quoted,), "`": (_js_template,)},
    "go": {**_C_COMMENTS, '"': (_double_quoted,), "'": (_char_literal,), "`": (_go_raw,)},
    "rust": {"/": (_line_comment, _nested_block_comment), "r": (_rust_raw,), "b": (_rust_raw,),
             '"': (_rust_string,), "'": (_rust_quote,)},
}


def _lex(text: str, table: dict, out: list, start: int = 0, nested: bool = False) -> int:
    """Blank literals and comments of text[start:] in `out`. With `nested`, stop after the `}` that closes an
    expression opened just before `start` (a template's `${`) and return the index after it."""
    i, depth = start, 0
    while i < len(text):
        c = text[i]
        if nested and c in "{}":
            depth += 1 if c == "{" else -1
            if depth < 0:
                return i + 1
        for scan in table.get(c, ()):
            end = scan(text, i, table, out)
            if end is not None:
                i = end
                break
        else:
            i += 1
    return len(text)


def _check_lang(lang: str, allowed=BRACE_LANGS) -> None:
    if lang not in allowed:
        raise ValueError(f"unknown language {lang!r}; expected one of {', '.join(allowed)}")


@functools.lru_cache(maxsize=256)  # prompts are masked again and again while generating
def code_mask(text: str, lang: str) -> str:
    """`text` with every literal and comment blanked (same length, newlines kept): only code is left."""
    _check_lang(lang)
    out = list(text)
    _lex(text, LEXERS[lang], out)
    return "".join(out)


def _close_index(code: str, depth: int) -> tuple[int | None, int]:
    """(index after the `}` that brings `depth` open braces to 0, or None; how many stay open at that point)."""
    level = depth
    for i, c in enumerate(code):
        if c == "{":
            level += 1
        elif c == "}":
            level -= 1
            if level == 0:
                return i + 1, 0
    return None, max(level, 0)


def open_depth(prompt: str, lang: str) -> int:
    """How many `{` the prompt leaves open (HumanEval-X Java: 2, class and method; others: 1)."""
    code = code_mask(prompt, lang)
    return max(code.count("{") - code.count("}"), 0)


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


# ------------------------------------------------------------------------------------------------ stop rules
def closes_prompt(text: str, prompt: str, lang: str) -> int | None:
    """Where to cut `text` (a completion of `prompt`): after the `}` closing the prompt's open braces, plus a
    newline right after it; None while not yet closed (so a generator keeps going)."""
    depth = open_depth(prompt, lang)
    if depth == 0:
        return None
    cut, _ = _close_index(code_mask(text, lang), depth)
    if cut is not None and text[cut:cut + 1] == "\n":
        cut += 1
    return cut


def brace_cut(completion: str, prompt: str, lang: str) -> str:
    """The completion up to the `}` that closes the prompt's function (and class); all of it if never closed."""
    cut = closes_prompt(completion, prompt, lang)
    return completion if cut is None else _with_newline(completion[:cut])


def cut_at_stops(text: str, stops) -> str:
    """`text` cut at the earliest of `stops` (MultiPL-E problems carry their own `stop_tokens`)."""
    cut = first_stop(text, stops)
    return text if cut is None else text[:cut]


_FENCE_OPEN = re.compile(r"^[ \t]*```[ \t]*([^\s`]*)")
_FENCE_CLOSE = re.compile(r"^[ \t]*```[ \t]*$")


def fenced_blocks(answer: str, aliases) -> list[str]:
    """Contents of the ``` blocks tagged with one of `aliases` (any case) or untagged; an unclosed last fence
    runs to the end of the answer."""
    wanted = {a.lower() for a in aliases} | {""}
    blocks, current, keep = [], None, False
    for line in answer.split("\n"):
        if current is None:
            m = _FENCE_OPEN.match(line)
            if m:
                current, keep = [], m.group(1).lower() in wanted
        elif _FENCE_CLOSE.match(line):
            if keep:
                blocks.append("\n".join(current) + "\n")
            current = None
        else:
            current.append(line)
    if current is not None and keep and current:
        blocks.append("\n".join(current) + "\n")
    return blocks


# ------------------------------------------------------------------------------------------ the open function
_NON_NAMES = {"if", "for", "while", "switch", "catch", "return", "sizeof", "function", "new", "synchronized"}
_NAME_IN_HEADER = {  # the function name in the header before the prompt's innermost open `{`
    "cpp": re.compile(r"([A-Za-z_]\w*)\s*\("),
    "java": re.compile(r"([A-Za-z_]\w*)\s*\("),
    "js": re.compile(r"\bfunction\b\s*\*?\s*([A-Za-z_$][\w$]*)"
                     r"|([A-Za-z_$][\w$]*)\s*=\s*(?:async\b\s*)?(?:function\b|\(|[A-Za-z_$][\w$]*\s*=>)"
                     r"|([A-Za-z_$][\w$]*)\s*\("),
    "go": re.compile(r"\bfunc\s+(?:\([^)]*\)\s*)?([A-Za-z_]\w*)"),
    "rust": re.compile(r"\bfn\s+([A-Za-z_]\w*)"),
}


def _header(code: str, brace: int) -> str:
    """The code before `brace` back to the previous `;`, `{` or `}` outside parentheses (so `interface{}` or a
    `{}` default inside the parameter list does not end it)."""
    level = 0
    for j in range(brace - 1, -1, -1):
        c = code[j]
        level += {")": 1, "(": -1}.get(c, 0)
        if level <= 0 and c in ";{}":
            return code[j + 1:brace]
    return code[:brace]


def function_name(prompt: str, lang: str) -> str | None:
    """Name of the function whose body the prompt leaves open, or None."""
    code = code_mask(prompt, lang)
    stack = []
    for i, c in enumerate(code):
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            stack.pop()
    if not stack:
        return None
    for m in _NAME_IN_HEADER[lang].finditer(_header(code, stack[-1])):
        name = next(g for g in m.groups() if g)
        if name not in _NON_NAMES:
            return name
    return None


# A definition: a head ending at the parameter list's `(` (NAME stands for the escaped name), the balanced
# parameters, then a tail ending at the body's `{` (None: the head itself ends at the `{`).
_DEFINITIONS = {
    "cpp": [(r"(?<![\w.])NAME\s*\(", r"\s*(?:(?:const|noexcept|override|final)\b\s*)*(?:->[^;{}]*)?\{")],
    "java": [(r"(?<![\w.])NAME\s*\(", r"\s*(?:throws\s+[\w.,\s<>]+)?\{")],
    "js": [(r"(?<![\w.$])NAME\s*\(", r"\s*\{"),  # function NAME(..) {, and method syntax
           (r"(?<![\w.$])NAME\s*=\s*(?:async\s+)?function\b\s*\*?\s*[\w$]*\s*\(", r"\s*\{"),
           (r"(?<![\w.$])NAME\s*=\s*(?:async\s*)?\(", r"\s*=>\s*\{"),
           (r"(?<![\w.$])NAME\s*=\s*(?:async\s+)?[A-Za-z_$][\w$]*\s*=>\s*\{", None)],
    # Go return types may hold `interface{}` / `struct{...}`: tried before the plain characters.
    "go": [(r"\bfunc\s+(?:\([^)]*\)\s*)?NAME\s*\(",
            r"(?:interface\s*\{\s*\}|struct\s*\{[^{}]*\}|[^;{}])*\{")],
    "rust": [(r"\bfn\s+NAME\s*(?:<[^{};]*?>)?\s*\(", r"\s*(?:->[^;{]*)?\{")],
}


def _paren_end(code: str, i: int) -> int | None:
    """Index after the `)` matching the `(` at i."""
    level = 0
    for j in range(i, len(code)):
        level += {"(": 1, ")": -1}.get(code[j], 0)
        if level == 0:
            return j + 1
    return None


def _definition_brace(code: str, name: str, lang: str) -> int | None:
    """Index of the `{` opening the body of `name`'s first definition in masked `code`, or None."""
    found = []
    for head, tail in _DEFINITIONS[lang]:
        for m in re.finditer(head.replace("NAME", re.escape(name)), code):
            if tail is None:
                found.append(m.end() - 1)
                continue
            after = _paren_end(code, m.end() - 1)
            t = re.compile(tail).match(code, after) if after is not None else None
            if t:
                found.append(t.end() - 1)
    return min(found) if found else None


def _python_entry(prompt: str) -> str | None:
    names = re.findall(r"^\s*(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", prompt, re.MULTILINE)
    return names[-1] if names else None


# -------------------------------------------------------------------------------------------- chat answers
def _until_closed(text: str, own: int, depth: int, lang: str) -> str:
    """`text` starts inside `own` open braces of the answer; the prompt left `depth` open. Keep it up to where
    min(own, depth) of them close, then add a `}` line for each brace the prompt still needs closed (a Java
    method given without its class, a body without its `}`, an answer cut short)."""
    closing = min(own, depth)
    cut, still_open = _close_index(code_mask(text, lang), closing)
    piece = text if cut is None else text[:cut]
    if not piece.strip():
        piece = ""
    missing = still_open + depth - closing
    return (_with_newline(piece) if piece else "") + "}\n" * missing


def completion_from_chat(answer: str, prompt: str, lang: str, aliases=None) -> str:
    """What a chat answer contributes as the completion appended to `prompt`: the function body from the
    answer's definition of the prompt's function, closed as far as the prompt left braces open (Java: the
    method's `}`, further members of the answer's class, the class's `}`). No definition: the code is taken as
    the body's continuation."""
    if lang == "python":
        return extract_from_chat(answer, prompt, _python_entry(prompt) or "")
    _check_lang(lang)
    depth = open_depth(prompt, lang)
    name = function_name(prompt, lang)
    candidates = fenced_blocks(answer, aliases or FENCE_ALIASES[lang]) or [answer]
    for block in candidates:
        code = code_mask(block, lang)
        brace = _definition_brace(code, name, lang) if name else None
        if brace is not None:
            enclosing = max(code[:brace].count("{") - code[:brace].count("}"), 0)
            return _until_closed(block[brace + 1:], enclosing + 1, depth, lang)
    return _until_closed(candidates[0], depth, depth, lang)


def completion_from_output(raw: str, prompt: str, lang: str, kind: str, stops=(), aliases=()) -> str:
    """Dispatch on the prompt format's kind: "completion" (cut at `stops`, then at the function's end) or
    "chat" (extract from the answer)."""
    _check_lang(lang, ("python",) + BRACE_LANGS)
    if kind == "completion":
        text = cut_at_stops(raw, stops) if stops else raw
        if lang == "python":
            return truncate_completion(text, _python_entry(prompt))
        return brace_cut(text, prompt, lang)
    if kind == "chat":
        return completion_from_chat(raw, prompt, lang, aliases or None)
    raise ValueError(f"unknown output kind {kind!r}; expected 'completion' or 'chat'")
