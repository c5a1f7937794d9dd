"""Dynamic batching: requests that arrive together are decoded as one batch on one model, in one worker thread.

The HTTP side submits a `Job` (one request: a prompt and n choices) and reads its events; the worker waits for a
first job, gathers more for up to `wait_s` (or until `max_batch_rows` rows), and decodes them with the engine's
shrinking-batch loop (`decode_batch`): every row samples with its own settings and seeded generator, and a row
that ends (eos, stop string, its max_tokens, or its request cancelled) leaves the batch at once. Admission is
bounded: past `max_pending` jobs queued or running, `submit` raises `QueueFull` (the server answers 429).
Events reach the caller through its `sink` callable, called from the worker thread.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mftcoder.infer.engine import (GenerationSettings, RowSampler, clean_text, decode_batch, first_stop,
                                   stop_token_ids, strip_special_tokens)

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


@dataclass
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


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` cannot be sent yet: an incomplete UTF-8 character (decoded as
    U+FFFD) or the start of a stop string that the next tokens may complete."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    partial = max((k for s in stops for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
    return len(text) - end + partial


class RowStream:
    """One choice of one job while it decodes: sees each new token (`advance`, called by decode_batch) and sends
    the text that is certain as Delta events; `finish` sends the rest and the Finished event."""

    def __init__(self, job: Job, choice: int, tokenizer):
        self.job, self.choice, self.tokenizer = job, choice, tokenizer
        self.stops = job.sampling.stop
        self.sent = ""
        self.done = False

    def advance(self, ids: list[int]) -> bool:
        """True when this row must leave the batch (stop string, max_tokens, cancelled)."""
        if self.job.cancelled.is_set():
            return True  # decode_batch drops the row; finish() reports it
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if first_stop(text, self.stops) is not None:
            self.finish(ids, "stop")
            return True
        if len(ids) >= self.job.sampling.max_tokens:
            self.finish(ids, "length")
            return True
        if not self.job.stream:
            return False
        visible = strip_special_tokens(self.tokenizer, text[:len(text) - _held_back(text, self.stops)])
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
def left_padded(prompts: Sequence[list[int]], pad_id: int, device):
    """(input_ids, attention_mask) with every prompt padded on the left. Built here rather than with
    `tokenizer.pad`, which may reconfigure the shared Rust tokenizer while the HTTP thread encodes."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def run_batch(jobs: Sequence[Job]) -> None:
    """Decode every choice of `jobs` (all on the same served model) as one left-padded batch."""
    import torch

    served = jobs[0].model
    model, tokenizer = served.model, served.tokenizer
    rows = [(job, choice) for job in jobs for choice in range(job.sampling.n)]
    streams = [RowStream(job, choice, tokenizer) for job, choice in rows]
    device = next(model.parameters()).device
    row_settings = [job.sampling.row_settings() for job, _ in rows]
    seeds = {id(job): job.sampling.row_seeds() for job in jobs}
    generators = [torch.Generator(device=device).manual_seed(seeds[id(job)][choice]) for job, choice in rows]
    input_ids, mask = left_padded([job.prompt_ids for job, _ in rows], tokenizer.pad_token_id or 0, device)
    longest = GenerationSettings(max_new_tokens=max(job.sampling.max_tokens for job in jobs))
    with torch.inference_mode(), served.activate():
        ids, reasons = decode_batch(model, input_ids, mask, longest,
                                    stop_token_ids(model, tokenizer), lambda r, toks: streams[r].advance(toks),
                                    picker=RowSampler(row_settings, generators))
    for stream, row_ids, reason in zip(streams, ids, reasons):
        stream.finish(row_ids, reason)


def _dropped_if_cancelled(job: Job) -> bool:
    """A job cancelled while it waited is answered without decoding (its client has gone)."""
    if not job.cancelled.is_set():
        return False
    for choice in range(job.sampling.n):
        job.sink(Finished(choice, "cancelled", "", 0))
    return True


class Scheduler:
    """The worker thread and its bounded queue (see the module docstring)."""

    def __init__(self, max_batch_rows: int = 8, wait_s: float = 0.01, max_pending: int = 64):
        if max_batch_rows < 1 or max_pending < 1 or wait_s < 0:
            raise ValueError(f"max_batch_rows and max_pending must be >= 1 and wait_s >= 0, got {max_batch_rows}, "
                             f"{max_pending}, {wait_s}")
        self.max_batch_rows, self.wait_s, self.max_pending = max_batch_rows, wait_s, max_pending
        self._queue: collections.deque[Job] = collections.deque()
        self._pending = 0  # queued + running (a job's slot is freed by its last event)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="mftcoder-decode", daemon=True)
        self.batches_run = 0
        self.largest_batch = 0  # rows
        self.cancelled = 0  # jobs whose client went away

    @property
    def pending(self) -> int:
        return self._pending

    def stats(self) -> dict:
        return {"pending": self._pending, "batches": self.batches_run, "largest_batch": self.largest_batch,
                "cancelled": self.cancelled}

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._pending >= self.max_pending:
                raise QueueFull(f"the server is at capacity: {self._pending} requests are queued or running "
                                f"(--max_queue {self.max_pending}); retry later")
            self._pending += 1
            self._track(job)
            self._queue.append(job)
            self._cond.notify()

    def _track(self, job: Job) -> None:
        """The job's slot is freed just before its last event reaches the caller, so a client that sends its next
        request the moment it has its answer finds the slot free."""
        sink, remaining, released = job.sink, job.sampling.n, False

        def tracked(event):
            nonlocal remaining, released
            remaining -= isinstance(event, Finished)
            if isinstance(event, Finished) and event.reason == "cancelled" and remaining == 0:
                self.cancelled += 1
            if not released and (remaining == 0 or isinstance(event, Failed)):
                released = True
                with self._cond:
                    self._pending -= 1
            sink(event)

        job.sink = tracked

    def stop(self, timeout: float | None = None) -> None:
        """Finish the jobs already admitted, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take_batch(self) -> list[Job] | None:
        """The next batch: the first queued job, plus jobs for the same model that arrive within wait_s."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.wait_s
            while not self._stopping and self._rows_ready() < self.max_batch_rows:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._pop_batch()

    def _rows_ready(self) -> int:
        first = self._queue[0].model
        return sum(j.sampling.n for j in self._queue if j.model is first)

    def _pop_batch(self) -> list[Job]:
        first = self._queue[0].model
        batch, rows, kept = [], 0, collections.deque()
        while self._queue:
            job = self._queue.popleft()
            fits = job.model is first and (not batch or rows + job.sampling.n <= self.max_batch_rows)
            if fits:
                batch.append(job)
                rows += job.sampling.n
            else:
                kept.append(job)
        self._queue = kept
        return batch

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, sum(j.sampling.n for j in batch))
            try:
                live = [job for job in batch if not _dropped_if_cancelled(job)]
                if live:
                    run_batch(live)
            except Exception as e:  # one bad batch must not end the worker: its requests get the error
                log.exception("decoding a batch of %d requests failed", len(batch))
                for job in batch:
                    job.sink(Failed(f"{type(e).__name__}: {e}"))
