"""Continuous batching: requests are decoded together on one model, in one worker thread, and a request that
arrives while others decode joins them at the next step.

The HTTP side submits a `Job` (one request: a prompt and n choices) and reads its events. An idle worker waits for
a first job, gathers more for up to `wait_s` (or until `max_batch_rows` rows) and starts a `ContinuousBatch`
(mftcoder.infer.continuous); while it decodes, queued jobs for the same model join between two steps as long as
rows are free. Every row samples with its own settings and seeded generator, and a row that ends (eos, stop
string, its max_tokens, or its request cancelled) leaves at once, freeing its place. Jobs start in arrival order;
a job for another served model (adapter) waits until the batch in flight drains. Admission is bounded: past
`max_pending` jobs queued or running, `submit` raises `QueueFull` (the server answers 429). Events reach the caller
through its `sink` callable, called from the worker thread.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mftcoder.infer.continuous import ContinuousBatch, Row
from mftcoder.infer.engine import GenerationSettings, clean_text, first_stop, stop_token_ids, strip_special_tokens

log = logging.getLogger(__name__)


ENGINE_REASONS = {"eos": "stop"}  # OpenAI's finish_reason for an answer that ended itself


class QueueFull(Exception):
    """More jobs than `max_pending` would be queued or running."""


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: a fresh random seed per request

    def row_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p)

    def row_seeds(self) -> list[int]:
        """Choice i samples from seed + i, whatever else shares its batch."""
        base = self.seed if self.seed is not None else int.from_bytes(os.urandom(7), "little")
        return [base + i for i in range(self.n)]


# events a job's sink receives, in order per choice: Delta*, then Finished; or one Failed for the whole job
@dataclass(frozen=True)
class Delta:
    choice: int
    text: str


@dataclass(frozen=True)
class Finished:
    choice: int
    reason: str  # "stop" (eos or a stop string) | "length" | "cancelled"
    text: str  # the whole answer, as `generate_texts` would give it
    tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(eq=False)  # a request is itself, whatever its fields
class Job:
    """One request: `n` choices of one prompt on the served model `model`."""

    model: Any  # the served model (see service.ServedModel): .name, .model, .tokenizer, .activate()
    prompt_ids: list[int]
    sampling: Sampling
    sink: Callable[[object], None]
    stream: bool = True  # False: no Delta events, only each choice's Finished
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` cannot be sent yet: an incomplete UTF-8 character (decoded as
    U+FFFD) or the start of a stop string that the next tokens may complete."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    partial = max((k for s in stops for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
    return len(text) - end + partial


class RowStream:
    """One choice of one job while it decodes: sees each new token (`advance`, the row's on_token in the
    ContinuousBatch) and sends the text that is certain as Delta events; `finish` sends the rest and Finished."""

    def __init__(self, job: Job, choice: int, tokenizer):
        self.job, self.choice, self.tokenizer = job, choice, tokenizer
        self.stops = job.sampling.stop
        self.sent = ""
        self.done = False

    def advance(self, ids: list[int]) -> bool:
        """True when this row must leave the batch (stop string, max_tokens, cancelled)."""
        if self.job.cancelled.is_set():
            return True  # the batch drops the row; finish() reports it
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if first_stop(text, self.stops) is not None:
            self.finish(ids, "stop")
            return True
        if len(ids) >= self.job.sampling.max_tokens:
            self.finish(ids, "length")
            return True
        if not self.job.stream:
            return False
        visible = strip_special_tokens(self.tokenizer, text[:len(text) - held_back(text, self.stops)])
        if len(visible) > len(self.sent) and visible.startswith(self.sent):
            self.job.sink(Delta(self.choice, visible[len(self.sent):]))
            self.sent = visible
        return False

    def finish(self, ids: list[int], reason: str) -> None:
        if self.done:
            return  # advance finished it (stop string or max_tokens)
        self.done = True
        reason = "cancelled" if self.job.cancelled.is_set() else ENGINE_REASONS.get(reason, reason)
        text = clean_text(self.tokenizer, ids, self.stops, None)
        # a tokenizer whose decoding of a longer prefix rewrote text already sent cannot take it back: the
        # Finished event carries the whole answer, which is what non-streaming clients get
        if self.job.stream and text.startswith(self.sent) and len(text) > len(self.sent):
            self.job.sink(Delta(self.choice, text[len(self.sent):]))
            self.sent = text
        self.job.sink(Finished(self.choice, reason, text, len(ids)))


# ---------------------------------------------------------------------------------------------- the worker
def _dropped_if_cancelled(job: Job) -> bool:
    """A job cancelled while it waited is answered without decoding (its client has gone)."""
    if not job.cancelled.is_set():
        return False
    for choice in range(job.sampling.n):
        job.sink(Finished(choice, "cancelled", "", 0))
    return True


class Admission:
    """The bound on requests queued or running that every engine's scheduler keeps: `admit` a job or raise
    QueueFull. A job's slot is freed just before its last event reaches the caller, so a client that sends its next
    request the moment it has its answer finds the slot free. `lock` is the scheduler's own lock."""

    def __init__(self, max_pending: int, lock):
        if max_pending < 1:
            raise ValueError(f"--max_queue must be >= 1, got {max_pending}")
        self.max_pending, self.lock = max_pending, lock
        self.pending = 0
        self.cancelled = 0  # jobs whose client went away
        self.stopping = False

    def admit(self, job: Job) -> None:
        """Count `job` in (call with the lock held) and make its sink free the slot at the job's end."""
        if self.stopping:
            raise QueueFull("the server is shutting down")
        if self.pending >= self.max_pending:
            raise QueueFull(f"the server is at capacity: {self.pending} requests are queued or running "
                            f"(--max_queue {self.max_pending}); retry later")
        self.pending += 1
        sink, remaining, released = job.sink, job.sampling.n, False

        def tracked(event):
            nonlocal remaining, released
            remaining -= isinstance(event, Finished)
            if not released and (remaining == 0 or isinstance(event, Failed)):
                released = True
                with self.lock:
                    self.pending -= 1
                    self.cancelled += isinstance(event, Finished) and event.reason == "cancelled"
            sink(event)

        job.sink = tracked


class Scheduler:
    """The worker thread and its bounded queue (see the module docstring)."""

    def __init__(self, max_batch_rows: int = 8, wait_s: float = 0.01, max_pending: int = 64):
        if max_batch_rows < 1 or wait_s < 0:
            raise ValueError(f"--max_batch_size must be >= 1 and --batch_wait_ms >= 0, got {max_batch_rows}, "
                             f"{wait_s * 1000:g}")
        self.max_batch_rows, self.wait_s = max_batch_rows, wait_s
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self.admission = Admission(max_pending, self._cond)
        self._thread = threading.Thread(target=self._work, name="mftcoder-decode", daemon=True)
        self.joins = 0  # times new rows joined the batch in flight (or started it)
        self.largest_batch = 0  # rows decoding at once

    @property
    def pending(self) -> int:
        return self.admission.pending

    def stats(self) -> dict:
        return {"pending": self.admission.pending, "joins": self.joins, "largest_batch": self.largest_batch,
                "cancelled": self.admission.cancelled}

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        with self._cond:
            self.admission.admit(job)
            self._queue.append(job)
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the jobs already admitted, then end the worker."""
        with self._cond:
            self.admission.stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # -------------------------------------------------------------------------------- the worker's side
    def _admit(self, running, room: int) -> list[Job] | None:
        """Jobs to start now. Idle: wait for a first job, then up to wait_s for more of its model. Running
        (`running` is the ServedModel decoding): the queued jobs at the front for the same model that fit in
        `room` rows, without waiting. None: stopping, and nothing is left to do."""
        with self._cond:
            if running is None:
                while not self._queue:
                    if self.admission.stopping:
                        return None
                    self._cond.wait()
                deadline = time.monotonic() + self.wait_s
                while not self.admission.stopping and self._rows_ready() < room and time.monotonic() < deadline:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
                return self._pop(self._queue[0].model, room, at_least_one=True)
            return self._pop(running, room, at_least_one=False)

    def _rows_ready(self) -> int:
        first = self._queue[0].model
        return sum(j.sampling.n for j in self._queue if j.model is first)

    def _pop(self, model, room: int, at_least_one: bool) -> list[Job]:
        """Jobs from the front of the queue while they are for `model` and fit in `room` rows (first come, first
        served: a job for another model is never overtaken by later ones)."""
        jobs, rows = [], 0
        while self._queue and self._queue[0].model is model:
            n = self._queue[0].sampling.n
            if rows + n > room and not (at_least_one and not jobs):
                break
            jobs.append(self._queue.popleft())
            rows += n
        return jobs

    def _work(self) -> None:
        batch: ContinuousBatch | None = None
        served = None
        while True:
            running = served if batch is not None and batch.size else None
            room = self.max_batch_rows - (batch.size if running else 0)
            jobs = self._admit(running, room) if running is None or batch.can_join() else []
            if jobs is None:
                return
            if running is None and jobs:
                served = jobs[0].model
                batch = ContinuousBatch(served.model, stop_token_ids(served.model, served.tokenizer),
                                        served.tokenizer.pad_token_id or 0)
            try:
                with _decoding(served):
                    if jobs:
                        self._join(batch, served, jobs)
                    _finish(batch.step())
            except Exception as e:  # one failed step must not end the worker: its requests get the error
                log.exception("decoding failed")
                _fail({row.tag.job for row in batch.abandon()} | set(jobs), e)

    def _join(self, batch: ContinuousBatch, served, jobs: list[Job]) -> None:
        rows = [_row(job, choice, served.tokenizer) for job in jobs if not _dropped_if_cancelled(job)
                for choice in range(job.sampling.n)]
        if rows:
            self.joins += 1
            _finish(batch.join(rows))
            self.largest_batch = max(self.largest_batch, batch.size)


def _row(job: Job, choice: int, tokenizer) -> Row:
    import torch

    stream = RowStream(job, choice, tokenizer)
    device = next(job.model.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(job.sampling.row_seeds()[choice])
    return Row(job.prompt_ids, job.sampling.row_settings(), generator, stream.advance, tag=stream)


def _finish(rows: list[Row]) -> None:
    for row in rows:
        row.tag.finish(row.ids, row.reason)


def _fail(jobs, error: Exception) -> None:
    for job in jobs:
        job.sink(Failed(f"{type(error).__name__}: {error}"))


@contextlib.contextmanager
def _decoding(served):
    import torch

    with torch.inference_mode(), served.activate():
        yield
