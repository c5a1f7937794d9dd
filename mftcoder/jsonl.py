"""Reading jsonl(.gz) files of JSON objects, with errors that name file:line."""
from __future__ import annotations

import gzip
import json
import os
from typing import Iterator


def open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def iter_json_objects(path: str, kind: str = "input", expected: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; `kind` names the file and `expected` the line in errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected {expected}")
            yield lineno, row
