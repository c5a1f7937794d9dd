"""The training run's state as data: where the loop is, how validation went, and whether (and why) it stops.

The loop owns one `LoopState`; anything that ends a run sets `state.stop` (the loop finishes the current optimizer
step, then leaves: a signal handler sets `StopReason.INTERRUPTED` and the loop saves a checkpoint). Checkpoints hold
`state.to_dict()` (plain JSON-able values) and resume reads it back with `LoopState.from_dict`, which also reads the
dicts of checkpoints written before `stop` existed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Optional


class StopReason(str, Enum):
    """Why the loop ended; the value is the summary's display text."""
    NONE = "running"                  # not stopping
    MAX_STEPS = "max steps"           # max_train_steps reached before the last epoch ended
    EPOCHS = "epochs"                 # num_train_epochs done
    EARLY_STOPPING = "early stopping"  # early_stopping_stall_num evaluations without a better validation loss
    INTERRUPTED = "interrupted"       # SIGINT / SIGTERM: the step finished, a checkpoint is saved


@dataclass
class LoopState:
    step: int = 0                      # optimizer steps completed
    best_eval: float = math.inf
    stall: int = 0                     # evaluations since the last best
    coba: Optional[dict] = None
    probe_position: int = 0
    first_eval: Optional[dict] = None  # per-task validation loss before training (for the summary)
    sampler: Optional[dict] = None     # the sampler's settings: a resume with other data or batch geometry is refused
    data_digest: Optional[str] = None  # the tokenised data's content: a resume on edited data is refused
    stop: StopReason = StopReason.NONE
    stop_detail: str = ""              # a human addition to the reason, e.g. "(3 evaluations without ...)"

    @property
    def stopping(self) -> bool:
        return self.stop is not StopReason.NONE

    def request_stop(self, reason: StopReason, detail: str = "") -> None:
        """End the loop after the current optimizer step (the first reason given wins)."""
        if not self.stopping:
            self.stop, self.stop_detail = StopReason(reason), detail

    def stop_text(self) -> str:
        """The summary's `stop_reason`, e.g. "epochs" or "early stopping (3 evaluations without ...)"."""
        return f"{self.stop.value} {self.stop_detail}".strip()

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["stop"] = self.stop.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoopState":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"checkpoint loop state has unknown field(s) {unknown}; written by a newer mftcoder?")
        d = dict(d)
        d["stop"] = StopReason(d.get("stop", StopReason.NONE))
        return cls(**d)
