"""Reading jsonl(.gz) files of JSON objects, with errors that name file:line.

Lines come from the training data reader (`mftcoder.data.formats.iter_jsonl`), so every reader agrees: gzip is
recognised by its content, a UTF-8 byte order mark on the first line is dropped, and bytes that are not UTF-8
are an error naming the file and line.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

from mftcoder.data.formats import iter_jsonl


def iter_json_objects(path: str, kind: str = "input", expected: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; `kind` names the file and `expected` the line in errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    for lineno, line in iter_jsonl(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected {expected}")
        yield lineno, row


def read_json_object(path: str) -> dict:
    """A whole-file JSON object (a config), or a ValueError naming file:line and the JSON problem."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of keys")
    return data
