"""From the tokenised tasks to this process's micro-batches: units (rows), the balanced sampler, the collator."""
from __future__ import annotations

import math
import random
from typing import Callable, Iterator

import torch

from mftcoder.config import TrainConfig
from mftcoder.data.cache import TokenizedData
from mftcoder.data.collator import collate
from mftcoder.data.packing import build_units
from mftcoder.data.sampler import TaskBalancedSampler


class TrainBatches:
    """The micro-batches of optimizer step N for one process: the same global batch whatever the geometry."""

    def __init__(self, data: TokenizedData, cfg: TrainConfig, rank: int, world_size: int, pad_id: int,
                 collate_fn: Callable = collate, samples_per_item: int = 1):
        """`collate_fn(rows, task_ids, pad_id, pad_to_multiple_of)` makes a micro-batch (the objective's `collate`).
        `samples_per_item`: consecutive samples that train together (2: a preference pair, chosen then rejected)."""
        self.data, self.cfg, self.rank, self.world, self.pad_id = data, cfg, rank, world_size, pad_id
        self.collate_fn, self.group = collate_fn, samples_per_item
        self.units = [self._build_units(t.train.lengths) for t in data.tasks]
        weights = [t.task.sampling_weight for t in data.tasks] if cfg.task_sampling == "explicit" else None
        self.global_batch_size = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
        self.sampler = TaskBalancedSampler(
            [len(u) for u in self.units], self.global_batch_size, strategy=cfg.task_sampling,
            temperature=cfg.sampling_temperature, weights=weights, seed=cfg.seed, group_by_task=cfg.group_by_task)

    def _build_units(self, lengths) -> list[list[int]]:
        """Units of items. A group of g samples needs sum(n) - g positions; packed, it shares a row of g x seq_length
        positions with others (a pair then takes what its two padded rows would)."""
        g = self.group
        items = [int(sum(lengths[g * i:g * i + g])) - (g - 1) for i in range(len(lengths) // g)]
        return build_units(items, g * self.cfg.seq_length, self.cfg.padding_mode)

    def item_samples(self, item: int) -> list[int]:
        return list(range(self.group * item, self.group * item + self.group))

    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch()

    def micro_batches(self, step: int) -> list[dict]:
        batch = self.sampler.global_batch(step)
        shards = self.sampler.shard(batch, self.rank, self.world, self.cfg.per_device_train_batch_size,
                                    self.cfg.gradient_accumulation_steps)
        return [self.collate_units(mb, split="train") for mb in shards]

    def collate_units(self, units: list[tuple[int, int]], split: str) -> dict:
        """A micro-batch of units: train units are this run's rows (packed or not), validation units are items."""
        return self._collate([(split, task_id, self.units[task_id][unit] if split == "train" else [unit])
                              for task_id, unit in units])

    def collate_items(self, items: list[tuple[str, tuple[int, int]]]) -> dict:
        """A batch of (split, (task, item)), one item a unit, from any split."""
        return self._collate([(split, task_id, [item]) for split, (task_id, item) in items])

    def _collate(self, groups: list[tuple[str, int, list[int]]]) -> dict:
        rows, task_ids, cache_rows = [], [], []
        for split, task_id, items in groups:
            store = getattr(self.data.tasks[task_id], split)
            index = [s for item in items for s in self.item_samples(item)]
            rows.append([store[i] for i in index])
            task_ids.append(task_id)
            cache_rows += [int(store.rows[i]) for i in index]
        multiple = None if self.cfg.use_dynamic_padding else self.cfg.seq_length
        batch = self.collate_fn(rows, task_ids, self.pad_id, multiple)
        batch["cache_rows"] = torch.tensor(cache_rows, dtype=torch.long)  # [S]: each sample's row in the cache
        return batch


def eval_units(data: TokenizedData, samples_per_item: int = 1) -> list[tuple[int, int]]:
    """Every validation item (a sample, or a pair) once, one item a unit."""
    return [(t, i) for t in range(len(data.tasks)) for i in range(len(data.tasks[t].valid) // samples_per_item)]


def shard_eval(units: list, rank: int, world: int, batch_size: int) -> tuple[list[list], int]:
    """This rank's evaluation batches, and how many every rank runs (the same count everywhere, so sharded models that
    gather parameters in forward never wait on a rank that ran out of data; extra batches are dummies)."""
    mine = units[rank::world]
    per_rank = math.ceil(len(units) / world) if units else 0
    n_batches = math.ceil(per_rank / batch_size) if per_rank else 0
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)], n_batches


def sharded_batches(units: list, rank: int, world: int, batch_size: int, collate: Callable, device) -> Iterator:
    """(batch on `device`, real) for this rank's batches of `units`. Ranks with fewer real batches get dummy ones (the
    first unit again, real=False), so every rank runs the same number of forwards: sharded models gather parameters
    inside forward and would wait forever on a rank that stopped."""
    mine, n_batches = shard_eval(units, rank, world, batch_size)
    for i in range(n_batches):
        real = i < len(mine) and len(mine[i]) > 0  # shard_eval gives [] to a rank without data
        yield to_device(collate(mine[i] if real else [units[0]]), device), real


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


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
