"""Tokenising: raw JSONL lines -> token ids, loss mask and split, in parallel worker processes.

One line goes: decode (UTF-8, BOM) -> parse (formats.py) -> render with the template (ids + assistant mask) ->
mask (assistant turns) -> truncate or drop past seq_length -> split by content hash. Pretraining documents (a line's
`text`, or a whole .txt file) are tokenised whole, every token trained, never truncated (documents.py; blocks.py cuts
them into rows). Every line comes back with a status, so the cache can account for each one: ok | blank | empty |
rejected | dropped.
Results arrive in task, file and line order, whatever the number of workers, so the cache is the same for any count.
"""
from __future__ import annotations

import multiprocessing as mp
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np

from mftcoder.data.documents import (DocumentTokenizer, FimSettings, decode_text_file, is_empty_text,
                                     is_text_file)
from mftcoder.data.formats import DataFormatError, decode_line, iter_raw_lines, load_json_line, parse_line, parse_record
from mftcoder.data.pairs import fit_pair, parse_pair
from mftcoder.data.tasks import Task, split_of
from mftcoder.data.template import ChatTemplate, TemplateError, get_template

try:  # a tokenizer's own chat_template may raise_exception() on a conversation it does not accept
    from jinja2.exceptions import TemplateError as JinjaTemplateError
except ImportError:  # pragma: no cover
    JinjaTemplateError = TemplateError


@dataclass(frozen=True)
class EncodeSettings:
    """What turns a line into a sample, taken from a validated TrainConfig (its bounds are checked there)."""
    template: str
    role_markers: Optional[dict]
    seq_length: int
    overlong_policy: str  # "truncate" | "drop"
    fractions: tuple[float, float, float]  # train, valid, test
    pairs: bool = False  # preference objectives: every line is a (prompt, chosen, rejected) pair
    documents: Optional[FimSettings] = None  # pretraining: every line or .txt file is a document

    @classmethod
    def from_config(cls, cfg) -> "EncodeSettings":
        documents = FimSettings(cfg.fim_rate, cfg.fim_spm_rate, cfg.fim_tokens, cfg.seed) \
            if cfg.objective == "pretrain" else None
        return cls(cfg.template, cfg.role_markers, cfg.seq_length, cfg.overlong_policy, cfg.split_fractions,
                   cfg.is_preference, documents)


class LineResult(NamedTuple):
    """One line's outcome (a tuple: cheap to send back from a worker). `reason` explains rejected and dropped."""
    lineno: int
    status: str  # "ok" | "blank" | "empty" | "rejected" | "dropped"
    samples: tuple = ()  # ok only: ((ids int32, mask uint8),): one sample, or a pair (chosen, rejected)
    split: Optional[str] = None  # "train" | "valid" | "test", ok only
    overlong: bool = False  # longer than seq_length+1 tokens before truncation (ok and dropped)
    reason: Optional[str] = None
    written_as: Optional[str] = None  # a pretraining document: "plain" | "psm" | "spm" (fill-in-the-middle)

    @property
    def ids(self) -> Optional[np.ndarray]:
        """The (first) sample's token ids."""
        return self.samples[0][0] if self.samples else None

    @property
    def mask(self) -> Optional[np.ndarray]:
        return self.samples[0][1] if self.samples else None


@dataclass
class Job:
    """A chunk of raw lines of one file; `nbytes` is how much of the file (as stored) it moves the progress by."""
    task_id: int
    path: str
    lines: list[tuple[int, bytes]]
    nbytes: int


class LineEncoder:
    def __init__(self, template: ChatTemplate, settings: EncodeSettings):
        self.template, self.settings = template, settings
        self.max_len = settings.seq_length + 1  # a sample of n tokens gives n-1 (input, target) positions
        self.documents = DocumentTokenizer(template.tokenizer, settings.documents) \
            if settings.documents is not None else None

    def encode(self, data: bytes, lineno: int, path: str) -> LineResult:
        where = f"{path}:{lineno}"
        try:
            if self.documents is not None:
                return self._encode_document(data, lineno, path)
            raw = decode_line(data, lineno, where)
            if not raw.strip():
                return LineResult(lineno, "blank")
            if self.settings.pairs:
                return self._encode_pair(raw, lineno, where)
            conv = parse_line(raw, where)
            enc = self._render(conv, where)
        except DataFormatError as e:
            return LineResult(lineno, "rejected", reason=str(e))
        ids = np.asarray(enc.input_ids, dtype=np.int32)
        mask = np.asarray(enc.loss_mask, dtype=np.uint8)
        overlong = len(ids) > self.max_len
        if overlong:
            if self.settings.overlong_policy == "drop":
                return LineResult(lineno, "dropped", overlong=True,
                                  reason=f"{where}: {len(ids)} tokens > seq_length+1 = {self.max_len}")
            ids, mask = ids[:self.max_len], mask[:self.max_len]
        if mask[1:].sum() == 0:
            # nothing left to learn from (e.g. the prompt alone fills seq_length): counted as dropped, never silent
            return LineResult(lineno, "dropped", overlong=overlong,
                              reason=f"{where}: no trained token within seq_length+1 = {self.max_len}")
        return LineResult(lineno, "ok", ((ids, mask),), split_of(raw, self.settings.fractions), overlong)

    def _render(self, conv, where: str, last_answer_only: bool = False):
        try:
            return self.template.encode(conv, last_answer_only=last_answer_only)
        except (TemplateError, JinjaTemplateError) as e:
            raise DataFormatError(where, f"template {self.template.name!r} cannot render this line: {e}") from None

    def _encode_document(self, data: bytes, lineno: int, path: str) -> LineResult:
        """A pretraining document, whole: a .txt file, a line's `text`, or a chat line rendered with the template (all
        its tokens trained; fill-in-the-middle applies to text only)."""
        where = f"{path}:{lineno}"
        if is_text_file(path):
            text = key = decode_text_file(data, path)
        else:
            key = decode_line(data, lineno, where)
            if not key.strip():
                return LineResult(lineno, "blank")
            obj = load_json_line(key, where)
            try:
                conv = parse_record(obj, where, require_assistant_last=False)
            except DataFormatError:
                if is_empty_text(obj):  # a text document with nothing in it: counted, not an error
                    return LineResult(lineno, "empty", reason=f"{where}: empty text")
                raise
            if conv.kind != "text":
                ids = np.asarray(self._render(conv, where).input_ids, dtype=np.int32)
                return LineResult(lineno, "ok", ((ids, np.ones_like(ids, dtype=np.uint8)),),
                                  split_of(key, self.settings.fractions), written_as="plain")
            text = conv.turns[0].content
        if not text.strip():
            return LineResult(lineno, "empty", reason=f"{where}: empty text")
        ids, written_as = self.documents.encode(text)
        return LineResult(lineno, "ok", ((ids, np.ones_like(ids, dtype=np.uint8)),),
                          split_of(key, self.settings.fractions), written_as=written_as)

    def _encode_pair(self, raw: str, lineno: int, where: str) -> LineResult:
        """A preference line: chosen and rejected rendered after the same prompt, trained on the answer alone."""
        pair = parse_pair(load_json_line(raw, where), where)
        samples = []
        for answer in (pair.chosen, pair.rejected):
            enc = self._render(pair.conversation(answer), where, last_answer_only=True)
            samples.append((np.asarray(enc.input_ids, dtype=np.int32), np.asarray(enc.loss_mask, dtype=np.uint8)))
        fitted = fit_pair(samples[0], samples[1], self.max_len, self.settings.overlong_policy, where)
        if fitted.status != "ok":
            return LineResult(lineno, fitted.status, overlong=fitted.overlong, reason=fitted.reason)
        return LineResult(lineno, "ok", fitted.samples, split_of(raw, self.settings.fractions), fitted.overlong)


# ---------------------------------------------------------------------------------------------------------------------
# worker processes


_WORKER: dict = {}


def _init_worker(tokenizer, settings: EncodeSettings) -> None:
    _WORKER["encoder"] = LineEncoder(get_template(settings.template, tokenizer, settings.role_markers), settings)


def encode_job(job: Job) -> tuple[Job, list[LineResult]]:
    """-> (the job without its lines, one result per line)."""
    encoder: LineEncoder = _WORKER["encoder"]
    results = [encoder.encode(data, lineno, job.path) for lineno, data in job.lines]
    return Job(job.task_id, job.path, [], job.nbytes), results


def read_jobs(tasks: list[Task], chunk_lines: int = 256, chunk_bytes: int = 4 << 20) -> Iterator[Job]:
    """Chunks of raw lines in task, file and line order (the order results are consumed in); gzip files read too.
    A chunk ends at `chunk_lines` lines or `chunk_bytes` bytes, so the jobs in flight hold bounded memory even when
    every line is a long document."""
    for task in tasks:
        for path in task.files:
            if is_text_file(path):  # one document: one job of one "line"
                with open(path, "rb") as f:
                    data = f.read()
                yield Job(task.task_id, path, [(1, data)], len(data))
                continue
            buf: list[tuple[int, bytes]] = []
            reported = done = size = 0
            for lineno, data, done in iter_raw_lines(path):
                buf.append((lineno, data))
                size += len(data)
                if len(buf) >= chunk_lines or size >= chunk_bytes:
                    yield Job(task.task_id, path, buf, done - reported)
                    buf, reported, size = [], done, 0
            if buf:
                yield Job(task.task_id, path, buf, done - reported)


def _ordered(pool, jobs: Iterable[Job], window: int) -> Iterator[tuple[Job, list[LineResult]]]:
    """Results in job order with at most `window` jobs in flight (Pool.imap would read every file into its queue)."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.apply_async(encode_job, (job,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def tokenise_tasks(tasks: list[Task], tokenizer, settings: EncodeSettings,
                   num_workers: int) -> Iterator[tuple[Job, list[LineResult]]]:
    """Every line of every task's files, encoded by `num_workers` processes (1: in this one), in order."""
    if num_workers <= 1:
        _init_worker(tokenizer, settings)
        yield from map(encode_job, read_jobs(tasks))
        return
    pool = mp.get_context("fork").Pool(num_workers, initializer=_init_worker, initargs=(tokenizer, settings))
    try:
        yield from _ordered(pool, read_jobs(tasks), window=4 * num_workers)
    finally:
        pool.terminate()
