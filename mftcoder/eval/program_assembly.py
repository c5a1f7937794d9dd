"""How each format's published harness turns a problem and a completion into the program that is run.

| harness     | program                                                                                         |
|-------------|-------------------------------------------------------------------------------------------------|
| humaneval   | prompt + completion + test + `check(entry_point)` (a test without `def check(` runs as is)       |
| humaneval-x | Python: common imports + prompt + completion + test. C++: standard headers the prompt lacks +    |
|             | prompt + completion + test. Java, JavaScript: prompt + completion + test. Go: test_setup +       |
|             | imports of the standard packages the code uses + prompt without its import block + completion + |
|             | test. Rust: `fn main(){}` + the declaration's `use` lines + prompt + completion + test.          |
| multipl-e   | prompt + completion + tests                                                                      |
| mbpp        | test_setup_code + completion + the test_list asserts                                             |
"""
from __future__ import annotations

import re
from typing import Callable

# Imports the HumanEval-X Python harness puts first (numpy left out: it is not a dependency of ours)
PYTHON_IMPORTS = ("import math", "import re", "import sys", "import copy", "import datetime", "import itertools",
                  "import collections", "import heapq", "import functools", "import hashlib", "import string",
                  "from typing import *", "from collections import *")
# Standard headers the HumanEval-X C++ harness adds where the prompt lacks them
CPP_HEADERS = ("stdlib.h", "algorithm", "cmath", "math.h", "numeric", "stdio.h", "vector", "set", "map", "queue",
               "stack", "list", "deque", "string", "climits", "cstring", "iostream", "sstream", "fstream")
# Standard Go packages imported when the code uses them (Go refuses unused imports, so only those used)
GO_PACKAGES = ("math", "sort", "strings", "strconv", "fmt", "bytes", "regexp", "crypto/md5", "math/rand", "time",
               "unicode", "math/big", "encoding/hex", "container/heap", "reflect")


def _humaneval(problem, completion: str) -> str:
    parts = [problem.prompt + completion, "", problem.test, ""]
    if "def check(" in problem.test and not re.search(r"^check\(", problem.test, flags=re.MULTILINE):
        parts.append(f"check({problem.entry_point})")
    return "\n".join(parts) + "\n"


def _humaneval_x_python(problem, completion: str) -> str:
    return "\n".join(PYTHON_IMPORTS) + "\n" + problem.prompt + completion + "\n" + problem.test + "\n"


def _humaneval_x_cpp(problem, completion: str) -> str:
    present = set(re.findall(r"#include\s*<\s*([\w./]+)\s*>", problem.prompt))
    headers = "".join(f"#include<{h}>\n" for h in CPP_HEADERS if h not in present)
    return headers + "\n" + problem.prompt + completion + "\n" + problem.test


def _prompt_completion_test(problem, completion: str) -> str:
    return problem.prompt + completion + "\n" + problem.test


def _humaneval_x_go(problem, completion: str) -> str:
    setup = problem.extra["test_setup"]
    code = problem.prompt.replace(problem.extra["import"], "", 1) if problem.extra["import"] else problem.prompt
    code += completion
    imported = set(re.findall(r'"([\w./]+)"', setup))
    used = [pkg for pkg in GO_PACKAGES if pkg not in imported and re.search(rf"\b{pkg.split('/')[-1]}\.", code)]
    block = "import (\n" + "".join(f'    "{pkg}"\n' for pkg in used) + ")\n" if used else ""
    return setup + "\n" + block + code + "\n" + problem.test


def _humaneval_x_rust(problem, completion: str) -> str:
    declaration = problem.extra.get("declaration", "")
    signature = problem.prompt.rstrip("\n").rsplit("\n", 1)[-1]
    if signature.strip() and declaration.rstrip("\n").endswith(signature):  # keep its `use` lines only
        declaration = declaration.rstrip("\n")[: -len(signature)]
    return "\nfn main(){}\n" + declaration + problem.prompt + completion + problem.test


def _mbpp(problem, completion: str) -> str:
    setup = problem.extra.get("test_setup_code", "")
    return setup + "\n" + completion + "\n" + "\n".join(problem.extra["test_list"]) + "\n"


ASSEMBLERS: dict[tuple[str, str], Callable] = {
    ("humaneval", "python"): _humaneval,
    ("humaneval-x", "python"): _humaneval_x_python,
    ("humaneval-x", "cpp"): _humaneval_x_cpp,
    ("humaneval-x", "java"): _prompt_completion_test,
    ("humaneval-x", "js"): _prompt_completion_test,
    ("humaneval-x", "go"): _humaneval_x_go,
    ("humaneval-x", "rust"): _humaneval_x_rust,
    ("mbpp", "python"): _mbpp,
}


def assemble(problem, completion: str) -> str:
    if problem.harness == "multipl-e":
        return _prompt_completion_test(problem, completion)
    try:
        return ASSEMBLERS[(problem.harness, problem.language)](problem, completion)
    except KeyError:
        raise ValueError(f"{problem.task_id}: no {problem.harness} harness for {problem.language}") from None
