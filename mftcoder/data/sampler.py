"""Balanced multi-task sampler: which units make up each optimizer step, and which rank trains which of them.

How an epoch is built (everything below depends only on units_per_task, global_batch_size, strategy, its
parameters and seed, never on the micro-batch / accumulation / world-size factorisation):

1. Task probabilities p_k from the strategy: proportional (n_k), uniform (1), temperature (n_k ** (1/T)) or
   explicit weights, normalised.
2. An epoch has N = sum(n_k) draws; task k gets c_k = round(p_k * N) of them by the largest-remainder method
   (exact rational arithmetic, ties to the lower task id), so the counts sum to N exactly.
3. Task k's draws are the next c_k entries of its own endless stream: seeded permutations of range(n_k), one per
   cycle, concatenated. Epoch e takes stream positions [e*c_k, (e+1)*c_k), so a down-sampled task sees new units
   each epoch and an up-sampled one goes through all units before any repeats. Under `proportional` c_k = n_k,
   so every epoch visits every unit exactly once.
4. The N draws are shuffled with a (seed, epoch) permutation and cut into global batches of `global_batch_size`.
   The last batch is completed with the first draws of the epoch's order (`padded_units()` says how many, the
   same every epoch), so every step has exactly global_batch_size units and nothing is dropped.

The sampler has no position of its own: `global_batch(step)` is a pure function of the step, and the training loop's
step counter is the one owner of where a run is. `state_dict` is the sampler's fingerprint, which a resume checks.

`shard` then gives rank r the contiguous slice [r*G/W, (r+1)*G/W) of the step, cut into grad_accum micro-batches.

`group_by_task=True` reorders a step's units (never changes them) before sharding so that micro-batches are
single-task where possible: each task contributes floor(count/micro) full single-task chunks, which is the most
any arrangement can have; the leftovers of all tasks, grouped by task, fill the remaining (mixed) chunks. Chunks
are ordered by where their first unit sat in the shuffled step, so tasks stay interleaved by the balanced schedule.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

STRATEGIES = ("proportional", "uniform", "temperature", "explicit")

# Tags that keep the random streams of different purposes apart even for equal (seed, index) pairs.
_TASK_STREAM_TAG = 1
_EPOCH_SHUFFLE_TAG = 2

Unit = tuple[int, int]  # (task_id, unit_index within the task)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def _largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Integer counts proportional to `weights` that sum to `total` exactly."""
    exact = [Fraction(w) for w in weights]
    norm = sum(exact)
    quotas = [w * total / norm for w in exact]
    counts = [math.floor(q) for q in quotas]
    short = total - sum(counts)
    by_remainder = sorted(range(len(quotas)), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in by_remainder[:short]:
        counts[k] += 1
    return counts


def check_batch_geometry(global_batch_size: int, micro_batch_size: int, grad_accum: int, world_size: int) -> None:
    """Raise a clear error unless global_batch_size == micro_batch_size * grad_accum * world_size (all >= 1)."""
    for name, v in (("micro_batch_size", micro_batch_size), ("grad_accum", grad_accum), ("world_size", world_size)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if global_batch_size != micro_batch_size * grad_accum * world_size:
        raise ValueError(
            f"global_batch_size={global_batch_size} != micro_batch_size({micro_batch_size}) x "
            f"grad_accum({grad_accum}) x world_size({world_size}) = {micro_batch_size * grad_accum * world_size}"
        )


class TaskBalancedSampler:
    def __init__(
        self,
        units_per_task: list[int],
        global_batch_size: int,
        *,
        strategy: str = "proportional",
        temperature: float = 1.0,
        weights: list[float] | None = None,
        seed: int = 1234,
        group_by_task: bool = False,
    ):
        if not units_per_task:
            raise ValueError("units_per_task is empty: need at least one task")
        for k, n in enumerate(units_per_task):
            if int(n) != n or n < 1:
                raise ValueError(f"task {k} has {n} units; every task needs a positive whole number of units")
        if int(global_batch_size) != global_batch_size or global_batch_size < 1:
            raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
        self.units_per_task = [int(n) for n in units_per_task]
        self.global_batch_size = int(global_batch_size)
        self.strategy = strategy
        self.temperature = float(temperature)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.seed = int(seed)
        self.group_by_task = bool(group_by_task)
        self._raw_weights = self._strategy_weights()
        self._total_units = sum(self.units_per_task)
        self._epoch_counts = _largest_remainder(self._raw_weights, self._total_units)
        self._plan_cache: tuple[int, list[list[Unit]]] | None = None
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    # ---- configuration ---------------------------------------------------------------------------------------
    def _strategy_weights(self) -> list[float]:
        K = len(self.units_per_task)
        if self.strategy == "explicit":
            if self.weights is None:
                raise ValueError("strategy 'explicit' needs weights (one positive number per task)")
            if len(self.weights) != K:
                raise ValueError(f"weights has {len(self.weights)} entries but there are {K} tasks")
            for k, w in enumerate(self.weights):
                if not (w > 0 and math.isfinite(w)):
                    raise ValueError(f"weights[{k}] = {w}; task weights must be positive finite numbers")
            return list(self.weights)
        if self.weights is not None:
            raise ValueError(f"weights are only used by strategy 'explicit', not {self.strategy!r}")
        if self.strategy == "proportional":
            return [float(n) for n in self.units_per_task]
        if self.strategy == "uniform":
            return [1.0] * K
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature}")
        return [float(n) ** (1.0 / self.temperature) for n in self.units_per_task]

    @property
    def num_tasks(self) -> int:
        return len(self.units_per_task)

    @property
    def task_probabilities(self) -> list[float]:
        total = sum(self._raw_weights)
        return [w / total for w in self._raw_weights]

    def units_per_epoch(self) -> list[int]:
        """How many units each task contributes to one epoch (sums to the total number of units)."""
        return list(self._epoch_counts)

    def steps_per_epoch(self) -> int:
        return -(-self._total_units // self.global_batch_size)

    def padded_units(self) -> int:
        """Units repeated (from the start of the epoch's order) to complete each epoch's last global batch."""
        return self.steps_per_epoch() * self.global_batch_size - self._total_units

    # ---- the schedule ----------------------------------------------------------------------------------------
    def _permutation(self, task: int, cycle: int) -> np.ndarray:
        key = (task, cycle)
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 4 * self.num_tasks + 16:  # only the current epoch's cycles are reused
                self._perm_cache.clear()
            perm = _rng(self.seed, _TASK_STREAM_TAG, task, cycle).permutation(self.units_per_task[task])
            self._perm_cache[key] = perm
        return perm

    def _task_draws(self, task: int, epoch: int) -> np.ndarray:
        """Stream positions [epoch*c, (epoch+1)*c) of this task's stream of permutations."""
        n, c = self.units_per_task[task], self._epoch_counts[task]
        start, stop = epoch * c, (epoch + 1) * c
        parts = []
        pos = start
        while pos < stop:
            cycle, offset = divmod(pos, n)
            take = min(n - offset, stop - pos)
            parts.append(self._permutation(task, cycle)[offset : offset + take])
            pos += take
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def epoch_plan(self, epoch: int) -> list[list[Unit]]:
        """The global batches of one epoch, each a list of global_batch_size (task_id, unit_index) pairs."""
        return [list(b) for b in self._cached_plan(epoch)]

    def _cached_plan(self, epoch: int) -> list[list[Unit]]:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        tasks = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(self._epoch_counts)])
        units = np.concatenate([self._task_draws(k, epoch) for k in range(self.num_tasks)])
        order = _rng(self.seed, _EPOCH_SHUFFLE_TAG, epoch).permutation(len(tasks))
        draws = list(zip(tasks[order].tolist(), units[order].tolist()))
        G = self.global_batch_size
        padded = draws + [draws[i % len(draws)] for i in range(self.padded_units())]
        plan = [padded[i : i + G] for i in range(0, len(padded), G)]
        self._plan_cache = (epoch, plan)
        return plan

    def global_batch(self, step: int) -> list[Unit]:
        """The units of optimizer step `step` (counted from 0 across epochs)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, index = divmod(step, self.steps_per_epoch())
        return list(self._cached_plan(epoch)[index])

    # ---- distribution over ranks and accumulation micro-batches ----------------------------------------------
    def arrange_by_task(self, batch: Sequence[Unit], micro_batch_size: int) -> list[Unit]:
        """Reorder `batch` so that consecutive chunks of `micro_batch_size` are single-task where possible."""
        m = int(micro_batch_size)
        if m < 1 or len(batch) % m:
            raise ValueError(f"a batch of {len(batch)} units cannot be cut into micro-batches of {micro_batch_size}")
        by_task: dict[int, list[int]] = {}
        for pos, (task, _) in enumerate(batch):
            by_task.setdefault(task, []).append(pos)
        chunks: list[list[int]] = []
        leftovers: list[int] = []
        for task in sorted(by_task):
            positions = by_task[task]
            full = len(positions) - len(positions) % m
            chunks += [positions[i : i + m] for i in range(0, full, m)]
            leftovers += positions[full:]
        chunks += [leftovers[i : i + m] for i in range(0, len(leftovers), m)]
        chunks.sort(key=lambda chunk: chunk[0])
        return [batch[pos] for chunk in chunks for pos in chunk]

    def shard(
        self, batch: Sequence[Unit], rank: int, world_size: int, micro_batch_size: int, grad_accum: int
    ) -> list[list[Unit]]:
        """This rank's grad_accum micro-batches (each of micro_batch_size units) of the global batch."""
        check_batch_geometry(self.global_batch_size, micro_batch_size, grad_accum, world_size)
        if len(batch) != self.global_batch_size:
            raise ValueError(f"batch has {len(batch)} units, expected global_batch_size={self.global_batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if self.group_by_task:
            batch = self.arrange_by_task(batch, micro_batch_size)
        per_rank = self.global_batch_size // world_size
        mine = list(batch[rank * per_rank : (rank + 1) * per_rank])
        return [mine[i : i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]

    # ---- fingerprint, so a resume is refused when the batches would differ ----------------------------------
    def _fingerprint(self) -> dict:
        return {
            "units_per_task": list(self.units_per_task),
            "global_batch_size": self.global_batch_size,
            "strategy": self.strategy,
            "temperature": self.temperature,
            "weights": self.weights,
            "seed": self.seed,
        }

    def state_dict(self) -> dict:
        """What the batches depend on besides the step (the step itself is the training loop's)."""
        return self._fingerprint()

    def load_state_dict(self, state: dict) -> None:
        """Check a saved fingerprint against this sampler. Refuses a state saved with other data or sampling settings,
        since the batches after resume would then silently differ from the uninterrupted run. (Older checkpoints
        also hold a "step", which the loop restores from its own state.)"""
        mine = self._fingerprint()
        for key, value in mine.items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]!r} but this run has {key}={value!r}; "
                    "resuming would not reproduce the interrupted run"
                )
