"""From the tokenised tasks to this process's micro-batches: units (rows), the balanced sampler, the collator."""
from __future__ import annotations

import math
import random
from typing import Callable

from mftcoder.config import TrainConfig
from mftcoder.data.cache import TokenizedData
from mftcoder.data.collator import collate
from mftcoder.data.packing import build_units
from mftcoder.data.sampler import TaskBalancedSampler


class TrainBatches:
    """The micro-batches of optimizer step N for one process: the same global batch whatever the geometry."""

    def __init__(self, data: TokenizedData, cfg: TrainConfig, rank: int, world_size: int, pad_id: int,
                 collate_fn: Callable = collate):
        """`collate_fn(rows, task_ids, pad_id, pad_to_multiple_of)` makes a micro-batch (the objective's `collate`)."""
        self.data, self.cfg, self.rank, self.world, self.pad_id = data, cfg, rank, world_size, pad_id
        self.collate_fn = collate_fn
        self.units = [build_units(t.train.lengths, cfg.seq_length, cfg.padding_mode) for t in data.tasks]
        weights = [t.task.sampling_weight for t in data.tasks] if cfg.task_sampling == "explicit" else None
        self.global_batch_size = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
        self.sampler = TaskBalancedSampler(
            [len(u) for u in self.units], self.global_batch_size, strategy=cfg.task_sampling,
            temperature=cfg.sampling_temperature, weights=weights, seed=cfg.seed, group_by_task=cfg.group_by_task)

    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch()

    def micro_batches(self, step: int) -> list[dict]:
        batch = self.sampler.global_batch(step)
        shards = self.sampler.shard(batch, self.rank, self.world, self.cfg.per_device_train_batch_size,
                                    self.cfg.gradient_accumulation_steps)
        return [self.collate_units(mb, split="train") for mb in shards]

    def collate_units(self, units: list[tuple[int, int]], split: str) -> dict:
        rows, task_ids = [], []
        for task_id, unit in units:
            store = getattr(self.data.tasks[task_id], split)
            index = self.units[task_id][unit] if split == "train" else [unit]
            rows.append([store[i] for i in index])
            task_ids.append(task_id)
        multiple = None if self.cfg.use_dynamic_padding else self.cfg.seq_length
        return self.collate_fn(rows, task_ids, self.pad_id, multiple)


def eval_units(data: TokenizedData) -> list[tuple[int, int]]:
    """Every validation sample once, one sample a row."""
    return [(t, i) for t in range(len(data.tasks)) for i in range(len(data.tasks[t].valid))]


def shard_eval(units: list, rank: int, world: int, batch_size: int) -> tuple[list[list], int]:
    """This rank's evaluation batches, and how many every rank runs (the same count everywhere, so sharded models that
    gather parameters in forward never wait on a rank that ran out of data; extra batches are dummies)."""
    mine = units[rank::world]
    per_rank = math.ceil(len(units) / world) if units else 0
    n_batches = math.ceil(per_rank / batch_size) if per_rank else 0
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)], n_batches


class ValidProbe:
    """CoBa's cheap validation signal: the next few validation batches of a seeded cycle over all tasks."""

    def __init__(self, units: list[tuple[int, int]], seed: int):
        self.units = list(units)
        random.Random(seed).shuffle(self.units)
        self.position = 0

    def next_units(self, count: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(min(count, len(self.units))):
            out.append(self.units[self.position % len(self.units)])
            self.position += 1
        return out
