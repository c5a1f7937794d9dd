"""Multiple-choice question files (MMLU, CMMLU, C-Eval, jsonl) and the folder layouts they come in.

Every file is read whole; a row that cannot be a question is an error naming `file:line` and what would be valid,
never skipped. Formats are told apart per file:

| format  | recognised by                                   | columns                                             |
|---------|-------------------------------------------------|-----------------------------------------------------|
| cmmlu   | `.csv`, header starting `,Question`             | index, Question, A, B, C, D[, E...], Answer         |
| ceval   | `.csv`, header starting `id,question`           | id, question, A..D[, E...], answer[, explanation]   |
| header  | `.csv`, another header with question/answer     | question, A..D[, E...], answer (other columns kept out) |
| mmlu    | `.csv` without a header                         | question, A..D[, E...], answer                      |
| jsonl   | `.jsonl`                                        | question, A..D or choices [..], answer (letter or index) |
"""
from __future__ import annotations

import csv
import os
import string
from dataclasses import dataclass
from typing import Iterator

from mftcoder.jsonl import iter_json_objects

LETTERS = string.ascii_uppercase
SUFFIXES = ("_test", "_dev", "_val")
EXTENSIONS = (".csv", ".jsonl")
SPLITS = ("test", "val")


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    source: str  # file:line of the row

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.choices)]


def subject_of(path: str) -> str:
    """The file name stem, without MMLU / C-Eval's `_test` / `_dev` / `_val` suffix."""
    stem = os.path.splitext(os.path.basename(path))[0]
    for suffix in SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def answer_index(value, n_choices: int, where: str) -> int:
    """A letter (`B`) or a 0-based index (1) as an index into the choices; anything else is an error."""
    letters = LETTERS[:n_choices]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_choices:
        return value
    if isinstance(value, str) and value.strip().upper() in letters and value.strip():
        return letters.index(value.strip().upper())
    hint = "; C-Eval's test answers are not public: score --split val" if value in ("", None) else ""
    raise ValueError(f"{where}: answer {value!r} is not one of {', '.join(letters)} "
                     f"(or a 0-based index below {n_choices}){hint}")


def _choice_columns(header: list[str], start: int, where: str) -> list[int]:
    """Indices of the consecutive A, B, C... columns from `start`; at least two."""
    cols = []
    while start + len(cols) < len(header) and header[start + len(cols)].strip() == LETTERS[len(cols)]:
        cols.append(start + len(cols))
    if len(cols) < 2:
        raise ValueError(f"{where}: header {header!r} needs choice columns A, B[, C...] right after the question "
                         "column")
    return cols


def _header_layout(header: list[str], where: str) -> tuple[int, list[int], int] | None:
    """(question column, choice columns, answer column) of a header row, or None when the row is not a header."""
    lower = [c.strip().lower() for c in header]
    if "question" not in lower:
        return None
    q = lower.index("question")
    choices = _choice_columns(header, q + 1, where)
    if "answer" not in lower:
        raise ValueError(f"{where}: the header has no answer column (C-Eval's test answers are not public: "
                         "score its val split with --split val)")
    return q, choices, lower.index("answer")


def _csv_rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, cells) for every record; blank lines are not records."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise ValueError(f"{path}:{start}: not valid CSV: {e}") from None
            if row:
                yield start, row


def read_csv(path: str) -> list[Question]:
    subject = subject_of(path)
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{path}: no questions in the file")
    layout = _header_layout(first[1], f"{path}:{first[0]}")
    if layout is None:  # MMLU: no header, question, choices..., answer
        width = len(first[1])
        if width < 4:
            raise ValueError(f"{path}:{first[0]}: expected question, A, B[, C...], answer (at least 4 cells) or a "
                             f"header with question / A / B / answer columns; got {width} cell(s)")
        layout = (0, list(range(1, width - 1)), width - 1)
        rows = iter([first, *rows])
    q_col, choice_cols, a_col = layout
    width = len(first[1])  # every record has the first row's cells: a stray comma must not shift the answer
    out = []
    for line, row in rows:
        where = f"{path}:{line}"
        if len(row) != width:
            raise ValueError(f"{where}: {len(row)} cell(s), expected {width} like the first row (question, "
                             f"{', '.join(LETTERS[:len(choice_cols)])}, answer; quote cells that hold commas)")
        if not row[q_col].strip():
            raise ValueError(f"{where}: the question is empty")
        choices = tuple(row[c] for c in choice_cols)
        out.append(Question(subject, row[q_col], choices, answer_index(row[a_col], len(choices), where), where))
    if not out:
        raise ValueError(f"{path}: no questions in the file (only a header)")
    return out


def _jsonl_choices(row: dict, where: str) -> tuple[str, ...]:
    if "choices" in row:
        choices = row["choices"]
    else:
        choices = []
        while LETTERS[len(choices)] in row:
            choices.append(row[LETTERS[len(choices)]])
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: needs a `choices` list of at least two strings, or string fields A, B[, C...]")
    return tuple(choices)


def read_jsonl(path: str) -> list[Question]:
    expected = 'an object with "question", "A".."D" (or a "choices" list) and "answer" (letter or index)'
    out = []
    for lineno, row in iter_json_objects(path, "questions", expected):
        where = f"{path}:{lineno}"
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise ValueError(f"{where}: needs a non-empty string `question`")
        if "answer" not in row:
            raise ValueError(f"{where}: needs an `answer` (a letter like \"B\" or a 0-based index)")
        choices = _jsonl_choices(row, where)
        subject = row.get("subject") if isinstance(row.get("subject"), str) and row["subject"] else subject_of(path)
        out.append(Question(subject, row["question"], choices, answer_index(row["answer"], len(choices), where), where))
    if not out:
        raise ValueError(f"{path}: no questions in the file")
    return out


READERS = {".csv": read_csv, ".jsonl": read_jsonl}


def read_questions(path: str) -> list[Question]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in READERS:
        raise ValueError(f"{path}: unknown question file type; expected one of {', '.join(READERS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"question file {path} does not exist")
    return READERS[ext](path)


def _files_in(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))


def question_files(data: str, split: str) -> tuple[list[str], str | None]:
    """(question files, the dev folder or None) for `--data` (a file, a flat folder, or a folder with test/ or
    val/ and optionally dev/ subfolders, as MMLU, CMMLU and C-Eval ship)."""
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    if os.path.isfile(data):
        return [data], None
    if not os.path.isdir(data):
        raise FileNotFoundError(f"--data {data} is neither a question file nor a folder")
    present = [s for s in (*SPLITS, "dev") if os.path.isdir(os.path.join(data, s))]
    dev = os.path.join(data, "dev") if "dev" in present else None
    if split in present:
        folder = os.path.join(data, split)
    elif any(s in present for s in SPLITS):
        raise ValueError(f"--data {data} has no {split}/ folder (it has {', '.join(p + '/' for p in present)}); "
                         f"pass --split {next(s for s in SPLITS if s in present)}")
    else:
        folder = data
    files = _files_in(folder)
    if not files:
        raise ValueError(f"--data: no {' or '.join(EXTENSIONS)} question files in {folder}")
    return files, dev


def group_by_subject(files: list[str]) -> dict[str, list[Question]]:
    out: dict[str, list[Question]] = {}
    for path in files:
        for q in read_questions(path):
            out.setdefault(q.subject, []).append(q)
    return out
